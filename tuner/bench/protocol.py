"""The worker <-> harness protocol: the shared request block and the pipe messages.

One block of shared memory per fleet holds a few int64 control words and, per request, its
scheduled arrival, start and completion times (monotonic seconds) and the index of the worker
that served it. The harness (``tuner.bench.loadgen``) writes a window's schedule and control
words, then sends every worker a ``Window`` message; idle workers claim the next request under
one shared lock (``SharedBuffers.claim``), so the block is one FIFO queue with no dispatcher.
The harness stops a window early by setting the abort word (``SharedBuffers.stop``); a worker
sets it itself once a window's failure is proven or its backlog grew too long.

Pipe messages are the frozen dataclasses below: harness -> worker ``Window`` and ``Stop``;
worker -> harness ``Ready`` (once the model is loaded), ``Done`` (a window served) and
``Failed`` (start-up or a window failed; ``out_of_memory`` tells an allocation failure apart).
This module is the only place that defines or interprets the control words; it imports numpy
lazily, because the worker must pin itself before numpy starts its thread pool.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

# Control words (int64) at the start of the block, by index.
NEXT = 0  # the next request to claim
N_REQUESTS = 1  # requests in this window's schedule
OVER_BOUND = 2  # completed requests whose latency exceeded the bound
ABORT = 3  # an Abort reason; non-zero stops every worker at its next claim
MODE = 4  # a Mode
# OVER_ALLOWED is the early-stop threshold the load generator computes from
# tuner.bench.stats.fail_allowance: once OVER_BOUND exceeds it, the window's fail verdict is proven
# whatever the remaining requests do, so the workers stop.
OVER_ALLOWED = 5
CONTROL_WORDS = 8  # two spare: the control words fill one 64-byte cache line


class Abort(enum.IntEnum):
    """Why a window stopped before its schedule ran out (the ABORT word)."""

    NONE = 0
    OVER_BOUND = 1  # more requests over the bound than a pass allows: fail proven
    BACKLOG = 2  # a request waited longer than the backlog limit: did not keep up
    STOP = 3  # the harness stopped the fleet (teardown, a dead or hung worker)


class Mode(enum.IntEnum):
    """How workers take requests (the MODE word)."""

    SERVER = 0  # at their scheduled arrival (open loop)
    OFFLINE = 1  # back to back until the window's end time (closed loop)


# Per-request arrays after the control words, in this order: (name, numpy dtype name).
REQUEST_ARRAYS: tuple[tuple[str, str], ...] = (
    ("scheduled", "float64"),  # arrival time; offline: written by the worker when it claims
    ("completed", "float64"),  # NaN until served
    ("started", "float64"),  # when session.run began; NaN until then
    ("worker", "int16"),  # index of the worker that served it; -1 until served
)
_ITEM_BYTES = {"float64": 8, "int64": 8, "int16": 2}
CONTROL_BYTES = CONTROL_WORDS * 8
BYTES_PER_REQUEST = sum(_ITEM_BYTES[dtype] for _, dtype in REQUEST_ARRAYS)


def block_size(max_requests: int) -> int:
    """Bytes of shared memory a block for ``max_requests`` requests needs."""
    return CONTROL_BYTES + max_requests * BYTES_PER_REQUEST


def max_requests_of(nbytes: int) -> int:
    """The ``max_requests`` of a block of ``nbytes`` (the inverse of ``block_size``)."""
    return max(0, (nbytes - CONTROL_BYTES) // BYTES_PER_REQUEST)


def request_offsets(max_requests: int) -> dict[str, int]:
    """Byte offset of each per-request array in a block for ``max_requests`` requests."""
    offsets, offset = {}, CONTROL_BYTES
    for name, dtype in REQUEST_ARRAYS:
        offsets[name] = offset
        offset += max_requests * _ITEM_BYTES[dtype]
    return offsets


class SharedBuffers:
    """Views on a shared block (``buf``: a SharedMemory's ``buf`` or any writable buffer).

    Harness side: ``start_window``, ``stop``, ``claimed``, ``abort_reason``. Worker side:
    ``mode``, ``aborted``, ``claim``, ``next_arrival``, ``claim_arrived``, ``note_backlog``, ``note_over_bound``.
    """

    def __init__(self, buf: Any, max_requests: int):
        import numpy as np

        self.max_requests = max_requests
        self.control = np.ndarray((CONTROL_WORDS,), dtype=np.int64, buffer=buf, offset=0)
        offsets = request_offsets(max_requests)
        self.scheduled = np.ndarray((max_requests,), dtype=np.float64, buffer=buf, offset=offsets["scheduled"])
        self.completed = np.ndarray((max_requests,), dtype=np.float64, buffer=buf, offset=offsets["completed"])
        self.started = np.ndarray((max_requests,), dtype=np.float64, buffer=buf, offset=offsets["started"])
        self.worker = np.ndarray((max_requests,), dtype=np.int16, buffer=buf, offset=offsets["worker"])

    @staticmethod
    def size(max_requests: int) -> int:
        """Bytes of shared memory for ``max_requests`` requests (``block_size``)."""
        return block_size(max_requests)

    # ---- harness side
    def start_window(self, count: int, mode: Mode, over_allowed: int) -> None:
        """Make the first ``count`` requests unserved and open a window over them. The caller
        writes their ``scheduled`` times (server mode) before it sends ``Window``."""
        import numpy as np

        self.completed[:count] = np.nan
        self.started[:count] = np.nan
        self.worker[:count] = -1
        c = self.control
        c[NEXT] = 0
        c[N_REQUESTS] = count
        c[OVER_BOUND] = 0
        c[OVER_ALLOWED] = over_allowed
        c[MODE] = mode
        c[ABORT] = Abort.NONE

    def stop(self) -> None:
        """Stop every worker at its next claim (the window ends early, marked ``Abort.STOP``)."""
        self.control[ABORT] = Abort.STOP

    def claimed(self) -> int:
        """Requests claimed so far in this window (never more than the block holds)."""
        return min(int(self.control[NEXT]), int(self.control[N_REQUESTS]), self.max_requests)

    def abort_reason(self) -> Abort:
        return Abort(int(self.control[ABORT]))

    # ---- worker side
    def mode(self) -> Mode:
        return Mode(int(self.control[MODE]))

    def aborted(self) -> bool:
        return bool(self.control[ABORT])

    def claim(self, lock: Any) -> int:
        """The index of the next request, now this caller's; -1 when the schedule is used up."""
        c = self.control
        with lock:
            i = int(c[NEXT])
            if i >= c[N_REQUESTS]:
                return -1
            c[NEXT] = i + 1
        return i

    def next_arrival(self) -> float | None:
        """The scheduled arrival of the next unclaimed request, read without the lock (a peek: the
        claim re-checks it); None when the schedule is used up. Offline requests arrive when claimed."""
        c = self.control
        i = int(c[NEXT])
        if i >= c[N_REQUESTS] or i >= self.max_requests:
            return None
        return float("-inf") if self.mode() == Mode.OFFLINE else float(self.scheduled[i])

    def claim_arrived(self, lock: Any, now: float) -> int:
        """Like ``claim``, but only a request that has arrived by ``now`` (a batching worker never
        takes one from the future); -1 when the next one has not arrived or none is left."""
        c = self.control
        offline = self.mode() == Mode.OFFLINE
        with lock:
            i = int(c[NEXT])
            if i >= c[N_REQUESTS] or (not offline and self.scheduled[i] > now):
                return -1
            c[NEXT] = i + 1
        return i

    def note_backlog(self) -> None:
        """A request was picked up later than the backlog limit: the window did not keep up."""
        self.control[ABORT] = Abort.BACKLOG

    def note_over_bound(self, lock: Any) -> None:
        """A request completed over the bound; once more did than allowed, the fail is proven."""
        c = self.control
        with lock:
            c[OVER_BOUND] += 1
            if c[OVER_BOUND] > c[OVER_ALLOWED] and not c[ABORT]:
                c[ABORT] = Abort.OVER_BOUND


@dataclass(frozen=True)
class WindowState:
    """What a block's control words say, as an observer outside the fleet (a test) reads them."""

    mode: Mode
    claimed: int
    requests: int
    abort: Abort

    @property
    def serving_server_window(self) -> bool:
        """Workers are inside an open-loop window: some of its requests claimed, not all, no abort.
        (After a server window every request is claimed; an offline window leaves some unclaimed.)"""
        return self.mode == Mode.SERVER and self.abort == Abort.NONE and 0 < self.claimed < self.requests


def read_window_state(control_bytes: bytes) -> WindowState:
    """The state in a block's first ``CONTROL_BYTES`` bytes (e.g. read from /dev/shm/psm_*)."""
    import numpy as np

    control = np.frombuffer(control_bytes[:CONTROL_BYTES], dtype=np.int64)
    return WindowState(Mode(int(control[MODE])), int(control[NEXT]), int(control[N_REQUESTS]),
                       Abort(int(control[ABORT])))


# ---- pipe messages
@dataclass(frozen=True)
class Window:
    """Harness -> worker: serve the window now in shared memory."""

    end_time: float  # monotonic seconds; offline windows stop claiming after it
    bound_s: float | None  # latency bound counted in OVER_BOUND; None: none
    backlog_limit_s: float | None  # a pick-up later than this after its arrival aborts; None: none


@dataclass(frozen=True)
class Stop:
    """Harness -> worker: leave (the process exits)."""


@dataclass(frozen=True)
class Ready:
    """Worker -> harness: pinned, memory policy set, model loaded and run once."""

    pid: int
    cpus: tuple[int, ...]  # the affinity of its main thread now


@dataclass(frozen=True)
class Done:
    """Worker -> harness: the window is over for this worker."""

    served: int  # requests this worker completed


@dataclass(frozen=True)
class Failed:
    """Worker -> harness: start-up or a window failed; the worker stops."""

    out_of_memory: bool  # an allocation failure (Python's MemoryError, ORT's bad_alloc...)
    summary: str  # one short line: the exception type and message
    traceback: str

    @classmethod
    def of(cls, exc: BaseException, traceback_text: str = "") -> Failed:
        return cls(is_out_of_memory(exc), one_line(exc), traceback_text)


ToWorker = Window | Stop
FromWorker = Ready | Done | Failed

_OOM_SIGNS = ("bad_alloc", "failed to allocate", "failed to map segment", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure: Python's MemoryError or ONNX Runtime's bad_alloc and friends."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or any(sign in text for sign in _OOM_SIGNS)


def one_line(exc: BaseException) -> str:
    """The exception in one short line; ONNX Runtime's source locations and signatures dropped."""
    text = str(exc).strip()
    text = text.splitlines()[0] if text else ""
    if "Status Message:" in text:
        text = text.rsplit("Status Message:", 1)[1].strip()
    text = re.sub(r"^\S+\.(?:cc|h|cpp):\d+ .*?\)\s+", "", text)
    return f"{type(exc).__name__}: {text[:240]}"
