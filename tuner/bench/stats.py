"""Statistics a verdict can rest on: quantile bounds, window verdicts, early stop, ratio intervals.

A latency quantile (P99) is judged from a window's samples without assuming any distribution.
For n independent latencies, the number O of them above the true P99 is Binomial(n, 0.01), so
the order statistics give exact bounds (the idea behind MLPerf LoadGen's early stopping):

- the UPPER bound is the sorted sample x_(u), u the smallest index with P(x_(u) >= P99) >= c;
- the LOWER bound is x_(l), l the largest index with P(x_(l) <= P99) >= c.

Each end is a one-sided bound at confidence ``c``. With a latency bound B and ``over`` samples
above B, the verdict is ``pass`` when the upper bound is <= B (the P99 is under B, wrong with
probability <= 1 - c), ``fail`` when the lower bound is > B, else ``undecided``. Both reduce to
the count of over-bound samples, so a window can stop as soon as failure is certain: once the
over-bound count exceeds what a ``fail`` verdict allows at the window's planned size, more
requests cannot change it.

A window looked at several times (an undecided window extended with more requests) spends
its error rate over the looks it may take (Bonferroni: 1 - c divided by the looks), so the
verdict's false-pass rate stays <= 1 - c however many extensions it gets.

Numbers here are exact binomial sums in log space (math.lgamma); no scipy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tuner.verdicts import DEFAULT_CONFIDENCE, DEFAULT_QUANTILE, FAIL, PASS, UNDECIDED, VERDICTS

__all__ = ["DEFAULT_CONFIDENCE", "DEFAULT_QUANTILE", "FAIL", "PASS", "UNDECIDED", "VERDICTS"]  # and the functions


def check_confidence(confidence: float) -> None:
    """Raise ValueError unless 0.5 < confidence < 1."""
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"confidence {confidence!r} must be between 0.5 and 1 (e.g. 0.95)")


def _log_pmf(k: int, n: int, p: float) -> float:
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * math.log(p) + (n - k) * math.log1p(-p))


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed exactly term by term in log space."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    return min(1.0, math.fsum(math.exp(_log_pmf(i, n, p)) for i in range(k + 1)))


@lru_cache(maxsize=8192)
def over_count_limits(n: int, quantile: float, alpha: float) -> tuple[int, int]:
    """For n samples and one-sided error ``alpha``: (most over-bound samples a pass allows,
    most over-bound samples before a fail is proven). ``pass`` iff over <= first (-1: no pass is
    possible with n samples), ``fail`` iff over > second."""
    p_over = 1.0 - quantile
    cdf = 0.0
    m_pass = -1
    for m in range(n + 1):
        cdf += math.exp(_log_pmf(m, n, p_over))
        if cdf <= alpha:
            m_pass = m
        if cdf >= 1.0 - alpha:
            return m_pass, m
    return m_pass, n


def _alpha(confidence: float, looks: int) -> float:
    check_confidence(confidence)
    return (1.0 - confidence) / max(1, looks)


def verdict_from_counts(over: int, n: int, quantile: float = DEFAULT_QUANTILE,
                        confidence: float = DEFAULT_CONFIDENCE, looks: int = 1) -> str:
    """Verdict on "quantile of the latency <= bound" from ``over`` of ``n`` samples above the bound."""
    if n <= 0:
        return UNDECIDED
    m_pass, m_fail = over_count_limits(n, quantile, _alpha(confidence, looks))
    if over <= m_pass:
        return PASS
    if over > m_fail:
        return FAIL
    return UNDECIDED


def fail_allowance(planned_n: int, quantile: float = DEFAULT_QUANTILE,
                   confidence: float = DEFAULT_CONFIDENCE, looks: int = 1) -> int:
    """Over-bound samples a window of ``planned_n`` requests may see before its failure is proven:
    the early-stop threshold (stop when the count exceeds it; the rest cannot change the verdict)."""
    return over_count_limits(planned_n, quantile, _alpha(confidence, looks))[1]


def failure_proven(over_so_far: int, requests_remaining: int, served_so_far: int,
                   quantile: float = DEFAULT_QUANTILE, confidence: float = DEFAULT_CONFIDENCE,
                   looks: int = 1) -> bool:
    """Early stop: True once the window's fail verdict is certain whatever the remaining requests do."""
    return over_so_far > fail_allowance(served_so_far + requests_remaining, quantile, confidence, looks)


def quantile_ci(samples: Sequence[float] | np.ndarray, quantile: float = DEFAULT_QUANTILE,
                confidence: float = DEFAULT_CONFIDENCE, looks: int = 1) -> tuple[float, float]:
    """Distribution-free (lower, upper) bounds of the ``quantile``, each one-sided at ``confidence``
    (per look). An end the samples cannot bound is -inf / +inf."""
    x = np.sort(np.asarray(samples, dtype=float))
    n = int(x.size)
    if n == 0:
        return -math.inf, math.inf
    m_pass, m_fail = over_count_limits(n, quantile, _alpha(confidence, looks))
    upper = float(x[n - m_pass - 1]) if m_pass >= 0 else math.inf
    lower = float(x[n - m_fail - 1]) if m_fail < n else -math.inf
    return lower, upper


def samples_needed(over_fraction: float = 0.0, quantile: float = DEFAULT_QUANTILE,
                   confidence: float = DEFAULT_CONFIDENCE, looks: int = 1, max_n: int = 1_000_000) -> int:
    """Fewest samples at which a window whose over-bound fraction is ``over_fraction`` gets a
    decided verdict (``max_n`` when none does: a fraction at 1 - quantile never decides)."""
    def decided(n: int) -> bool:
        return verdict_from_counts(math.ceil(over_fraction * n), n, quantile, confidence, looks) != UNDECIDED

    n = 16
    while n < max_n and not decided(n):
        n *= 2
    if n >= max_n:
        return max_n if not decided(max_n) else _bisect(decided, n // 2, max_n)
    return _bisect(decided, max(1, n // 2), n)


def _bisect(ok: Callable[[int], bool], lo: int, hi: int) -> int:
    """Smallest n in (lo, hi] with ok(n), given ok(hi) (roughly monotone predicates)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


@dataclass(frozen=True)
class Verdict:
    """A window's judgement of "P(quantile) <= bound"."""

    verdict: str
    over: int  # samples over the bound (never-served requests count as over)
    n: int
    ci_s: tuple[float, float]  # quantile bounds in seconds
    looks: int
    dependence: float = 1.0  # requests per independent one (``inflation``); 1: independent


DEPENDENCE_BATCHES = 20  # batch means over this many consecutive stretches of a window
DEPENDENCE_QUANTILE = 0.9  # of the indicator whose clustering is measured (plenty of events)


def dependence(latencies_s: np.ndarray) -> float:
    """How clustered a window's slow requests are: the variance of the count of requests over the
    window's own 90th percentile in consecutive batches, over what independent requests would give
    (batch means; >= 1). A queue near saturation makes consecutive requests late together, and
    then n correlated latencies carry the evidence of only about n / dependence independent ones."""
    lat = np.asarray(latencies_s, dtype=float)
    m = lat.size // DEPENDENCE_BATCHES
    finite = lat[np.isfinite(lat)]
    if m < 10 or finite.size == 0:
        return 1.0
    slow = ~(lat <= np.quantile(finite, DEPENDENCE_QUANTILE))
    p = float(slow.mean())
    if p <= 0.0 or p >= 1.0:
        return 1.0
    counts = slow[: m * DEPENDENCE_BATCHES].reshape(DEPENDENCE_BATCHES, m).sum(axis=1)
    return max(1.0, float(counts.var(ddof=1)) / (m * p * (1 - p)))


CLUSTER_QUANTILE = 0.98  # slow requests, for their clustering: those over the window's own 98th percentile
CLUSTER_MIN_SLOW = 5  # fewer slow requests than this: no clustering is measured (1.0)


def cluster_size(latencies_s: np.ndarray) -> float:
    """Mean size of the clusters of a window's slow requests (>= 1): the requests over the
    window's own 98th percentile, a run of consecutive ones (in arrival order) counting as one
    cluster; slow requests over clusters, the runs estimator of the extremal index (1 / theta).
    A backlog makes the late requests come in runs, and n requests whose extremes come in
    clusters of size C carry the evidence of about n / C independent ones. Milder than
    ``dependence``: it looks at the tail only, so a window whose speed drifts (a neighbour, steal)
    but whose slow requests come alone keeps its sample."""
    lat = np.asarray(latencies_s, dtype=float)
    finite = lat[np.isfinite(lat)]
    if finite.size == 0:
        return 1.0
    slow = np.flatnonzero(~(lat <= np.quantile(finite, CLUSTER_QUANTILE)))
    if slow.size < CLUSTER_MIN_SLOW:
        return 1.0
    clusters = 1 + int(np.count_nonzero(np.diff(slow) > 1))
    return slow.size / clusters


INDEPENDENT, CLUSTERS, BATCH_MEANS = "independent", "clusters", "batch-means"
DEPENDENCE_RULES = (CLUSTERS, BATCH_MEANS, INDEPENDENT)  # how a pass accounts for correlated latencies


def inflation(latencies_s: np.ndarray, rule: str = CLUSTERS) -> float:
    """How many requests of a window count as one independent one, by ``rule``: ``clusters``
    (``cluster_size``, the default), ``batch-means`` (``dependence``) or ``independent`` (1.0)."""
    if rule == CLUSTERS:
        return cluster_size(latencies_s)
    if rule == BATCH_MEANS:
        return dependence(latencies_s)
    if rule == INDEPENDENT:
        return 1.0
    raise ValueError(f"dependence rule {rule!r} is not one of {', '.join(DEPENDENCE_RULES)}")


def judge(latencies_s: np.ndarray, bound_s: float, quantile: float = DEFAULT_QUANTILE,
          confidence: float = DEFAULT_CONFIDENCE, looks: int = 1, dependence_rule: str = INDEPENDENT) -> Verdict:
    """The verdict of one window's latencies (inf for requests never served, in arrival order)
    against ``bound_s``. ``pass`` is judged on the effective sample (n / ``inflation`` by
    ``dependence_rule``, the over-bound count scaled alike): counting correlated latencies as
    independent passed windows whose long-run P99 was over the bound (experiments/simulate.py).
    ``fail`` stays on the raw counts (the early stop's rule)."""
    lat = np.asarray(latencies_s, dtype=float)
    n = int(lat.size)
    over = int(np.count_nonzero(~(lat <= bound_s)))
    d = inflation(lat, dependence_rule)
    word = verdict_from_counts(over, n, quantile, confidence, looks)
    if word == PASS and d > 1.0:
        effective = verdict_from_counts(math.ceil(over / d), max(1, int(n / d)), quantile, confidence, looks)
        word = PASS if effective == PASS else UNDECIDED
    lower, upper = quantile_ci(lat, quantile, confidence, looks)
    if d > 1.0:
        upper = _dependent_upper(lat, d, quantile, confidence, looks)
    return Verdict(word, over, n, (lower, upper), looks, d)


def _dependent_upper(lat: np.ndarray, d: float, quantile: float, confidence: float, looks: int) -> float:
    """The quantile's upper bound on the effective sample: the sorted sample at the most
    over-bound requests a pass allows there, scaled back to the real count."""
    n = lat.size
    m_pass = over_count_limits(max(1, int(n / d)), quantile, _alpha(confidence, looks))[0]
    if m_pass < 0:
        return math.inf
    return float(np.sort(lat)[max(0, n - int(m_pass * d) - 1)])


def next_window_size(verdict: Verdict, max_n: int, quantile: float = DEFAULT_QUANTILE,
                     confidence: float = DEFAULT_CONFIDENCE) -> int:
    """Total requests an undecided window should grow to: what its observed over-bound fraction
    needs, at least double, at most ``max_n``."""
    need = samples_needed(verdict.over / max(1, verdict.n), quantile, confidence, verdict.looks, max_n)
    return int(min(max_n, max(need * verdict.dependence, 2 * verdict.n)))


def decide(first_latencies_s: np.ndarray, more: Callable[[int], np.ndarray], bound_s: float,
           max_extensions: int, max_n: int, quantile: float = DEFAULT_QUANTILE,
           confidence: float = DEFAULT_CONFIDENCE, dependence_rule: str = INDEPENDENT) -> tuple[Verdict, np.ndarray]:
    """Sequential window verdict: judge the first samples; while undecided (and extensions and
    ``max_n`` allow), ask ``more(count)`` for ``count`` further latencies at the same rate and judge
    the pooled samples. Error spent over 1 + ``max_extensions`` looks. Returns the final verdict and
    all latencies."""
    looks = 1 + max_extensions
    pooled = np.asarray(first_latencies_s, dtype=float)
    verdict = judge(pooled, bound_s, quantile, confidence, looks, dependence_rule)
    for _ in range(max_extensions):
        if verdict.verdict != UNDECIDED or pooled.size >= max_n:
            break
        extra = next_window_size(verdict, max_n, quantile, confidence) - int(pooled.size)
        pooled = np.concatenate([pooled, np.asarray(more(extra), dtype=float)])
        verdict = judge(pooled, bound_s, quantile, confidence, looks, dependence_rule)
    return verdict, pooled


@lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (p > 0.5) of Student's t with ``df`` degrees of freedom: bisection on
    its CDF, integrated by Simpson's rule (no scipy; exact to about 1e-6 for the df a race has)."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float, steps: int = 2000) -> float:
        h = x / steps
        grid = np.linspace(0.0, x, steps + 1)
        pdf = np.exp(log_c - (df + 1) / 2 * np.log1p(grid * grid / df))
        return 0.5 + h / 3 * float(pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum() + 2 * pdf[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def ratio_ci(numerator: Sequence[float], denominator: Sequence[float], confidence: float = DEFAULT_CONFIDENCE,
             resamples: int = 4000, seed: int = 0, method: str = "fieller") -> tuple[float, float, float]:
    """Ratio of means of paired repeated measurements (round i of A with round i of B), with a
    two-sided interval at ``confidence``: (ratio, low, high). With fewer than two rounds the
    interval is (0, inf): nothing is known about the spread.

    ``fieller`` (the default): Fieller's interval for a ratio of correlated means, with Student's
    t on n - 1 degrees of freedom; unbounded (0, inf) when the denominator's mean is not
    significantly above 0. ``bootstrap``: the paired percentile bootstrap (``resamples``,
    ``seed``), which is too narrow for the 3-6 rounds of a race: simulated on a noisy 16-core VM
    (experiments/simulate.py), its 95% intervals covered the true ratio in 85% of races."""
    a = np.asarray(numerator, dtype=float)
    b = np.asarray(denominator, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("ratio_ci needs two equally long 1-D sequences (paired rounds)")
    check_confidence(confidence)
    if method not in ("fieller", "bootstrap"):
        raise ValueError(f"ratio_ci method {method!r} is not fieller or bootstrap")
    ratio = float(a.mean() / b.mean()) if a.size and b.mean() > 0 else math.inf
    if a.size < 2:
        return ratio, 0.0, math.inf
    if method == "fieller":
        return (ratio, *_fieller(a, b, confidence))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(resamples, a.size))
    den = b[idx].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = np.where(den > 0, a[idx].mean(axis=1) / den, np.inf)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return ratio, float(low), float(high)


def _fieller(a: np.ndarray, b: np.ndarray, confidence: float) -> tuple[float, float]:
    """Fieller's (low, high) for mean(a) / mean(b): the ratios r with
    (mean(a) - r mean(b))^2 <= t^2 var(mean(a) - r mean(b)); low clipped at 0 (throughputs)."""
    n = a.size
    t = t_quantile(1 - (1 - confidence) / 2, n - 1)
    cov = np.cov(a, b, ddof=1) / n
    ma, mb = float(a.mean()), float(b.mean())
    quad = mb * mb - t * t * float(cov[1, 1])
    if quad <= 0:  # the denominator is not significantly above 0: any ratio is possible
        return 0.0, math.inf
    lin = ma * mb - t * t * float(cov[0, 1])
    const = ma * ma - t * t * float(cov[0, 0])
    root = math.sqrt(max(0.0, lin * lin - quad * const))
    return max(0.0, (lin - root) / quad), (lin + root) / quad


def mean_ci(values: Sequence[float], confidence: float = DEFAULT_CONFIDENCE, resamples: int = 4000,
            seed: int = 0) -> tuple[float, float, float]:
    """Mean of repeated measurements with its interval (``ratio_ci`` over ones: Student's t):
    (mean, low, high)."""
    v = np.asarray(values, dtype=float)
    return ratio_ci(v, np.ones_like(v), confidence, resamples, seed)


def cv(values: Sequence[float]) -> float:
    """Coefficient of variation (sample std / mean); nan for fewer than two values."""
    v = np.asarray(values, dtype=float)
    if v.size < 2 or v.mean() == 0:
        return math.nan
    return float(v.std(ddof=1) / v.mean())


def estimate_ratio(a: float, a_interval: Sequence[float], b: float, b_interval: Sequence[float]
                   ) -> tuple[float, float, float]:
    """a / b of two independent estimates with intervals, and an interval for it: each interval
    read as a symmetric one on the log scale, the two half widths added in quadrature (the ratio's
    interval is at the intervals' own confidence). (ratio, low, high); (ratio, 0, inf) when either
    interval is open or missing. A study's
    provisional ratio before its race (the race's own interval is ``ratio_ci``)."""
    ratio = a / b if b > 0 else math.inf
    ends = [float(v) for v in (*a_interval, *b_interval)]
    if not (a > 0 and b > 0 and all(math.isfinite(v) and v > 0 for v in ends)):
        return ratio, 0.0, math.inf
    # each interval's half width on the log scale is z standard errors: the ratio's is their hypot
    half = math.hypot(math.log(ends[1] / ends[0]), math.log(ends[3] / ends[2])) / 2
    return ratio, ratio * math.exp(-half), ratio * math.exp(half)
