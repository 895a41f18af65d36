"""``SimFleet``: the simulator's ``tuner.bench.fleet.Fleet``, serving the real shared block.

The real window code (``tuner.bench.loadgen``) writes a window's schedule and control words into
a ``tuner.bench.protocol.SharedBuffers`` block and calls ``run_window``; here the workers are the
models of ``experiments/sim/model.py``, served by ``experiments/sim/queue.py`` on the machine's
clock, and the block is filled as the workers would have filled it: start and completion times,
the worker of each request, the claim counter, the over-bound count, the abort word (early stop
once failure is proven; backlog without a bound). ``snapshot`` gives the machine's /proc/stat
counters, judged by the real ``tuner.bench.interference``.
"""

from __future__ import annotations

import platform

import numpy as np

from experiments.sim.machine import SimMachine
from experiments.sim.model import WorkerModel, worker_models
from experiments.sim.queue import Served, backlog_stop, over_bound_stop, serve_offline, serve_server, truncate
from tuner.bench import protocol
from tuner.bench.interference import Snapshot
from tuner.bench.launcher import DEFAULT_MAX_REQUESTS
from tuner.bench.protocol import Abort, Mode, SharedBuffers, Window
from tuner.errors import WorkerError
from tuner.machine.cpulist import format_cpulist
from tuner.machine.numa import expected_policy_token
from tuner.machine.placement import Plan
from tuner.results.records import MachineInfo, PlacementSeen

STARTUP_S = 1.5  # simulated seconds to start the workers and load the model (SqueezeNet on the VM)
TEARDOWN_S = 0.2
HARNESS_GAP_S = 0.005  # the harness's own work between two windows
SPEED_MARGIN_S = 30.0  # interference is looked up this far past a window's planned end


class SimFleet:
    """A plan's simulated workers on a ``SimMachine`` (a context manager, like ``Launcher``)."""

    def __init__(self, machine: SimMachine, plan: Plan, hang_grace_s: float = 30.0,
                 max_requests: int = DEFAULT_MAX_REQUESTS):
        self.machine, self.plan, self.hang_grace_s, self.max_requests = machine, plan, hang_grace_s, max_requests
        self.models: list[WorkerModel] = worker_models(plan, machine.topology, machine.noise, machine.service)
        kinds = sorted({(w.base_s, w.exposure) for w in self.models})
        self.kinds, self.group = kinds, [kinds.index((w.base_s, w.exposure)) for w in self.models]
        self.pids = [machine.pid() for _ in self.models]
        self.buffers = SharedBuffers(machine.shared_block(SharedBuffers.size(max_requests)), max_requests)
        self.cpu_used = np.zeros(len(self.models))
        self.columns = [[machine.column[c] for c in w.cpus] for w in self.models]

    def __enter__(self) -> SimFleet:
        self.machine.advance(self.machine.now + STARTUP_S)
        return self

    def __exit__(self, *exc: object) -> bool:
        self.machine.advance(self.machine.now + TEARDOWN_S)
        return False

    # ---- the Fleet protocol
    def clock(self) -> float:
        return self.machine.now

    def idle(self, seconds: float) -> None:
        self.machine.advance(self.machine.now + seconds)

    def own_cpu_seconds(self) -> float:
        return 0.0  # the simulated harness runs on no simulated CPU

    def snapshot(self) -> Snapshot:
        return self.machine.snapshot()

    def cpu_seconds(self) -> list[float]:
        return self.cpu_used.tolist()

    def check_alive(self) -> None:
        """Simulated workers do not die."""

    def machine_info(self) -> MachineInfo:
        return MachineInfo(hostname="simulated", cpu_model=f"simulated: {self.machine.topology.summary()}",
                           kernel=f"noise {self.machine.noise.name}", python=platform.python_version(),
                           onnxruntime="", affinity=len(self.machine.cpu_ids))

    def placement_seen(self) -> list[PlacementSeen]:
        """The plan as it is: a simulated worker runs where it was planned."""
        return [PlacementSeen(spec.index, pid, spec.cpus, model.threads, (format_cpulist(model.cpus),),
                              expected_policy_token(spec.mem_policy, spec.mem_nodes),
                              expected_policy_token(spec.mem_policy, spec.mem_nodes))
                for spec, pid, model in zip(self.plan.workers, self.pids, self.models, strict=True)]

    def run_window(self, window: Window, timeout_s: float) -> list[int]:
        """Serve the window in the block; the clock moves to its last completion."""
        b, called = self.buffers, self.machine.now
        count = int(b.control[protocol.N_REQUESTS])
        if b.mode() == Mode.OFFLINE:
            served, abort = self._offline(window.end_time), Abort.NONE
            b.scheduled[: served.started.size] = served.started
        else:
            served, abort = self._server(b.scheduled[:count].copy(), window,
                                         int(b.control[protocol.OVER_ALLOWED]))
        n = served.started.size
        b.started[:n], b.completed[:n], b.worker[:n] = served.started, served.completed, served.worker
        b.control[protocol.NEXT] = min(served.claims, count)
        b.control[protocol.ABORT] = abort
        if window.bound_s is not None:
            late = served.completed - b.scheduled[:n] > window.bound_s
            b.control[protocol.OVER_BOUND] = int(np.count_nonzero(late))
        end = float(served.completed.max()) if n else called
        self._account(served)
        self.machine.advance(end + HARNESS_GAP_S)
        if end - called > timeout_s:
            raise WorkerError(f"worker(s) of the simulated fleet did not finish the window within {timeout_s:.1f}s")
        return np.bincount(served.worker, minlength=len(self.models)).tolist()

    # ---- serving
    def _work(self, n: int) -> tuple[list[list[float]], list[list[float]]]:
        """Seconds of full-speed work of n requests for each kind of worker (a lognormal body),
        and of the hiccups that stall them (absolute time: interference does not stretch them)."""
        rng, noise, sigma = self.machine.rng, self.machine.noise, self.machine.service.body_sigma
        body = np.exp(rng.normal(0.0, sigma, n))
        work, stall = [], []
        for base, exposure in self.kinds:
            duration = base * body
            hits = rng.poisson(noise.hiccup_rate * exposure * duration)
            work.append(duration.tolist())
            stall.append(rng.gamma(hits, noise.hiccup_ms / 1000).tolist())
        return work, stall

    def _speeds(self, t0: float, t1: float):
        pinned = [bool(self.plan.params.pin and spec.cpus) for spec in self.plan.workers]
        return self.machine.worker_speeds([w.cpus for w in self.models], pinned, t0, t1 + SPEED_MARGIN_S)

    def _server(self, arrivals: np.ndarray, window: Window, allowed: int) -> tuple[Served, Abort]:
        ready = self.machine.now
        speeds = self._speeds(ready, float(arrivals.max()) if arrivals.size else ready)
        served = serve_server(arrivals, *self._work(arrivals.size), self.group, ready, speeds)
        if window.bound_s is not None:
            stop = over_bound_stop(served, arrivals, window.bound_s, allowed)
            abort = Abort.OVER_BOUND
        elif window.backlog_limit_s is not None:
            stop = backlog_stop(served, arrivals, window.backlog_limit_s)
            abort = Abort.BACKLOG
        else:
            stop = None
        if stop is None:
            return served, Abort.NONE
        return truncate(served, stop), abort

    def _offline(self, end_s: float) -> Served:
        ready = self.machine.now
        return serve_offline(self._work, self.group, ready, end_s, self._speeds(ready, end_s))

    def _account(self, served: Served) -> None:
        """Workers' CPU time (work x threads) and each CPU's busy time (its thread's work)."""
        work = np.bincount(served.worker, weights=served.work, minlength=len(self.models))
        for w, model in enumerate(self.models):
            self.cpu_used[w] += work[w] * model.threads
            self.machine.worker_busy[self.columns[w]] += work[w] * min(1.0, model.threads / len(model.cpus))
