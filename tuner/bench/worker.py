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

from tuner.bench.protocol import Done, Failed, Mode, Ready, SharedBuffers, Stop, Window

# numpy (and its OpenBLAS thread pool) is imported only after the worker has pinned itself:
# threads inherit the affinity of the thread that creates them.


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
    max_batch: int = 1  # requests per session.run (tuner.bench.batcher); 1: one at a time
    batch_timeout_s: float = 0.0  # how long a batch that is not full waits for more arrivals


def _session_options(cfg: WorkerConfig):
    from tuner.deploy import session_options

    options = session_options(intra_op_threads=cfg.intra_op_threads, inter_op_threads=cfg.inter_op_threads,
                              execution_mode=cfg.execution_mode, spinning=cfg.spinning,
                              graph_optimization=cfg.graph_optimization, pin=cfg.pin, cpus=cfg.cpus)
    options.log_severity_level = 4  # a failing run is reported through the pipe, once
    return options


def worker_main(cfg: WorkerConfig, conn, shm_name: str, lock) -> None:
    """Entry point of a worker process (started with the 'spawn' method). It speaks
    ``tuner.bench.protocol``: ``Ready`` or ``Failed`` once, then ``Done`` or ``Failed`` per ``Window``
    until ``Stop`` (or the harness closes the pipe)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns Ctrl-C and tears us down
    # fd 2 goes nowhere for the worker's whole life: its failures come back through the pipe, and
    # what the C libraries print (under a memory limit glibc's "cannot allocate memory for
    # thread-local data: ABORT" as the process dies, after loading) would break the tuner's
    # one-line errors
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    from tuner.machine.numa import PR_SET_PDEATHSIG, prctl

    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # never outlive the tuner, even after kill -9
        if os.getppid() == 1:
            return
        session, feeds = _place_and_load(cfg)
    except BaseException as exc:
        conn.send(Failed.of(exc, traceback.format_exc()))
        return

    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(name=shm_name)
    buffers = None
    try:
        buffers = SharedBuffers(shm.buf, cfg.max_requests)
        conn.send(Ready(os.getpid(), tuple(sorted(os.sched_getaffinity(0)))))
        _serve_windows(conn, session, feeds, buffers, lock, cfg)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        del buffers
        shm.close()


def _place_and_load(cfg: WorkerConfig) -> tuple:
    """Pin, set the memory policy and the memory limit, THEN load the model (first touch) and run
    it once; returns (session, feeds)."""
    from tuner.machine.numa import PR_SET_TIMERSLACK, prctl, set_mempolicy

    prctl(PR_SET_TIMERSLACK, 1)  # wake at the scheduled arrival, not 50 us later
    if cfg.pin and cfg.cpus:
        from tuner.deploy import pin_every_thread

        pin_every_thread(cfg.cpus)
    set_mempolicy(cfg.mem_policy, cfg.mem_nodes)
    if cfg.memory_limit:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (cfg.memory_limit, cfg.memory_limit))
    # Under a memory limit, ORT's import prints "Schema error: std::bad_alloc" and glibc, creating the
    # session's thread pool, "cannot allocate memory for thread-local data" (fd 2 is silenced above)
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # errors come back to the tuner through the pipe, not stderr
    from tuner.bench.model import ModelInfo, make_inputs

    session = ort.InferenceSession(cfg.model_path, _session_options(cfg), providers=["CPUExecutionProvider"])
    feeds = make_inputs(ModelInfo.from_dict(cfg.model_info), seed=cfg.index)
    session.run(None, feeds)
    if cfg.max_batch > 1:  # a full batch's first run (allocation, kernels) is not left to a measured request
        from tuner.bench.batchable import stack

        session.run(None, stack([feeds] * cfg.max_batch))
    if cfg.pin and cfg.cpus:
        os.sched_setaffinity(0, cfg.cpus[:1])  # the calling thread keeps cpus[0]
    return session, feeds


def _serve_windows(conn, session, feeds, buffers: SharedBuffers, lock, cfg: WorkerConfig) -> None:
    """Serve each ``Window`` the harness sends until ``Stop``; a failed window ends the worker."""
    while True:
        message = conn.recv()
        if isinstance(message, Stop):
            return
        if isinstance(message, Window):
            try:
                if cfg.max_batch > 1:
                    served = _serve_batched(session, feeds, buffers, lock, cfg, message)
                else:
                    served = _serve(session, feeds, buffers, lock, cfg.index, message)
            except Exception as exc:
                conn.send(Failed.of(exc, traceback.format_exc()))
                return
            conn.send(Done(served))


def _serve(session, feeds, b: SharedBuffers, lock, index: int, window: Window) -> int:
    """Serve one window; returns how many requests this worker completed."""
    scheduled, completed, started, worker = b.scheduled, b.completed, b.started, b.worker
    end_time, bound_s, backlog_limit_s = window.end_time, window.bound_s, window.backlog_limit_s
    run = session.run
    clock = time.monotonic
    sleep = time.sleep
    offline = b.mode() == Mode.OFFLINE
    served = 0
    while not b.aborted():
        i = b.claim(lock)
        if i < 0:
            break
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
                b.note_backlog()
        started[i] = clock()
        run(None, feeds)
        done = clock()
        completed[i] = done
        worker[i] = index
        served += 1
        if bound_s is not None and done - scheduled[i] > bound_s:
            b.note_over_bound(lock)
    return served


def _serve_batched(session, feeds, b: SharedBuffers, lock, cfg: WorkerConfig, window: Window) -> int:
    """Serve one window in batches of up to ``cfg.max_batch`` arrived requests (``batcher.gather``);
    each request's inputs are stacked into one feed, run once, and every request of the batch gets
    the batch's completion time. Returns how many requests this worker completed."""
    from tuner.bench.batchable import stack
    from tuner.bench.batcher import gather

    scheduled, completed, started, worker = b.scheduled, b.completed, b.started, b.worker
    clock, sleep = time.monotonic, time.sleep
    offline = b.mode() == Mode.OFFLINE
    served = 0
    while not b.aborted():
        first = b.claim(lock)
        if first < 0:
            break
        now = clock()
        if offline:
            if now >= window.end_time:
                break
            scheduled[first] = now
        elif scheduled[first] > now:
            sleep(scheduled[first] - now)
        elif window.backlog_limit_s is not None and now - scheduled[first] > window.backlog_limit_s:
            b.note_backlog()
        batch = gather(first, clock(), cfg.max_batch, cfg.batch_timeout_s, clock=clock, sleep=sleep,
                       next_arrival=b.next_arrival, claim_arrived=lambda t: b.claim_arrived(lock, t))
        begun = clock()
        for i in batch:
            if offline and i != first:
                scheduled[i] = begun
            started[i] = begun
        session.run(None, stack([feeds] * len(batch)))
        done = clock()
        for i in batch:
            completed[i] = done
            worker[i] = cfg.index
            if window.bound_s is not None and done - scheduled[i] > window.bound_s:
                b.note_over_bound(lock)
        served += len(batch)
    return served
