"""The discrete-event core: a plan's workers serving one shared FIFO queue in simulated time.

Workers claim requests in index order as they become free, exactly as the real workers do with
the shared block (``tuner.bench.protocol``): a free worker claims the next request at once and,
in server mode, waits for its scheduled arrival; in offline mode it serves back to back and
stops at the first claim after the window's end. A worker runs at the speed interference leaves
it (``Speeds``: piecewise constant in time; a request keeps the speed it started with: requests
are milliseconds, episodes seconds). The loop is plain Python over a heap of worker-free times
(about 1 us per request); everything around it is numpy.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Speeds:
    """Each worker's speed (1 = undisturbed) from ``times[k]`` to ``times[k + 1]``."""

    times: list[float]  # change points, ascending; the first one is the window's start
    rows: list[list[float]]  # speeds per worker, one row per change point


@dataclass(frozen=True)
class Served:
    """What the workers did with a window's requests: claim, start and completion times and the
    worker of each request served (a prefix of the schedule; the rest was never claimed)."""

    claimed: np.ndarray
    started: np.ndarray
    completed: np.ndarray
    worker: np.ndarray
    work: np.ndarray  # seconds of full-speed work of each request served (its CPU time per thread)
    claims: int  # requests claimed, those claimed after an offline window's end included


def serve_server(arrivals: np.ndarray, work: list[list[float]], stall: list[list[float]], group: list[int],
                 ready_s: float, speeds: Speeds) -> Served:
    """Open loop: request i arrives at ``arrivals[i]`` and needs ``work[group[w]][i]`` seconds on
    worker w at full speed, plus ``stall[group[w]][i]`` seconds of hiccups whatever the speed."""
    n_workers = len(group)
    heap = [(ready_s, w) for w in range(n_workers)]
    times, rows = speeds.times, speeds.rows
    k, nxt = 0, times[1] if len(times) > 1 else math.inf
    sp = rows[0]
    claimed, started, completed, who, done = [], [], [], [], []
    for i, a in enumerate(arrivals.tolist()):
        f, wk = heap[0]
        s = a if a > f else f
        if s >= nxt:
            while s >= nxt:
                k += 1
                nxt = times[k + 1] if k + 1 < len(times) else math.inf
            sp = rows[k]
        g = group[wk]
        wi = work[g][i]
        c = s + wi / sp[wk] + stall[g][i]
        heapq.heapreplace(heap, (c, wk))
        done.append(wi)
        claimed.append(f)
        started.append(s)
        completed.append(c)
        who.append(wk)
    n = len(claimed)
    return Served(np.array(claimed), np.array(started), np.array(completed), np.array(who, dtype=np.int16),
                  np.array(done), n)


def serve_offline(more_work: Callable[[int], tuple[list[list[float]], list[list[float]]]], group: list[int],
                  ready_s: float, end_s: float, speeds: Speeds) -> Served:
    """Closed loop until ``end_s``: each worker serves back to back and stops at its first claim at
    or after the end (that claim is counted, as the real worker's is). ``more_work(n)`` gives the
    work and the stalls of n further requests per group."""
    heap = [(ready_s, w) for w in range(len(group))]
    heapq.heapify(heap)
    times, rows = speeds.times, speeds.rows
    k, nxt = 0, times[1] if len(times) > 1 else math.inf
    sp = rows[0]
    work, stall = more_work(1024)
    started, completed, who, done = [], [], [], []
    claims = i = 0
    while heap:
        f, wk = heap[0]
        claims += 1
        if f >= end_s:
            heapq.heappop(heap)
            continue
        if f >= nxt:
            while f >= nxt:
                k += 1
                nxt = times[k + 1] if k + 1 < len(times) else math.inf
            sp = rows[k]
        if i >= len(work[0]):
            extra, extra_stall = more_work(len(work[0]))
            work = [w + e for w, e in zip(work, extra, strict=True)]
            stall = [w + e for w, e in zip(stall, extra_stall, strict=True)]
        g = group[wk]
        wi = work[g][i]
        c = f + wi / sp[wk] + stall[g][i]
        heapq.heapreplace(heap, (c, wk))
        done.append(wi)
        started.append(f)
        completed.append(c)
        who.append(wk)
        i += 1
    start = np.array(started)
    return Served(start, start, np.array(completed), np.array(who, dtype=np.int16), np.array(done), claims)


def truncate(served: Served, stop_s: float) -> Served:
    """The requests claimed up to ``stop_s`` (a worker claiming later sees the abort and stops)."""
    m = int(np.searchsorted(served.claimed, stop_s, side="right"))
    return Served(served.claimed[:m], served.started[:m], served.completed[:m], served.worker[:m],
                  served.work[:m], m)


def over_bound_stop(served: Served, arrivals: np.ndarray, bound_s: float, allowed: int) -> float | None:
    """When the early stop fires: the completion of the (``allowed`` + 1)-th request over the bound
    (the worker that completes it sets the abort word), or None."""
    late = served.completed[served.completed - arrivals[: served.claims] > bound_s]
    if late.size <= allowed:
        return None
    return float(np.partition(late, allowed)[allowed])


def backlog_stop(served: Served, arrivals: np.ndarray, limit_s: float) -> float | None:
    """When a worker first picked a request up later than ``limit_s`` after its arrival, or None."""
    late = np.flatnonzero(served.started - arrivals[: served.claims] > limit_s)
    return float(served.claimed[late[0]]) if late.size else None
