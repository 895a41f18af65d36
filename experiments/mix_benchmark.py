"""Two zoo models sharing this server: the best division placetune finds against both baselines
(every model unpinned with ONNX Runtime's defaults; an even split of the cores by share), as
ratios of the largest load factor L every model serves within its own P99 bound.

    .venv/bin/python -m experiments.mix_benchmark            # squeezenet x2 + shufflenet x1, shared cores allowed
    .venv/bin/python -m experiments.mix_benchmark --trials 4 --rounds 2

The study (tuner.app.deployment) measures both baselines first, then sampled configs; its final race
re-measures the best config and both baselines in rotating interleaved rounds, and the ratios of
their load factors get paired-bootstrap intervals (tuner.bench.stats.ratio_ci). Everything lands in
experiments/results/mix-<host>-<date>.json: the deployment, every trial's result (every window of
every model), the race's rounds, the ratios, the machine, and the load on the machine before and
after (other processes compete for the same CPUs: their CPU use shows as foreign load in each
model's interference figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

from tuner.app.deployment import check_bounds_alone, final_race, run_deployment_trials
from tuner.bench.measure import MeasureSettings, machine_metadata
from tuner.machine.sysfs import read_topology
from tuner.mix.deployment import check_fits, parse_deployment, resolve_models
from tuner.mix.study import MixStudyConfig, default_study_name, open_mix_study
from tuner.results.mixtrials import best_and_baselines, measured

HERE = Path(__file__).resolve().parent
DEPLOYMENT = {
    "shared_cores": True,
    "models": [{"name": "detector", "model": "onnx:squeezenet", "p99": "50ms", "share": 2},
               {"name": "ranker", "model": "onnx:shufflenet", "p99": "100ms", "share": 1}],
}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6, help="measured configs, both baselines included")
    parser.add_argument("--rounds", type=int, default=3, help="final race rounds")
    parser.add_argument("--window", type=float, default=2.0, help="minimum window seconds")
    parser.add_argument("--steps", type=int, default=4, help="load-factor runs per measurement, less one")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or HERE / "results" / f"mix-{platform.node() or 'host'}-{date.today().isoformat()}.json"
    load_before = os.getloadavg()
    topo = read_topology()
    deployment = parse_deployment(DEPLOYMENT, "experiments/mix_benchmark.py")
    check_fits(deployment, len(topo.cores()))
    models = resolve_models(deployment)
    settings = MeasureSettings(window_s=args.window, search_steps=args.steps, seed=1)
    unloaded = check_bounds_alone(topo, deployment, models, settings, say)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = MixStudyConfig(deployment, models, topo, settings, f"sqlite:///{tmp}/mix.db",
                             default_study_name(deployment, models), n_trials=args.trials, seed=1,
                             race_rounds=args.rounds)
        study = open_mix_study(cfg)
        began = time.monotonic()
        run_deployment_trials(study, cfg, say)
        best, baselines = best_and_baselines(study)
        race = final_race(cfg, study, say) if best is not None else None
        record = {
            "deployment": deployment.to_dict(), "topology": topo.summary(), "machine": machine_metadata(),
            "unloaded_p99_ms_alone": unloaded, "settings": {"window_s": args.window, "search_steps": args.steps,
                                                             "trials": args.trials, "race_rounds": args.rounds},
            "best": best.user_attrs["label"] if best else None,
            "baselines": {n: t.user_attrs["label"] for n, t in baselines.items()},
            "race": race, "trials": [{"number": t.number, "label": t.user_attrs["label"],
                                      "baseline": t.user_attrs.get("baseline", ""), "result": t.user_attrs["result"]}
                                     for t in measured(study)],
            "duration_s": time.monotonic() - began,
            "load_average_before_after": [list(load_before), list(os.getloadavg())],
            "note": ("run on a 2-core VM shared with other sessions' test suites: their CPU use competes with the "
                     "measured workers (see each window's foreign_cpu and the load averages)"),
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=str) + "\n")
    say(f"raw results written to {out}")
    if race:
        for name, r in race["vs_baselines"].items():
            lo, hi = r["ci"]
            say(f"best ({record['best']}) vs {name} ({record['baselines'][name]}): L ratio {r['ratio']:.2f} "
                f"(95% CI {lo:.2f}-{hi:.2f}, {r['rounds']} rounds); mean L {race['mean']}")


if __name__ == "__main__":
    main()
