"""Replay search strategies against an oracle instead of measuring.

    python -m experiments.replay --topology T.json|FSROOT|T.tar.bz2 --oracle MODULE:FUNCTION --budget N --seeds 20

The oracle is ``FUNCTION(params: dict[, topology=Topology]) -> float``: throughput at the bound,
0.0 when missed (experiments/oracles.py has two); it stands for a full measurement. A screening
measurement (short windows) is the oracle times ``oracles.screening_error`` (lognormal,
``--screen-noise`` sigma, 0.10 by default) and costs ``--screen-cost`` of a full one (the study's
``screening.SCREEN_COST`` by default). Strategies:

- ``placetune``: the study as it is now. It drives ``tuner.search.study.run_trials`` (the study's own loop,
  objective, baselines and strategy choice, so screening when the space is larger than the budget)
  on an in-memory Optuna study, with the oracle standing in for ``measure``.
- ``placetune-noscreen``: the same without screening (every config measured in full).
- ``tpe-main``: the study as on main before the conditional space (commit 56b4326): TPE over the
  static categorical space, planner-rejected proposals pruned, repeats reused for free, an
  unmeasured config enqueued after 3 free trials in a row, the end after 25 (a replica of its loop,
  kept here for the comparison; experiments/zoo.py replays with it too).

Per strategy: ``median_trials_to_95`` / ``iqr_trials_to_95`` (measurements, screening ones included,
until a full one reaches 95% of the oracle's best over the feasible space; a seed that never does
counts as budget + 1), ``infeasible_rate`` (planner-rejected proposals / trials), ``repeat_rate``
(trials that repeat a measured config / trials) and ``best_ratio`` (median best full result / true
best); and for screening: ``median_cost_to_95`` / ``iqr_cost_to_95`` (the same in full-measurement
units: a screening measurement counts ``screen_cost``; equal to trials without screening),
``configs_per_cost`` (median distinct configs measured, at any fidelity, per full-measurement unit
spent), ``median_screened``, ``median_promoted`` and ``median_full`` (measurements of each kind per
study), ``screen_noise`` and ``screen_cost``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import random
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import optuna

from experiments.oracles import screening_error
from tuner.bench.measure import MeasureSettings
from tuner.bench.model import ModelInfo
from tuner.errors import PlacetuneError
from tuner.machine.placement import Params, Plan
from tuner.machine.sysfs import read_topology
from tuner.machine.topology import Topology, load_topology_file
from tuner.results.records import MachineInfo, TrialResult
from tuner.search import screening
from tuner.search.space import SearchSpace, check, load_space
from tuner.search.strategy import Screening, choose_strategy
from tuner.search.study import (
    CONSTRAINT,
    INFEASIBLE_P99,
    StudyConfig,
    baselines,
    enqueue_baselines,
    make_objective,
    make_sampler,
    run_trials,
)

STRATEGIES = ("placetune", "placetune-noscreen", "tpe-main")
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
    """A topology JSON file (``placetune topology --json``), a captured sysfs root (``--fsroot``)
    or a fixture archive of tests/topologies (``NAME.tar.bz2`` holding ``NAME/``)."""
    if path.endswith(".tar.bz2"):
        with tempfile.TemporaryDirectory(prefix="replay-topology-") as tmp, tarfile.open(path) as tar:
            tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            return read_topology(Path(tmp) / Path(path).name.removesuffix(".tar.bz2"))
    return read_topology(path) if Path(path).is_dir() else load_topology_file(path)


def oracle_params(params: Params) -> dict:
    d = params.to_dict()
    return {k: d[k] for k in ("workers", "cores_per_worker", "smt", "intra_op_threads", "inter_op_threads",
                              "execution_mode", "numa_policy", "spinning", "io_cores", "pin")}


def oracle_measure(oracle: Oracle, bound_ms: float = 50.0, full: MeasureSettings | None = None,
                   screen_noise: float = 0.0, seed: int = 0):
    """A stand-in for ``tuner.bench.measure.measure``: the oracle's throughput as a TrialResult.
    Settings other than ``full`` (a screening trial's) add ``oracles.screening_error``."""

    def measure_fn(the_plan: Plan, model: ModelInfo, settings: MeasureSettings, progress=None) -> TrialResult:
        throughput = oracle(oracle_params(the_plan.params))
        if full is not None and settings != full:
            throughput *= screening_error(oracle_params(the_plan.params), seed, screen_noise)
        feasible = throughput > 0
        p99 = bound_ms * 0.9 if feasible else math.inf
        return TrialResult(
            params=the_plan.params, plan=the_plan, scenario=settings.scenario,
            p99_bound_ms=bound_ms, feasible=feasible, reason="" if feasible else "oracle: bound missed",
            throughput=throughput, p50_ms=p99 / 3, p90_ms=p99 / 1.5, p99_ms=p99, p999_ms=p99 * 1.2,
            offered_rate=throughput, achieved_rate=throughput, capacity=throughput, unloaded_p50_ms=p99 / 4,
            unloaded_p99_ms=p99 / 2, cpu_util=0.0, worker_cpu=(), harness_cpu=0.0, placement=(), windows=(),
            model=model, machine=ORACLE_MACHINE, duration_s=0.0)

    return measure_fn


def true_best(space: SearchSpace, topology: Topology, oracle: Oracle) -> float:
    """The oracle's best over every config of the space and the baselines."""
    candidates = [p for _, p in space.configurations()] + [p for _, p in baselines(topology)]
    return max(oracle(oracle_params(p)) for p in candidates)


ORACLE_MODEL = ModelInfo("oracle", "oracle", "0" * 64, ())
ORACLE_MACHINE = MachineInfo("oracle", "", "", "", "", 0)


@dataclass(frozen=True)
class Fidelity:
    """The replay's model of screening: the extra error (lognormal sigma) and the cost (share of a
    full measurement's time) of a screening measurement."""

    screen_noise: float = 0.10
    screen_cost: float = screening.SCREEN_COST


def replay_placetune(space: SearchSpace, topology: Topology, oracle: Oracle, budget: int, seed: int,
                     fidelity: Fidelity = Fidelity(), screen: bool = True) -> dict:
    """One study run by the study's own loop, with the oracle as the measurement."""
    settings = MeasureSettings(p99_bound_s=0.05)
    cfg = StudyConfig(model=ORACLE_MODEL, topology=topology, space=space, settings=settings,
                      storage="memory", study_name=f"replay-{seed}", seed=seed, n_trials=budget)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(cfg.sampler, seed, space))
    enqueue_baselines(study, topology, space)
    measure_fn = oracle_measure(oracle, full=settings, screen_noise=fidelity.screen_noise, seed=seed)
    objective = make_objective(cfg, study, lambda _m: None, measure_fn=measure_fn)
    extra = sum(1 for _, params in baselines(topology) if space.express(params) is None)
    strategy = choose_strategy(space, cfg.sampler, seed, budget, extra, screen=screen)
    if isinstance(strategy, Screening):
        strategy.screen_cost = fidelity.screen_cost
    run_trials(study, cfg, strategy, objective, lambda t, s: None, lambda _m: None)
    return study_events(study.get_trials(deepcopy=False), fidelity.screen_cost)


def study_events(trials: list[optuna.trial.FrozenTrial], screen_cost: float) -> dict:
    """A replayed study as the summary reads it: its measurements in order, (throughput, cost,
    full or not, label, a promotion or not), and its trial counts."""
    events = []
    for t in sorted(trials, key=lambda t: t.number):
        if t.state.name == "COMPLETE" and "result" in t.user_attrs:
            events.append((t.user_attrs["result"]["throughput"], 1.0, True, t.user_attrs["label"],
                           t.user_attrs.get("proposed_by") == "promotion"))
        elif screening.is_screened(t):
            events.append((screening.screen_value(t), screen_cost, False, t.user_attrs["label"], False))
    return {"events": events, "trials": len(trials),
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
            measured.append((throughput, 1.0, True, label, False))
            free_streak = 0
        trial.set_constraint(CONSTRAINT, 0.0 if throughput > 0 else INFEASIBLE_P99)
        study.tell(trial, [throughput, 45.0 if throughput > 0 else INFEASIBLE_P99])
        if free_streak >= EXPLORE_AFTER and not any(t.state.name == "WAITING" for t in study.trials):
            fresh = unmeasured_config(study, space, topology, seed=seed + trials)
            if fresh is None:
                break
            study.enqueue_trial(fresh)
            free_streak = 0
    return {"events": measured, "trials": trials, "infeasible": infeasible, "repeats": repeats}


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


def replayers(fidelity: Fidelity) -> dict[str, Callable[..., dict]]:
    """Each strategy's replay of one study: (space, topology, oracle, budget, seed) -> events."""
    return {"placetune": partial(replay_placetune, fidelity=fidelity),
            "placetune-noscreen": partial(replay_placetune, fidelity=fidelity, screen=False),
            "tpe-main": replay_tpe_main}


def _to_target(events: list[tuple], best: float, budget: int) -> tuple[float, float]:
    """(measurements, cost) until a full result reaches ``TARGET`` of the best; (budget + 1, budget + 1)
    when none does."""
    cost = 0.0
    for i, (value, event_cost, full, _label, _promoted) in enumerate(events):
        cost += event_cost
        if full and value >= TARGET * best:
            return i + 1, cost
    return budget + 1, budget + 1


def _median_iqr(values: list[float]) -> tuple[float, float]:
    q1, median, q3 = np.percentile(values, [25, 50, 75]).tolist()
    return median, q3 - q1


def summarize(strategy: str, budget: int, runs: list[dict], best: float, fidelity: Fidelity = Fidelity()) -> dict:
    """The replay's figures over seeds (names as in issue 15, then screening's)."""
    hits = [_to_target(run["events"], best, budget) for run in runs]
    ratios = [max((v for v, _c, full, _l, _p in run["events"] if full), default=0.0) / best if best > 0 else 0.0
              for run in runs]
    covered = [len({e[3] for e in run["events"]}) / max(1e-9, sum(e[1] for e in run["events"])) for run in runs]
    trials = sum(r["trials"] for r in runs) or 1
    median, iqr = _median_iqr([h[0] for h in hits])
    cost_median, cost_iqr = _median_iqr([h[1] for h in hits])

    def count(keep: Callable[[tuple], bool]) -> float:
        return float(np.median([sum(1 for e in run["events"] if keep(e)) for run in runs]))

    return {"strategy": strategy, "budget": budget, "median_trials_to_95": median, "iqr_trials_to_95": iqr,
            "infeasible_rate": sum(r["infeasible"] for r in runs) / trials,
            "repeat_rate": sum(r["repeats"] for r in runs) / trials, "best_ratio": float(np.median(ratios)),
            "median_cost_to_95": cost_median, "iqr_cost_to_95": cost_iqr,
            "configs_per_cost": float(np.median(covered)), "median_screened": count(lambda e: not e[2]),
            "median_promoted": count(lambda e: e[4]), "median_full": count(lambda e: e[2]),
            "screen_noise": fidelity.screen_noise, "screen_cost": fidelity.screen_cost}


def replay(topology: Topology, oracle: Oracle, budget: int, seeds: int, strategies: tuple[str, ...],
           space_name: str = "default", fidelity: Fidelity = Fidelity()) -> list[dict]:
    """Every strategy over ``seeds`` seeds; one summary per strategy."""
    space = load_space(space_name, topology).without_batching("the replay oracles do not model batching")
    best = true_best(space, topology, oracle)
    run = replayers(fidelity)
    return [summarize(name, budget, [run[name](space, topology, oracle, budget, seed) for seed in range(seeds)],
                      best, fidelity) for name in strategies]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.replay", description=__doc__.splitlines()[0])
    parser.add_argument("--topology", required=True,
                        help="topology JSON (placetune topology --json), a sysfs root or a tests/topologies/*.tar.bz2")
    parser.add_argument("--oracle", required=True, help="MODULE:FUNCTION, e.g. experiments.oracles:amdahl_bandwidth")
    parser.add_argument("--budget", type=int, default=30, help="measured configs per study")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--strategy", choices=(*STRATEGIES, "all"), default="all")
    parser.add_argument("--space", default="default")
    parser.add_argument("--screen-noise", type=float, default=Fidelity.screen_noise,
                        help="sigma of a screening measurement's extra lognormal error")
    parser.add_argument("--screen-cost", type=float, default=Fidelity.screen_cost,
                        help="a screening measurement's time as a share of a full one")
    parser.add_argument("--json", action="store_true", help="print the summaries as JSON")
    args = parser.parse_args(argv)
    if args.budget < 1 or args.seeds < 1:
        parser.error("--budget and --seeds must be >= 1")
    if args.screen_noise < 0 or not 0 < args.screen_cost <= 1:
        parser.error("--screen-noise must be >= 0 and --screen-cost in (0, 1]")
    try:
        topology = load_machine(args.topology)
        oracle = load_oracle(args.oracle, topology)
        strategies = STRATEGIES if args.strategy == "all" else (args.strategy,)
        out = replay(topology, oracle, args.budget, args.seeds, strategies, args.space,
                     Fidelity(args.screen_noise, args.screen_cost))
    except PlacetuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for r in out:
            print(f"{r['strategy']:<18} median trials to 95%: {r['median_trials_to_95']:g} (IQR "
                  f"{r['iqr_trials_to_95']:g}), cost {r['median_cost_to_95']:g} (IQR {r['iqr_cost_to_95']:g}), "
                  f"infeasible {r['infeasible_rate']:.0%}, repeats {r['repeat_rate']:.0%}, best ratio "
                  f"{r['best_ratio']:.3f}, configs per full-measurement time {r['configs_per_cost']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
