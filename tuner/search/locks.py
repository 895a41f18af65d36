"""Locks: one tuner per set of CPUs (``HostLock``), one bookkeeper per study (``StudyMutex``)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tuner.errors import PlacetuneError
from tuner.machine.cpulist import format_cpulist
from tuner.machine.topology import Topology


class StudyMutex:
    """Serializes a study's bookkeeping (its identity, the baselines' enqueueing, the MLflow parent
    run) between tuners that share one storage, so that a fleet starting at once does not do it
    twice: a PostgreSQL advisory lock, a file lock beside a SQLite file, nothing elsewhere."""

    def __init__(self, url: str, study_name: str):
        self.url = url
        self.key = int(hashlib.sha256(f"placetune:{study_name}".encode()).hexdigest()[:15], 16)
        self._conn = None
        self._engine = None
        self._fd: int | None = None

    def __enter__(self) -> StudyMutex:
        if self.url.startswith("postgresql"):
            import sqlalchemy

            self._engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)
            self._conn = self._engine.connect()
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
        elif self.url.startswith("sqlite:///"):
            self._fd = _lock_file(Path(f"{self.url[len('sqlite:///'):]}.placetune-lock"), wait=True)
        return self

    def __exit__(self, *exc) -> bool:
        if self._conn is not None:
            import sqlalchemy

            try:
                self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            finally:
                self._conn.close()
                self._engine.dispose()
                self._conn = self._engine = None
        if self._fd is not None:
            _unlock_file(self._fd)
            self._fd = None
        return False


class HostLock:
    """One tuner per set of usable CPUs: overlapping trials would poison both measurements.
    A lock held by a killed process is released by the kernel (flock), so it is never stale.
    While it waits it says once who holds the lock and how long it will wait (``on_wait``,
    default: a line on stderr)."""

    def __init__(self, topology: Topology, wait_s: float = 3600.0, on_wait: Callable[[str], None] | None = None):
        key = hashlib.sha256(format_cpulist(topology.usable_cpus).encode()).hexdigest()[:12]
        self.key = f"{socket.gethostname()}:{key}"
        self.path = Path(tempfile.gettempdir()) / f"placetune-{key}.lock"
        self.wait_s = wait_s
        self.on_wait = on_wait or _say_on_stderr
        self._fd: int | None = None

    def holder(self) -> str:
        """``pid N (command line)`` of the process that wrote the lock file, as far as it can be read."""
        try:
            pid = Path(self.path).read_text().strip() or "?"
        except OSError:
            return "pid ?"
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            command = ""
        return f"pid {pid}" + (f": {command[:200]}" if command else "")

    def __enter__(self) -> HostLock:
        deadline = time.monotonic() + self.wait_s
        said = False
        while True:
            self._fd = _lock_file(self.path, wait=False)
            if self._fd is not None:
                os.ftruncate(self._fd, 0)
                os.write(self._fd, f"{os.getpid()}\n".encode())
                return self
            if time.monotonic() > deadline:
                holder = self.holder()
                raise PlacetuneError(f"another placetune ({holder}) is measuring these CPUs "
                                     f"(lock {self.path}); overlapping trials would poison both "
                                     "measurements: wait for it (--lock-wait) or stop it")
            if not said:
                self.on_wait(f"another placetune ({self.holder()}) is measuring these CPUs; waiting for it "
                             f"to finish, at most {_duration_text(self.wait_s)} (--lock-wait)")
                said = True
            time.sleep(0.5)  # flock has no timeout of its own: try again

    def __exit__(self, *exc) -> bool:
        if self._fd is not None:
            _unlock_file(self._fd)
            self._fd = None
        return False


def _lock_file(path: Path, wait: bool) -> int | None:
    """An exclusive flock on ``path`` (created if missing): its descriptor, or None when another
    process holds it and ``wait`` is False. The kernel releases it when its holder dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _unlock_file(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _say_on_stderr(message: str) -> None:
    import sys

    print(f"placetune: {message}", file=sys.stderr, flush=True)


def _duration_text(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g}h"
    if seconds >= 60:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"

