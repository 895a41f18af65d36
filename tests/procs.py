"""Waiting on the processes a test started: for an event (a worker loaded, a process gone), with a
timeout, never for a fixed time that a loaded machine can outlast."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tuner.bench.protocol import CONTROL_BYTES, WindowState, read_window_state

POLL_S = 0.02  # nothing to block on: /proc and shared memory have no change notification


def workers_of(pid: int) -> list[psutil.Process]:
    try:
        return [c for c in psutil.Process(pid).children(recursive=True)
                if "spawn_main" in " ".join(c.cmdline()) and "resource_tracker" not in " ".join(c.cmdline())]
    except psutil.NoSuchProcess:
        return []


def request_block(worker: psutil.Process) -> Path | None:
    """The trial's shared request block (tuner.bench.protocol) the worker has attached; None before
    it has (it does so only once its model is loaded, see tuner/bench/worker.py) or once it is gone."""
    try:
        found = re.search(r"/dev/shm/psm_\w+", Path(f"/proc/{worker.pid}/maps").read_text())  # not sem.*
    except OSError:
        return None
    return Path(found.group(0)) if found else None


def loaded(worker: psutil.Process) -> bool:
    """A worker that has loaded its model: it attached the trial's shared request block."""
    return request_block(worker) is not None


def window_state(worker: psutil.Process) -> WindowState | None:
    """What the control words of the worker's request block say now; None when there is none."""
    block = request_block(worker)
    if block is None:
        return None
    try:
        with open(block, "rb") as f:
            return read_window_state(f.read(CONTROL_BYTES))
    except OSError:  # the trial ended and unlinked it
        return None


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    """Return once ``condition()`` holds; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting until {what}")
        time.sleep(POLL_S)


def wait_for_workers(proc: subprocess.Popen, timeout_s: float = 600) -> list[psutil.Process]:
    """The workers of the tuner's running trial, once every one has loaded its model (so a signal
    hits a measuring worker, not one still loading, however loaded the machine is)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = workers_of(proc.pid)
        if found and all(loaded(w) for w in found):
            return found
        if proc.poll() is not None:
            break
        time.sleep(POLL_S)
    pytest.fail("no loaded worker appeared: " + (proc.stderr.read() if proc.poll() is not None else "timeout"))


def wait_for_server_window(proc: subprocess.Popen, timeout_s: float = 600) -> list[psutil.Process]:
    """The workers of the tuner's running trial, once they are inside an open-loop window (some of
    its requests claimed, not all): a signal sent now hits a trial mid-window, not its start-up,
    its warm-up or its teardown."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        workers = wait_for_workers(proc, max(1.0, deadline - time.monotonic()))
        state = window_state(workers[0])
        if state is not None and state.serving_server_window:
            return workers
        time.sleep(POLL_S)
    pytest.fail("no trial reached an open-loop window: " + ("it exited" if proc.poll() is not None else "timeout"))


def no_process_left(pids: list[int], timeout_s: float = 60) -> bool:
    """Every one of ``pids`` is gone (or a zombie), waiting for their exit up to ``timeout_s``."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    return all(p.status() == psutil.STATUS_ZOMBIE for p in alive if p.is_running())


def start_mlflow_server(workdir: Path, timeout_s: float = 180) -> tuple[subprocess.Popen, int]:
    """An MLflow tracking server (its own session: kill it with os.killpg) and its port, once its log
    says it is serving. It picks a free port itself (no race for one); its output is drained from
    then on, so it never blocks on a full pipe."""
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{workdir / 'm.db'}",
         "--artifacts-destination", str(workdir / "art"), "--host", "127.0.0.1", "--port", "0", "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    ports: queue.Queue[int | None] = queue.Queue()

    def read_log() -> None:
        for line in server.stdout:
            serving = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            if serving:
                ports.put(int(serving.group(1)))
        ports.put(None)  # it exited

    threading.Thread(target=read_log, daemon=True).start()
    try:
        port = ports.get(timeout=timeout_s)
    except queue.Empty:
        port = None
    if port is None:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        pytest.fail(f"the mlflow server did not start serving within {timeout_s:.0f}s")
    return server, port
