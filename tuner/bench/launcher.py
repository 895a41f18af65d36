"""Start and stop a Plan's workers; verify their placement from /proc.

``Launcher`` is a context manager: whatever happens inside (an exception, Ctrl-C, SIGTERM,
a worker dying), every worker is terminated and reaped on exit. Workers also carry
PR_SET_PDEATHSIG=SIGKILL, so they die with the tuner even if it is killed with -9.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import signal
import time
from multiprocessing import connection, shared_memory

from tuner.bench import interference
from tuner.bench.model import ModelInfo
from tuner.bench.protocol import Done, Failed, FromWorker, Ready, SharedBuffers, Stop, Window
from tuner.bench.worker import WorkerConfig, worker_main
from tuner.errors import ModelError, PlacementMismatch, WorkerError
from tuner.machine.cpulist import format_cpulist
from tuner.machine.numa import expected_policy_token, memory_policy_seen, thread_affinities
from tuner.machine.placement import Plan
from tuner.results.records import MachineInfo, PlacementSeen

DEFAULT_MAX_REQUESTS = 1_000_000


class _SigtermAsInterrupt:
    """Within the block, SIGTERM raises KeyboardInterrupt in the main thread, so teardown runs."""

    def __enter__(self):
        self._previous = None
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            pass
        return self

    def _handle(self, signum, frame):
        if callable(self._previous):  # an application handler (the CLI's) decides what to raise
            self._previous(signum, frame)
        raise KeyboardInterrupt(f"signal {signum}")

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False


def _expect(message: FromWorker, kind: type, index: int):
    """``message`` when it is a ``kind``; anything else breaks the protocol (a bug, not a fault)."""
    if not isinstance(message, kind):
        raise WorkerError(f"worker {index} sent {type(message).__name__} where {kind.__name__} was due")
    return message


def machine_metadata() -> MachineInfo:
    """This machine: host, CPU model, kernel, Python, ONNX Runtime, the CPUs we may use."""
    cpu_model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.lower().startswith(("model name", "cpu model")):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime as ort

    return MachineInfo(hostname=platform.node(), cpu_model=cpu_model, kernel=platform.release(),
                       python=platform.python_version(), onnxruntime=ort.__version__,
                       affinity=len(os.sched_getaffinity(0)))


def _limit_text(limit: int) -> str:
    return f"--worker-memory-limit {limit / 2**20:.0f} MiB" if limit else "no placetune limit set"


class Launcher:
    """Workers of one plan, ready to serve windows. Use as ``with Launcher(...) as fleet:``.
    The real ``tuner.bench.fleet.Fleet``: processes, ``time.monotonic``, /proc."""

    def __init__(self, plan: Plan, model: ModelInfo, start_timeout_s: float = 120.0, memory_limit: int = 0,
                 hang_grace_s: float = 30.0,
                 max_requests: int = DEFAULT_MAX_REQUESTS):
        self.plan = plan
        if plan.params.max_batch > 1 and model.batch_model is None:
            from tuner.bench.batchable import with_batching

            model = with_batching(model, plan.params.max_batch)  # one-line UsageError when it cannot batch
        self.model = model
        self.start_timeout_s = start_timeout_s
        self.memory_limit = memory_limit
        self.hang_grace_s = hang_grace_s  # a window this long past its end has a hung (or stopped) worker
        self.max_requests = max_requests
        self._ctx = mp.get_context("spawn")
        self.processes: list = []
        self.conns: list = []
        self.pids: list[int] = []
        self.shm: shared_memory.SharedMemory | None = None
        self.buffers: SharedBuffers | None = None
        self.lock = None
        self._sigterm = _SigtermAsInterrupt()

    # ---- lifetime
    def __enter__(self) -> Launcher:
        self._sigterm.__enter__()
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def _start(self) -> None:
        self.shm = shared_memory.SharedMemory(create=True, size=SharedBuffers.size(self.max_requests))
        self.buffers = SharedBuffers(self.shm.buf, self.max_requests)  # a new block is all zeros
        self.lock = self._ctx.Lock()
        params = self.plan.params
        for spec in self.plan.workers:
            cfg = WorkerConfig(
                index=spec.index, cpus=spec.cpus, mem_policy=spec.mem_policy, mem_nodes=spec.mem_nodes,
                model_path=self.model.path_for(params.max_batch), model_info=self.model.to_dict(),
                intra_op_threads=params.intra_op_threads, inter_op_threads=params.inter_op_threads,
                execution_mode=params.execution_mode, spinning=params.spinning,
                graph_optimization=params.graph_optimization, pin=params.pin,
                max_requests=self.max_requests, memory_limit=self.memory_limit,
                max_batch=params.max_batch, batch_timeout_s=params.batch_timeout_s,
            )
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(target=worker_main, args=(cfg, child, self.shm.name, self.lock),
                                     name=f"placetune-worker-{spec.index}", daemon=True)
            proc.start()
            child.close()
            self.processes.append(proc)
            self.conns.append(parent)
        self._await_ready()

    def _await_ready(self) -> None:
        """Wait for every worker's ``Ready``; the first failure or death raises."""
        deadline = time.monotonic() + self.start_timeout_s
        self.pids = [0] * len(self.processes)
        pending = set(range(len(self.processes)))
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                late = ", ".join(str(i) for i in sorted(pending))
                raise WorkerError(f"worker(s) {late} did not load the model within {self.start_timeout_s:.0f}s "
                                  "(raise MeasureSettings.start_timeout_s for very large models)")
            waitables = {self.conns[i]: i for i in pending}
            waitables.update({self.processes[i].sentinel: i for i in pending})
            for ready in connection.wait(list(waitables), timeout=remaining):
                i = waitables[ready]
                try:
                    if ready is self.processes[i].sentinel and not self.conns[i].poll():
                        raise EOFError
                    message = self.conns[i].recv()
                except (EOFError, OSError):  # a dead peer: EOF, or ECONNRESET on a socket pair
                    self.processes[i].join(timeout=5.0)  # its pipe closes a moment before it is reapable
                    raise WorkerError(f"worker {i} {self._how_it_ended(i)} during start-up") from None
                if isinstance(message, Failed) and message.out_of_memory:
                    raise WorkerError(f"worker {i} ran out of memory during start-up "
                                      f"({_limit_text(self.memory_limit)}): {message.summary[:300]}")
                if isinstance(message, Failed):
                    raise ModelError(f"worker {i} could not start: {message.summary}")
                self.pids[i] = _expect(message, Ready, i).pid
                pending.discard(i)

    def close(self) -> None:
        """Stop every worker (politely, then by force) and release shared memory. Idempotent."""
        if self.buffers is not None:
            self.buffers.stop()
        for conn in self.conns:
            try:
                conn.send(Stop())
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 2.0
        for proc in self.processes:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
        for proc in self.processes:
            if proc.is_alive():
                proc.kill()
        for proc in self.processes:
            proc.join(timeout=5.0)
        for conn in self.conns:
            conn.close()
        self.processes, self.conns = [], []
        if self.shm is not None:
            self.buffers = None
            try:
                self.shm.close()
                self.shm.unlink()
            except (FileNotFoundError, BufferError):
                pass
            self.shm = None
        self._sigterm.__exit__(None, None, None)

    # ---- verification
    def placement_seen(self) -> list[PlacementSeen]:
        """What each worker really runs with: checked against the plan when the plan pins
        (``verify_placement``); an unpinned worker (the ORT-default baseline) is only described,
        since the OS scheduler places it."""
        if self.plan.params.pin:
            return self.verify_placement()
        seen = []
        for spec, pid in zip(self.plan.workers, self.pids, strict=True):
            affinities = thread_affinities(pid)
            seen.append(PlacementSeen(spec.index, pid, (), len(affinities),
                                      tuple(sorted({format_cpulist(a) for a in affinities.values()})),
                                      memory_policy_seen(pid), "default"))
        return seen

    def verify_placement(self) -> list[PlacementSeen]:
        """Read each worker's threads' affinity and memory policy from /proc; a mismatch with the
        plan raises PlacementMismatch."""
        seen = []
        problems = []
        for spec, pid in zip(self.plan.workers, self.pids, strict=True):
            affinities = thread_affinities(pid)
            policy = memory_policy_seen(pid)
            expected = expected_policy_token(spec.mem_policy, spec.mem_nodes)
            distinct = sorted({format_cpulist(a) for a in affinities.values()})
            seen.append(PlacementSeen(spec.index, pid, spec.cpus, len(affinities), tuple(distinct),
                                      policy, expected))
            if self.plan.params.pin and spec.cpus:
                for tid, cpus in affinities.items():
                    if not cpus <= set(spec.cpus):
                        problems.append(f"worker {spec.index} thread {tid} may run on cpus "
                                        f"{format_cpulist(cpus)}, plan says {format_cpulist(spec.cpus)}")
            if policy != expected and policy != "unknown":
                problems.append(f"worker {spec.index} memory policy is {policy}, plan says {expected}")
        if problems:
            raise PlacementMismatch("; ".join(problems))
        return seen

    # ---- windows
    def _how_it_ended(self, i: int) -> str:
        code = self.processes[i].exitcode
        if code is None:
            return "closed its pipe"
        if code >= 0:
            return f"exited (code {code})" + (f" under {_limit_text(self.memory_limit)} (out of memory?)"
                                              if self.memory_limit and code else "")
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        how = f"was killed by {name}"
        if -code == signal.SIGKILL:
            how += " (the kernel's OOM killer, a memory cgroup limit, or kill -9)"
        elif -code == signal.SIGABRT and self.memory_limit:
            how += f" (an allocation failure under {_limit_text(self.memory_limit)}?)"
        return how

    def check_alive(self) -> None:
        for i, proc in enumerate(self.processes):
            if not proc.is_alive():
                raise WorkerError(f"worker {i} (pid {self.pids[i]}) {self._how_it_ended(i)}")

    def run_window(self, window: Window, timeout_s: float) -> list[int]:
        """Tell every worker to serve the window already written to shared memory; wait for all.
        Returns requests served per worker. A dead or hung worker raises WorkerError."""
        for i, conn in enumerate(self.conns):
            try:
                conn.send(window)
            except OSError:  # EPIPE/ECONNRESET: it died between windows
                self.buffers.stop()
                self.processes[i].join(timeout=5.0)
                self.check_alive()
                raise WorkerError(f"worker {i} (pid {self.pids[i]}) {self._how_it_ended(i)} between windows") from None
        served = [0] * len(self.conns)
        pending = set(range(len(self.conns)))
        deadline = time.monotonic() + timeout_s
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.buffers.stop()
                late = ", ".join(f"{i} (pid {self.pids[i]})" for i in sorted(pending))
                raise WorkerError(f"worker(s) {late} did not finish the window within {timeout_s:.1f}s "
                                  "(hung or stopped?)")
            waitables = {self.conns[i]: i for i in pending}
            waitables.update({self.processes[i].sentinel: i for i in pending})
            for ready in connection.wait(list(waitables), timeout=min(remaining, 0.5)):
                i = waitables[ready]
                if ready is self.processes[i].sentinel:
                    self.buffers.stop()
                    self.check_alive()
                try:
                    message = self.conns[i].recv()
                except (EOFError, OSError):  # a dead peer: EOF, or ECONNRESET on a socket pair
                    self.buffers.stop()
                    self.processes[i].join(timeout=5.0)  # the pipe closes a moment before the exit is seen
                    self.check_alive()
                    raise WorkerError(f"worker {i} closed its pipe during the window") from None
                if isinstance(message, Failed):
                    self.buffers.stop()
                    what = (f"ran out of memory ({_limit_text(self.memory_limit)})" if message.out_of_memory
                            else "failed")
                    raise WorkerError(f"worker {i} (pid {self.pids[i]}) {what} during the window: "
                                      f"{message.summary[:300]}")
                served[i] = _expect(message, Done, i).served
                pending.discard(i)
        return served

    def snapshot(self) -> interference.Snapshot:
        """The interference counters now, from /proc and /sys (``interference.snapshot``)."""
        return interference.snapshot(self.pids)

    def clock(self) -> float:
        """The clock of the shared block's times: ``time.monotonic``."""
        return time.monotonic()

    def idle(self, seconds: float) -> None:
        time.sleep(seconds)

    def own_cpu_seconds(self) -> float:
        """CPU time of this process (the harness) so far."""
        return time.process_time()

    def machine_info(self) -> MachineInfo:
        return machine_metadata()

    def cpu_seconds(self) -> list[float]:
        """CPU time (user+system) each worker has used so far."""
        import psutil

        result = []
        for pid in self.pids:
            try:
                t = psutil.Process(pid).cpu_times()
                result.append(t.user + t.system)
            except psutil.Error:
                result.append(float("nan"))
        return result
