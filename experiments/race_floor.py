"""What a floor under the race's intervals does to a simulated run, from its JSON alone.

    python -m experiments.race_floor RUN.json [RUN.json ...] [--floors 0,0.02,0.03]

Each claim of each race in ``per_seed`` (``experiments/simulate.py``: ratio, interval, true ratio)
gets its interval widened to at least the ratio times exp(+-floor)
(``tuner.search.race.SYSTEMATIC``), and the run's ``ci_coverage``, ``interval_coverage`` and
``wrong_faster_rate`` are scored again; ``median_regret`` too, a searched config that was
recommended as significantly faster and no longer is being replaced by the baseline it was
compared with. Exact where the floor does not change how the race ran: a floor under 5% widens
only intervals under 5% wide, which settle a race either way (``tuner.search.race.settled``).
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np


def rescore(run: dict, floor: float) -> dict:
    covered = total = decisive = decisive_covered = wrong = 0
    regrets = []
    races = [s["race"] for s in run["per_seed"] if s["race"]]
    for race in races:
        claims, wrong_here = race["claims"], False
        for i, c in enumerate(claims):
            (low, high), ratio = c["ci"], c["ratio"]
            if floor and math.isfinite(high) and ratio > 0:
                low, high = min(low, ratio * math.exp(-floor)), max(high, ratio * math.exp(floor))
            ok = low <= c["true"] <= high
            covered, total = covered + ok, total + 1
            if i == 0:
                decisive, decisive_covered = decisive + 1, decisive_covered + ok
            if (low > 1.0 or high < 1.0) and (low > 1.0) != (c["true"] > 1.0):
                wrong_here = True
        wrong += wrong_here
        truth = race["recommended_truth"]
        first = claims[0] if claims else None
        searched = race.get("searched") or {}
        if (first and searched.get("outcome") == "faster" and race["recommended"] == first["label"]
                and min(first["ci"][0], first["ratio"] * math.exp(-floor)) <= 1.0):  # no longer faster: the baseline
            truth /= first["true"]
        regrets.append(1 - truth / run["true_best"])
    return {"floor": floor, "ci_coverage": decisive_covered / max(1, decisive),
            "interval_coverage": covered / max(1, total), "wrong_faster_rate": wrong / max(1, len(races)),
            "median_regret": float(np.median(regrets)) if regrets else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--floors", default="0,0.02,0.03")
    args = parser.parse_args(argv)
    out = {}
    for path in args.runs:
        with open(path) as f:
            run = json.load(f)
        out[path] = [rescore(run, float(x)) for x in args.floors.split(",")]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
