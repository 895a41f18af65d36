"""The statistics behind verdicts, checked against exact values computed independently here
(brute-force binomial sums with exact integers) and a seeded fake server (no real timing)."""

from __future__ import annotations

import heapq
import math
from fractions import Fraction

import numpy as np
import pytest

from tuner.bench import stats


def exact_cdf(k: int, n: int, p: Fraction) -> Fraction:
    """P(Binomial(n, p) <= k) as an exact fraction."""
    return sum((math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(0, k + 1)), Fraction(0))


def brute_bounds(x: np.ndarray, confidence: Fraction) -> tuple[float, float]:
    """P99 order-statistic bounds straight from the definition, in exact integers:
    upper = x_(u), u the smallest j with P(Binomial(n, 0.99) <= j - 1) >= c;
    lower = x_(l), l the largest j with P(Binomial(n, 0.99) >= j) >= c."""
    s = np.sort(x)
    n = len(s)
    scale = 100**n  # P(Binomial(n, 99/100) = i) = comb(n, i) 99^i / 100^n
    cdf = [0] * (n + 1)  # cdf[j] = scale * P(Binomial <= j - 1)
    for j in range(1, n + 1):
        cdf[j] = cdf[j - 1] + math.comb(n, j - 1) * 99 ** (j - 1)
    a, b = confidence.numerator, confidence.denominator
    upper = next((float(s[j - 1]) for j in range(1, n + 1) if cdf[j] * b >= a * scale), math.inf)
    lower = next((float(s[j - 1]) for j in range(n, 0, -1) if (scale - cdf[j]) * b >= a * scale), -math.inf)
    return lower, upper


@pytest.mark.parametrize(("k", "n", "p"), [(0, 10, 0.01), (3, 300, 0.01), (12, 700, 0.01), (40, 60, 0.5)])
def test_binomial_cdf_matches_the_exact_sum(k, n, p):
    assert stats.binom_cdf(k, n, p) == pytest.approx(float(exact_cdf(k, n, Fraction(p))), rel=1e-9)


@pytest.mark.parametrize("n", [50, 299, 300, 459, 1000])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_quantile_bounds_are_the_exact_order_statistics(n, confidence):
    x = np.random.default_rng(n).lognormal(0, 1, n)
    got = stats.quantile_ci(x, 0.99, confidence)
    assert got == brute_bounds(x, Fraction(confidence).limit_denominator(1000))


def test_too_few_samples_cannot_bound_the_p99_from_above():
    # 0.99**298 > 0.05 >= 0.99**299: a pass needs at least 299 samples at 95%
    assert stats.quantile_ci(np.ones(298))[1] == math.inf
    assert stats.quantile_ci(np.ones(299))[1] == 1.0
    assert stats.samples_needed(0.0, 0.99, 0.95) == 299


def test_verdicts_follow_the_bounds():
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(100, 2000))
        x = rng.exponential(1.0, n)
        bound = float(rng.choice(x))
        lo, hi = stats.quantile_ci(x)
        v = stats.judge(x, bound)
        expected = "pass" if hi <= bound else "fail" if lo > bound else "undecided"
        assert v.verdict == expected


def test_a_few_slow_requests_in_a_small_window_do_not_prove_failure():
    # the case: 2 slow out of ~165 used to fail a window at 10% of capacity
    assert stats.verdict_from_counts(2, 165) == "undecided"
    assert stats.verdict_from_counts(0, 165) == "undecided"
    assert stats.verdict_from_counts(9, 165) == "fail"


def test_early_stop_fires_exactly_when_the_final_verdict_is_fail_whatever_follows():
    n = 1000
    allowance = stats.fail_allowance(n)
    assert not stats.failure_proven(allowance, n - 500, 500)
    assert stats.failure_proven(allowance + 1, n - 500, 500)
    # even if every remaining request is fast, the full window fails
    assert stats.verdict_from_counts(allowance + 1, n) == "fail"
    assert stats.verdict_from_counts(allowance, n) != "fail"


def test_ratio_interval_covers_a_known_ratio_and_narrows_with_rounds():
    rng = np.random.default_rng(3)
    a = 300 * rng.lognormal(0, 0.1, 40)
    b = 100 * rng.lognormal(0, 0.1, 40)
    ratio, lo, hi = stats.ratio_ci(a, b)
    assert lo < 3.0 < hi and lo < ratio < hi
    _, lo5, hi5 = stats.ratio_ci(a[:5], b[:5])
    assert hi5 - lo5 > hi - lo
    assert stats.ratio_ci([1.0], [2.0]) == (0.5, 0.0, math.inf)


# ---- a deterministic fake server: Poisson arrivals, c workers, one FIFO queue, Pareto service

class FakeServer:
    """Latencies (arrival to completion) of an open-loop queue with heavy-tailed service times."""

    def __init__(self, rate: float, workers: int, seed: int, service_scale_s: float = 0.005, shape: float = 2.5):
        self.rng = np.random.default_rng(seed)
        self.rate, self.scale, self.shape = rate, service_scale_s, shape
        self.free_at = [0.0] * workers
        self.clock = 0.0

    def serve(self, count: int) -> np.ndarray:
        arrivals = self.clock + np.cumsum(self.rng.exponential(1 / self.rate, count))
        service = self.scale * (1 + self.rng.pareto(self.shape, count))
        out = np.empty(count)
        for i, (t, s) in enumerate(zip(arrivals, service, strict=True)):
            start = max(t, heapq.heappop(self.free_at))
            heapq.heappush(self.free_at, start + s)
            out[i] = start + s - t
        self.clock = float(arrivals[-1])
        return out


def test_false_pass_rate_stays_below_one_minus_confidence_and_undecided_windows_grow():
    kw = {"rate": 300.0, "workers": 4}  # ~40% utilisation
    reference = FakeServer(seed=10_000, **kw).serve(200_000)
    bound = float(np.quantile(reference, 0.9885))  # the true P99 is just above the bound: "pass" is wrong
    assert np.mean(FakeServer(seed=20_000, **kw).serve(200_000) > bound) > 0.01
    confidence, seeds = 0.95, 200
    passes = extended = 0
    for seed in range(seeds):
        server = FakeServer(seed=seed, **kw)
        server.serve(200)  # warm the queue
        first = server.serve(1000)
        verdict, pooled = stats.decide(first, server.serve, bound, max_extensions=2, max_n=8000,
                                       confidence=confidence)
        passes += verdict.verdict == "pass"
        if stats.judge(first, bound, looks=3).verdict == "undecided":
            extended += 1
            assert pooled.size >= 2 * first.size  # an undecided window is extended
    assert passes / seeds <= 1 - confidence
    assert extended > seeds // 2  # the hard case is mostly undecided at first


def test_a_clearly_good_server_passes_and_a_clearly_bad_one_fails():
    kw = {"rate": 300.0, "workers": 4}
    reference = FakeServer(seed=10_000, **kw).serve(200_000)
    for q, expected in ((0.999, "pass"), (0.95, "fail")):
        bound = float(np.quantile(reference, q))
        got = [stats.decide(FakeServer(seed=s, **kw).serve(1000), FakeServer(seed=s + 99, **kw).serve, bound,
                            2, 16_000)[0].verdict for s in range(20)]
        assert got.count(expected) >= 19, got


def test_student_t_quantiles_match_the_tables():
    assert stats.t_quantile(0.975, 1) == pytest.approx(12.706, abs=1e-3)
    assert stats.t_quantile(0.975, 5) == pytest.approx(2.571, abs=1e-3)
    assert stats.t_quantile(0.95, 30) == pytest.approx(1.697, abs=1e-3)


def test_fieller_intervals_of_six_noisy_paired_rounds_cover_the_true_ratio_where_the_bootstrap_did_not():
    """Six rounds of two configs whose throughputs a shared noise (a round's neighbour) and their own
    noise spread by 30%: the race's setting. Fieller's 95% interval covers about 95% of the time;
    the percentile bootstrap, too narrow for six rounds, misses far more often."""
    rng = np.random.default_rng(5)
    covered = {"fieller": 0, "bootstrap": 0}
    reps = 300
    for _ in range(reps):
        shared = rng.lognormal(0, 0.2, 6)
        a = 1500 * shared * rng.lognormal(0, 0.3, 6)
        b = 1000 * shared * rng.lognormal(0, 0.3, 6)
        true_ratio = 1.5  # the lognormal factors have the same mean for both
        for method in covered:
            _, lo, hi = stats.ratio_ci(a, b, method=method)
            covered[method] += lo <= true_ratio <= hi
    assert covered["fieller"] / reps >= 0.92
    assert covered["bootstrap"] / reps < covered["fieller"] / reps - 0.04


def test_correlated_latencies_need_more_samples_to_pass_than_independent_ones():
    """Slow requests in runs of 40 (a backlog) carry the evidence of few independent ones: the same
    counts pass when shuffled and are undecided in order."""
    rng = np.random.default_rng(8)
    n = 2000
    lat = np.full(n, 0.010)
    lat[rng.choice(n // 40, 4, replace=False)[:, None] * 40 + np.arange(40)] = 0.030  # 8% slow, in runs
    lat[rng.choice(n, 6, replace=False)] = 0.2  # 6 over a 100 ms bound
    shuffled = rng.permutation(lat)
    assert stats.dependence(shuffled) < 2.0 < stats.dependence(lat)
    assert stats.judge(shuffled, 0.1, looks=3, dependence_adjusted=True).verdict == stats.PASS
    assert stats.judge(lat, 0.1, looks=3).verdict == stats.PASS, "not adjusted: the default"
    clustered = stats.judge(lat, 0.1, looks=3, dependence_adjusted=True)
    assert clustered.verdict == stats.UNDECIDED and clustered.over == 6
    assert stats.next_window_size(clustered, 10**6) > stats.next_window_size(stats.judge(shuffled, 0.1, looks=1), 10**6)
