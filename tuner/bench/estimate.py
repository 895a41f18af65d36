"""The server scenario's rate estimator: the highest offered rate a config sustains at the bound,
as a point estimate with an interval, measuring only where the answer is still unsure.

What is estimated: the rate at which the long-run share of requests over the latency bound is
``1 - quantile`` (1% for P99): there the long-run P99 equals the bound. A window at rate r with
n requests, ``over`` of them over the bound, gives an *unbiased* estimate over / n of that share
at r, whatever the clustering of its slow requests (clustering widens it, it does not bias it;
``WindowResult.inflation`` says by how much). A bisection on window verdicts instead reports the
highest rate *proven* to pass: a lower bound whose distance to the truth depends on the config
(a clustered tail proves late), so ratios of two configs' bounds are biased.

The answer is bracketed (``estimate``): the *floor* is the highest rate whose pooled share is
under the target, the *ceiling* the lowest rate above it whose share is over it (or whose window
did not keep up, or was cut once its failure was certain). The point estimate interpolates the
log share linearly in log rate between the two (a queue's tail share grows about exponentially
in the load near its knee), and the interval is the bracket itself. The search (``next_rate``)
is regula falsi with the Illinois rule: the next window goes to the interpolated rate, or to the
bracket's geometric middle when the last two windows landed on the same side, so the bracket
closes from both ends. While every window is on one side, it steps up (past the closed-loop
capacity too: one short probe on a noisy machine can say too little) or down.

``estimate_rate`` runs it: the first window at ``start_rate`` (the config's known answer, in a
race), else at the study's incumbent rate (*compare, do not characterize*: a config whose window
there fails its P99 verdict cannot beat the incumbent and stops at once, with the answer
extrapolated under that rate), else at 0.8 of the capacity; it stops when the bracket is within
``rel_tol`` of the answer on each side, or the windows run out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tuner.bench import stats
from tuner.results.records import WindowResult

STEP_UP, STEP_DOWN = 1.5, 0.65  # rate steps while every window lies on one side of the answer (a window
# over a collapsing queue is cut early: stepping past the answer is cheap)
MAX_OVER_CAPACITY = 3.0  # steps up stop at this multiple of the probe's capacity (a probe in a busy moment is low)
MIN_RATE_SHARE = 0.02  # a rate below this share of the capacity is not tried
SLOPE = 15.0  # d logit(share) / d log(rate) assumed below the lowest rate when every window crossed


@dataclass(frozen=True)
class Point:
    """One window's evidence: offered rate, requests, requests over the bound, inflation."""

    rate: float
    n: int
    over: int
    inflation: float = 1.0
    usable: bool = True  # kept up and not cut early: its share is an unbiased estimate
    disturbed: bool = False  # foreign load or steal on its CPUs (tuner.bench.interference)

    @property
    def share(self) -> float:
        return self.over / self.n if self.n else math.nan


def point_of(window: WindowResult) -> Point:
    return Point(window.offered_rate, window.requests, window.over_bound, max(1.0, window.inflation),
                 window.kept_up and not window.stopped_early and window.requests > 0,
                 bool(window.interference.disturbed))


def quiet(points: Sequence[Point]) -> list[Point]:
    """The undisturbed windows, when there are at least two; else all: what a disturbed window
    measured is the neighbour's load as much as the config (the re-runs look for quiet ones)."""
    calm = [p for p in points if not p.disturbed]
    return calm if len(calm) >= 2 else list(points)


@dataclass(frozen=True)
class RateEstimate:
    """The highest sustainable rate (req/s) with its interval; ``method`` says what it rests on:
    ``bracket`` (interpolated between the windows that bracket it; the interval is the bracket),
    ``lower`` (no window crossed the bound: the answer lies above the highest rate tried; high is
    inf), ``capacity`` (the same, at ``MAX_OVER_CAPACITY`` times the probe's capacity), ``upper``
    (every window crossed it: extrapolated below the lowest rate tried), ``none`` (no window)."""

    rate: float
    low: float
    high: float
    method: str
    windows: int = 0

    @property
    def rel_half_width(self) -> float:
        if self.rate <= 0 or not math.isfinite(self.high):
            return math.inf
        return (self.high - self.low) / 2 / self.rate


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@dataclass(frozen=True)
class _Rate:
    """The pooled windows of one offered rate and which side of the answer they put it on."""

    rate: float
    n: int
    over: int
    side: str  # "under", "over" or "unsure" (stats verdict of the pooled effective sample)
    windows: int

    @property
    def share(self) -> float:
        """The over-bound share, kept off 0 and 1 (a half request each way) for its logarithm."""
        return (self.over + 0.5) / (self.n + 1)


SIDE_CONFIDENCE = 0.8  # how sure the pooled windows of a rate must be of their side of the answer


def _pooled(points: Sequence[Point], quantile: float) -> list[_Rate]:
    """Each rate's windows pooled: a window that did not keep up (or was cut) puts it over; else
    the pooled counts, on the effective sample (divided by the largest inflation of the windows:
    a clustered tail is judged by its clusters), decide at ``SIDE_CONFIDENCE`` or leave it unsure."""
    by: dict[float, list[Point]] = {}
    for p in points:
        by.setdefault(p.rate, []).append(p)
    out = []
    for rate, ps in sorted(by.items()):
        n, over = sum(p.n for p in ps), sum(p.over for p in ps)
        if not all(p.usable for p in ps):
            side = "over"
        else:
            d = max(p.inflation for p in ps)
            word = stats.verdict_from_counts(math.ceil(over / d), max(1, int(n / d)), quantile, SIDE_CONFIDENCE)
            side = {stats.PASS: "under", stats.FAIL: "over"}.get(word, "unsure")
        out.append(_Rate(rate, n, over, side, len(ps)))
    return out


def bracket(points: Sequence[Point], quantile: float = stats.DEFAULT_QUANTILE) -> tuple[_Rate | None, _Rate | None]:
    """(floor, ceiling): the highest rate shown under the target share below the lowest rate shown
    over it, and that lowest one; None where there is none."""
    rates = _pooled(points, quantile)
    ceiling = next((r for r in rates if r.side == "over"), None)
    below = [r for r in rates if r.side == "under" and (ceiling is None or r.rate < ceiling.rate)]
    return (below[-1] if below else None), ceiling


def estimate(points: Sequence[Point], capacity: float, quantile: float = stats.DEFAULT_QUANTILE) -> RateEstimate:
    """The answer from every window so far. The point estimate follows the pooled shares
    themselves (unbiased at each rate): the lowest rate over the target share (or shown over it)
    and the highest under it below that, interpolated; the interval is the bracket of the rates
    whose side is shown (``bracket``): 0 or inf where none is."""
    if not points:
        return RateEstimate(0.0, 0.0, math.inf, "none")
    target = 1 - quantile
    points = quiet(points)
    rates = _pooled(points, quantile)
    high_pt = next((r for r in rates if r.side == "over" or r.over > target * r.n), None)
    low_pt = [r for r in rates if r.side != "over" and r.over <= target * r.n
              and (high_pt is None or r.rate < high_pt.rate)]
    floor, ceiling = bracket(points, quantile)
    if high_pt is None:  # nothing crossed: the answer lies above the highest rate tried
        top = rates[-1].rate
        method = "capacity" if top >= MAX_OVER_CAPACITY * capacity * 0.999 else "lower"
        return RateEstimate(top, floor.rate if floor else 0.0, math.inf, method, len(points))
    if not low_pt:  # everything crossed: extrapolated below the lowest rate
        share = min(high_pt.share, 1 - 1e-3)
        rate = high_pt.rate * math.exp(min(0.0, _logit(target) - _logit(share)) / SLOPE)
        return RateEstimate(rate, 0.0, ceiling.rate if ceiling else math.inf, "upper", len(points))
    low = low_pt[-1]
    lo, hi = _logit(low.share), _logit(max(high_pt.share, target))
    if high_pt.over <= target * high_pt.n:
        # over only because a window there did not keep up (or was cut): its share says nothing of
        # where the answer lies under it (a backlog that had not yet reached the bound): the middle
        frac = 0.5
    else:
        frac = 0.5 if hi <= lo else min(1.0, max(0.0, (_logit(target) - lo) / (hi - lo)))
    rate = math.exp(math.log(low.rate) + frac * (math.log(high_pt.rate) - math.log(low.rate)))
    interval_low = floor.rate if floor is not None and floor.rate <= rate else 0.0
    interval_high = ceiling.rate if ceiling is not None and ceiling.rate >= rate else math.inf
    return RateEstimate(rate, interval_low, interval_high, "bracket", len(points))


MAX_REPEATS = 3  # windows pooled at one unsure rate before the search moves on


def next_rate(points: Sequence[Point], current: RateEstimate, capacity: float,
              quantile: float = stats.DEFAULT_QUANTILE) -> float | None:
    """Where to measure next: the last rate again while its pooled windows are unsure of their
    side (``MAX_REPEATS`` at most); inside the bracket, regula falsi with the Illinois rule; a step
    up while nothing is over (None past ``MAX_OVER_CAPACITY`` times the capacity); a step down while
    nothing is under (None at ``MIN_RATE_SHARE`` of the capacity)."""
    last = next(r for r in _pooled(points, quantile) if r.rate == points[-1].rate)
    if last.side == "unsure" and last.windows < MAX_REPEATS:
        return last.rate
    floor_rate = MIN_RATE_SHARE * capacity
    if current.method == "bracket":
        sides = [(not p.usable or p.share > 1 - quantile) for p in points[-2:]]
        if (len(sides) == 2 and sides[0] == sides[1] and points[-1].rate != points[-2].rate
                and current.low > 0 and math.isfinite(current.high)):
            return math.sqrt(current.low * current.high)  # the same end moved twice: halve the bracket instead
        return current.rate
    if current.method == "upper":
        lowest = min(p.rate for p in points)
        if lowest <= floor_rate * 1.01:
            return None
        return max(floor_rate, min(max(current.rate, lowest * STEP_DOWN ** 2), lowest * STEP_DOWN))
    if current.method == "capacity":
        return None
    return min(max(p.rate for p in points) * STEP_UP, MAX_OVER_CAPACITY * capacity)


@dataclass(frozen=True)
class EstimateOutcome:
    estimate: RateEstimate
    windows: list  # what ``run`` returned (WindowResult; a deployment's MixWindow), in order
    stopped: str  # "precise", "windows", "below incumbent", "capacity", "floor" (measure: "replay")
    replay_refuted: bool = False  # a calm window failed under the replay's figure (tuner.bench.measure)


RunWindow = Callable[[float], WindowResult]


def estimate_rate(run: RunWindow, capacity: float, max_windows: int, quantile: float = stats.DEFAULT_QUANTILE,
                  start_rate: float | None = None,
                  incumbent: float | None = None, rel_tol: float = 0.1, min_windows: int = 2,
                  say: Callable[[str], None] = lambda _m: None, point: Callable[[object], Point] = point_of,
                  unit: str = "req/s", prior: Sequence = ()) -> EstimateOutcome:
    """Measure windows until the answer is within ``rel_tol`` (after ``min_windows``), at most
    ``max_windows`` (see the module's docstring). ``point`` reads a window's evidence (a deployment's
    windows of every model at one load factor: tuner.mix.loadfactor.mix_point), ``unit`` names the rate.
    ``prior``: windows already run (a replay's failed check, ``tuner.bench.measure``): they count as
    evidence, and the first window goes where they say (``next_rate``), not to the incumbent or 0.8
    of the capacity."""
    windows: list = list(prior)
    points: list[Point] = [point(w) for w in prior]
    compare_first = (not points and start_rate is None and incumbent is not None
                     and 0 < incumbent < capacity * MAX_OVER_CAPACITY)
    rate = start_rate if start_rate else incumbent if compare_first else 0.8 * capacity
    current = RateEstimate(0.0, 0.0, math.inf, "none")
    if points and not start_rate:
        current = estimate(points, capacity, quantile)
        following = next_rate(points, current, capacity, quantile)
        if following is None:  # the prior already says all the search could (a failure at the floor)
            return EstimateOutcome(current, windows, "capacity" if current.method == "capacity" else "floor")
        rate = following
    rate = max(rate, MIN_RATE_SHARE * capacity)
    stopped = "windows"
    for step in range(max_windows):
        label = "at the incumbent's rate" if compare_first and step == 0 else f"window {step + 1}/{max_windows}"
        say(f"{label}: {unit} {rate:.3g}" if unit != "req/s" else f"{label}: {rate:.1f} req/s")
        window = run(rate)
        windows.append(window)
        points.append(point(window))
        current = estimate(points, capacity, quantile)
        if compare_first and step == 0 and window.verdict == stats.FAIL:
            stopped = "below incumbent"
            break
        if step + 1 >= min_windows and current.method == "bracket" and current.rel_half_width <= rel_tol:
            stopped = "precise"
            break
        following = next_rate(points, current, capacity, quantile)
        if following is None:
            stopped = "capacity" if current.method == "capacity" else "floor"
            break
        rate = following
    return EstimateOutcome(current, windows, stopped)
