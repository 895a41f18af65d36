"""experiments/reference_harness.py: its logic only (structure, latency from the scheduled time, the
search and estimate rules, no process left behind), on a tiny model; never its timings."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from experiments import reference_harness as rh
from tests.models import conv_net

ROOT = Path(__file__).resolve().parents[1]


def _workers_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _spawned_children(pid: int) -> list[psutil.Process]:
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for k in kids:
        try:
            line = " ".join(k.cmdline())
        except psutil.Error:
            continue
        if "spawn_main" in line and "resource_tracker" not in line:
            out.append(k)
    return out


def test_harness_imports_nothing_from_tuner():
    source = (ROOT / "experiments/reference_harness.py").read_text()
    assert "from tuner" not in source and "import tuner" not in source


def test_summarize_counts_unfinished_as_infinitely_late():
    scheduled = np.arange(200, dtype=float)
    done = scheduled + 0.010
    done[:3] = np.nan  # never completed
    done[3] = scheduled[3] + 300.0  # completed after the deadline (250)
    measured = np.ones(200, dtype=bool)
    measured[:1] = False  # warm-up: excluded
    record, latency = rh.summarize_run(10.0, scheduled, scheduled.copy(), done, done - scheduled, measured,
                                       deadline=250.0, bound_s=0.1, run_s=19.9)
    assert record["requests"] == 199 and record["completed"] == 196 and record["unfinished"] == 3
    assert np.isinf(latency).sum() == 3
    assert record["p99_ms"] is None and not record["held"]  # 3 of 199 > 1 %: P99 infinite
    assert record["p50_ms"] == pytest.approx(10.0)


def test_the_backlog_gap_is_the_idle_time_before_a_request_that_had_already_arrived():
    """Worker 0 serves requests 0, 1, 2 (2 ms each); request 1 arrived before 0 ended and starts
    0.5 ms after that end (a gap); request 2 arrived after 1 ended (no backlog: not a gap). Worker
    1 serves 3 and 4 back to back with 0.2 ms between them."""
    scheduled = np.array([0.000, 0.001, 0.010, 0.000, 0.000])
    start = np.array([0.000, 0.0025, 0.010, 0.000, 0.0022])
    service = np.full(5, 0.002)
    done = start + service
    worker = np.array([0, 0, 0, 1, 1])
    gaps = rh.backlog_gaps(scheduled, done, service, worker)
    assert sorted(gaps.round(6)) == [0.0002, 0.0005]
    record, _ = rh.summarize_run(5.0, scheduled, scheduled.copy(), done, service, np.ones(5, bool),
                                 deadline=1.0, bound_s=0.1, run_s=1.0, worker=worker)
    assert record["backlog_gaps"] == 2 and record["backlog_gap_p50_ms"] == pytest.approx(0.35)


def test_percentile_is_nearest_rank():
    values = np.arange(1, 101, dtype=float)
    assert rh.percentile_nearest_rank(values, 0.99) == 99.0
    assert rh.percentile_nearest_rank(np.append(values, np.inf), 0.99) == 100.0
    assert math.isnan(rh.percentile_nearest_rank(np.array([]), 0.99))


def _rec(rate, p99_ms, held):
    return {"rate": rate, "p99_ms": p99_ms, "held": held}


def test_search_rule_brackets_then_bisects():
    assert rh.next_rate([], 100.0, 0.05) == pytest.approx(85.0)
    assert rh.next_rate([_rec(85, 10, True)], 100.0, 0.05) == pytest.approx(93.5)
    assert rh.next_rate([_rec(85, 500, False)], 100.0, 0.05) == pytest.approx(68.0)
    history = [_rec(85, 10, True), _rec(93.5, 300, False)]
    assert rh.next_rate(history, 100.0, 0.05) == pytest.approx(math.sqrt(85 * 93.5))
    assert rh.next_rate([_rec(90, 10, True), _rec(93, 300, False)], 100.0, 0.05) is None
    assert rh.next_rate([_rec(1, 300, False)], 100.0, 0.05) is None  # at the floor: nothing holds


def test_estimate_interpolates_log_p99():
    history = [_rec(80, 10.0, True), _rec(100, 1000.0, False), _rec(120, None, False)]
    est = rh.estimate(history, bound_s=0.1)  # log(100) is half way between log(10) and log(1000)
    assert est["highest_held"] == 80 and est["lowest_failed"] == 100
    assert est["interpolated"] == pytest.approx(90.0) and est["rate"] == est["interpolated"]
    inf = rh.estimate([_rec(80, 10.0, True), _rec(100, None, False)], bound_s=0.1)
    assert inf["rate"] == 80 and inf["method"] == "highest held"
    assert rh.estimate([_rec(5, None, False)], bound_s=0.1)["rate"] == 0.0


def test_parse_cases_and_placetune_args(tmp_path):
    assert rh.parse_cases("squeezenet:100ms,resnet50:1s") == [("squeezenet", "onnx:squeezenet", 0.1),
                                                              ("resnet50", "onnx:resnet50", 1.0)]
    configs = rh.standard_configs([0, 1])
    assert configs["one_per_core"].placetune_args(tmp_path / "c.json") == [
        "--workers", "2", "--cores-per-worker", "1", "--intra-op", "1"]
    assert configs["both_cores"].placetune_args(tmp_path / "c.json") == [
        "--workers", "1", "--cores-per-worker", "2", "--intra-op", "2"]
    assert configs["ort_default"].placetune_args(tmp_path / "c.json") == ["--config", str(tmp_path / "c.json")]
    assert json.loads((tmp_path / "c.json").read_text())["params"] == {"workers": 1, "pin": False,
                                                                        "intra_op_threads": 0}
    assert rh.resolve_model("onnx:squeezenet").name == "light_squeezenet.onnx"


def test_run_placetune_tolerates_missing_keys(tmp_path):
    script = tmp_path / "fake.py"
    script.write_text("import json; print(json.dumps({'something_else': 1}))")
    out = rh.run_placetune([sys.executable, str(script)], log=lambda *_: None)
    assert out["throughput"] is None and "throughput" in out["problem"] and out["json"] == {"something_else": 1}


def test_real_workers_latency_from_scheduled_time_and_no_leftovers(tmp_path):
    model = conv_net(tmp_path / "m.onnx", channels=4, size=8)
    config = rh.standard_configs()["one_per_core"]
    with rh.WorkerPool(model, config) as pool:
        pids = pool.pids()
        assert len(pids) == 2 and [w["cpus"] for w in pool.workers] == [list(c) for c in config.cpus]
        probe = rh.capacity_probe(pool, 0.3, warmup_s=0.1)
        assert probe["completions"] > 0
        # the generator sleeps 0.4 s at 0.3 s in: requests scheduled meanwhile were sent late, and their
        # latency counts from their scheduled time, so it includes the generator's delay
        record, latency = rh.run_rate(pool, 100.0, run_s=1.0, warmup_s=0.2, drain_s=1.0, bound_s=0.1,
                                      rng=np.random.default_rng(1), stall=(0.3, 0.4))
        assert record["requests"] == len(latency) > 0
        assert record["send_lag_max_ms"] >= 300.0  # the stall: some request was sent >= 0.3 s late
        assert np.nanmax(latency[np.isfinite(latency)]) >= 0.3
        assert record["completed"] + record["unfinished"] == record["requests"]
        again, _ = rh.run_rate(pool, 50.0, run_s=0.5, warmup_s=0.1, drain_s=1.0, bound_s=10.0,
                               rng=np.random.default_rng(2))
        assert set(again) == set(record)
    assert _workers_alive(pids) == []


def test_search_output_structure(tmp_path):
    model = conv_net(tmp_path / "m.onnx", channels=4, size=8)
    result = rh.measure_config(model, rh.Config("ort_default", (None,), 0), bound_s=10.0, run_s=0.5,
                               warmup_s=0.1, drain_s=1.0, capacity_s=0.3, rates=[20.0, 40.0], log=lambda *_: None)
    assert [r["rate"] for r in result["rates"]] == [20.0, 40.0]
    for r in result["rates"]:
        assert {"rate", "requests", "completed", "p50_ms", "p99_ms", "held"} <= set(r)
    assert {"highest_held", "lowest_failed", "interpolated", "rate"} <= set(result["estimate"])
    assert set(result["_latencies"]) == {"rate_0", "rate_1"}
    json.dumps({k: v for k, v in result.items() if k != "_latencies"}, allow_nan=False)
    assert _workers_alive([w["pid"] for w in result["workers"]]) == []


def test_sigterm_stops_the_workers(tmp_path):
    model = conv_net(tmp_path / "m.onnx", channels=4, size=8)
    proc = subprocess.Popen([sys.executable, "-m", "experiments.reference_harness", "--model", str(model),
                             "--p99", "1s", "--configs", "one_per_core", "--run-s", "30", "--rates", "20",
                             "--out", str(tmp_path / "out")], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        workers: list[psutil.Process] = []
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            workers = _spawned_children(proc.pid)
        assert len(workers) == 2, "the harness did not start its workers"
        pids = [w.pid for w in workers]
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) != 0
        gone_by = time.monotonic() + 10
        while _workers_alive(pids) and time.monotonic() < gone_by:
            time.sleep(0.05)
        assert _workers_alive(pids) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_bracketed_ratio_is_the_geometric_mean_of_placetune_before_and_after():
    assert rh._bracketed(0.8, 1.25) == 1.0
    assert rh._bracketed(0.9, None) == 0.9 and rh._bracketed(None, None) is None
