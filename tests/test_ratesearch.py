"""The rate search over fake judged windows (no processes): monotone, reuses evidence,
re-tests the boundary, reports an interval."""

from __future__ import annotations

import math

from tuner.bench import stats
from tuner.bench.ratesearch import pooled_verdict, search_rate
from tuner.results.records import WindowResult


def window(rate: float, over: int, n: int = 1000, kept_up: bool = True) -> WindowResult:
    verdict = stats.verdict_from_counts(over, n, looks=3) if kept_up else stats.FAIL
    return WindowResult("server", rate, rate * 0.99, n, n, 1, 2, 3, 4, 1, 1.0, kept_up, verdict == stats.PASS,
                        "" if verdict == stats.PASS else "x", (1.0,), 0.1, verdict=verdict, over_bound=over)


def test_search_finds_the_highest_passing_rate_below_the_first_failure_with_an_interval():
    tried = []

    def run(rate: float) -> WindowResult:
        tried.append(rate)
        return window(rate, 0 if rate <= 500 else 50)

    out = search_rate(run, 1000.0, steps=8)
    assert out.verdict == "pass" and out.best is not None
    assert out.best.offered_rate <= 500
    lo, hi = out.throughput_ci
    assert lo == out.best.achieved_rate and 500 < hi <= 1050
    assert tried[-1] == out.best.offered_rate  # the boundary was re-tested
    assert len(out.windows) == len(tried)


def test_a_boundary_that_fails_its_retest_falls_back_to_the_next_passing_rate():
    seen: dict[float, int] = {}

    def run(rate: float) -> WindowResult:
        seen[rate] = seen.get(rate, 0) + 1
        if rate > 800:
            return window(rate, 60)
        lucky = rate > 700 and seen[rate] == 1  # passed once by luck, fails on the re-test
        return window(rate, 0 if rate <= 700 or lucky else 60)

    out = search_rate(run, 1000.0, steps=6)
    assert out.best is not None and out.best.offered_rate <= 700
    assert pooled_verdict([window(750, 0), window(750, 60)]) != "pass"


def test_a_retest_that_takes_back_the_only_pass_searches_on_below_it():
    seen: dict[float, int] = {}

    def run(rate: float) -> WindowResult:
        seen[rate] = seen.get(rate, 0) + 1
        lucky = seen[rate] == 1 and 400 < rate <= 500  # passed once by luck, fails on the re-test
        return window(rate, 0 if rate <= 400 or lucky else 60)

    out = search_rate(run, 1000.0, steps=3)  # 900 fail, 450 lucky pass, 675 fail; re-test 450 fails
    assert seen[450.0] == 2
    assert out.verdict == "pass" and out.best is not None and out.best.offered_rate == 450.0 * 0.7
    lo, hi = out.throughput_ci
    assert lo == out.best.achieved_rate and hi == 450.0


def test_a_retest_with_nothing_passing_below_stays_undecided_after_its_fallback_windows():
    seen: dict[float, int] = {}

    def run(rate: float) -> WindowResult:
        seen[rate] = seen.get(rate, 0) + 1
        return window(rate, 0 if seen[rate] == 1 and rate == 450.0 else 60)

    out = search_rate(run, 1000.0, steps=3)
    assert out.best is None and out.verdict == "undecided"
    assert len(out.windows) == 3 + 1 + 2  # the bisection, the re-test, two windows below it


def test_no_passing_rate_is_undecided_not_infeasible():
    out = search_rate(lambda r: window(r, 10), 1000.0, steps=4)
    assert out.best is None and out.verdict == "undecided"
    out = search_rate(lambda r: window(r, 80), 1000.0, steps=4)  # a lower rate than tried might pass
    assert out.best is None and out.verdict == "undecided"
    out = search_rate(lambda r: window(r, 0, kept_up=r < 300), 1000.0, steps=6)
    assert out.best is not None and out.best.offered_rate < 300


def test_windows_stored_before_verdicts_still_load():
    old = window(100, 0).to_dict()
    for key in ("verdict", "p99_ci_ms", "confidence", "over_bound", "extensions", "service_cv", "interference"):
        old.pop(key)
    w = WindowResult.from_dict(old, version=1)  # a window is read in its result's format
    assert w.verdict == "pass" and math.isnan(w.p99_ci_ms[0])


def test_pooled_counts_do_not_pass_a_rate_that_no_window_passed_on_its_own():
    """A window undecided on its effective sample (correlated latencies, tuner.bench.stats.judge)
    keeps its raw counts; two of them pooled must not become a pass."""
    from dataclasses import replace

    undecided = replace(window(750, 0), verdict=stats.UNDECIDED, passed=False)
    assert stats.verdict_from_counts(0, 2000, looks=6) == stats.PASS  # what the raw counts alone would say
    assert pooled_verdict([undecided, undecided]) == stats.UNDECIDED
    assert pooled_verdict([undecided, window(750, 0)]) == stats.PASS
