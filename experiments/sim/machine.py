"""The simulated machine: one clock, one interference timeline, /proc/stat-like counters.

A ``SimMachine`` lives as long as a simulated study: every fleet it opens (``SimFleet``) shares
its clock and its episodes, so an episode that spans two measurements (or two race rounds)
disturbs both, as on the real VM. The clock only moves forward: a window takes the simulated
time its requests take, starting workers takes ``STARTUP_S``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from experiments.sim.model import Noise, ServiceModel
from experiments.sim.queue import Speeds
from tuner.bench.interference import CLOCK_TICKS, CpuTimes, Snapshot
from tuner.machine.topology import Topology

HORIZON_S = 600.0  # episodes are drawn this far ahead of the clock, then again


@dataclass
class Episodes:
    """Interference episodes drawn so far: [start, end), the kind's strength, the CPUs hit."""

    start: np.ndarray
    end: np.ndarray
    share: np.ndarray  # neighbour: its share of each taken core; steal: the fraction stolen
    steal: np.ndarray  # bool: a steal episode (every CPU), else a neighbour (``cpus`` rows)
    cpus: np.ndarray  # bool, episodes x CPUs


class SimMachine:
    """A topology under a noise process, in simulated time (seconds from 0)."""

    def __init__(self, topology: Topology, noise: Noise, seed: int, service: ServiceModel = ServiceModel()):
        self.topology, self.noise, self.service = topology, noise, service
        self.rng = np.random.default_rng(seed)
        self.now = 0.0
        self.cpu_ids = list(topology.usable_cpus)
        self.column = {c: i for i, c in enumerate(self.cpu_ids)}
        self.worker_busy = np.zeros(len(self.cpu_ids))  # seconds of our workers' work per CPU
        n = len(self.cpu_ids)
        self.episodes = Episodes(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, bool), np.zeros((0, n), bool))
        self.drawn_to = self.neighbour_free = 0.0
        self._draw(HORIZON_S)
        self.next_pid = 100_000
        self.block: bytearray | None = None  # the shared request block, reused by every fleet

    # ---- the interference timeline
    def _draw(self, until: float) -> None:
        """Episodes starting in [drawn_to, until): steal episodes a Poisson process; the neighbour
        one tenant, on and off in turn (its episodes never overlap: gaps exponential with mean
        1 / ``neighbour_rate``, lengths exponential with mean ``neighbour_s``)."""
        nz, n = self.noise, len(self.cpu_ids)
        starts, lengths, shares, steal, rows = [], [], [], [], []
        if nz.neighbour_rate > 0:
            t = self.neighbour_free  # when the tenant's last episode ends (gaps are memoryless)
            while True:
                start = t + float(self.rng.exponential(1.0 / nz.neighbour_rate))
                if start >= until:
                    break
                length = float(self.rng.exponential(nz.neighbour_s))
                taken = int(self.rng.integers(1, max(1, round(nz.neighbour_cores * n)) + 1))
                row = np.zeros(n, bool)
                row[self.rng.choice(n, size=taken, replace=False)] = True
                starts.append(start)
                lengths.append(length)
                shares.append(nz.neighbour_share)
                steal.append(False)
                rows.append(row)
                t = start + length
            self.neighbour_free = max(t, until)
        if nz.steal_rate > 0:
            count = int(self.rng.poisson(nz.steal_rate * (until - self.drawn_to)))
            for a in np.sort(self.rng.uniform(self.drawn_to, until, count)).tolist():
                starts.append(a)
                lengths.append(float(self.rng.exponential(nz.steal_s)))
                shares.append(nz.steal_fraction)
                steal.append(True)
                rows.append(np.ones(n, bool))
        e = self.episodes
        if starts:
            self.episodes = Episodes(np.r_[e.start, starts], np.r_[e.end, np.add(starts, lengths)],
                                     np.r_[e.share, shares], np.r_[e.steal, steal], np.vstack([e.cpus, np.array(rows)]))
        self.drawn_to = until

    def ensure(self, until: float) -> None:
        while self.drawn_to < until:
            self._draw(self.drawn_to + HORIZON_S)

    def cpu_speeds(self, t0: float, t1: float) -> tuple[list[float], np.ndarray]:
        """Change points in [t0, t1] and each CPU's speed from each one on."""
        self.ensure(t1)
        e = self.episodes
        live = (e.end > t0) & (e.start < t1)
        points = np.unique(np.r_[t0, e.start[live][e.start[live] > t0], e.end[live][e.end[live] < t1]])
        speeds = np.ones((points.size, len(self.cpu_ids)))
        for s, d, share, st, row in zip(e.start[live], e.end[live], e.share[live], e.steal[live], e.cpus[live],
                                        strict=True):
            active = (points >= s) & (points < d)
            speeds[np.ix_(active, row if not st else np.ones(row.size, bool))] *= 1.0 - share
        return points.tolist(), speeds

    def worker_speeds(self, worker_cpus: list[tuple[int, ...]], pinned: list[bool], t0: float, t1: float) -> Speeds:
        """Each worker's speed: a pinned worker runs at its slowest CPU's (a multi-core worker waits
        for its slowest thread); an unpinned one at its CPUs' mean (the OS moves its threads off
        the busy cores)."""
        points, speeds = self.cpu_speeds(t0, t1)
        cols = [[self.column[c] for c in cpus] for cpus in worker_cpus]
        rows = np.stack([speeds[:, c].min(axis=1) if pin else speeds[:, c].mean(axis=1)
                         for c, pin in zip(cols, pinned, strict=True)], axis=1)
        return Speeds(points, rows.tolist())

    # ---- /proc/stat
    def snapshot(self) -> Snapshot:
        """Per-CPU jiffies now: busy (our workers' work and the neighbours'), steal, total."""
        e, t = self.episodes, self.now
        overlap = np.clip(np.minimum(e.end, t) - e.start, 0.0, None) * e.share
        foreign = (overlap * ~e.steal) @ e.cpus if e.start.size else np.zeros(len(self.cpu_ids))
        stolen = float((overlap * e.steal).sum())
        busy = self.worker_busy + foreign
        cpu = {c: CpuTimes(int(busy[i] * CLOCK_TICKS), int(stolen * CLOCK_TICKS), int(t * CLOCK_TICKS))
               for i, c in enumerate(self.cpu_ids)}
        return Snapshot(cpu, 0, None, None)

    def advance(self, to: float) -> None:
        self.now = max(self.now, to)

    def pid(self) -> int:
        self.next_pid += 1
        return self.next_pid

    def shared_block(self, size: int) -> bytearray:
        if self.block is None or len(self.block) < size:
            self.block = bytearray(size)
        return self.block


def time_disturbed(machine: SimMachine, t0: float, t1: float) -> float:
    """Share of [t0, t1] during which some episode was active (diagnostics)."""
    points, speeds = machine.cpu_speeds(t0, t1)
    ends = points[1:] + [t1]
    return sum(d - s for s, d, row in zip(points, ends, speeds, strict=True) if row.min() < 1.0) / max(
        t1 - t0, math.ulp(1.0))
