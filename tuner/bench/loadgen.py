"""Load scenarios and per-window statistics.

- ``server``: open-loop Poisson arrivals at an offered rate. The whole arrival schedule is
  drawn up front and written to shared memory; idle workers claim requests in arrival order
  (one shared FIFO queue). Latency runs from each request's SCHEDULED arrival to its
  completion, so a late pick-up counts against the system (no coordinated omission).
- ``offline``: every worker runs back to back for the window (closed loop, saturation).

A server window's verdict (``tuner.bench.stats``): ``pass`` when the upper confidence bound of its
P99 (exact, from order statistics) is <= the bound and the system kept up (achieved >= 99% of
offered, the offered span measured from the first arrival to the last plus one unloaded
service time); ``fail`` when the P99's lower bound is over the bound or it did not keep up;
else ``undecided``, and an undecided window is extended (more requests at the same rate,
pooled with the first) up to a cap. The window is sized by the samples a verdict needs. It
stops early once its failure is proven (the over-bound count exceeds what a fail verdict
allows at the planned size), or, with no bound, once a request waits longer than the
backlog limit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tuner.bench import interference, stats
from tuner.bench.fleet import Fleet
from tuner.bench.protocol import Abort, Mode, Window
from tuner.results.records import WindowInterference, WindowResult

KEEP_UP_RATIO = 0.99
START_DELAY_S = 0.02  # lets every worker receive its Window message before the first arrival


@dataclass(frozen=True)
class VerdictSettings:
    """How sure a window's verdict must be, and how far an undecided window may grow."""

    confidence: float = stats.DEFAULT_CONFIDENCE
    quantile: float = stats.DEFAULT_QUANTILE
    max_extensions: int = 2
    max_growth: float = 8.0  # an extended window holds at most this many times its first size
    dependence: str = stats.CLUSTERS  # how a pass accounts for correlated latencies (stats.inflation)

    @property
    def looks(self) -> int:
        return 1 + self.max_extensions


def poisson_schedule(rate: float, count: int, rng: np.random.Generator) -> np.ndarray:
    """Arrival offsets (seconds from the window start) of a Poisson process at ``rate``/s."""
    gaps = rng.exponential(1.0 / rate, size=count)
    offsets = np.cumsum(gaps)
    return offsets - offsets[0]


def percentiles_ms(latencies_s: np.ndarray) -> tuple[float, float, float, float]:
    """P50/P90/P99/P99.9 in ms; requests that never completed count as infinitely late."""
    if latencies_s.size == 0:
        return (math.inf,) * 4
    values = np.percentile(latencies_s, [50, 90, 99, 99.9], method="higher") * 1000.0
    return tuple(float(v) for v in values)


@dataclass
class Segment:
    """One run of the workers over a schedule in shared memory: its raw arrays and CPU use."""

    scheduled: np.ndarray
    started: np.ndarray
    completed: np.ndarray
    abort: Abort
    wall_s: float
    worker_cpu_s: list[float]
    harness_cpu_s: float
    before: interference.Snapshot
    after: interference.Snapshot
    worker: np.ndarray | None = None  # the worker that served each request (-1: none)


def _run_segment(fleet: Fleet, count: int | None, run: Callable[[], None]) -> Segment:
    snap_before = fleet.snapshot()
    cpu_before, own_before, wall_before = fleet.cpu_seconds(), fleet.own_cpu_seconds(), fleet.clock()
    run()
    wall = fleet.clock() - wall_before
    cpu_after, own_after = fleet.cpu_seconds(), fleet.own_cpu_seconds()
    snap_after = fleet.snapshot()
    b = fleet.buffers
    claimed = min(b.claimed() if count is None else count, fleet.max_requests)
    return Segment(b.scheduled[:claimed].copy(), b.started[:claimed].copy(), b.completed[:claimed].copy(),
                   b.abort_reason(), wall, [a - c for c, a in zip(cpu_before, cpu_after, strict=True)],
                   own_after - own_before, snap_before, snap_after, b.worker[:claimed].copy())


def _window_interference(fleet: Fleet, segments: list[Segment], own_cpu_s: float,
                         wall_s: float) -> WindowInterference:
    """Interference on the trial's CPUs; ``own_cpu_s`` (workers and harness) is not foreign."""
    cpus = sorted({c for w in fleet.plan.workers for c in w.cpus}) or sorted(segments[0].before.cpu)
    return WindowInterference.from_dict(
        interference.window_interference(segments[0].before, segments[-1].after, cpus, wall_s, own_cpu_s))


def _server_segment(fleet: Fleet, offered_rate: float, count: int, over_allowed: int, start: float,
                    bound_s: float | None, backlog_limit_s: float | None, unloaded_service_s: float,
                    rng: np.random.Generator, lead: int = 0) -> Segment:
    """``count`` requests at ``offered_rate`` from ``start``, after ``lead`` more at the same rate
    whose only job is to bring the queue to its steady state: they are served, then left out of
    the segment (unless the segment was stopped: its failure stands, a queue grown from empty
    having fewer late requests than a settled one). The early stop counts them too (likewise)."""
    lead = max(0, min(lead, fleet.max_requests - count))
    total = lead + count
    offsets = poisson_schedule(offered_rate, total, rng)
    fleet.buffers.start_window(total, Mode.SERVER, over_allowed)
    fleet.buffers.scheduled[:total] = start + offsets
    schedule_span = float(offsets[-1])
    # generous: the schedule, then three times the whole segment's service work on one worker
    grace = min(5.0, fleet.hang_grace_s)
    timeout = max(0.0, start - fleet.clock()) + schedule_span + grace + 3 * max(
        unloaded_service_s, 0.001) * total / max(1, len(fleet.pids))
    window = Window(start + schedule_span + 3600, bound_s, backlog_limit_s)
    segment = _run_segment(fleet, total, lambda: fleet.run_window(window, timeout_s=timeout))
    if lead and segment.abort == Abort.NONE:
        segment.scheduled, segment.started, segment.completed = (
            segment.scheduled[lead:], segment.started[lead:], segment.completed[lead:])
        segment.worker = segment.worker[lead:] if segment.worker is not None else None
    return segment


SETTLE_RELAXATIONS = 1.0  # a window's lead, in relaxation times of its queue (``settle_s``)


def settle_s(offered_rate: float, capacity: float, longest_s: float) -> float:
    """How long a queue started empty takes to settle at ``offered_rate``: ``SETTLE_RELAXATIONS``
    times its relaxation time 1 / (mu (1 - sqrt(rho))^2) (a single-server queue's, the slowest to
    settle; mu the capacity, rho the load), at most ``longest_s`` (at and over the capacity: it never
    settles). A window short against it reports the early, shorter queue: near the capacity of a
    2-core VM at a loose bound (SqueezeNet, P99 <= 100 ms), 2-s windows from empty passed at rates
    whose 20-s runs failed (experiments/README.md, the reference harness)."""
    if capacity <= 0 or offered_rate <= 0:
        return 0.0
    rho = offered_rate / capacity
    if rho >= 1:
        return longest_s
    return min(longest_s, SETTLE_RELAXATIONS / (capacity * (1 - math.sqrt(rho)) ** 2))


def window_requests(offered_rate: float, duration_s: float, min_requests: int, max_requests: int,
                    verdicts: VerdictSettings | None) -> int:
    """Requests in a server window's first segment: the duration at the rate, at least
    ``min_requests`` and, with a bound to judge (``verdicts``), at least what a pass verdict
    needs with no request over the bound."""
    need = stats.samples_needed(0.0, verdicts.quantile, verdicts.confidence, verdicts.looks) if verdicts else 0
    return max(2, min(max(min_requests, need, math.ceil(offered_rate * duration_s)), max_requests))


def run_server_window(
    fleet: Fleet,
    offered_rate: float,
    duration_s: float,
    min_requests: int,
    bound_s: float | None,
    unloaded_service_s: float,
    rng: np.random.Generator,
    backlog_limit_s: float | None = None,
    start_time: float | None = None,
    verdicts: VerdictSettings | None = None,
    lead_s: float = 0.0,
) -> WindowResult:
    """One open-loop window at ``offered_rate``, extended while its verdict is undecided.
    ``start_time`` (the fleet's clock) lets a caller start the schedule in the past: the lateness
    shows in the latency. ``lead_s`` seconds of requests at the rate go first and are not counted
    (``settle_s``: a queue started empty needs time to reach its steady state)."""
    vs = verdicts or VerdictSettings()
    count = window_requests(offered_rate, duration_s, min_requests, fleet.max_requests,
                            vs if bound_s is not None else None)
    max_n = int(min(fleet.max_requests, count * vs.max_growth))
    if bound_s is None and backlog_limit_s is None:
        backlog_limit_s = max(1.0, 50 * unloaded_service_s)
    start = fleet.clock() + START_DELAY_S if start_time is None else start_time

    def allowance(total: int, over_so_far: int) -> int:
        if bound_s is None:
            return total
        return stats.fail_allowance(total, vs.quantile, vs.confidence, vs.looks) - over_so_far

    segments = [_server_segment(fleet, offered_rate, count, allowance(count, 0), start, bound_s,
                                backlog_limit_s, unloaded_service_s, rng, lead=math.ceil(offered_rate * lead_s))]
    if bound_s is not None and keep_up(segments, offered_rate, unloaded_service_s)[0]:
        def more(extra: int) -> np.ndarray:
            done = sum(s.scheduled.size for s in segments)
            over = int(np.count_nonzero(~(latencies(segments) <= bound_s)))
            gap = float(rng.exponential(1.0 / offered_rate))
            begin = max(float(np.nanmax(segments[-1].scheduled)) + gap, fleet.clock() + START_DELAY_S)
            segments.append(_server_segment(fleet, offered_rate, extra, allowance(done + extra, over), begin,
                                            bound_s, backlog_limit_s, unloaded_service_s, rng))
            return latencies(segments[-1:])

        stats.decide(latencies(segments), more, bound_s, vs.max_extensions, max_n, vs.quantile, vs.confidence,
                     vs.dependence)
    return summarise(segments, "server", offered_rate, bound_s, unloaded_service_s, vs, fleet)


def run_offline_window(fleet: Fleet, duration_s: float, bound_s: float | None = None,
                       verdicts: VerdictSettings | None = None) -> WindowResult:
    """Every worker closed-loop for ``duration_s``."""
    count = fleet.max_requests
    fleet.buffers.start_window(count, Mode.OFFLINE, count)
    fleet.buffers.scheduled[:count] = np.nan
    end = fleet.clock() + duration_s
    window = Window(end, None, None)
    segment = _run_segment(fleet, None, lambda: fleet.run_window(window, timeout_s=duration_s + fleet.hang_grace_s))
    done = ~np.isnan(segment.completed)  # offline: only what completed is part of the window
    segment.scheduled, segment.started, segment.completed = (
        segment.scheduled[done], segment.started[done], segment.completed[done])
    segment.worker = segment.worker[done] if segment.worker is not None else None
    return summarise([segment], "offline", 0.0, bound_s, 0.0, verdicts or VerdictSettings(), fleet)


def latencies(segments: list[Segment]) -> np.ndarray:
    """Scheduled arrival to completion; a request never completed is infinitely late."""
    return np.concatenate([np.where(np.isnan(s.completed), np.inf, s.completed - s.scheduled)
                           for s in segments])


def _drain_s(segment: Segment) -> float:
    """How long a settled queue takes to drain after its last arrival: the P99 latency of the
    segment's first half. A queue that holds keeps its latency, so its last completion comes about
    that long after its last arrival; one that grows ends far later and fails keeping up."""
    half = segment.scheduled.size // 2
    first = segment.completed[:half] - segment.scheduled[:half]
    first = first[~np.isnan(first)]
    return float(np.quantile(first, 0.99)) if first.size else 0.0


def keep_up(segments: list[Segment], offered_rate: float, unloaded_service_s: float) -> tuple[bool, float]:
    """(kept up, achieved rate): the requests completed by the end of each segment's span, over the
    spans (gaps between extension segments do not count), against the offered rate. A segment's
    span ends with a settled queue's drain after its last arrival (its first half's P99 latency, at
    least the unloaded service time), so a queue that holds a steady latency long against the
    window still keeps up; one that grows leaves its backlog undone at the span's end.

    Completed by the span's end, not over the span to the last completion (before 2026-12-07): one
    stalled request among the last ones moved the end by its stall, and a calm window of 64 one-core
    workers with 0.3% of its requests over the bound failed keeping up at 97% (simulated; a 20-ms
    stall is 1% of a 2-s window)."""
    claimed = sum(s.scheduled.size for s in segments)
    n_done = sum(int(np.count_nonzero(~np.isnan(s.completed))) for s in segments)
    done_in_span, span = 0, 0.0
    for s in segments:
        if not s.scheduled.size:
            continue
        first, last = float(np.nanmin(s.scheduled)), float(np.nanmax(s.scheduled))
        end = last + max(unloaded_service_s, _drain_s(s))
        done_in_span += int(np.count_nonzero(s.completed <= end))
        span += end - first
    achieved = done_in_span / span if span > 0 else 0.0
    effective_offered = claimed / span if span > 0 else offered_rate
    backlog = any(s.abort == Abort.BACKLOG for s in segments)
    kept = n_done == claimed and not backlog and achieved >= KEEP_UP_RATIO * min(effective_offered, offered_rate)
    return kept, achieved


def window_verdict(segments: list[Segment], scenario: str, offered_rate: float, achieved: float, kept_up: bool,
                   bound_s: float | None, vs: VerdictSettings, looks: int) -> tuple[stats.Verdict | None, str]:
    """The window's statistical verdict (None without a bound) and why it did not pass."""
    verdict = (stats.judge(latencies(segments), bound_s, vs.quantile, vs.confidence, looks, vs.dependence)
               if bound_s else None)
    aborted = any(s.abort == Abort.OVER_BOUND for s in segments)
    if any(s.abort == Abort.BACKLOG for s in segments):
        return verdict, "did not keep up (backlog grew past the limit)"
    if not kept_up and not aborted:
        return verdict, f"did not keep up (achieved {achieved:.1f} of {offered_rate:.1f} req/s)"
    if verdict is None or verdict.verdict == stats.PASS:
        return verdict, ""
    lo, hi = (v * 1000 for v in verdict.ci_s)
    bound_ms = bound_s * 1000
    pct = round(vs.confidence * 100)
    if verdict.verdict == stats.FAIL:
        reason = (f"P99 over the {bound_ms:g} ms bound ({verdict.over} of {verdict.n} requests over; "
                  f"{pct}% lower bound {lo:.2f} ms)" + (", stopped early" if aborted else ""))
        if aborted and not kept_up and scenario == "server":
            reason += f"; achieved {achieved:.1f} of {offered_rate:.1f} req/s"
        return verdict, reason
    return verdict, (f"P99 undecided after {verdict.n} requests: its {pct}% bounds {lo:.2f}-{hi:.2f} ms "
                     f"straddle the {bound_ms:g} ms bound")


def summarise(segments: list[Segment], scenario: str, offered_rate: float, bound_s: float | None,
              unloaded_service_s: float, vs: VerdictSettings, fleet: Fleet) -> WindowResult:
    """The window's result from its segments' raw arrays: percentiles, keep-up, verdict and its
    reason, CPU use; ``fleet`` (its plan's CPUs) says where interference was read."""
    latencies_s = latencies(segments)
    service = np.concatenate([s.completed - s.started for s in segments])
    service = service[~np.isnan(service)]
    claimed = int(latencies_s.size)
    n_done = int(np.count_nonzero(np.isfinite(latencies_s)))
    p50, p90, p99, p999 = percentiles_ms(latencies_s)
    wall = sum(s.wall_s for s in segments)
    if scenario == "server":
        kept_up, achieved = keep_up(segments, offered_rate, unloaded_service_s)
        looks = vs.looks
    else:
        kept_up, looks = True, 1
        s = segments[0]
        achieved = n_done / max(float(np.max(s.completed) - np.min(s.scheduled)), 1e-9) if n_done else 0.0
    verdict, reason = window_verdict(segments, scenario, offered_rate, achieved, kept_up, bound_s, vs, looks)
    if verdict is not None:
        word = stats.FAIL if reason and verdict.verdict == stats.PASS else verdict.verdict
    else:
        word = stats.FAIL if reason else stats.PASS
    cpu = [sum(c) for c in zip(*(s.worker_cpu_s for s in segments), strict=True)]
    elapsed = sum(float(np.nanmax(s.completed) - np.nanmin(s.scheduled)) for s in segments
                  if np.any(~np.isnan(s.completed))) or wall
    return WindowResult(
        scenario=scenario, offered_rate=float(offered_rate), achieved_rate=float(achieved),
        requests=claimed, completed=n_done, p50_ms=p50, p90_ms=p90, p99_ms=p99, p999_ms=p999,
        mean_service_ms=float(service.mean() * 1000) if service.size else math.inf,
        duration_s=float(elapsed), kept_up=bool(kept_up), passed=word == stats.PASS, reason=reason,
        worker_cpu=tuple(c / wall if wall > 0 else 0.0 for c in cpu),
        harness_cpu=float(sum(s.harness_cpu_s for s in segments) / wall) if wall > 0 else 0.0,
        service_p50_ms=float(np.percentile(service, 50) * 1000) if service.size else math.nan,
        service_p99_ms=float(np.percentile(service, 99) * 1000) if service.size else math.nan,
        verdict=word,
        p99_ci_ms=(max(0.0, verdict.ci_s[0] * 1000), verdict.ci_s[1] * 1000) if verdict else (math.nan, math.nan),
        confidence=vs.confidence, over_bound=verdict.over if verdict else 0, extensions=len(segments) - 1,
        service_cv=float(service.std() / service.mean()) if service.size > 1 and service.mean() > 0 else math.nan,
        interference=_window_interference(fleet, segments, sum(cpu) + sum(s.harness_cpu_s for s in segments), wall),
        inflation=float(verdict.dependence) if verdict else 1.0,
        stopped_early=any(s.abort == Abort.OVER_BOUND for s in segments),
        calm_service=calm_service(fleet, segments),
    )


def calm_service(fleet: Fleet, segments: list[Segment]) -> tuple:
    """Per worker, the service times (s) of the requests it served in these segments when its own
    CPUs were calm (``interference.worker_calm``), else None: what ``tuner.bench.replay`` replays."""
    n = len(fleet.plan.workers)
    if any(s.worker is None for s in segments) or not n:
        return ()
    pinned = bool(fleet.plan.params.pin)
    every = sorted(segments[0].before.cpu)
    out = []
    for w, spec in enumerate(fleet.plan.workers):
        cpus = list(spec.cpus) if pinned and spec.cpus else every
        mine = [w] if pinned and spec.cpus else list(range(n))  # an unpinned worker shares every CPU
        calm = all(interference.worker_calm(s.before, s.after, cpus, s.wall_s,
                                            sum(s.worker_cpu_s[i] for i in mine) + s.harness_cpu_s)
                   for s in segments)
        if not calm:
            out.append(None)
            continue
        served = [s.worker == w for s in segments]
        values = np.concatenate([s.completed[m] - s.started[m] for s, m in zip(segments, served, strict=True)])
        out.append(values[np.isfinite(values)])
    return tuple(out)
