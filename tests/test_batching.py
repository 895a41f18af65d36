"""Dynamic batching: the batcher's decisions (logic, a fake clock), batched outputs against unbatched
ones (ONNX Runtime), a real batched window, and the one-line refusal of a model that cannot batch."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.models import conv_net
from tests.test_bad_input import CLI, ENV
from tuner.bench.batchable import check_batching, stack
from tuner.bench.batcher import Action, gather, next_step
from tuner.bench.model import inspect_model


class FakeQueue:
    """A shared FIFO of scheduled arrivals, claimed only once arrived (like ``SharedBuffers.claim_arrived``),
    and a clock that moves only when the batcher sleeps."""

    def __init__(self, arrivals: list[float], now: float):
        self.arrivals, self.next, self.now, self.sleeps = arrivals, 0, now, []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds

    def next_arrival(self) -> float | None:
        return self.arrivals[self.next] if self.next < len(self.arrivals) else None

    def claim_arrived(self, now: float) -> int:
        if self.next >= len(self.arrivals) or self.arrivals[self.next] > now:
            return -1
        self.next += 1
        return self.next - 1

    def gather(self, max_batch: int, timeout_s: float) -> list[int]:
        first = self.claim_arrived(self.now)
        assert first >= 0
        return gather(first, self.now, max_batch, timeout_s, clock=self.clock, sleep=self.sleep,
                      next_arrival=self.next_arrival, claim_arrived=self.claim_arrived)


def test_a_batch_never_holds_a_request_that_had_not_arrived_when_it_ran():
    arrivals = [0.0, 0.0004, 0.0009, 0.0011, 0.0030, 0.0031]
    q = FakeQueue(arrivals, now=0.0)
    batches = []
    while q.next < len(arrivals):
        q.now = max(q.now, arrivals[q.next])  # the worker picks up the next request at its arrival
        batches.append((q.gather(max_batch=8, timeout_s=0.001), q.now))
    for batch, ran_at in batches:
        assert all(arrivals[i] <= ran_at for i in batch)
    assert [b for b, _ in batches] == [[0, 1, 2], [3], [4, 5]]  # 3 arrived after the first batch's 1 ms


def test_an_idle_worker_never_waits_longer_than_the_batch_timeout():
    q = FakeQueue([0.0, 10.0], now=0.0)  # the second request arrives long after the timeout
    assert q.gather(max_batch=4, timeout_s=0.002) == [0]
    assert q.now - 0.0 <= 0.002 and sum(q.sleeps) <= 0.002


def test_a_full_batch_runs_at_once_and_waits_for_nothing():
    q = FakeQueue([0.0] * 5, now=1.0)
    assert q.gather(max_batch=4, timeout_s=0.005) == [0, 1, 2, 3]
    assert q.sleeps == []


def test_the_batcher_wakes_at_the_next_arrival_when_it_comes_before_the_deadline():
    step = next_step(now=1.0, held=1, max_batch=4, opened_at=1.0, batch_timeout_s=0.005, next_arrival=1.002)
    assert step.action is Action.WAIT and step.until == pytest.approx(1.002)
    step = next_step(now=1.0, held=1, max_batch=4, opened_at=1.0, batch_timeout_s=0.005, next_arrival=1.009)
    assert step.action is Action.WAIT and step.until == pytest.approx(1.005)
    assert next_step(1.0, 1, 4, 1.0, 0.005, None).action is Action.RUN  # the schedule is used up
    assert next_step(1.006, 1, 4, 1.0, 0.005, 1.009).action is Action.RUN  # past the deadline


def test_batched_outputs_equal_unbatched_outputs(tmp_path, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setenv("PLACETUNE_CACHE_DIR", str(tmp_path / "cache"))
    info = inspect_model(str(conv_net(tmp_path / "conv.onnx")))  # fixed at batch 1
    check = check_batching(info)
    assert check.batchable and check.path != info.path
    one = ort.InferenceSession(info.path, providers=["CPUExecutionProvider"])
    batched = ort.InferenceSession(check.path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    requests = [{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(5)]
    together = batched.run(None, stack(requests))[0]
    alone = np.concatenate([one.run(None, r)[0] for r in requests])
    assert together.shape == (5, 10)
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
    assert not np.allclose(alone[0], alone[1])  # different requests: the comparison can fail


def _folded_batch_model(path: Path) -> Path:
    """x[1,2,4] reshaped to [2,4] by a constant shape: its batch is folded away, it cannot batch."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    shape = numpy_helper.from_array(np.array([2, 4], dtype=np.int64), "shape")
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "folded", [x], [y], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_a_model_that_cannot_batch_refuses_max_batch_above_1_in_one_line(tmp_path):
    model = _folded_batch_model(tmp_path / "folded.onnx")
    env = {**ENV, "PLACETUNE_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([*CLI, "measure", "--model", str(model), "--max-batch", "4", "--batch-timeout", "1",
                           "--window", "0.1s"], capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot batch" in lines[0] and "max_batch 1" in lines[0], done.stderr


def test_a_batched_window_serves_every_request_from_its_scheduled_arrival(tmp_path, monkeypatch):
    from tuner.bench.launcher import Launcher
    from tuner.bench.loadgen import run_server_window
    from tuner.machine.placement import Params, plan
    from tuner.machine.sysfs import read_topology

    monkeypatch.setenv("PLACETUNE_CACHE_DIR", str(tmp_path / "cache"))
    info = inspect_model(str(conv_net(tmp_path / "conv.onnx", channels=4, size=8)))
    the_plan = plan(read_topology(), Params(workers=1, max_batch=4, batch_timeout_ms=1.0))
    with Launcher(the_plan, info) as fleet:
        assert fleet.model.batch_model is not None  # the worker loads the rewritten model
        result = run_server_window(fleet, offered_rate=300.0, duration_s=0.5, min_requests=100, bound_s=None,
                                   unloaded_service_s=0.001, rng=np.random.default_rng(0))
        n = result.completed
        scheduled, started, completed = (a[:n].copy() for a in (fleet.buffers.scheduled, fleet.buffers.started,
                                                                fleet.buffers.completed))
    assert n >= 100
    assert np.all(started >= scheduled)  # nothing was run before it arrived
    assert np.all(completed >= started)
    # requests shared a session.run (same completion time) at least once: batches formed
    assert len(np.unique(completed)) < n


@pytest.mark.parametrize("fmt", ["json", "yaml", "env", "systemd", "docker", "k8s", "numactl"])
def test_every_export_format_carries_the_batch_settings(fmt):
    from tests.test_export import config_document, two_workers
    from tuner.results import export

    document = config_document(replace(two_workers(), max_batch=8, batch_timeout_ms=0.5))
    text = export.render(document, fmt)
    if fmt in ("json", "yaml"):
        assert "max_batch" in text and "batch_timeout_ms" in text
    else:  # the launch formats hand them to the serving process
        assert "PLACETUNE_MAX_BATCH=8" in text.replace('"', "").replace("'", "") or (
            "PLACETUNE_MAX_BATCH" in text and "value: '8'" in text), text
        assert "PLACETUNE_BATCH_TIMEOUT_MS" in text


def test_apply_returns_the_batch_settings_with_the_session_options():
    from tests.test_export import config_document, two_workers
    from tuner import deploy

    document = config_document(replace(two_workers(), max_batch=4, batch_timeout_ms=2.0))
    before = os.sched_getaffinity(0)
    try:
        options, batching = deploy.apply(document, worker_index=0, with_batching=True)
    finally:
        deploy.pin_every_thread(tuple(before))  # every thread of this test process, as it was
    assert batching == deploy.Batching(max_batch=4, batch_timeout_ms=2.0)
    assert options.intra_op_num_threads == 1
    assert deploy.batching({**document, "params": {k: v for k, v in document["params"].items()
                                                   if k not in ("max_batch", "batch_timeout_ms")}}) == deploy.Batching()
