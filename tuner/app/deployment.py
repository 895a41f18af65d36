"""The optimize service for a deployment (``placetune optimize --deployment``), as tuner.app.optimize
is for one model: open the study (tuner.mix.study), run its trials with the study loop every
study runs (tuner.search.study.run_trials, the strategy tuner.search.strategy.Sampled over the
deployment's space), race the best config against the baselines (tuner.search.race), write the
best-config document (tuner.results.mixtrials) and track it all in MLflow (tuner.results.mixtracking).
Before the study, ``check_bounds_alone`` refuses a bound no config can meet. No argument parsing,
no rendering.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from tuner.bench import stats
from tuner.bench.launcher import Launcher
from tuner.bench.loadgen import run_offline_window
from tuner.bench.measure import MeasureSettings
from tuner.bench.model import ModelInfo
from tuner.errors import PlacetuneError, UsageError
from tuner.machine.placement import Params, plan
from tuner.machine.topology import Topology
from tuner.mix.bench import FleetFactory, launch
from tuner.mix.study import DeploymentSubject, MixStudyConfig, open_mix_study, race_entrants
from tuner.outputs import write_atomic
from tuner.results.documents import DeploymentDocument
from tuner.results.mixrecords import Deployment, MixConfig
from tuner.results.mixtrials import best_and_baselines, mix_result, study_document
from tuner.search.locks import HostLock, StudyMutex
from tuner.search.objective import make_subject_objective
from tuner.search.race import race, race_subject
from tuner.search.storage import quiet_optuna
from tuner.search.strategy import MAX_SAMPLER_RETRIES, Sampled
from tuner.search.study import enqueue_baselines, run_trials

Say = Callable[[str], None]
Frozen = optuna.trial.FrozenTrial


class NoFeasibleMix(PlacetuneError):
    """No config met every model's bound (the CLI exits 3)."""

    exit_code = 3


@dataclass(frozen=True)
class DeploymentRequest:
    """Everything ``run_deployment`` needs: the study, where the best config goes, how long the host
    lock is waited for (None: not taken), the MLflow tracker (tuner.results.mixtracking.MixTracker;
    None: no tracking), and each model's workers (``fleet_factory``: a simulated fleet in tests)."""

    study: MixStudyConfig
    out: Path | None = None
    lock_wait_s: float | None = None
    tracker: object | None = None
    fleet_factory: FleetFactory = launch


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


def run_deployment(request: DeploymentRequest, say: Say = lambda _m: None) -> DeploymentDocument:
    """The whole study: baselines, trials, the final race; writes and returns the best-config
    document (raises NoFeasibleMix when no config served a load factor within every bound)."""
    cfg, tracker = request.study, request.tracker
    study = open_mix_study(cfg)
    if tracker is not None:
        tracker.start(cfg.study_name, cfg.deployment)
    lock = HostLock(cfg.topology, wait_s=request.lock_wait_s) if request.lock_wait_s is not None else nullcontext()
    with lock:
        run_deployment_trials(study, cfg, say, HostLock(cfg.topology).key, tracker, request.fleet_factory)
        best, baselines = best_and_baselines(study)
        if best is None:
            if tracker is not None:
                tracker.finish(None, "FAILED")
            raise NoFeasibleMix(f"no config of study {cfg.study_name!r} served any load factor within every "
                                "model's bound")
        if cfg.race_rounds > 0:
            study.set_user_attr("race", final_race(cfg, study, say, request.fleet_factory))
    document = study_document(study)  # the config the race recommends, with the race
    if request.out is not None:
        write_atomic(request.out, json.dumps(document.to_dict(), indent=1) + "\n")
    if tracker is not None:
        tracker.finish(document)
    return document


def run_deployment_trials(study: optuna.Study, cfg: MixStudyConfig, say: Say = lambda _m: None,
                          host_key: str = "", tracker=None, fleet_factory: FleetFactory = launch) -> None:
    """The baselines not yet measured, then what the sampler proposes, up to ``n_trials`` measured
    configs (tuner.search.study.run_trials)."""
    subject = DeploymentSubject(cfg, fleet_factory)
    objective = make_subject_objective(subject, cfg.settings, say, host_key, cfg.topology.fingerprint())

    def on_trial(trial: Frozen, _summary: object) -> None:
        if "result" in trial.user_attrs:
            result = mix_result(trial)
            say(f"trial {trial.number}: load factor {result.load_factor:.3g} ({result.verdict})")
            if tracker is not None:
                tracker.log_trial(trial.number, result, trial.user_attrs.get("baseline", ""))
        if trial.state == optuna.trial.TrialState.FAIL:
            say(f"trial {trial.number} failed: {trial.user_attrs.get('fail_reason', '')}")

    with quiet_optuna():
        with StudyMutex(cfg.storage, cfg.study_name):
            enqueue_baselines(study, cfg.topology, entries=subject.baselines())
        study.set_user_attr("space_exhausted", False)
        run_trials(study, cfg, Sampled(subject, "tpe", cfg.seed), objective, on_trial, say,
                   mutex=lambda: StudyMutex(cfg.storage, cfg.study_name), summarize=lambda t: t)
    if study.user_attrs.get("space_exhausted"):
        say(f"the sampler proposed only measured configs {MAX_SAMPLER_RETRIES} times in a row: the space is "
            "exhausted")


def final_race(cfg: MixStudyConfig, study: optuna.Study, say: Say = lambda _m: None,
               fleet_factory: FleetFactory = launch) -> dict:
    """The final race of a finished study (tuner.search.race.race_subject over the deployment:
    ``cfg.race_rounds`` rounds, at least 2), as the study stores it (``race_document``)."""
    rounds = max(2, cfg.race_rounds)
    result = race_subject(study, DeploymentSubject(cfg, fleet_factory), 1, rounds, rounds, cfg.settings.confidence,
                          say, first_seed=10_000)
    best, baselines = best_and_baselines(study)
    return race_document(result, best.user_attrs["label"], _raced_labels(baselines))


def race_trials(best: Frozen, baselines: dict[str, Frozen], measure_load_factor: Callable[[MixConfig], float],
                rounds: int, confidence: float = stats.DEFAULT_CONFIDENCE, say: Say = lambda _m: None) -> dict:
    """The race of ``final_race`` with the load factors ``measure_load_factor`` gives each config: the
    best config and every passing baseline in ``rounds`` rotating interleaved rounds, judged by the
    single-model race's rules (tuner.search.race.compare: a baseline proven faster than the best
    searched config, or not significantly slower, is recommended)."""
    result = race(race_entrants(best, baselines), lambda e: measure_load_factor(e.params), min_rounds=rounds,
                  max_rounds=rounds, confidence=confidence, say=say, unit="load factor")
    return race_document(result, best.user_attrs["label"], _raced_labels(baselines))


def _raced_labels(baselines: dict[str, Frozen]) -> dict[str, str]:
    return {name: t.user_attrs["label"] for name, t in sorted(baselines.items()) if mix_result(t).feasible}


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
