"""The worker <-> harness protocol (tuner.bench.protocol), in one process: its messages survive the
pipe, its shared block's layout holds together, and the worker's side of a window (the real
``worker._serve`` loop, with a stand-in session) and the harness's side read the same words."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import pickle
import threading
import time
from multiprocessing import shared_memory

import numpy as np
import pytest

from tuner.bench import protocol as p
from tuner.bench.launcher import _expect
from tuner.bench.worker import _serve
from tuner.errors import WorkerError

MESSAGES = [
    p.Window(end_time=12.5, bound_s=0.02, backlog_limit_s=None),
    p.Window(end_time=1.0, bound_s=None, backlog_limit_s=3.0),
    p.Stop(),
    p.Ready(pid=4242, cpus=(0, 2, 4)),
    p.Done(served=17),
    p.Failed(out_of_memory=True, summary="MemoryError: ", traceback="Traceback ..."),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_crosses_a_pipe_unchanged(message):
    parent, child = mp.get_context("spawn").Pipe()
    with parent, child:
        child.send(message)
        assert parent.recv() == message
    assert pickle.loads(pickle.dumps(message)) == message


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_messages_are_frozen(message):
    fields = dataclasses.fields(message)
    if fields:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(message, fields[0].name, None)


def test_a_message_the_harness_did_not_expect_is_a_worker_error_naming_both():
    assert _expect(p.Done(3), p.Done, 0).served == 3
    with pytest.raises(WorkerError, match="worker 1 sent Ready where Done was due"):
        _expect(p.Ready(1, (0,)), p.Done, 1)


@pytest.mark.parametrize("exc, oom", [
    (MemoryError(), True),
    (RuntimeError("std::bad_alloc"), True),
    (RuntimeError("Failed to allocate memory for requested buffer of size 67108864"), True),
    (OSError("Cannot allocate memory"), True),
    (ValueError("input x has the wrong shape"), False),
])
def test_a_failure_says_whether_memory_ran_out(exc, oom):
    failed = p.Failed.of(exc, "tb")
    assert failed.out_of_memory is oom and failed.traceback == "tb"
    assert failed.summary.startswith(type(exc).__name__ + ": ")


def test_a_failure_summary_is_one_short_line_without_ort_source_locations():
    exc = RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while "
                       "running Conv node. Status Message: /onnxruntime/core/framework/bfc_arena.cc:376 "
                       "void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool) Failed to allocate "
                       "memory\nsecond line")
    summary = p.one_line(exc)
    assert summary == "RuntimeError: Failed to allocate memory"
    assert len(p.one_line(ValueError("x" * 1000))) <= len("ValueError: ") + 240


def test_control_words_are_distinct_and_inside_the_control_block():
    words = [p.NEXT, p.N_REQUESTS, p.OVER_BOUND, p.ABORT, p.MODE, p.OVER_ALLOWED]
    assert len(set(words)) == len(words)
    assert all(0 <= w < p.CONTROL_WORDS for w in words)
    assert p.Abort.NONE == 0, "a zeroed block (a new one) is a window that has not aborted"


@pytest.mark.parametrize("max_requests", [0, 1, 7, 1000])
def test_the_request_arrays_tile_the_block_in_order_and_aligned(max_requests):
    offsets = p.request_offsets(max_requests)
    position = p.CONTROL_BYTES
    for name, dtype in p.REQUEST_ARRAYS:
        itemsize = np.dtype(dtype).itemsize
        assert offsets[name] == position and position % itemsize == 0, name
        position += max_requests * itemsize
    assert position == p.block_size(max_requests) == p.SharedBuffers.size(max_requests)
    assert p.max_requests_of(p.block_size(max_requests)) == max_requests


def test_the_views_do_not_overlap_and_writes_stay_in_their_array():
    n = 5
    block = bytearray(p.block_size(n))
    b = p.SharedBuffers(memoryview(block), n)
    views = [b.control, b.scheduled, b.completed, b.started, b.worker]
    for i, one in enumerate(views):
        for other in views[i + 1:]:
            assert not np.shares_memory(one, other)
    b.scheduled[:] = 1.5
    b.worker[:] = 7
    assert not b.control.any() and np.isnan(b.completed).sum() == 0 and not b.completed.any()
    assert (np.frombuffer(block, dtype=np.int16, offset=p.request_offsets(n)["worker"]) == 7).all()


@pytest.fixture
def block():
    """A real shared block, attached twice in this process: the harness's view and a worker's."""
    n = 8
    shm = shared_memory.SharedMemory(create=True, size=p.block_size(n))
    attached = shared_memory.SharedMemory(name=shm.name)
    harness, worker = p.SharedBuffers(shm.buf, n), p.SharedBuffers(attached.buf, n)
    yield harness, worker
    del harness, worker
    attached.close()
    shm.close()
    shm.unlink()


def test_a_window_the_harness_opens_is_claimed_once_per_request_by_workers(block):
    harness, worker = block
    harness.start_window(5, p.Mode.SERVER, over_allowed=5)
    assert worker.mode() == p.Mode.SERVER and not worker.aborted()
    lock = threading.Lock()
    claims = [worker.claim(lock) for _ in range(7)]
    assert claims == [0, 1, 2, 3, 4, -1, -1]
    assert harness.claimed() == 5 and harness.abort_reason() == p.Abort.NONE


def test_more_over_bound_requests_than_allowed_abort_the_window_for_everyone(block):
    harness, worker = block
    harness.start_window(8, p.Mode.SERVER, over_allowed=2)
    lock = threading.Lock()
    worker.note_over_bound(lock)
    worker.note_over_bound(lock)
    assert not harness.abort_reason()
    worker.note_over_bound(lock)
    assert harness.abort_reason() == p.Abort.OVER_BOUND and worker.aborted()
    worker.note_backlog()
    assert harness.abort_reason() == p.Abort.BACKLOG


def test_a_new_window_clears_the_last_ones_results_and_abort(block):
    harness, worker = block
    harness.start_window(3, p.Mode.OFFLINE, over_allowed=3)
    worker.completed[:3] = 1.0
    worker.worker[:3] = 2
    harness.stop()
    assert worker.aborted() and harness.abort_reason() == p.Abort.STOP
    harness.start_window(2, p.Mode.SERVER, over_allowed=0)
    assert not worker.aborted() and worker.mode() == p.Mode.SERVER and harness.claimed() == 0
    assert np.isnan(worker.completed[:2]).all() and (worker.worker[:2] == -1).all()
    assert worker.completed[2] == 1.0, "only the new window's requests are cleared"


class _InstantSession:
    """Stands in for an ONNX Runtime session: ``run`` returns at once and counts its calls."""

    def __init__(self):
        self.calls = 0

    def run(self, outputs, feeds):
        self.calls += 1


def _served_window(block, count: int, scheduled: np.ndarray, window: p.Window, over_allowed: int | None = None,
                   mode: p.Mode = p.Mode.SERVER) -> tuple[int, _InstantSession]:
    harness, worker = block
    harness.start_window(count, mode, count if over_allowed is None else over_allowed)
    harness.scheduled[:count] = scheduled
    session = _InstantSession()
    return _serve(session, {}, worker, threading.Lock(), 3, window), session


def test_the_worker_loop_serves_a_window_the_harness_reads_back(block):
    harness, _ = block
    past = time.monotonic() - 1.0
    served, session = _served_window(block, 6, past + np.arange(6) * 0.01, p.Window(0.0, 10.0, None))
    assert served == session.calls == 6 == harness.claimed()
    done = harness.completed[:6]
    assert (harness.started[:6] <= done).all() and (harness.scheduled[:6] < harness.started[:6]).all()
    assert (harness.worker[:6] == 3).all() and harness.abort_reason() == p.Abort.NONE


def test_the_worker_loop_stops_once_the_window_failure_is_proven(block):
    harness, _ = block
    past = time.monotonic() - 1.0
    served, _ = _served_window(block, 8, np.full(8, past), p.Window(0.0, 0.001, None), over_allowed=2)
    assert served == 3, "the third request over the bound proves the fail; no fourth is claimed"
    assert harness.abort_reason() == p.Abort.OVER_BOUND and np.isnan(harness.completed[3:8]).all()


def test_the_worker_loop_stops_a_backlog_past_the_limit(block):
    harness, _ = block
    served, _ = _served_window(block, 8, np.full(8, time.monotonic() - 60.0), p.Window(0.0, None, 1.0))
    assert served == 1 and harness.abort_reason() == p.Abort.BACKLOG


def test_the_worker_loop_offline_claims_until_the_end_time_and_stamps_arrivals(block):
    harness, _ = block
    served, session = _served_window(block, 8, np.nan, p.Window(time.monotonic() - 1.0, None, None),
                                     mode=p.Mode.OFFLINE)
    assert served == session.calls == 0, "past its end time an offline window serves nothing"
    served, _ = _served_window(block, 4, np.nan, p.Window(time.monotonic() + 600.0, None, None),
                               mode=p.Mode.OFFLINE)
    assert served == 4 and not np.isnan(harness.scheduled[:4]).any()


def test_an_observer_reading_the_block_head_sees_when_workers_are_inside_a_server_window(block):
    harness, worker = block
    head = harness.control.tobytes  # what a test reads from /dev/shm/psm_*: the first CONTROL_BYTES
    lock = threading.Lock()
    harness.start_window(3, p.Mode.SERVER, over_allowed=3)
    assert not p.read_window_state(head()).serving_server_window, "nothing claimed yet"
    worker.claim(lock)
    state = p.read_window_state(head())
    assert state == p.WindowState(p.Mode.SERVER, 1, 3, p.Abort.NONE) and state.serving_server_window
    worker.claim(lock)
    worker.claim(lock)
    assert not p.read_window_state(head()).serving_server_window, "every request claimed: the window is ending"
    harness.start_window(3, p.Mode.OFFLINE, over_allowed=3)
    worker.claim(lock)
    assert not p.read_window_state(head()).serving_server_window
    harness.start_window(3, p.Mode.SERVER, over_allowed=3)
    worker.claim(lock)
    harness.stop()
    assert p.read_window_state(head()).abort == p.Abort.STOP and not p.read_window_state(head()).serving_server_window
