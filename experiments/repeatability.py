"""Repeatability: the same config measured N times in a row, then interleaved with the ORT default.

    .venv/bin/python -m experiments.repeatability --model onnx:squeezenet --p99 200ms --runs 5 \\
        [--min-requests 400] --workers 2 --cores-per-worker 1 --intra-op 1 [--window 1s] [--out FILE.json]

Prints each run (throughput, its interval, verdict, P99 and its bounds, interference), the
throughput CV of the back-to-back runs, and the config's throughput ratio over the ORT default
from the interleaved rounds with its paired-bootstrap interval. The raw results are written as
JSON (default: experiments/results/repeatability-HOST-DATE.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

from tuner.bench import stats
from tuner.bench.interference import describe
from tuner.bench.measure import MeasureSettings, measure
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="onnx:squeezenet")
    ap.add_argument("--p99", default="200ms")
    ap.add_argument("--window", default="1s")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cores-per-worker", type=int, default=1)
    ap.add_argument("--intra-op", type=int, default=1)
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--min-requests", type=int, default=1000, help="floor of a window's requests")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    topo = read_topology("/")
    model = inspect_model(args.model)
    settings = MeasureSettings(p99_bound_s=parse_duration(args.p99, "--p99"), window_s=parse_duration(args.window),
                               confidence=args.confidence, min_requests=args.min_requests)
    config = Params(workers=args.workers, cores_per_worker=args.cores_per_worker, intra_op_threads=args.intra_op)
    default = Params(workers=1, pin=False, intra_op_threads=0)
    config_plan, default_plan = plan(topo, config), plan(topo, default)
    print(f"{config.label()} vs ORT default ({default.label()}), {model.name}, P99 <= {args.p99}, "
          f"{len(topo.usable_cpus)} CPUs", flush=True)

    print(f"back to back, {args.runs} runs:")
    in_a_row = [_run(config_plan, model, settings, 100 + i, f"{config.label()} run {i + 1}") for i in range(args.runs)]
    rates = [r["result"]["throughput"] for r in in_a_row]
    mean, lo, hi = stats.mean_ci(rates, args.confidence)
    print(f"  mean {mean:.1f} req/s (95% CI {lo:.1f}-{hi:.1f}), CV {stats.cv(rates):.1%}, "
          f"range {min(rates):.1f}-{max(rates):.1f}")

    print(f"interleaved with the ORT default, {args.runs} rounds:")
    interleaved = []
    for i in range(args.runs):
        pair = [(config_plan, config.label()), (default_plan, "ORT default")]
        for p, name in (pair if i % 2 == 0 else pair[::-1]):
            interleaved.append(_run(p, model, settings, 200 + 2 * i + (name == "ORT default"),
                                    f"{name} round {i + 1}"))
    a = [r["result"]["throughput"] for r in interleaved if not r["tag"].startswith("ORT default")]
    b = [r["result"]["throughput"] for r in interleaved if r["tag"].startswith("ORT default")]
    ratio, rlo, rhi = stats.ratio_ci(a, b, args.confidence)
    print(f"  {config.label()}: {ratio:.2f}x ORT default ({round(args.confidence * 100)}% CI {rlo:.2f}-{rhi:.2f}); "
          f"CV config {stats.cv(a):.1%}, ORT default {stats.cv(b):.1%}")

    out = args.out or Path("experiments/results") / f"repeatability-{platform.node()}-{date.today()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "config": config.to_dict(), "model": args.model, "p99": args.p99, "window": args.window,
        "confidence": args.confidence, "min_requests": args.min_requests, "cpus": len(topo.usable_cpus),
        "in_a_row": {"throughputs": rates, "mean": mean, "ci": [lo, hi], "cv": stats.cv(rates)},
        "interleaved": {"config": a, "ort_default": b, "ratio": ratio, "ci": [rlo, rhi]},
        "runs": in_a_row + interleaved,
    }, indent=1, default=float) + "\n")
    print(f"raw results: {out}")


if __name__ == "__main__":
    main()
