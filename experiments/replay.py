"""Replay search strategies against an oracle instead of measuring.

    python -m experiments.replay --topology T.json|FSROOT --oracle MODULE:FUNCTION --budget N --seeds 20 --json

The oracle is ``FUNCTION(params: dict[, topology=Topology]) -> float``: throughput at the bound,
0.0 when missed (experiments/oracles.py has two). Strategies:

- ``placetune``: the study as it is now. It drives ``tuner.search.study.run_trials`` (the study's own loop,
  objective, baselines and strategy choice) on an in-memory Optuna study, with the oracle standing
  in for ``measure``.
- ``tpe-main``: the study as on main before the conditional space (commit 56b4326): TPE over the
  static categorical space, planner-rejected proposals pruned, repeats reused for free, an
  unmeasured config enqueued after 3 free trials in a row, the end after 25 (a replica of its loop,
  kept here for the comparison; experiments/zoo.py replays with it too).

Per strategy: ``median_trials_to_95`` / ``iqr_trials_to_95`` (measured configs until one reaches
95% of the oracle's best over the feasible space; a seed that never does counts as budget + 1),
``infeasible_rate`` (planner-rejected proposals / trials), ``repeat_rate`` (trials that repeat a
measured config / trials) and ``best_ratio`` (median best found / true best).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna

from tuner.bench.measure import MeasureSettings
from tuner.bench.model import ModelInfo
from tuner.errors import PlacetuneError
from tuner.machine.placement import Params, Plan
from tuner.machine.sysfs import read_topology
from tuner.machine.topology import Topology, load_topology_file
from tuner.results.records import TrialResult
from tuner.search.space import SearchSpace, check, load_space
from tuner.search.study import (
    CONSTRAINT,
    INFEASIBLE_P99,
    StudyConfig,
    baselines,
    enqueue_baselines,
    make_objective,
    make_sampler,
    run_trials,
    study_strategy,
)

STRATEGIES = ("placetune", "tpe-main")
TARGET = 0.95
MAX_FREE_STREAK = 25  # tpe-main: free trials in a row that end the study
EXPLORE_AFTER = 3  # tpe-main: free trials in a row before an unmeasured config is enqueued
Oracle = Callable[[dict], float]


def load_oracle(spec: str, topology: Topology) -> Oracle:
    """``MODULE:FUNCTION`` as a one-argument function (``topology=`` passed when it takes one)."""
    module_name, _, function_name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise PlacetuneError(f"--oracle {spec!r}: cannot load ({exc}); give MODULE:FUNCTION") from None
    if "topology" in inspect.signature(function).parameters:
        return lambda params: float(function(params, topology=topology))
    return lambda params: float(function(params))


def load_machine(path: str) -> Topology:
    """A topology JSON file (``placetune topology --json``) or a captured sysfs root (``--fsroot``)."""
    return read_topology(path) if Path(path).is_dir() else load_topology_file(path)


def oracle_params(params: Params) -> dict:
    d = params.to_dict()
    return {k: d[k] for k in ("workers", "cores_per_worker", "smt", "intra_op_threads", "inter_op_threads",
                              "execution_mode", "numa_policy", "spinning", "io_cores", "pin")}


def oracle_measure(oracle: Oracle, bound_ms: float = 50.0):
    """A stand-in for ``tuner.bench.measure.measure``: the oracle's throughput as a TrialResult."""

    def measure_fn(the_plan: Plan, model: ModelInfo, settings: MeasureSettings, progress=None) -> TrialResult:
        throughput = oracle(oracle_params(the_plan.params))
        feasible = throughput > 0
        p99 = bound_ms * 0.9 if feasible else math.inf
        return TrialResult(
            params=the_plan.params.to_dict(), plan=the_plan.to_dict(), scenario=settings.scenario,
            p99_bound_ms=bound_ms, feasible=feasible, reason="" if feasible else "oracle: bound missed",
            throughput=throughput, p50_ms=p99 / 3, p90_ms=p99 / 1.5, p99_ms=p99, p999_ms=p99 * 1.2,
            offered_rate=throughput, achieved_rate=throughput, capacity=throughput, unloaded_p50_ms=p99 / 4,
            unloaded_p99_ms=p99 / 2, cpu_util=0.0, worker_cpu=[], harness_cpu=0.0, placement=[], windows=[],
            model=model.to_dict(), machine={}, duration_s=0.0)

    return measure_fn


def true_best(space: SearchSpace, topology: Topology, oracle: Oracle) -> float:
    """The oracle's best over every config of the space and the baselines."""
    candidates = [p for _, p in space.configurations()] + [p for _, p in baselines(topology)]
    return max(oracle(oracle_params(p)) for p in candidates)


ORACLE_MODEL = ModelInfo("oracle", "oracle", "0" * 64, ())


def replay_placetune(space: SearchSpace, topology: Topology, oracle: Oracle, budget: int, seed: int) -> dict:
    """One study run by the study's own loop, with the oracle as the measurement."""
    settings = MeasureSettings(p99_bound_s=0.05)
    cfg = StudyConfig(model=ORACLE_MODEL, topology=topology, space=space, settings=settings,
                      storage="memory", study_name=f"replay-{seed}", seed=seed, n_trials=budget)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(cfg.sampler, seed, space))
    enqueue_baselines(study, topology, space)
    objective = make_objective(cfg, study, lambda _m: None, measure_fn=oracle_measure(oracle))
    run_trials(study, cfg, study_strategy(cfg), objective, lambda t, s: None, lambda _m: None)
    trials = study.get_trials(deepcopy=False)
    measured = [t.user_attrs["result"]["throughput"] for t in trials
                if t.state.name == "COMPLETE" and "result" in t.user_attrs]
    return {"measured": measured, "trials": len(trials),
            "infeasible": sum(1 for t in trials if "plan_infeasible" in t.user_attrs),
            "repeats": sum(1 for t in trials if "repeat_of" in t.user_attrs)}


def unmeasured_config(study: optuna.Study, space: SearchSpace, topology: Topology, seed: int = 0) -> dict | None:
    """tpe-main: a random plannable config of the static space that no trial has measured or queued."""
    taken = {t.user_attrs.get("label") for t in study.get_trials(deepcopy=False)
             if t.state not in (optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        fixed = t.system_attrs.get("fixed_params") or {}
        taken.add(Params.from_dict(t.user_attrs["params"]).label() if "params" in t.user_attrs
                  else space.params(fixed).label())
    fresh = [values for values in _plannable_static(space, topology) if space.params(values).label() not in taken]
    return random.Random(seed).choice(fresh) if fresh else None


_plannable: dict[int, tuple[SearchSpace, list[dict]]] = {}


def _plannable_static(space: SearchSpace, topology: Topology) -> list[dict]:
    """main's static combinations the planner accepts (computed once per space: a cache only)."""
    if id(space) not in _plannable:
        _plannable[id(space)] = (space, [v for v in space.combinations() if check(space, topology, v) is None])
    return _plannable[id(space)][1]


def replay_tpe_main(space: SearchSpace, topology: Topology, oracle: Oracle, budget: int, seed: int) -> dict:
    """One study with main's rules (see the module docstring)."""
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.TPESampler(
        seed=seed, multivariate=True, n_startup_trials=5))
    for name, params in baselines(topology):
        study.enqueue_trial(_static_values(space, params) or {}, user_attrs={"baseline": name,
                                                                             "params": params.to_dict()})
    measured, seen, trials, infeasible, repeats, free_streak = [], {}, 0, 0, 0, 0
    while len(measured) < budget and free_streak < MAX_FREE_STREAK:
        trial = study.ask()
        trials += 1
        if "baseline" in trial.user_attrs:
            params = Params.from_dict(trial.user_attrs["params"])
            if _static_values(space, params) is not None:
                for d, c in space.varying.items():
                    trial.suggest_categorical(d, list(c))
        else:
            values = {d: trial.suggest_categorical(d, list(c)) for d, c in space.varying.items()}
            if check(space, topology, values) is not None:
                infeasible += 1
                free_streak += 1
                trial.set_constraint(CONSTRAINT, INFEASIBLE_P99)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                continue
            params = space.params(values)
        label = params.label()
        trial.set_user_attr("label", label)
        if label in seen:
            repeats += 1
            free_streak += 1
            throughput = seen[label]
        else:
            throughput = seen[label] = oracle(oracle_params(params))
            measured.append(throughput)
            free_streak = 0
        trial.set_constraint(CONSTRAINT, 0.0 if throughput > 0 else INFEASIBLE_P99)
        study.tell(trial, [throughput, 45.0 if throughput > 0 else INFEASIBLE_P99])
        if free_streak >= EXPLORE_AFTER and not any(t.state.name == "WAITING" for t in study.trials):
            fresh = unmeasured_config(study, space, topology, seed=seed + trials)
            if fresh is None:
                break
            study.enqueue_trial(fresh)
            free_streak = 0
    return {"measured": measured, "trials": trials, "infeasible": infeasible, "repeats": repeats}


def _static_values(space: SearchSpace, params: Params) -> dict | None:
    """main's SearchSpace.express: the static choices' values giving ``params``, or None."""
    d = params.to_dict()
    values = {dim: d[dim] for dim, choices in space.varying.items()}
    if any(d.get(dim) not in choices for dim, choices in space.choices.items()):
        return None
    try:
        return values if space.params(values) == params else None
    except PlacetuneError:
        return None


REPLAYERS = {"placetune": replay_placetune, "tpe-main": replay_tpe_main}


def summarize(strategy: str, budget: int, runs: list[dict], best: float) -> dict:
    """The replay's figures over seeds (names as in issue 15)."""
    to_95, ratios = [], []
    for run in runs:
        hit = next((i + 1 for i, v in enumerate(run["measured"]) if v >= TARGET * best), budget + 1)
        to_95.append(hit)
        ratios.append(max(run["measured"], default=0.0) / best if best > 0 else 0.0)
    q1, median, q3 = np.percentile(to_95, [25, 50, 75]).tolist()
    trials = sum(r["trials"] for r in runs) or 1
    return {"strategy": strategy, "budget": budget, "median_trials_to_95": median, "iqr_trials_to_95": q3 - q1,
            "infeasible_rate": sum(r["infeasible"] for r in runs) / trials,
            "repeat_rate": sum(r["repeats"] for r in runs) / trials, "best_ratio": float(np.median(ratios))}


def replay(topology: Topology, oracle: Oracle, budget: int, seeds: int, strategies: tuple[str, ...],
           space_name: str = "default") -> list[dict]:
    """Every strategy over ``seeds`` seeds; one summary per strategy."""
    space = load_space(space_name, topology)
    best = true_best(space, topology, oracle)
    return [summarize(name, budget, [REPLAYERS[name](space, topology, oracle, budget, seed) for seed in range(seeds)],
                      best) for name in strategies]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.replay", description=__doc__.splitlines()[0])
    parser.add_argument("--topology", required=True, help="topology JSON (placetune topology --json) or a sysfs root")
    parser.add_argument("--oracle", required=True, help="MODULE:FUNCTION, e.g. experiments.oracles:amdahl_bandwidth")
    parser.add_argument("--budget", type=int, default=30, help="measured configs per study")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--strategy", choices=(*STRATEGIES, "all"), default="all")
    parser.add_argument("--space", default="default")
    parser.add_argument("--json", action="store_true", help="print the summaries as JSON")
    args = parser.parse_args(argv)
    if args.budget < 1 or args.seeds < 1:
        parser.error("--budget and --seeds must be >= 1")
    try:
        topology = load_machine(args.topology)
        oracle = load_oracle(args.oracle, topology)
        strategies = STRATEGIES if args.strategy == "all" else (args.strategy,)
        out = replay(topology, oracle, args.budget, args.seeds, strategies, args.space)
    except PlacetuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for r in out:
            print(f"{r['strategy']:<10} median trials to 95%: {r['median_trials_to_95']:g} (IQR "
                  f"{r['iqr_trials_to_95']:g}), infeasible {r['infeasible_rate']:.0%}, repeats "
                  f"{r['repeat_rate']:.0%}, best ratio {r['best_ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
