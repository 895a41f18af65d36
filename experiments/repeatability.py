"""Repeatability: the same config measured N times in a row, then interleaved with the ORT default.

    .venv/bin/python -m experiments.repeatability --model onnx:squeezenet --p99 200ms --runs 5 \\
        [--min-requests 400] --workers 2 --cores-per-worker 1 --intra-op 1 [--window 1s] [--out FILE.json] \\
        [--back-to-back N] [--stop-after 2m]

Prints each run (throughput, its interval, verdict, P99 and its bounds, interference), the
throughput CV of the back-to-back runs, and the config's throughput ratio over the ORT default
from the interleaved rounds with its paired-bootstrap interval. The raw results are written as
JSON (default: experiments/results/repeatability-HOST-DATE.json), rewritten after every run
(``"complete": false`` until the last), so a run cut short (``--stop-after``: no run starts that
would end after it; SIGTERM) keeps what it measured. ``--back-to-back 0`` runs the interleaved
rounds only.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

from tuner.bench import stats
from tuner.bench.interference import describe
from tuner.bench.measure import SCENARIOS, MeasureSettings, measure
from tuner.bench.model import inspect_model
from tuner.machine.placement import Params, plan
from tuner.machine.sysfs import read_topology
from tuner.units import parse_duration


def _run(the_plan, model, settings: MeasureSettings, seed: int, tag: str) -> dict:
    began = time.monotonic()
    r = measure(the_plan, model, replace(settings, seed=seed))
    lo, hi = r.throughput_ci
    print(f"  {tag:<28} {r.throughput:8.1f} req/s [{lo:7.1f}, {hi:7.1f}]  {r.verdict:<9} "
          f"P99 {r.p99_ms:6.2f} ms [{r.p99_ci_ms[0]:.2f}, {r.p99_ci_ms[1]:.2f}]  "
          f"{describe(r.interference.to_dict())}  ({time.monotonic() - began:.0f} s)", flush=True)
    return {"tag": tag, "seed": seed, "result": r.to_dict()}


def _terminate(signum, _frame) -> None:
    raise SystemExit(128 + signum)  # unwinds measure(): its workers are stopped on the way out


class _Clock:
    """``--stop-after``: whether one more run (as long as the longest so far) still ends in time."""

    def __init__(self, stop_after_s: float | None):
        self.began, self.stop_after_s, self.longest_s = time.monotonic(), stop_after_s, 0.0

    def room(self) -> bool:
        return self.stop_after_s is None or time.monotonic() - self.began + self.longest_s <= self.stop_after_s

    def ran(self, seconds: float) -> None:
        self.longest_s = max(self.longest_s, seconds)


def _timed(clock: _Clock, *args) -> dict:
    began = time.monotonic()
    run = _run(*args)
    clock.ran(time.monotonic() - began)
    return run


def _document(args, config: Params, cpus: int, in_a_row: list[dict], interleaved: list[dict], complete: bool) -> dict:
    """The raw results so far, with the back-to-back CV and the interleaved ratio when there are enough runs."""
    rates = [r["result"]["throughput"] for r in in_a_row]
    a = [r["result"]["throughput"] for r in interleaved if not r["tag"].startswith("ORT default")]
    b = [r["result"]["throughput"] for r in interleaved if r["tag"].startswith("ORT default")]
    pairs = min(len(a), len(b))
    doc = {"config": config.to_dict(), "model": args.model, "p99": args.p99, "window": args.window,
           "scenario": args.scenario,
           "confidence": args.confidence, "min_requests": args.min_requests, "cpus": cpus, "complete": complete,
           "runs": in_a_row + interleaved}
    if len(rates) >= 2:
        mean, lo, hi = stats.mean_ci(rates, args.confidence)
        doc["in_a_row"] = {"throughputs": rates, "mean": mean, "ci": [lo, hi], "cv": stats.cv(rates)}
    if pairs >= 2:
        ratio, rlo, rhi = stats.ratio_ci(a[:pairs], b[:pairs], args.confidence)
        doc["interleaved"] = {"config": a, "ort_default": b, "ratio": ratio, "ci": [rlo, rhi]}
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="onnx:squeezenet")
    ap.add_argument("--p99", default="200ms")
    ap.add_argument("--window", default="1s")
    ap.add_argument("--scenario", default="server", choices=SCENARIOS)
    ap.add_argument("--runs", type=int, default=5, help="interleaved rounds (and back-to-back runs, by default)")
    ap.add_argument("--back-to-back", type=int, default=None, help="runs in a row first (default: --runs; 0: none)")
    ap.add_argument("--stop-after", default=None, help="start no run that would end after this long, e.g. 2m")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cores-per-worker", type=int, default=1)
    ap.add_argument("--intra-op", type=int, default=1)
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--min-requests", type=int, default=1000, help="floor of a window's requests")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    back_to_back = args.runs if args.back_to_back is None else args.back_to_back
    clock = _Clock(parse_duration(args.stop_after, "--stop-after") if args.stop_after else None)

    topo = read_topology("/")
    model = inspect_model(args.model)
    settings = MeasureSettings(scenario=args.scenario, p99_bound_s=parse_duration(args.p99, "--p99"),
                               window_s=parse_duration(args.window), confidence=args.confidence,
                               min_requests=args.min_requests)
    config = Params(workers=args.workers, cores_per_worker=args.cores_per_worker, intra_op_threads=args.intra_op)
    default = Params(workers=1, pin=False, intra_op_threads=0)
    config_plan, default_plan = plan(topo, config), plan(topo, default)
    out = args.out or Path("experiments/results") / f"repeatability-{platform.node()}-{date.today()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cpus = len(topo.usable_cpus)
    in_a_row: list[dict] = []
    interleaved: list[dict] = []

    def save(complete: bool = False) -> dict:
        doc = _document(args, config, cpus, in_a_row, interleaved, complete)
        out.write_text(json.dumps(doc, indent=1, default=float) + "\n")
        return doc

    print(f"{config.label()} vs ORT default ({default.label()}), {model.name}, P99 <= {args.p99}, "
          f"{cpus} CPUs", flush=True)
    if back_to_back:
        print(f"back to back, {back_to_back} runs:")
    for i in range(back_to_back):
        if not clock.room():
            break
        in_a_row.append(_timed(clock, config_plan, model, settings, 100 + i, f"{config.label()} run {i + 1}"))
        save()
    doc = save()
    if "in_a_row" in doc:
        r = doc["in_a_row"]
        print(f"  mean {r['mean']:.1f} req/s (95% CI {r['ci'][0]:.1f}-{r['ci'][1]:.1f}), CV {r['cv']:.1%}, "
              f"range {min(r['throughputs']):.1f}-{max(r['throughputs']):.1f}")

    print(f"interleaved with the ORT default, {args.runs} rounds:")
    for i in range(args.runs):
        pair = [(config_plan, config.label()), (default_plan, "ORT default")]
        for p, name in (pair if i % 2 == 0 else pair[::-1]):
            if not clock.room():
                break
            interleaved.append(_timed(clock, p, model, settings, 200 + 2 * i + (name == "ORT default"),
                                      f"{name} round {i + 1}"))
            save()
    doc = save(complete=len(interleaved) == 2 * args.runs and len(in_a_row) == back_to_back)
    if "interleaved" in doc:
        r = doc["interleaved"]
        print(f"  {config.label()}: {r['ratio']:.2f}x ORT default ({round(args.confidence * 100)}% CI "
              f"{r['ci'][0]:.2f}-{r['ci'][1]:.2f}); CV config {stats.cv(r['config']):.1%}, "
              f"ORT default {stats.cv(r['ort_default']):.1%}")
    print(f"raw results: {out}" + ("" if doc["complete"] else " (cut short: --stop-after)"))


if __name__ == "__main__":
    sys.exit(main())
