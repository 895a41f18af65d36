"""The largest load factor L every model serves within its own P99 bound, estimated.

At load factor L model i is offered L x share_i requests/s, all models at once. L is estimated
as a single model's rate is (tuner.bench.estimate: the L at which the long-run share of requests
over the bound is 1%, bracketed, interpolated, with the bracket as its interval), each run of
every model at once read as one window of its *binding* model (``mix_point``): the model whose
share over its own bound is the largest. The search measures where the answer is still unsure
and stops once the interval is within ``rel_tol`` of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tuner.bench import stats
from tuner.bench.estimate import EstimateOutcome, Point, estimate_rate, point_of
from tuner.results.mixrecords import MixWindow, combined_verdict  # noqa: F401 (re-exported)


def mix_point(run: MixWindow) -> Point:
    """A run's evidence at its load factor: its binding model's counts (the largest over-bound share,
    kept off 0 as the estimator keeps it, so of two models with none over the one with fewer
    requests binds), usable only when every model's window kept up and ran whole, disturbed when
    any model's was."""
    points = [point_of(w) for w in run.windows.values()]
    worst = max(points, key=lambda p: (p.over + 0.5) / (p.n + 1))
    return Point(run.load_factor, worst.n, worst.over, worst.inflation, all(p.usable for p in points),
                 any(p.disturbed for p in points))


@dataclass(frozen=True)
class LoadFactorOutcome:
    best: MixWindow | None  # the run whose latencies are reported: the highest at or under L, else the
    # lowest (None: L is 0)
    runs: list[MixWindow]  # every run, in order
    load_factor: float  # the estimate (0: no run held every bound)
    interval: tuple[float, float]  # the estimate's bracket (high inf: nothing tried crossed a bound)
    verdict: str  # pass (L above 0) | undecided


def estimate_load_factor(run: Callable[[float], MixWindow], capacity_lf: float, max_runs: int,
                         say: Callable[[str], None] = lambda _m: None, start: float | None = None,
                         rel_tol: float = 0.1) -> LoadFactorOutcome:
    """Runs of every model at once (``run(L)``), at most ``max_runs``, the first at ``start`` (a
    race: the entrant's known L) or 0.8 of ``capacity_lf`` (the closed-loop estimate)."""
    outcome: EstimateOutcome = estimate_rate(run, capacity_lf, max_runs, start_rate=start, rel_tol=rel_tol,
                                             say=say, point=mix_point, unit="load factor")
    est, runs = outcome.estimate, list(outcome.windows)
    held = [r for r in runs if (p := mix_point(r)).usable and p.over <= (1 - stats.DEFAULT_QUANTILE) * p.n]
    if est.rate <= 0 or not held:  # no run held every bound: an L extrapolated below them all is no answer
        return LoadFactorOutcome(None, runs, 0.0, (0.0, float(min((r.load_factor for r in runs), default=0.0))),
                                 stats.UNDECIDED)
    under = [r for r in runs if r.load_factor <= est.rate * 1.001]
    best = max(under, key=lambda r: r.load_factor) if under else min(runs, key=lambda r: r.load_factor)
    return LoadFactorOutcome(best, runs, float(est.rate), (float(est.low), float(est.high)), stats.PASS)
