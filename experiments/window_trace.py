"""Each window a default study measured for one baseline class, beside the long-run truth at its rate.

    python -m experiments.window_trace --machine 16|64 --noise vm|vm-undisturbed|quiet --cls "ORT default" [--seeds 4]

Runs the seeds as ``experiments.simulate`` does and prints, for the class's full-fidelity study
measurement, its reported figure over the truth and each server window: offered rate over the
truth, requests, requests over the bound, their share, the window's cluster inflation, whether its
share is usable (kept up and not cut), whether it was disturbed, and the long-run share over the
bound at that rate on the machine without episodes (``LONG_RUN_REQUESTS`` requests). A diagnostic
of what a short measurement sees of a config's tail (experiments/README.md, Simulated scale).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import experiments.simulate as simulate
from experiments.sim import machines
from experiments.sim.model import ServiceModel, worker_models
from experiments.sim.presets import PRESETS
from experiments.sim.queue import Speeds, serve_server
from experiments.sim.truth import _draws, true_throughput
from tuner.bench.estimate import point_of
from tuner.machine.placement import plan

LONG_RUN_REQUESTS = 480_000


def long_run_shares(params, topology, noise, rates: list[float]) -> list[float]:
    quiet = noise.without_episodes()
    models = worker_models(plan(topology, params), topology, quiet, ServiceModel())
    gaps, work, stall, group = _draws(models, quiet, ServiceModel(), LONG_RUN_REQUESTS)
    arrivals = np.cumsum(gaps)
    out = []
    for r in rates:
        served = serve_server(arrivals / r, work, stall, group, 0.0, Speeds([0.0], [[1.0] * len(group)]))
        out.append(float(np.mean(served.completed - arrivals / r > simulate.BOUND_S)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.window_trace", description=__doc__.splitlines()[0])
    parser.add_argument("--machine", default="16")
    parser.add_argument("--noise", default="vm", choices=sorted(PRESETS))
    parser.add_argument("--cls", default="ORT default", help="a baseline class (experiments.simulate.CLASSES)")
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args(argv)
    topology, noise = machines.load(args.machine), PRESETS[args.noise]
    found = []
    original = simulate._facts

    def facts(race, log, topology, setup, seed, wall_s, sim_s):
        classes = simulate._baseline_classes(topology)
        for confidence, result, phase in log:
            if classes.get(result.params) == args.cls and confidence >= 0.95 and phase == "study":
                found.append((seed, result))
        return original(race, log, topology, setup, seed, wall_s, sim_s)

    simulate._facts = facts
    try:
        for seed in range(args.seeds):
            simulate.run_seed(simulate.Setup(args.machine, args.noise), seed, topology)
    finally:
        simulate._facts = original
    for seed, result in found:
        truth = true_throughput(result.params, topology, noise, simulate.BOUND_S)
        points = [point_of(w) for w in result.windows[1:]]
        rates = sorted({p.rate for p in points})
        shares = dict(zip(rates, long_run_shares(result.params, topology, noise, rates), strict=True))
        print(f"seed {seed} {result.params.label()}: reported / true {result.throughput / truth:.2f} "
              f"(truth {truth:.1f} req/s)")
        for p in points:
            print(f"  rate/true {p.rate / truth:5.2f}  n {p.n:5d}  over {p.over:5d}  share {p.share:.4f}  "
                  f"inflation {p.inflation:6.1f}  usable {int(p.usable)}  disturbed {int(p.disturbed)}  "
                  f"long-run share {shares[p.rate]:.4f}")
    if not found:
        print(f"no study measurement of class {args.cls!r}; classes: {sorted(set(simulate.CLASSES.values()))}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
