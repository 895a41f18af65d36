"""Seeded default studies on a simulated noisy machine, end to end, with the project's real code.

    python -m experiments.simulate --machine FSROOT|T.json|16|64|128 --noise quiet|vm|heavy --seeds N --json
        [--estimator estimate|bound|both]

Each seed is ``placetune optimize --p99 50ms --no-mlflow`` with its defaults (20 trials, 2 s windows,
the default space, TPE seeded with the seed, a final race of the best 3 and every baseline), run
by the study's own loop and race on an in-memory Optuna study (``optimize_in_memory``), every measurement by the real
``tuner.bench.measure.measure`` on a ``experiments.sim`` fleet (one simulated machine per seed: its
clock and interference run through the whole study). What is true is defined in
``experiments/sim/truth.py``. The JSON object:

- ``ci_coverage``: share of races whose 95% interval of the best searched config / the best
  baseline (the comparison the race decides on; without a searched entrant, the winner / the next
  baseline) contains the true ratio; ``interval_coverage``: the same over every interval a race reports;
- ``wrong_faster_rate``: share of races claiming with significance that a truly slower config is
  faster (the searched-vs-baseline call, or the winner vs any other baseline);
- ``median_regret``: median of 1 - true throughput of the recommended config / the true best of
  the space and the baselines;
- ``false_pass_rate``: passed full-fidelity server windows whose true P99 is over the bound, over
  all passed full-fidelity windows (screening windows, judged at 80%, are counted apart:
  ``screen_false_pass_rate``);
- ``false_passes``: where they are (per config: [false passes, passed windows]; the quartiles
  of their offered rate over the true throughput; how many were extended or disturbed windows);
- ``interval_misses``: which race intervals miss their true ratio, per pair of classes
  ("searched" for a searched config): [misses, intervals, misses lying under the true ratio]
  (each race's intervals are in ``per_seed[i].race.claims``);
- ``reported_over_true``: per class of config (the study's baselines: ORT default, one worker
  with all cores (or one per NUMA node), one worker per core, Intel's 4-core instances: the
  middle), the median over seeds of the throughput the study reported for it (its full-fidelity
  trial) over its true throughput; ``race_over_true`` the same for its mean over the race's rounds;
  ``reported_paths`` splits the first by what the figure came from (``_path``: a replay, windows
  after a refuted replay, windows with too few calm service times, windows): [seeds, median];
- ``median_simulated_s``: median over seeds of a study's simulated measuring time (study and race);
- ``seconds``: wall-clock seconds of the whole run (``jobs`` processes); and per-seed details.

``--estimator`` picks ``MeasureSettings.estimator`` (``estimate``, the default, or ``bound``, the
rule before 2026-12-05); ``both`` runs the same seeds with each and prints both objects side by
side (``{"estimate": ..., "bound": ...}``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.sim import machines
from experiments.sim.calibration import SIM_MODEL
from experiments.sim.fleet import SimFleet
from experiments.sim.machine import SimMachine
from experiments.sim.presets import PRESETS
from experiments.sim.truth import PRECISE, best_of, true_throughput
from tuner.bench import stats
from tuner.errors import PlacetuneError
from tuner.machine.placement import Params
from tuner.machine.topology import Topology

BOUND_S = 0.05


@dataclass(frozen=True)
class Setup:
    """One simulation's machine, noise and study size."""

    machine: str
    noise: str
    n_trials: int = 20
    window_s: float = 2.0
    race_k: int = 3
    dependence: str = "clusters"  # MeasureSettings.dependence: how a pass accounts for correlated latencies
    estimator: str = "estimate"  # MeasureSettings.estimator: what a measurement reports
    calm_wait_s: float | None = None  # MeasureSettings.calm_wait_s (None: its default)
    replay: bool = False  # MeasureSettings.replay: figures from a replay of calm service times


def sim_space(topology: Topology):
    """The default space without batching: the simulated fleet serves one request per service
    time whatever ``max_batch`` says, so a batched config would be an unbatched one counted again."""
    from tuner.search.space import load_space

    return load_space("default", topology).without_batching("the simulator does not model batching")


def run_seed(setup: Setup, seed: int, topology: Topology | None = None) -> dict:
    """One default study and its race on a fresh simulated machine; the raw facts to score."""
    from tuner.bench.measure import MeasureSettings, measure
    from tuner.search.study import StudyConfig

    topology = topology or machines.load(setup.machine)
    machine = SimMachine(topology, PRESETS[setup.noise], seed)
    log: list = []
    phase = ["study"]

    def measure_fn(the_plan, model, settings, progress=None):
        result = measure(the_plan, model, settings, progress,
                         fleet_factory=lambda p, _m, s: SimFleet(machine, p, s.hang_grace_s))
        log.append((settings.confidence, result, phase[0]))
        return result

    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="placetune-sim-") as tmp:
        # the simulated host's lock lives in this run's folder: seeds run side by side share no CPUs
        saved, tempfile.tempdir = tempfile.tempdir, tmp
        try:
            settings = MeasureSettings(p99_bound_s=BOUND_S, window_s=setup.window_s, seed=seed,
                                       dependence=setup.dependence, estimator=setup.estimator,
                                       replay=setup.replay,
                                       **({} if setup.calm_wait_s is None else {"calm_wait_s": setup.calm_wait_s}))
            cfg = StudyConfig(model=SIM_MODEL, topology=topology, space=sim_space(topology),
                              settings=settings, storage="memory", study_name=f"sim-{seed}", seed=seed,
                              n_trials=setup.n_trials, lock_wait_s=0.0)
            studies: list = []
            race = optimize_in_memory(cfg, measure_fn, setup.race_k, Path(tmp) / "best_config.json",
                                      on_race=lambda: phase.__setitem__(0, "race"), on_study=studies.append)
        finally:
            tempfile.tempdir = saved
    return _facts(race, log, topology, setup, seed, time.monotonic() - began, machine.now,
                  _end_figures(studies[0]) if studies else {})


def _end_figures(study) -> dict[str, float]:
    """Each refigured measurement's end-of-study figure, by its ``replay_id``
    (``tuner.search.study.refigure``)."""
    from tuner.results.trials import refigured

    figures = refigured(study)
    return {t.user_attrs["result"]["replay_id"]: figures[t.number]["throughput"]
            for t in study.get_trials(deepcopy=False) if t.number in figures}


def optimize_in_memory(cfg, measure_fn, race_k: int, out: Path, on_race=lambda: None, on_study=lambda _s: None):
    """``tuner.app.optimize.run_optimize`` without MLflow and on an in-memory Optuna study (a SQLite
    file made each trial 5x slower): the study's own loop (``run_study``: baselines, strategy,
    screening, objective), then its final race (``race_study``) and the config it writes
    (``save_best_config``). Returns the race (None when no config met the bound)."""
    import optuna

    from tuner.app.optimize import save_best_config
    from tuner.results.trials import best_trial
    from tuner.search.race import race_study
    from tuner.search.storage import quiet_optuna
    from tuner.search.study import make_sampler, run_study

    with quiet_optuna():
        study = optuna.create_study(study_name=cfg.study_name, directions=["maximize", "minimize"],
                                    sampler=make_sampler(cfg.sampler, cfg.seed, cfg.space))
    study = run_study(cfg, lambda _t, _s: None, lambda _m: None, measure_fn=measure_fn, study=study)
    on_study(study)
    if best_trial(study) is None or race_k <= 0:
        return None
    on_race()
    race = race_study(study, cfg.topology, cfg.model, cfg.settings, race_k, measure_fn=measure_fn)
    save_best_config(study, out, race=race.to_dict())
    return race


def _path(result) -> str:
    """What a measurement's figure came from, by its notes: "replay" (of calm service times),
    "refuted" (windows, a calm check under the replay's figure having failed), "no calm" (windows,
    some disturbed, no replay), else "windows"."""
    from tuner.bench.measure import REPLAY_REFUTED, TOO_FEW_CALM

    for start, path in (("figure from a replay", "replay"), (REPLAY_REFUTED, "refuted"), (TOO_FEW_CALM, "no calm")):
        if any(n.startswith(start) for n in result.notes):
            return path
    return "windows"


def _facts(race, log: list, topology: Topology, setup: Setup, seed: int, wall_s: float, sim_s: float,
           end_figures: dict[str, float] | None = None) -> dict:
    """Truth next to what the study and its race concluded (``end_figures``: the study's
    end-of-study figures by ``replay_id``, which its tables show instead of the figure at the time)."""
    end_figures = end_figures or {}
    noise = PRESETS[setup.noise]

    def truth(params: Params, precision: int = 1) -> float:
        key = (params, precision)
        if _SHARED_TRUTH is not None and key in _SHARED_TRUTH:
            return _SHARED_TRUTH[key]
        value = true_throughput(params, topology, noise, BOUND_S, precision=precision)
        if _SHARED_TRUTH is not None:
            _SHARED_TRUTH[key] = value
        return value

    def precise(params: Params) -> float:  # what the race's intervals and reported / true are judged by
        return truth(params, PRECISE)

    windows = {"full": [0, 0], "screen": [0, 0]}  # [passed, passed with a true P99 over the bound]
    passes: dict[str, int] = {}  # passed full windows per config
    false_passes = []  # (config, offered rate / true throughput, requests, extensions, disturbed) of each
    classes = _baseline_classes(topology)
    reported: dict[str, float] = {}  # class -> the study's full-fidelity figure over the truth
    paths: dict[str, str] = {}  # class -> what that figure came from (``_path``)
    raced: dict[str, list[float]] = {}  # class -> race measurements over the truth
    for confidence, result, phase in log:
        cls = classes.get(result.params)
        if cls is not None and truth(result.params) > 0 and confidence >= 0.95:
            if phase == "study" and cls not in reported:
                shown = end_figures.get(result.replay_id, result.throughput) if result.replay_id else result.throughput
                reported[cls] = shown / precise(result.params)
                paths[cls] = _path(result)
            else:
                raced.setdefault(cls, []).append(result.throughput / precise(result.params))
    phase_s: dict[str, float] = {}
    for _c, result, phase in log:
        phase_s[phase] = phase_s.get(phase, 0.0) + result.duration_s
    for confidence, result, _phase in log:
        kind = "full" if confidence >= 0.95 else "screen"
        for w in result.windows[1:]:
            if w.scenario == "server" and w.passed:
                windows[kind][0] += 1
                if kind == "full":
                    passes[result.params.label()] = passes.get(result.params.label(), 0) + 1
                windows[kind][1] += int(w.offered_rate > truth(result.params))
                if kind == "full" and w.offered_rate > truth(result.params):
                    false_passes.append((result.params.label(), w.offered_rate / truth(result.params), w.requests,
                                         w.extensions, w.interference.disturbed))
    facts = {"seed": seed, "wall_s": wall_s, "simulated_s": sim_s, "phase_s": phase_s, "windows": windows,
             "measurements": len(log),
             "passes": passes, "reported_over_true": reported, "reported_path": paths, "refigured": len(end_figures),
             "race_over_true": {c: float(np.mean(v)) for c, v in raced.items()},
             "false_passes": false_passes, "race": None}
    if race is None:
        return facts
    params = {e.label: e.params for e in race.entrants}
    claims = []  # (label, other label, significant, ratio, [low, high], true ratio)
    if race.searched:
        s = race.searched
        claims.append((s["label"], s["baseline_label"], s["outcome"] != "no difference", s["ratio"], s["ci"]))
    claims += [(race.winner, c["label"], c["significant"], c["ratio"], c["ci"]) for c in race.comparisons]
    claims = [(*c, precise(params[c[0]]) / max(precise(params[c[1]]), 1e-9)) for c in claims]
    decisive = claims[0] if claims else None  # searched vs best baseline, else winner vs the next baseline
    facts["race"] = {
        "rounds": race.to_dict()["rounds"], "dropped": len(race.dropped), "recommended": race.recommended,
        "recommended_truth": precise(params[race.recommended]), "searched": race.searched,
        "decisive": list(decisive) if decisive else None,
        "covered": bool(decisive[4][0] <= decisive[5] <= decisive[4][1]) if decisive else None,
        "intervals_covered": [bool(c[4][0] <= c[5] <= c[4][1]) for c in claims],
        "wrong_significant": any(sig and (lo > 1.0 or hi < 1.0) and (lo > 1.0) != (true > 1.0)
                                 for _a, _b, sig, _r, (lo, hi), true in claims),
        "claims": [{"label": a, "other": b, "classes": [classes.get(params[a], "searched"),
                                                        classes.get(params[b], "searched")],
                    "significant": bool(sig), "ratio": float(r), "ci": [float(lo), float(hi)], "true": float(t)}
                   for a, b, sig, r, (lo, hi), t in claims],
    }
    return facts


CLASSES = {"ort_default": "ORT default", "intel_latency": "one worker, all cores",
           "one_per_core": "one worker per core", "intel_throughput": "4-core workers (middle)"}


def _baseline_classes(topology: Topology) -> dict[Params, str]:
    """Each baseline's params -> its class name (merged baselines: the first name's class); on a
    machine of several NUMA nodes the latency baseline is one worker per node."""
    from tuner.search.study import baselines

    multi = len(topology.usable_nodes) > 1
    out = {}
    for names, params in baselines(topology):
        name = names.split("+")[0]
        label = CLASSES[name]
        if name == "intel_latency" and multi:
            label = "one worker per NUMA node"
        out[params] = label
    return out


def _median_by_class(facts: list[dict], key: str) -> dict[str, float]:
    by: dict[str, list[float]] = {}
    for f in facts:
        for cls, value in f[key].items():
            by.setdefault(cls, []).append(value)
    return {cls: float(np.median(v)) for cls, v in sorted(by.items())}


def _paths(facts: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Per class, per path of its study figure (``_path``): [seeds, median reported / true]."""
    by: dict[str, dict[str, list[float]]] = {}
    for f in facts:
        for cls, path in f.get("reported_path", {}).items():
            by.setdefault(cls, {}).setdefault(path, []).append(f["reported_over_true"][cls])
    return {cls: {p: [len(v), float(np.median(v))] for p, v in sorted(ps.items())} for cls, ps in sorted(by.items())}


def score(facts: list[dict], best: float, setup: Setup, seconds: float) -> dict:
    """The figures over seeds (see the module docstring)."""
    races = [f["race"] for f in facts if f["race"] is not None]
    with_interval = [r for r in races if r["covered"] is not None]
    full = np.sum([f["windows"]["full"] for f in facts], axis=0)
    screen = np.sum([f["windows"]["screen"] for f in facts], axis=0)
    regrets = [1 - r["recommended_truth"] / best for r in races] if best > 0 else []
    return {
        "machine": setup.machine, "noise": setup.noise, "seeds": len(facts), "n_trials": setup.n_trials,
        "window_s": setup.window_s, "dependence": setup.dependence, "estimator": setup.estimator,
        "calm_wait_s": setup.calm_wait_s, "replay": setup.replay,
        "bound_ms": BOUND_S * 1000, "true_best": best,
        "reported_over_true": _median_by_class(facts, "reported_over_true"),
        "reported_paths": _paths(facts),
        "race_over_true": _median_by_class(facts, "race_over_true"),
        "ci_coverage": float(np.mean([r["covered"] for r in with_interval])) if with_interval else None,
        "interval_coverage": float(np.mean(every)) if (every := [c for r in races for c in r["intervals_covered"]])
        else None,
        "wrong_faster_rate": float(np.mean([r["wrong_significant"] for r in races])) if races else None,
        "median_regret": float(np.median(regrets)) if regrets else None,
        "false_pass_rate": float(full[1] / full[0]) if full[0] else None,
        "screen_false_pass_rate": float(screen[1] / screen[0]) if screen[0] else None,
        "passed_windows": int(full[0]), "races": len(races), "races_with_interval": len(with_interval),
        "median_race_rounds": float(np.median([r["rounds"] for r in races])) if races else None,
        "median_simulated_s": float(np.median([f["simulated_s"] for f in facts])),
        "median_phase_s": {k: float(np.median([f["phase_s"].get(k, 0.0) for f in facts]))
                           for k in sorted({k for f in facts for k in f["phase_s"]})},
        "false_passes": _false_pass_breakdown(facts), "interval_misses": _interval_misses(races),
        "seconds": seconds, "per_seed": facts,
    }


def _interval_misses(races: list[dict]) -> dict:
    """Which race intervals miss the true ratio: per pair of classes ("searched" for a searched
    config), [intervals that miss, intervals, misses whose interval lies under the true ratio]."""
    out: dict[str, list[int]] = {}
    for r in races:
        for c in r.get("claims", []):
            row = out.setdefault(" / ".join(c["classes"]), [0, 0, 0])
            lo, hi = c["ci"]
            row[0] += int(not lo <= c["true"] <= hi)
            row[1] += 1
            row[2] += int(hi < c["true"])
    return dict(sorted(out.items(), key=lambda kv: -kv[1][0]))


def _false_pass_breakdown(facts: list[dict]) -> dict:
    """Where the false passes are: per config (the most first), and the quartiles of their offered
    rate over the config's true throughput."""
    every = [fp for f in facts for fp in f["false_passes"]]
    by_config: dict[str, int] = {}
    for label, *_ in every:
        by_config[label] = by_config.get(label, 0) + 1
    ratios = [fp[1] for fp in every]
    passes: dict[str, int] = {}
    for f in facts:
        for label, count in f["passes"].items():
            passes[label] = passes.get(label, 0) + count
    return {"by_config": {label: [count, passes[label]] for label, count in sorted(by_config.items(),
                                                                                   key=lambda kv: -kv[1])},
            "rate_over_truth_quartiles": np.percentile(ratios, [25, 50, 75]).tolist() if ratios else None,
            "extended": sum(fp[3] > 0 for fp in every), "disturbed": sum(bool(fp[4]) for fp in every)}


_SHARED_TRUTH = None  # params -> true throughput, shared by the processes of one run (a Manager dict)


def _share_truth(shared) -> None:
    """Pool initializer: every process reads and fills the same truth table (each config's truth,
    30k-request bisections, was computed again in every process: a third of a seed's time)."""
    global _SHARED_TRUTH
    _SHARED_TRUTH = shared


def _one(args: tuple[Setup, int]) -> dict:
    setup, seed = args
    return run_seed(setup, seed)


def simulate(setup: Setup, seeds: int, jobs: int = 1) -> dict:
    """Every seed (``jobs`` processes at once), scored."""
    from tuner.search.study import baselines

    began = time.monotonic()
    topology = machines.load(setup.machine)
    candidates = [p for _, p in sim_space(topology).configurations()] + [p for _, p in baselines(topology)]
    _, best = best_of(candidates, topology, PRESETS[setup.noise], BOUND_S, precision=PRECISE)
    work = [(setup, seed) for seed in range(seeds)]
    if jobs > 1:
        context = mp.get_context("spawn")
        with context.Manager() as manager, context.Pool(jobs, _share_truth, (manager.dict(),)) as pool:
            facts = pool.map(_one, work, chunksize=1)
    else:
        facts = [_one(w) for w in work]
    return score(facts, best, setup, time.monotonic() - began)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.simulate", description=__doc__.splitlines()[0])
    parser.add_argument("--machine", required=True, help="16, 64, 128, a sysfs root or a topology JSON file")
    parser.add_argument("--noise", choices=sorted(PRESETS), default="vm")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1, help="seeds simulated at once (processes)")
    parser.add_argument("--n-trials", type=int, default=Setup.n_trials)
    parser.add_argument("--window", type=float, default=Setup.window_s, help="minimum window, seconds")
    parser.add_argument("--dependence", choices=stats.DEPENDENCE_RULES, default=Setup.dependence,
                        help="MeasureSettings.dependence: how a window's pass accounts for correlated latencies "
                             "(default %(default)s)")
    parser.add_argument("--estimator", choices=("estimate", "bound", "both"), default="estimate",
                        help="MeasureSettings.estimator; both: the same seeds with each, side by side")
    parser.add_argument("--calm-wait", type=float, default=None,
                        help="MeasureSettings.calm_wait_s: seconds per measurement a disturbed window's re-run "
                             "may wait for calm CPUs (default: the tuner's)")
    parser.add_argument("--replay", action="store_true",
                        help="MeasureSettings.replay: figures from a replay of the calm windows' service times "
                             "(tuner.bench.replay) where there are enough")
    parser.add_argument("--json", action="store_true", help="print the whole JSON object (else a summary)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.jobs < 1 or args.n_trials < 1 or args.window <= 0:
        parser.error("--seeds, --jobs and --n-trials must be >= 1, --window > 0")
    estimators = ("estimate", "bound") if args.estimator == "both" else (args.estimator,)
    try:
        outs = {e: simulate(Setup(args.machine, args.noise, args.n_trials, args.window, dependence=args.dependence,
                                  estimator=e, calm_wait_s=args.calm_wait, replay=args.replay),
                                  args.seeds, args.jobs) for e in estimators}
    except PlacetuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(outs if len(outs) > 1 else outs[estimators[0]], indent=1))
    else:
        keys = ("ci_coverage", "interval_coverage", "wrong_faster_rate", "median_regret", "false_pass_rate",
                "median_simulated_s", "seconds")
        for e, out in outs.items():
            print(f"{e}: " + ", ".join(f"{k} {out[k]:.3f}" if isinstance(out[k], float) else f"{k} {out[k]}"
                                       for k in keys))
            print("  reported/true: " + ", ".join(f"{c} {v:.2f}" for c, v in out["reported_over_true"].items()))
            print("  race/true: " + ", ".join(f"{c} {v:.2f}" for c, v in out["race_over_true"].items()))
            print("  median measuring s by phase: "
                  + ", ".join(f"{k} {v:.0f}" for k, v in out["median_phase_s"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
