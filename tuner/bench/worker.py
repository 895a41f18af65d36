"""The worker process: pin, set the memory policy, THEN load the model, then serve windows.

Requests are not sent to workers one by one. The load generator writes each window's
arrival schedule into shared memory; an idle worker claims the next request (one lock
acquisition), sleeps until its scheduled arrival if it is still in the future, runs it,
and writes the completion time next to it. That is one shared FIFO queue with no
dispatcher process and no per-request message: the harness costs one lock and one
clock read per request (see experiments/overhead).
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from dataclasses import dataclass

# numpy (and its OpenBLAS thread pool) is imported only after the worker has pinned itself:
# threads inherit the affinity of the thread that creates them.

# Shared control words (int64) at the start of the control block. OVER_ALLOWED is the early-stop
# threshold the load generator computes from tuner.bench.stats.fail_allowance: once OVER_BOUND exceeds
# it, the window's fail verdict is proven whatever the remaining requests do, so it stops.
NEXT, N_REQUESTS, OVER_BOUND, ABORT, MODE, OVER_ALLOWED = range(6)
CONTROL_WORDS = 8
ABORT_OVER_BOUND, ABORT_BACKLOG, ABORT_STOP = 1, 2, 3
MODE_SERVER, MODE_OFFLINE = 0, 1


@dataclass(frozen=True)
class WorkerConfig:
    index: int
    cpus: tuple[int, ...]
    mem_policy: str
    mem_nodes: tuple[int, ...]
    model_path: str
    model_info: dict
    intra_op_threads: int
    inter_op_threads: int
    execution_mode: str
    spinning: bool
    graph_optimization: str
    pin: bool
    max_requests: int
    memory_limit: int = 0  # RLIMIT_AS in bytes; 0 = none


class SharedBuffers:
    """Views on the shared block: control words, schedule, completion times, worker ids."""

    def __init__(self, buf, max_requests: int):
        import numpy as np

        offset = 0
        self.control = np.ndarray((CONTROL_WORDS,), dtype=np.int64, buffer=buf, offset=offset)
        offset += CONTROL_WORDS * 8
        self.scheduled = np.ndarray((max_requests,), dtype=np.float64, buffer=buf, offset=offset)
        offset += max_requests * 8
        self.completed = np.ndarray((max_requests,), dtype=np.float64, buffer=buf, offset=offset)
        offset += max_requests * 8
        self.started = np.ndarray((max_requests,), dtype=np.float64, buffer=buf, offset=offset)
        offset += max_requests * 8
        self.worker = np.ndarray((max_requests,), dtype=np.int16, buffer=buf, offset=offset)

    @staticmethod
    def size(max_requests: int) -> int:
        return CONTROL_WORDS * 8 + max_requests * (8 * 3 + 2)


def _session_options(cfg: WorkerConfig):
    from tuner.deploy import session_options

    options = session_options(intra_op_threads=cfg.intra_op_threads, inter_op_threads=cfg.inter_op_threads,
                              execution_mode=cfg.execution_mode, spinning=cfg.spinning,
                              graph_optimization=cfg.graph_optimization, pin=cfg.pin, cpus=cfg.cpus)
    options.log_severity_level = 4  # a failing run is reported through the pipe, once
    return options


def worker_main(cfg: WorkerConfig, conn, shm_name: str, lock) -> None:
    """Entry point of a worker process (started with the 'spawn' method)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns Ctrl-C and tears us down
    from tuner.machine.numa import PR_SET_PDEATHSIG, PR_SET_TIMERSLACK, prctl, set_mempolicy

    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # never outlive the tuner, even after kill -9
        if os.getppid() == 1:
            return
        prctl(PR_SET_TIMERSLACK, 1)  # wake at the scheduled arrival, not 50 us later
        # 1) pin and set the memory policy BEFORE the model is loaded (first touch)
        if cfg.pin and cfg.cpus:
            from tuner.deploy import pin_every_thread

            pin_every_thread(cfg.cpus)
        set_mempolicy(cfg.mem_policy, cfg.mem_nodes)
        if cfg.memory_limit:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (cfg.memory_limit, cfg.memory_limit))
        # 2) then create the session
        import onnxruntime as ort

        ort.set_default_logger_severity(4)  # errors come back to the tuner through the pipe, not stderr
        from tuner.bench.model import ModelInfo, make_inputs

        session = ort.InferenceSession(cfg.model_path, _session_options(cfg),
                                       providers=["CPUExecutionProvider"])
        feeds = make_inputs(ModelInfo.from_dict(cfg.model_info), seed=cfg.index)
        session.run(None, feeds)
        if cfg.pin and cfg.cpus:
            os.sched_setaffinity(0, cfg.cpus[:1])  # the calling thread keeps cpus[0]
    except BaseException as exc:
        conn.send((_kind(exc), _one_line(exc), traceback.format_exc()))
        return

    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(name=shm_name)
    try:
        buffers = SharedBuffers(shm.buf, cfg.max_requests)
        conn.send(("ready", os.getpid(), sorted(os.sched_getaffinity(0))))
        while True:
            message = conn.recv()
            if message[0] == "stop":
                break
            if message[0] == "window":
                _, end_time, bound_s, backlog_limit_s = message
                try:
                    served = _serve(session, feeds, buffers, lock, cfg.index, end_time, bound_s, backlog_limit_s)
                except Exception as exc:
                    conn.send((_kind(exc), _one_line(exc), traceback.format_exc()))
                    break
                conn.send(("done", served))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        del buffers
        shm.close()


def _one_line(exc: BaseException) -> str:
    """The exception in one short line; ONNX Runtime's source locations and signatures dropped."""
    import re

    text = str(exc).strip()
    text = text.splitlines()[0] if text else ""
    if "Status Message:" in text:
        text = text.rsplit("Status Message:", 1)[1].strip()
    text = re.sub(r"^\S+\.(?:cc|h|cpp):\d+ .*?\)\s+", "", text)
    return f"{type(exc).__name__}: {text[:240]}"


def _kind(exc: BaseException) -> str:
    """'oom' for an allocation failure (Python's MemoryError, ORT's bad_alloc), else 'error'."""
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or any(sign in text for sign in (
            "bad_alloc", "failed to allocate", "failed to map segment", "cannot allocate memory")):
        return "oom"
    return "error"


def _serve(session, feeds, b: SharedBuffers, lock, index: int, end_time: float,
           bound_s: float | None, backlog_limit_s: float | None) -> int:
    """Serve one window; returns how many requests this worker completed."""
    control, scheduled, completed, started, worker = b.control, b.scheduled, b.completed, b.started, b.worker
    run = session.run
    clock = time.monotonic
    sleep = time.sleep
    offline = control[MODE] == MODE_OFFLINE
    served = 0
    while not control[ABORT]:
        with lock:
            i = int(control[NEXT])
            if i >= control[N_REQUESTS]:
                break
            control[NEXT] = i + 1
        if offline:
            now = clock()
            if now >= end_time:
                break
            scheduled[i] = now
        else:
            due = scheduled[i]
            now = clock()
            if due > now:
                sleep(due - now)
            elif backlog_limit_s is not None and now - due > backlog_limit_s:
                control[ABORT] = ABORT_BACKLOG
        started[i] = clock()
        run(None, feeds)
        done = clock()
        completed[i] = done
        worker[i] = index
        served += 1
        if bound_s is not None and done - scheduled[i] > bound_s:
            with lock:
                control[OVER_BOUND] += 1
                if control[OVER_BOUND] > control[OVER_ALLOWED] and not control[ABORT]:
                    control[ABORT] = ABORT_OVER_BOUND
    return served
