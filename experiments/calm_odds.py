"""How often a wait for calm CPUs finds them on a simulated machine, per baseline and wait length.

    python -m experiments.calm_odds [--machine 16] [--noise vm] [--draws 400] [--waits 10,20,30]

Each draw: a fresh ``SimMachine`` (seeded), its clock moved to a uniform moment of its first
5 minutes, then ``tuner.bench.measure._wait_for_calm`` (looks of 0.5 s, one calm worker of each
size enough, as the replay's top-up waits) for each wait length. Prints, per baseline, the share
of draws whose wait found calm CPUs (JSON with ``--json``). Simulated time only: seconds to run.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from experiments.sim import machines
from experiments.sim.fleet import SimFleet
from experiments.sim.machine import SimMachine
from experiments.sim.presets import PRESETS
from tuner.bench import measure
from tuner.machine.placement import plan
from tuner.search.study import baselines


def odds(machine: str, noise: str, draws: int, waits: list[float]) -> dict:
    topology = machines.load(machine)
    out: dict = {}
    for name, params in baselines(topology):
        the_plan = plan(topology, params)
        found = {w: 0 for w in waits}
        for d in range(draws):
            for w in waits:
                sim = SimMachine(topology, PRESETS[noise], 1000 + d)
                sim.advance(float(np.random.default_rng(d).uniform(0, 300)))
                _waited, calm = measure._wait_for_calm(SimFleet(sim, the_plan), [w], any_of_each=True)
                found[w] += calm
        out[f"{name} ({the_plan.params.label()})"] = {f"{w:g} s": found[w] / draws for w in waits}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machine", default="16")
    ap.add_argument("--noise", default="vm")
    ap.add_argument("--draws", type=int, default=400)
    ap.add_argument("--waits", default="10,20,30")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    result = odds(a.machine, a.noise, a.draws, [float(w) for w in a.waits.split(",")])
    if a.json:
        print(json.dumps({"machine": a.machine, "noise": a.noise, "draws": a.draws, "found_calm": result}, indent=1))
    else:
        for name, row in result.items():
            print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
