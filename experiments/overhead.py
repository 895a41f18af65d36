"""Harness overhead: a near-zero-cost model (one Add on 16 floats) through placetune's workers and
load generator, against session.run in a plain loop in one process.

    .venv/bin/python -m experiments.overhead [--out experiments/results/overhead-HOST-DATE.json]

Reports, for 1 and 2 workers: the closed-loop request rate (dispatch ceiling), the highest open-loop
rate that kept up, and P50/P99 at a low rate (100 req/s), each beside the plain loop's numbers from the
same run: a busy loop for the closed-loop figures, a loop that sleeps until each Poisson arrival for
the open-loop ones (so the OS's wake-up cost is not charged to the harness).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np


def _warm_session(model_path: str):
    """One single-threaded session on the null model, run 1,000 times first."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    feeds = {"x": np.ones((1, 16), dtype=np.float32)}
    for _ in range(1000):
        session.run(None, feeds)
    return session, feeds


def plain_loop(model_path: str, seconds: float) -> dict:
    session, feeds = _warm_session(model_path)
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        session.run(None, feeds)
        latencies.append(time.monotonic() - t)
    lat = np.array(latencies)
    return {"rate": len(lat) / seconds, "p50_us": float(np.percentile(lat, 50) * 1e6),
            "p99_us": float(np.percentile(lat, 99) * 1e6)}


def plain_sleep_loop(model_path: str, rate: float, seconds: float) -> dict:
    """The same open-loop schedule served in one process: sleep until each Poisson arrival, run, and
    time from the scheduled arrival. What the OS costs to wake an idle server, without the harness."""
    session, feeds = _warm_session(model_path)
    rng = np.random.default_rng(0)
    arrivals = time.monotonic() + 0.05 + np.cumsum(rng.exponential(1 / rate, int(rate * seconds)))
    latencies = []
    for due in arrivals:
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        session.run(None, feeds)
        latencies.append(time.monotonic() - due)
    lat = np.array(latencies)
    return {"rate": rate, "p50_us": float(np.percentile(lat, 50) * 1e6), "p99_us": float(np.percentile(lat, 99) * 1e6)}


def harness(model_path: str, workers: int, seconds: float) -> dict:
    from tuner.bench.launcher import Launcher
    from tuner.bench.loadgen import run_offline_window, run_server_window
    from tuner.bench.model import inspect_model
    from tuner.machine.placement import Params, plan
    from tuner.machine.sysfs import read_topology

    info = inspect_model(model_path)
    the_plan = plan(read_topology("/"), Params(workers=workers))
    rng = np.random.default_rng(0)
    with Launcher(the_plan, info) as fleet:
        run_offline_window(fleet, 0.5)
        closed = run_offline_window(fleet, seconds)
        service = closed.mean_service_ms / 1000
        low = run_server_window(fleet, 100.0, seconds, 200, None, service, rng)
        best_kept = 0.0
        lo, hi = 0.0, closed.achieved_rate * 1.2
        rate = closed.achieved_rate * 0.9
        windows = []
        for _ in range(7):
            w = run_server_window(fleet, rate, seconds, 1000, None, service, rng)
            windows.append({"offered": rate, "achieved": w.achieved_rate, "kept_up": w.kept_up, "p99_ms": w.p99_ms})
            if w.kept_up:
                best_kept, lo = max(best_kept, w.achieved_rate), rate
            else:
                hi = rate
            rate = (lo + hi) / 2
    return {"workers": workers, "closed_loop_rate": closed.achieved_rate,
            "closed_loop_p50_us": closed.p50_ms * 1000, "closed_loop_service_us": closed.mean_service_ms * 1000,
            "open_loop_max_rate_kept_up": best_kept, "open_loop_100rps_p50_us": low.p50_ms * 1000,
            "open_loop_100rps_p99_us": low.p99_ms * 1000, "windows": windows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from tests.models import null_model

    with tempfile.TemporaryDirectory() as tmp:
        model = str(null_model(Path(tmp) / "null.onnx"))
        result = {"host": platform.node(), "date": date.today().isoformat(), "seconds": args.seconds,
                  "plain_loop": plain_loop(model, args.seconds),
                  "plain_sleep_loop_100rps": plain_sleep_loop(model, 100.0, args.seconds),
                  "harness": [harness(model, w, args.seconds) for w in (1, 2)]}
    plain = result["plain_loop"]
    for h in result["harness"]:
        h["added_p50_us_closed_loop"] = h["closed_loop_p50_us"] - plain["p50_us"]
        h["added_p50_us_open_loop_100rps"] = h["open_loop_100rps_p50_us"] - result["plain_sleep_loop_100rps"]["p50_us"]
        h["added_p99_us_open_loop_100rps"] = h["open_loop_100rps_p99_us"] - result["plain_sleep_loop_100rps"]["p99_us"]
    text = json.dumps(result, indent=1)
    print(text)
    out = Path(args.out or f"experiments/results/overhead-{result['host']}-{result['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
