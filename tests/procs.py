"""Waiting on the processes a test started: for an event (a worker loaded, a process gone), with a
timeout, never for a fixed time that a loaded machine can outlast."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psutil
import pytest


def workers_of(pid: int) -> list[psutil.Process]:
    try:
        return [c for c in psutil.Process(pid).children(recursive=True)
                if "spawn_main" in " ".join(c.cmdline()) and "resource_tracker" not in " ".join(c.cmdline())]
    except psutil.NoSuchProcess:
        return []


def loaded(worker: psutil.Process) -> bool:
    """A worker that has loaded its model: it attached the trial's shared request buffers, which it
    does only after it reported ready (see tuner/bench/worker.py)."""
    try:
        return "/dev/shm/psm_" in Path(f"/proc/{worker.pid}/maps").read_text()  # not sem.*: those come first
    except OSError:
        return False


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
        time.sleep(0.05)  # nothing to block on: /proc has no change notification
    pytest.fail("no loaded worker appeared: " + (proc.stderr.read() if proc.poll() is not None else "timeout"))


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
