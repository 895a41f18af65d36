"""What a study's baseline figures would be if each baseline's replay were done again at the study's
end, with the whole study's tail pool instead of the pool of its moment: an experiment on the
simulator, the tuner unchanged.

A study measures its baselines first; a one-worker baseline's replay then borrows its stalls'
mean excess from a pool of the two many-worker baselines' 100-200 excesses, where later replays
borrow from 1,000-1,800 (``results/sim-2026-12-07-pool/trace-16-v25/``). This runs default
studies (``experiments.simulate.run_seed``, ``--replay``), keeps every measurement's last replay
(``tuner.bench.measure._replayed``: its windows and its pool key), and replays each baseline's
study measurement again after the race, on the same calm service times.

    python -m experiments.final_pool --machine 16 --seeds 20 --jobs 2 --json

Prints per class of baseline: the median over seeds of replayed / true (the precise truth) at the
time and at the end, for the measurements whose reported figure is their replay, and 10%-90%.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from experiments import simulate
from experiments.sim import machines
from experiments.sim.presets import PRESETS
from experiments.sim.truth import PRECISE, true_throughput


def run(machine: str, seed: int) -> dict:
    import tuner.bench.measure as ms

    topology = machines.load(machine)
    calls: list = []
    original = ms._replayed

    def spy(plan, windows, settings, key):
        answer = original(plan, windows, settings, key)
        calls.append((key, plan, list(windows), settings, answer))
        return answer

    ms._replayed = spy
    try:
        facts = simulate.run_seed(simulate.Setup(machine, "vm", replay=True), seed, topology)
    finally:
        ms._replayed = original
    last, order = {}, []
    for call in calls:
        if call[0] not in last:
            order.append(call[0])
        last[call[0]] = call
    classes = simulate._baseline_classes(topology)
    seen, out = set(), {}
    for key in order:
        _key, plan, windows, settings, answer = last[key]
        cls = classes.get(plan.params)
        if cls is None or cls in seen:
            continue
        seen.add(cls)  # a class's first measurement is the study's; the race's come after
        if answer is None or answer.rate <= 0 or facts["reported_path"].get(cls) != "replay":
            continue
        again = original(plan, windows, settings, key)
        truth = true_throughput(plan.params, topology, PRESETS["vm"], simulate.BOUND_S, precision=PRECISE)
        out[cls] = {"then": answer.rate / truth, "end": again.rate / truth,
                    "then_width": float(np.log(answer.high / answer.low)) if answer.low > 0 else None,
                    "end_width": float(np.log(again.high / again.low)) if again.low > 0 else None,
                    "reported": facts["reported_over_true"].get(cls)}
    return {"seed": seed, "classes": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machine", default="16")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(run, [args.machine] * args.seeds, range(args.seeds)))
    summary = {}
    for cls in sorted({c for r in rows for c in r["classes"]}):
        then = [r["classes"][cls]["then"] for r in rows if cls in r["classes"]]
        end = [r["classes"][cls]["end"] for r in rows if cls in r["classes"]]
        summary[cls] = {"n": len(then), "then": [float(x) for x in np.quantile(then, [0.1, 0.5, 0.9])],
                        "end": [float(x) for x in np.quantile(end, [0.1, 0.5, 0.9])],
                        "then_sd_log": float(np.std(np.log(then))), "end_sd_log": float(np.std(np.log(end)))}
        s = summary[cls]
        print(f"{cls:32s} n {s['n']:2d}  then median {s['then'][1]:.3f} ({s['then'][0]:.2f}-{s['then'][2]:.2f}, "
              f"sd log {s['then_sd_log']:.2f})  at the end {s['end'][1]:.3f} ({s['end'][0]:.2f}-{s['end'][2]:.2f}, "
              f"sd log {s['end_sd_log']:.2f})", file=sys.stderr)
    if args.json:
        print(json.dumps({"machine": args.machine, "seeds": args.seeds, "summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
