"""What each window-verdict rule costs: the same configs measured again and again on the simulated
16-core VM (the calibration's protocol: the real ``measure()``, P99 <= 50 ms, 3 s windows, each run
from a random moment of the noise process), once per ``MeasureSettings.dependence`` rule, side by
side on the same machine seeds; the throughput each run reports, the simulated seconds it took and
the config's true throughput (``experiments/sim/truth.py``).

    python -m experiments.verdict_cost [--runs 20] [--rules clusters,independent,batch-means] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from experiments.sim.calibration import BOUND_S, CALIBRATION_WINDOW_S, PHASE_S, SIM_MODEL
from experiments.sim.fleet import SimFleet
from experiments.sim.machine import SimMachine
from experiments.sim.machines import vm16
from experiments.sim.presets import VM
from experiments.sim.truth import true_throughput
from tuner.bench import stats
from tuner.bench.measure import MeasureSettings, measure
from tuner.machine.placement import Params, plan

CONFIGS = {"16x1": Params(workers=16), "ort_default": Params(workers=1, pin=False, intra_op_threads=0),
           "4x4": Params(workers=4, cores_per_worker=4, intra_op_threads=4)}


def runs_of(params: Params, rule: str, runs: int, seed: int) -> dict:
    """``runs`` measurements of ``params`` under ``rule``: throughputs and simulated seconds."""
    topology = vm16()
    the_plan = plan(topology, params)
    rng = np.random.default_rng(seed)
    throughputs, seconds = [], []
    for run in range(runs):
        machine = SimMachine(topology, VM, seed=int(rng.integers(2**31)))
        machine.advance(float(rng.uniform(0, PHASE_S)))
        settings = MeasureSettings(p99_bound_s=BOUND_S, window_s=CALIBRATION_WINDOW_S, seed=run, dependence=rule)
        result = measure(the_plan, SIM_MODEL, settings,
                         fleet_factory=lambda p, _m, s, machine=machine: SimFleet(machine, p, s.hang_grace_s))
        throughputs.append(result.throughput)
        seconds.append(result.duration_s)
    return {"median_throughput": float(np.median(throughputs)), "median_seconds": float(np.median(seconds)),
            "throughputs": throughputs, "seconds": seconds}


def compare(rules: list[str], runs: int, seed: int = 0) -> dict:
    """Every config under every rule, with the ratios to the first rule."""
    out: dict = {"runs": runs, "seed": seed, "window_s": CALIBRATION_WINDOW_S, "rules": rules, "configs": {}}
    for name, params in CONFIGS.items():
        by_rule = {rule: runs_of(params, rule, runs, seed) for rule in rules}
        first = by_rule[rules[0]]
        for rule in rules:
            by_rule[rule]["throughput_vs_first"] = by_rule[rule]["median_throughput"] / max(first["median_throughput"],
                                                                                          1e-9)
            by_rule[rule]["seconds_vs_first"] = by_rule[rule]["median_seconds"] / first["median_seconds"]
        out["configs"][name] = {"true_throughput": true_throughput(params, vm16(), VM, BOUND_S), **by_rule}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.verdict_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rules", default=",".join(stats.DEPENDENCE_RULES),
                        help=f"comma-separated, of {', '.join(stats.DEPENDENCE_RULES)}; ratios are to the first")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    bad = [r for r in rules if r not in stats.DEPENDENCE_RULES]
    if bad or not rules or args.runs < 1:
        parser.error(f"--rules takes {', '.join(stats.DEPENDENCE_RULES)} (got {', '.join(bad) or 'none'}); "
                     "--runs must be >= 1")
    out = compare(rules, args.runs)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for name, c in out["configs"].items():
            cells = [f"{r} {c[r]['median_throughput']:.0f} req/s {c[r]['median_seconds']:.0f} s" for r in rules]
            print(f"{name} (true {c['true_throughput']:.0f}): " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
