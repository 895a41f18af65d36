"""The deployment study: baselines first, then divisions and per-model configs proposed by Optuna,
then a final race of the best against both baselines; resumable like a single-model study.

One objective, maximized: the load factor L (tuner.mix.measure). A config already measured is
not measured again (the sampler is told the earlier value and the trial carries ``repeat_of``);
when the sampler proposes nothing new ``MAX_REPEATS`` times in a row the space is exhausted and
the study stops early.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import optuna

from tuner.bench import stats
from tuner.bench.launcher import Launcher
from tuner.bench.loadgen import run_offline_window
from tuner.bench.measure import MeasureSettings
from tuner.bench.model import ModelInfo
from tuner.errors import Infeasible, PlacementMismatch, PlacetuneError, StudyMismatch, UsageError, WorkerError
from tuner.machine.placement import Params, plan
from tuner.machine.topology import Topology
from tuner.mix.deployment import Deployment
from tuner.mix.division import MixConfig, even_split, ort_defaults, suggest_config
from tuner.mix.measure import MixResult, measure_mix
from tuner.mix.trials import DEPLOYMENT_KIND, best_and_baselines, study_document
from tuner.mix.trials import measured as measured
from tuner.search.storage import engine_kwargs

optuna.logging.set_verbosity(optuna.logging.ERROR)
MAX_REPEATS = 8
Say = Callable[[str], None]
Frozen = optuna.trial.FrozenTrial


@dataclass(frozen=True)
class MixStudyConfig:
    deployment: Deployment
    models: dict[str, ModelInfo]
    topology: Topology
    settings: MeasureSettings
    storage: str
    study_name: str
    space: str = "default"
    seed: int | None = None
    n_trials: int | None = 20  # measured configs in all, baselines included
    timeout_s: float | None = None
    race_rounds: int = 3  # final race: rounds of best vs baselines (0: no race)


def default_study_name(deployment: Deployment, models: dict[str, ModelInfo]) -> str:
    parts = [f"{m.name}-{models[m.name].sha256[:8]}-{m.p99_bound_s * 1000:g}ms-x{m.share:g}"
             for m in deployment.models]
    return "mix-" + "+".join(parts) + ("-shared" if deployment.shared_cores else "")


def check_bounds_alone(topology: Topology, deployment: Deployment, models: dict[str, ModelInfo],
                       settings: MeasureSettings, say: Say = lambda _m: None) -> dict[str, float]:
    """Each model ALONE on the whole machine (one pinned worker, a thread per core): its unloaded
    P99 in ms. A bound no config can meet even then is a UsageError naming the model."""
    cores = len(topology.cores())
    alone = plan(topology, Params(workers=1, cores_per_worker=cores, intra_op_threads=cores))
    unloaded = {}
    for m in deployment.models:
        say(f"{m.name} alone: unloaded latency")
        with Launcher(alone, models[m.name], start_timeout_s=settings.start_timeout_s,
                      hang_grace_s=settings.hang_grace_s) as fleet:
            run_offline_window(fleet, settings.warmup_s)
            probe = run_offline_window(fleet, settings.window_s, m.p99_bound_s)
        if probe.verdict == stats.FAIL:
            raise UsageError(f"{deployment.path}: model {m.name}'s P99 bound {m.p99_bound_s * 1000:g} ms is "
                             f"unreachable: alone on the whole machine, unloaded, its P99 is {probe.p99_ms:.2f} ms "
                             f"(lower bound {probe.p99_ci_ms[0]:.2f} ms); relax its p99")
        unloaded[m.name] = probe.p99_ms
    return unloaded


def open_mix_study(cfg: MixStudyConfig) -> optuna.Study:
    """Create or resume the study; a resumed study must describe the same deployment."""
    try:
        storage = optuna.storages.RDBStorage(cfg.storage, engine_kwargs=engine_kwargs(cfg.storage))
    except Exception as exc:
        raise UsageError(f"--storage {cfg.storage}: cannot open ({str(exc).splitlines()[0][:200]})") from None
    sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=5)
    study = optuna.create_study(storage=storage, study_name=cfg.study_name, direction="maximize",
                                sampler=sampler, load_if_exists=True)
    identity = {"deployment": [[m.name, cfg.models[m.name].sha256, m.p99_bound_s, m.share]
                               for m in cfg.deployment.models],
                "shared_cores": cfg.deployment.shared_cores, "topology": cfg.topology.fingerprint()}
    stored = study.user_attrs.get("mix_identity")
    if stored is None:
        study.set_user_attr("mix_identity", identity)
        study.set_user_attr("deployment", cfg.deployment.to_dict())
        study.set_user_attr("kind", DEPLOYMENT_KIND)
    elif stored != identity:
        raise StudyMismatch(f"study {cfg.study_name!r} was run for another deployment or machine; "
                            "give another --study-name")
    study.set_user_attr("model_paths", {n: info.path for n, info in cfg.models.items()})
    return study


def _record(study: optuna.Study, trial: optuna.Trial, cfg: MixStudyConfig, config: MixConfig, baseline: str,
            say: Say, on_result: Callable[[int, MixResult, str], None]) -> None:
    """Measure one config as ``trial`` and tell the study (a failed measurement fails the trial)."""
    from tuner.search.locks import HostLock

    trial.set_user_attr("label", config.label())
    trial.set_user_attr("host", HostLock(cfg.topology).key)  # fleet status: who measured what
    trial.set_user_attr("hostname", socket.gethostname())
    if baseline:
        trial.set_user_attr("baseline", baseline)
    say(f"trial {trial.number}: {config.label()}")
    try:
        result = measure_mix(cfg.topology, config, cfg.deployment, cfg.models,
                             replace(cfg.settings, seed=cfg.settings.seed + trial.number), say)
    except (Infeasible, WorkerError, PlacementMismatch) as exc:
        trial.set_user_attr("fail_reason", str(exc))
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        say(f"trial {trial.number} failed: {exc}")
        return
    trial.set_user_attr("result", result.to_dict())
    study.tell(trial, result.load_factor)
    on_result(trial.number, result, baseline)
    say(f"trial {trial.number}: load factor {result.load_factor:.3g} ({result.verdict})")


def run_trials(study: optuna.Study, cfg: MixStudyConfig, say: Say = lambda _m: None,
               on_result: Callable[[int, MixResult, str], None] = lambda *_a: None) -> None:
    """Measure the baselines not yet measured, then sampled configs, up to ``n_trials`` measured."""
    began = time.monotonic()
    done = {t.user_attrs["label"]: t for t in measured(study)}
    for name, config in (("ort_default", ort_defaults(cfg.deployment)),
                         ("even_split", even_split(cfg.topology, cfg.deployment))):
        if config.label() not in done:
            _record(study, study.ask(), cfg, config, name, say, on_result)
            done = {t.user_attrs["label"]: t for t in measured(study)}
    repeats = 0
    while (cfg.n_trials is None or len(done) < cfg.n_trials) and repeats < MAX_REPEATS:
        if cfg.timeout_s is not None and time.monotonic() - began > cfg.timeout_s:
            break
        trial = study.ask()
        config = suggest_config(trial, cfg.topology, cfg.deployment, cfg.space)
        earlier = done.get(config.label())
        if earlier is not None:  # the sampler learns the earlier value; nothing is measured twice
            trial.set_user_attr("repeat_of", earlier.number)
            study.tell(trial, earlier.value)
            repeats += 1
            continue
        repeats = 0
        _record(study, trial, cfg, config, "", say, on_result)
        done = {t.user_attrs["label"]: t for t in measured(study)}
    if repeats >= MAX_REPEATS:
        say(f"the sampler proposed only measured configs {MAX_REPEATS} times in a row: the space is exhausted")


def final_race(cfg: MixStudyConfig, best: Frozen, baselines: dict, say: Say = lambda _m: None) -> dict:
    """The final race of a finished study (``race_trials``), each entrant measured by ``measure_mix``
    with the study's settings, three load-factor search runs and a fresh seed per measurement."""
    seeds = iter(range(10_000, 1_000_000))

    def load_factor(config: MixConfig) -> float:
        quick = replace(cfg.settings, seed=next(seeds), search_steps=min(3, cfg.settings.search_steps))
        return measure_mix(cfg.topology, config, cfg.deployment, cfg.models, quick).load_factor

    return race_trials(best, baselines, load_factor, max(2, cfg.race_rounds), cfg.settings.confidence, say)


def race_trials(best: Frozen, baselines: dict[str, Frozen], measure_load_factor: Callable[[MixConfig], float],
                rounds: int, confidence: float = stats.DEFAULT_CONFIDENCE, say: Say = lambda _m: None) -> dict:
    """The best config and every passing baseline re-measured (``measure_load_factor``) in ``rounds``
    rotating interleaved rounds, judged by the single-model race's rules (tuner.search.race.compare:
    a baseline proven faster than the best searched config, or not significantly slower, is
    recommended). Returns the race as the study stores it (``race_document``)."""
    from tuner.search.race import Entrant, race

    best_label = best.user_attrs["label"]
    entrants = {best_label: Entrant(best_label, Params(), best.user_attrs.get("baseline", ""))}
    raced = {name: t for name, t in sorted(baselines.items()) if t.user_attrs["result"]["verdict"] == stats.PASS}
    for name, t in raced.items():  # a baseline that served no load factor has nothing to race
        entrants.setdefault(t.user_attrs["label"], Entrant(t.user_attrs["label"], Params(), name))
    configs = {t.user_attrs["label"]: MixConfig.from_dict(t.user_attrs["result"]["config"])
               for t in [best, *raced.values()]}
    result = race(list(entrants.values()), lambda e: measure_load_factor(configs[e.label]), min_rounds=rounds,
                  max_rounds=rounds, confidence=confidence, say=say, unit="load factor")
    return race_document(result, best_label, {name: t.user_attrs["label"] for name, t in raced.items()})


def race_document(result, best_label: str, baseline_labels: dict[str, str]) -> dict:
    """A finished race (tuner.search.race.RaceResult over load factors) as the study stores it:
    ``recommended`` and ``summary``, ``searched`` (the best searched config vs the best baseline),
    ``comparisons`` (the winner vs each other baseline), ``best_label`` (the study's best when it
    raced), each entrant's ``load_factors`` per round and ``mean``, and ``vs_baselines`` (the best
    config's load factor over each raced baseline's, with Fieller's intervals for the paired ratio of
    means: ``tuner.bench.stats.ratio_ci``)."""
    out = {k: v for k, v in result.to_dict().items() if k not in ("throughputs", "entrants")}
    lf = result.throughputs
    ratios = {}
    for name, label in baseline_labels.items():
        if label != best_label:
            ratio, low, high = stats.ratio_ci(lf[best_label], lf[label], result.confidence)
            ratios[name] = {"ratio": ratio, "ci": [low, high], "rounds": len(lf[best_label])}
    return {**out, "best_label": best_label, "load_factors": lf, "vs_baselines": ratios,
            "mean": {k: float(np.mean(v)) for k, v in lf.items()},
            "entrants": [{"label": e.label, "baseline": e.baseline} for e in result.entrants]}


def run(cfg: MixStudyConfig, say: Say = lambda _m: None, tracker=None, lock_wait_s: float | None = None) -> dict:
    """The whole study: trials, final race; returns the best-config document (tuner.mix.document)."""
    from contextlib import nullcontext

    from tuner.search.locks import HostLock

    study = open_mix_study(cfg)
    if tracker is not None:
        tracker.start(cfg.study_name, cfg.deployment.to_dict())
    on_result = tracker.log_trial if tracker is not None else (lambda *_a: None)
    lock = HostLock(cfg.topology, wait_s=lock_wait_s) if lock_wait_s is not None else nullcontext()
    with lock:
        run_trials(study, cfg, say, on_result)
        best, baselines = best_and_baselines(study)
        if best is None:
            if tracker is not None:
                tracker.finish(None, "FAILED")
            raise NoFeasibleMix(f"no config of study {cfg.study_name!r} served any load factor within every "
                                "model's bound")
        if cfg.race_rounds > 0:
            study.set_user_attr("race", final_race(cfg, best, baselines, say))
    document = study_document(study)  # the config the race recommends, with the race
    if tracker is not None:
        tracker.finish(document)
    return document


class NoFeasibleMix(PlacetuneError):
    """No config met every model's bound (the CLI exits 3)."""

    exit_code = 3
