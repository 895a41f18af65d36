"""What "true throughput" would be on the ``vm`` preset if the interference counted (a diagnostic).

    python -m experiments.interference_truth --machine 16 [--states 80] [--requests 6000] [--json]

The simulator's truth (``experiments/sim/truth.py``) leaves the interference episodes out. This
script computes, for each baseline class, two alternatives with the episodes in, treating each
moment's episode state (neighbour on or off and the cores it takes, steal) as lasting long
against a request (episodes are seconds, requests milliseconds): ``states`` states are drawn from
the noise process's stationary distribution, and for each one the workers' speeds follow the
simulator's rules (a pinned worker at its slowest CPU's speed, an unpinned one at the mean).

- ``long_run``: the rate at which the share of requests over the bound, averaged over the states,
  is 1%: a long-run P99 over hours of this noise (dominated by the rare states where the neighbour
  takes most cores);
- ``mean_state`` / ``median_state``: the rate each state holds at the bound, averaged (median) over
  the states: what the machine delivers at a random moment.

Each is printed over the simulator's quiet truth. The draws are seeded; fewer requests per state
than the truth's run make the few-worker configs' figures (rare clustered stalls) optimistic:
``--long K`` runs each class's states for at least 1/K of its truth's run
(``experiments.sim.truth.truth_requests``: 1.92 million requests for one worker).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from experiments.sim import machines
from experiments.sim.model import ServiceModel, worker_models
from experiments.sim.presets import PRESETS
from experiments.sim.queue import Speeds, serve_server
from experiments.sim.truth import _draws, capacity_of, true_throughput, truth_requests
from tuner.machine.placement import plan

BOUND_S = 0.05
STEPS = 9


def states(topology, noise, count: int, seed: int = 1) -> list[np.ndarray]:
    """Per-CPU speeds of ``count`` moments drawn from the episodes' stationary distribution."""
    rng = np.random.default_rng(seed)
    n = len(topology.usable_cpus)
    p_on = noise.neighbour_s / (noise.neighbour_s + 1 / noise.neighbour_rate) if noise.neighbour_rate else 0.0
    out = []
    for _ in range(count):
        speed = np.ones(n)
        if rng.random() < p_on:
            taken = rng.integers(1, max(1, round(noise.neighbour_cores * n)) + 1)
            speed[rng.choice(n, taken, replace=False)] *= 1 - noise.neighbour_share
        speed *= (1 - noise.steal_fraction) ** rng.poisson(noise.steal_rate * noise.steal_s)
        out.append(speed)
    return out


def class_figures(params, topology, noise, moments: list[np.ndarray], requests: int) -> dict:
    quiet = noise.without_episodes()
    models = worker_models(plan(topology, params), topology, quiet, ServiceModel())
    gaps, work, stall, group = _draws(models, quiet, ServiceModel(), requests)
    arrivals = np.cumsum(gaps)
    column = {c: i for i, c in enumerate(topology.usable_cpus)}
    rows = [[s[[column[c] for c in w.cpus]].min() if params.pin else s.mean() for w in models] for s in moments]

    def share(rate: float, row) -> float:
        a = arrivals / rate
        return float(np.mean(serve_server(a, work, stall, group, 0.0, Speeds([0.0], [row])).completed - a > BOUND_S))

    def root(ok, top: float) -> float:
        lo, hi = 0.0, top
        for _ in range(STEPS):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        return lo

    top = capacity_of(params, topology, noise)
    per_state = np.array([root(lambda r, row=row: share(r, row) <= 0.01, top) for row in rows])
    long_run = root(lambda r: np.mean([share(r, row) for row in rows]) <= 0.01, top)
    truth = true_throughput(params, topology, noise, BOUND_S)
    return {"quiet_truth": truth, "long_run": long_run / truth, "mean_state": float(per_state.mean()) / truth,
            "median_state": float(np.median(per_state)) / truth}


def main(argv: list[str] | None = None) -> int:
    from experiments.simulate import _baseline_classes

    parser = argparse.ArgumentParser(prog="python -m experiments.interference_truth",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--machine", default="16")
    parser.add_argument("--noise", default="vm", choices=sorted(PRESETS))
    parser.add_argument("--states", type=int, default=80)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--long", type=int, default=0, metavar="K",
                        help="requests per state: at least the truth's run for the class's worker count / K "
                             "(one worker: 1.92M / K), so few-worker classes' clustered tails are seen")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    topology, noise = machines.load(args.machine), PRESETS[args.noise]
    moments = states(topology, noise, args.states)
    out = {"machine": args.machine, "noise": args.noise, "states": args.states, "requests": args.requests,
           "long": args.long, "classes": {}}
    for params, label in _baseline_classes(topology).items():
        requests = args.requests
        if args.long:
            requests = max(requests, truth_requests(len(plan(topology, params).workers)) // args.long)
        out["classes"][label] = figures = class_figures(params, topology, noise, moments, requests)
        figures["requests"] = requests
        if not args.json:
            print(f"{label:28s} quiet truth {figures['quiet_truth']:8.1f}  over it: long-run {figures['long_run']:.2f}"
                  f"  mean-state {figures['mean_state']:.2f}  median-state {figures['median_state']:.2f}", flush=True)
    if args.json:
        print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
