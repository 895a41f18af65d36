"""How precise the replay is from a given number of calm service times, with and without the
study's tail pool (``tuner.bench.replay.TailPool``), on the simulator's model alone.

Each replicate draws ``n`` service times per worker kind of a config from the simulated
machine's model without interference (what a perfectly calm window would record: the lognormal
body and the VM's hiccups, as ``experiments/sim/truth.py`` draws them), replays them
(``tuner.bench.replay.estimate``) and divides the rate by the config's true throughput. With
``pooled``, a measurement of the one-worker-per-core baseline (``n`` service times per worker,
fresh draws) has filled the pool first, as the study's first baseline does.

    python -m experiments.replay_tail --machine 16 --n 1500,6000 --replicates 40 --json

Prints, per config and n: the median of replayed / true, its 10% and 90% quantiles, and the
share of replicates whose interval holds the truth.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from experiments.sim import machines
from experiments.sim.model import ServiceModel, worker_models
from experiments.sim.presets import PRESETS
from experiments.sim.truth import true_throughput
from tuner.bench import replay
from tuner.machine.placement import plan
from tuner.search.study import baselines

BOUND_S = 0.05


def calm_samples(models, noise, service: ServiceModel, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` service times of each worker (each its own, as a measurement's calm workers give them)."""
    out = []
    for w in models:
        work = w.base_s * np.exp(rng.normal(0.0, service.body_sigma, n))
        stall = rng.gamma(rng.poisson(noise.hiccup_rate * w.exposure * work), noise.hiccup_ms / 1000)
        out.append(work + stall)
    return out


def run(machine: str, noise_name: str, ns: list[int], replicates: int) -> list[dict]:
    topology = machines.load(machine)
    noise = PRESETS[noise_name]
    quiet = noise.without_episodes()
    service = ServiceModel()
    configs = baselines(topology)
    fill = dict(configs).get("one_per_core") or next(p for names, p in configs if "one_per_core" in names)
    fill_models = worker_models(plan(topology, fill), topology, quiet, service)
    rows = []
    for names, params in configs:
        models = worker_models(plan(topology, params), topology, quiet, service)
        truth = true_throughput(params, topology, noise, BOUND_S)
        for n in ns:
            for pooled in (False, True):
                ratios, covered = [], 0
                for r in range(replicates):
                    rng = np.random.default_rng(1000 + r)
                    pool = None
                    if pooled:
                        pool = replay.TailPool()
                        fill_samples = calm_samples(fill_models, quiet, service, n, rng)
                        pool.put("fill", np.concatenate([replay.excesses(s) for s in fill_samples]))
                    e = replay.estimate(calm_samples(models, quiet, service, n, rng), BOUND_S, 0.99, seed=r,
                                        pool=pool, key="this")
                    ratios.append(e.rate / truth)
                    covered += e.low <= truth <= e.high
                q = np.quantile(ratios, [0.1, 0.5, 0.9])
                rows.append({"config": names, "workers": len(models), "n": n, "pooled": pooled, "truth": truth,
                             "median": float(q[1]), "q10": float(q[0]), "q90": float(q[2]),
                             "interval_coverage": covered / replicates})
                print(f"{names:32s} workers {len(models):2d} n {n:6d} {'pooled' if pooled else 'own   '} "
                      f"replayed/true median {q[1]:.2f} (10%-90%: {q[0]:.2f}-{q[2]:.2f}), "
                      f"interval holds the truth {covered / replicates:.2f}", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machine", default="16")
    parser.add_argument("--noise", default="vm", choices=sorted(PRESETS))
    parser.add_argument("--n", default="1500,6000", help="calm service times per worker kind, comma-separated")
    parser.add_argument("--replicates", type=int, default=40)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON on stdout")
    args = parser.parse_args(argv)
    rows = run(args.machine, args.noise, [int(x) for x in args.n.split(",")], args.replicates)
    if args.json:
        print(json.dumps({"machine": args.machine, "noise": args.noise, "bound_ms": BOUND_S * 1000,
                          "replicates": args.replicates, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
