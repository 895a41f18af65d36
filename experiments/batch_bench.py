"""Batched vs unbatched throughput under a P99 bound, interleaved, with a ratio interval.

    python -m experiments.batch_bench --case onnx:squeezenet:400ms --case onnx:squeezenet:100ms \\
        --rounds 3 --out experiments/results/batch-DATE

For each case (model and bound), each round measures the unbatched config and the batched one
(``tuner.bench.measure.measure``, the rate search a trial uses), in alternating order (AB, BA, ...)
so that the load of other processes on a shared machine falls on both alike; the ratio of mean
throughputs batched/unbatched comes with its 95% interval (``tuner.bench.stats.ratio_ci``, Fieller).
Every measurement's full TrialResult goes to ``OUT/raw.jsonl``, the summary to ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tuner.bench.measure import MeasureSettings, measure
from tuner.bench.model import inspect_model
from tuner.bench.stats import ratio_ci
from tuner.machine.placement import Params, plan
from tuner.machine.sysfs import read_topology
from tuner.units import parse_duration


def _case(text: str) -> tuple[str, float]:
    model, _, bound = text.rpartition(":")
    return model, parse_duration(bound, "--case")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", required=True, help="MODEL:BOUND, e.g. onnx:squeezenet:400ms")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="workers of both configs (1 core each)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0)
    parser.add_argument("--window", default="1s")
    parser.add_argument("--confidence", type=float, default=0.8, help="of each window's P99 verdict")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    topo = read_topology()
    configs = {"unbatched": Params(workers=args.workers),
               "batched": Params(workers=args.workers, max_batch=args.max_batch,
                                 batch_timeout_ms=args.batch_timeout_ms)}
    summary = []
    with (args.out / "raw.jsonl").open("a") as raw:
        for case in args.case:
            model, bound_s = _case(case)
            info = inspect_model(model)
            settings = MeasureSettings(p99_bound_s=bound_s, window_s=parse_duration(args.window, "--window"),
                                       confidence=args.confidence)
            got: dict[str, list[float]] = {name: [] for name in configs}
            for r in range(args.rounds):
                order = list(configs) if r % 2 == 0 else list(reversed(configs))
                for name in order:
                    began = time.monotonic()
                    result = measure(plan(topo, configs[name]), info, settings)
                    got[name].append(result.throughput)
                    raw.write(json.dumps({"case": case, "round": r, "config": name,
                                          "label": configs[name].label(), "wall_s": time.monotonic() - began,
                                          "result": result.to_dict()}) + "\n")
                    raw.flush()
                    print(f"{case} round {r} {name:9} {result.throughput:8.1f} req/s  p99 {result.p99_ms:.1f} ms"
                          f"  ({time.monotonic() - began:.0f} s)", flush=True)
            ratio, low, high = ratio_ci(got["batched"], got["unbatched"])
            summary.append({"case": case, "unbatched": configs["unbatched"].label(),
                            "batched": configs["batched"].label(), "throughput": got,
                            "ratio": ratio, "ci95": [low, high]})
            print(f"{case}: batched/unbatched {ratio:.2f} [{low:.2f}, {high:.2f}]", flush=True)
            (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")  # after each case


if __name__ == "__main__":
    main()
