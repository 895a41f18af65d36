"""Load scenarios and per-window statistics.

- ``server``: open-loop Poisson arrivals at an offered rate. The whole arrival schedule is
  drawn up front and written to shared memory; idle workers claim requests in arrival order
  (one shared FIFO queue). Latency runs from each request's SCHEDULED arrival to its
  completion, so a late pick-up counts against the system (no coordinated omission).
- ``offline``: every worker runs back to back for the window (closed loop, saturation).

A server window passes when P99 <= bound and the system kept up: achieved throughput
>= 99% of offered, with the offered span measured from the first arrival to the last
arrival plus one unloaded service time (so a short window is not failed for the last
request's own service time). A window stops early once more than 1% of its requests are
over the bound (P99 can no longer pass), or, with no bound, once a request waits longer
than the backlog limit.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from tuner.launcher import Launcher
from tuner.worker import (
    ABORT,
    ABORT_BACKLOG,
    ABORT_OVER_BOUND,
    MODE,
    MODE_OFFLINE,
    MODE_SERVER,
    N_REQUESTS,
    NEXT,
    OVER_ALLOWED,
    OVER_BOUND,
)

KEEP_UP_RATIO = 0.99
START_DELAY_S = 0.02  # lets every worker receive "window" before the first arrival


@dataclass(frozen=True)
class WindowResult:
    scenario: str
    offered_rate: float  # requests/s asked for (server) or 0 (offline)
    achieved_rate: float  # completed requests / elapsed
    requests: int  # requests in the window
    completed: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_service_ms: float  # time inside session.run, without queueing
    duration_s: float
    kept_up: bool
    passed: bool
    reason: str  # why it failed, "" when it passed
    worker_cpu: tuple[float, ...]  # CPU use of each worker in cores (1.0 = one core busy)
    harness_cpu: float  # CPU use of the tuner process itself in cores
    service_p50_ms: float = math.nan  # time inside session.run: the same work every request, so its
    service_p99_ms: float = math.nan  # spread is interference (a noisy machine), not queueing

    def to_dict(self) -> dict:
        d = asdict(self)
        d["worker_cpu"] = list(self.worker_cpu)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> WindowResult:
        return cls(**{**d, "worker_cpu": tuple(d["worker_cpu"])})


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


def _reset(fleet: Launcher, count: int, mode: int, over_allowed: int) -> None:
    b = fleet.buffers
    b.completed[:count] = np.nan
    b.started[:count] = np.nan
    b.worker[:count] = -1
    c = b.control
    c[NEXT] = 0
    c[N_REQUESTS] = count
    c[OVER_BOUND] = 0
    c[OVER_ALLOWED] = over_allowed
    c[MODE] = mode
    c[ABORT] = 0


def run_server_window(
    fleet: Launcher,
    offered_rate: float,
    duration_s: float,
    min_requests: int,
    bound_s: float | None,
    unloaded_service_s: float,
    rng: np.random.Generator,
    backlog_limit_s: float | None = None,
    start_time: float | None = None,
) -> WindowResult:
    """One open-loop window at ``offered_rate``. ``start_time`` (monotonic clock) lets a caller
    start the schedule in the past: the lateness shows in the latency."""
    # at least min_requests (P99 needs ~1000), but never longer than 3 windows
    count = max(min_requests, math.ceil(offered_rate * duration_s))
    count = min(count, math.ceil(offered_rate * duration_s * 3), fleet.max_requests)
    count = max(count, 2)
    offsets = poisson_schedule(offered_rate, count, rng)
    over_allowed = count // 100  # more than 1% over the bound => P99 over the bound
    _reset(fleet, count, MODE_SERVER, over_allowed)
    if bound_s is None and backlog_limit_s is None:
        backlog_limit_s = max(1.0, 50 * unloaded_service_s)
    start = time.monotonic() + START_DELAY_S if start_time is None else start_time
    fleet.buffers.scheduled[:count] = start + offsets
    cpu_before, own_before, wall_before = fleet.cpu_seconds(), _own_cpu(), time.monotonic()
    schedule_span = float(offsets[-1])
    # generous: the schedule, then three times the whole window's service work on one worker
    grace = min(5.0, fleet.hang_grace_s)
    timeout = START_DELAY_S + schedule_span + grace + 3 * max(unloaded_service_s, 0.001) * count / max(
        1, len(fleet.pids))
    fleet.run_window(start + schedule_span + 3600, bound_s, backlog_limit_s, timeout_s=timeout)
    wall = time.monotonic() - wall_before
    return _summarise(fleet, "server", offered_rate, count, start, cpu_before, own_before, wall,
                      bound_s, unloaded_service_s)


def run_offline_window(fleet: Launcher, duration_s: float, bound_s: float | None = None) -> WindowResult:
    """Every worker closed-loop for ``duration_s``."""
    count = fleet.max_requests
    _reset(fleet, min(count, fleet.max_requests), MODE_OFFLINE, count)
    fleet.buffers.scheduled[:count] = np.nan
    cpu_before, own_before, wall_before = fleet.cpu_seconds(), _own_cpu(), time.monotonic()
    start = time.monotonic()
    fleet.run_window(start + duration_s, None, None, timeout_s=duration_s + fleet.hang_grace_s)
    wall = time.monotonic() - wall_before
    return _summarise(fleet, "offline", 0.0, None, start, cpu_before, own_before, wall, bound_s, 0.0)


def _own_cpu() -> float:
    return time.process_time()


def _summarise(fleet: Launcher, scenario: str, offered_rate: float, count: int | None, start: float,
               cpu_before: list[float], own_before: float, wall: float, bound_s: float | None,
               unloaded_service_s: float) -> WindowResult:
    b = fleet.buffers
    claimed = int(b.control[NEXT]) if count is None else count
    claimed = min(claimed, fleet.max_requests)
    completed_at = b.completed[:claimed].copy()
    scheduled = b.scheduled[:claimed].copy()
    started = b.started[:claimed].copy()
    abort = int(b.control[ABORT])
    done = ~np.isnan(completed_at)
    if count is None:  # offline: only what completed is part of the window
        scheduled, completed_at, started, done = scheduled[done], completed_at[done], started[done], done[done]
        claimed = int(done.size)
    n_done = int(done.sum())
    latencies = np.where(done, completed_at - scheduled, np.inf)
    service = (completed_at - started)[done]
    p50, p90, p99, p999 = percentiles_ms(latencies)
    if n_done:
        first = float(np.nanmin(scheduled))
        last_done = float(np.nanmax(completed_at))
        elapsed = max(last_done - first, 1e-9)
        achieved = n_done / elapsed
    else:
        elapsed, achieved = wall, 0.0
    worker_cpu = tuple(
        (after - before) / wall if wall > 0 else 0.0
        for before, after in zip(cpu_before, fleet.cpu_seconds(), strict=True)
    )
    harness_cpu = (_own_cpu() - own_before) / wall if wall > 0 else 0.0
    reason = ""
    if scenario == "server":
        span = float(np.nanmax(scheduled) - np.nanmin(scheduled)) + max(unloaded_service_s, 0.0)
        effective_offered = (claimed / span) if span > 0 else offered_rate
        kept_up = n_done == claimed and abort not in (ABORT_BACKLOG,) and achieved >= KEEP_UP_RATIO * min(
            effective_offered, offered_rate)
        if abort == ABORT_BACKLOG:
            reason = "did not keep up (backlog grew past the limit)"
        elif not kept_up and abort != ABORT_OVER_BOUND:
            reason = f"did not keep up (achieved {achieved:.1f} of {offered_rate:.1f} req/s)"
        elif bound_s is not None and (abort == ABORT_OVER_BOUND or p99 > bound_s * 1000):
            reason = f"P99 {p99:.2f} ms over the {bound_s * 1000:g} ms bound" if math.isfinite(p99) else (
                f"over 1% of requests over the {bound_s * 1000:g} ms bound (stopped early)")
            if abort == ABORT_OVER_BOUND and not kept_up:
                reason += f"; achieved {achieved:.1f} of {offered_rate:.1f} req/s"
    else:
        kept_up = True
        if bound_s is not None and p99 > bound_s * 1000:
            reason = f"P99 {p99:.2f} ms over the {bound_s * 1000:g} ms bound"
    return WindowResult(
        scenario=scenario, offered_rate=float(offered_rate), achieved_rate=float(achieved),
        requests=int(claimed), completed=n_done, p50_ms=p50, p90_ms=p90, p99_ms=p99, p999_ms=p999,
        mean_service_ms=float(service.mean() * 1000) if service.size else math.inf,
        duration_s=float(elapsed), kept_up=bool(kept_up), passed=not reason, reason=reason,
        worker_cpu=worker_cpu, harness_cpu=float(harness_cpu),
        service_p50_ms=float(np.percentile(service, 50) * 1000) if service.size else math.nan,
        service_p99_ms=float(np.percentile(service, 99) * 1000) if service.size else math.nan,
    )
