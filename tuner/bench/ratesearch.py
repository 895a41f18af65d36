"""The server scenario's search for the highest offered rate whose P99 verdict is ``pass``.

Robust to noise:
- monotone: a rate is never tried above a proven ``fail`` nor below a proven ``pass``; a window
  that is ``undecided`` (after its extensions) counts as not proven to pass;
- the evidence of every window is kept: the answer is the highest passing rate below the lowest
  failing one, whatever order the windows came in;
- the boundary is re-tested: the best passing rate is measured again and judged on the pooled
  counts of both windows (error spent over all their looks); if that no longer passes, the next
  lower passing rate is the answer, and when there is none the search goes on downward (at most
  ``FALLBACK_STEPS`` windows, each at ``FALLBACK_RATIO`` of the lowest rate not proven to pass);
- the answer has an interval: [achieved rate of the best passing window, lowest offered rate
  not proven to pass] (or the closed-loop capacity when every rate tried passed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tuner.bench import stats
from tuner.results.records import WindowResult

RunWindow = Callable[[float], WindowResult]  # offered rate -> a judged window
FALLBACK_STEPS = 2  # windows tried below a boundary whose re-test took back the only pass
FALLBACK_RATIO = 0.7  # each one at this share of the lowest rate not proven to pass


@dataclass(frozen=True)
class SearchOutcome:
    best: WindowResult | None  # the passing window reported (None: no rate passed)
    windows: list[WindowResult]  # every window run, in order
    throughput_ci: tuple[float, float]
    verdict: str  # pass | undecided (no rate tried passed; a lower one might)


def pooled_verdict(windows: list[WindowResult], quantile: float = stats.DEFAULT_QUANTILE) -> str:
    """Verdict of several windows at one rate, from their summed over-bound counts; a window that
    failed for another reason (did not keep up) makes the pool fail, and the pool passes only when
    one of its windows passed on its own (its effective sample: ``tuner.bench.stats.judge``)."""
    if any(not w.kept_up for w in windows):
        return stats.FAIL
    looks = sum(1 + w.extensions for w in windows)
    pooled = stats.verdict_from_counts(sum(w.over_bound for w in windows), sum(w.requests for w in windows),
                                       quantile, windows[0].confidence, looks)
    if pooled == stats.PASS and not any(w.verdict == stats.PASS for w in windows):
        return stats.UNDECIDED  # the counts cannot pass what no window passed on its effective sample
    return pooled


def search_rate(run: RunWindow, capacity: float, steps: int, say: Callable[[str], None] = lambda _m: None,
                retest: bool = True) -> SearchOutcome:
    """Bisection over offered rates with ``steps`` windows, then one boundary re-test."""
    by_rate: dict[float, list[WindowResult]] = {}
    windows: list[WindowResult] = []

    def measure_at(rate: float, label: str) -> WindowResult:
        say(f"{label} at {rate:.1f} req/s")
        w = run(rate)
        windows.append(w)
        by_rate.setdefault(rate, []).append(w)
        return w

    lo, hi = 0.0, capacity * 1.05
    rate = capacity * 0.9
    for step in range(steps):
        if rate <= 0 or not lo < rate < hi:
            break
        w = measure_at(rate, f"window {step + 1}/{steps}")
        if w.verdict == stats.PASS:
            lo = rate
        else:
            hi = rate
        rate = (lo + hi) / 2
        if hi - lo < 0.01 * capacity:
            break
    verdicts = {r: pooled_verdict(ws) for r, ws in by_rate.items()}
    best_rate = _best_rate(verdicts)
    if retest and best_rate is not None:
        measure_at(best_rate, "boundary re-test")
        verdicts[best_rate] = pooled_verdict(by_rate[best_rate])
        best_rate = _best_rate(verdicts)
        for step in range(FALLBACK_STEPS if best_rate is None else 0):  # the re-test took the only pass back
            rate = min(verdicts) * FALLBACK_RATIO
            measure_at(rate, f"below the re-tested boundary {step + 1}/{FALLBACK_STEPS}")
            verdicts[rate] = pooled_verdict(by_rate[rate])
            best_rate = _best_rate(verdicts)
            if best_rate is not None:
                break
    return _outcome(by_rate, verdicts, best_rate, windows, capacity)


def _best_rate(verdicts: dict[float, str]) -> float | None:
    """Highest passing rate below the lowest non-passing one (monotone in the offered rate)."""
    ceiling = min((r for r, v in verdicts.items() if v == stats.FAIL), default=math.inf)
    passing = [r for r, v in verdicts.items() if v == stats.PASS and r < ceiling]
    return max(passing, default=None)


def _outcome(by_rate: dict[float, list[WindowResult]], verdicts: dict[float, str], best_rate: float | None,
             windows: list[WindowResult], capacity: float) -> SearchOutcome:
    if best_rate is None:  # a lower rate than any tried may still pass: nothing is proven infeasible
        lowest = min(verdicts, default=None)
        return SearchOutcome(None, windows, (0.0, float(lowest) if lowest is not None else 0.0), stats.UNDECIDED)
    passing = [w for w in by_rate[best_rate] if w.verdict == stats.PASS] or by_rate[best_rate]
    best = max(passing, key=lambda w: w.achieved_rate)
    above = [r for r, v in verdicts.items() if r > best_rate and v != stats.PASS]
    high = min(above) if above else max(capacity, best_rate)
    low = float(np.min([w.achieved_rate for w in by_rate[best_rate]]))
    return SearchOutcome(best, windows, (min(low, best.achieved_rate), float(max(high, best.achieved_rate))),
                         stats.PASS)
