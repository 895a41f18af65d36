"""A deployment as the optimize service (tuner.app.optimize.run_optimize) runs it:
``DeploymentTuning`` opens the study (tuner.mix.study), runs its trials with the study loop every
study runs (tuner.search.study.run_trials, the strategy tuner.search.strategy.Sampled over the
deployment's space), races the best config against the baselines (tuner.search.race.race_subject),
writes the best-config document (tuner.results.mixtrials) and tracks it in MLflow
(tuner.results.mixtracking). Before the study, ``check_bounds_alone`` refuses a bound no config can
meet. No argument parsing, no rendering.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from tuner.app.optimize import OptimizeOutcome, OptimizeStart, TrackingRequest
from tuner.bench import stats
from tuner.bench.launcher import Launcher
from tuner.bench.loadgen import run_offline_window
from tuner.bench.measure import MeasureSettings
from tuner.bench.model import ModelInfo
from tuner.errors import UsageError
from tuner.machine.placement import Params, plan
from tuner.machine.topology import Topology
from tuner.mix.bench import FleetFactory, launch
from tuner.mix.study import DeploymentSubject, MixStudyConfig, open_mix_study, race_entrants
from tuner.outputs import write_atomic
from tuner.results.mixrecords import Deployment, MixConfig, MixResult
from tuner.results.mixtracking import MixTracker
from tuner.results.mixtrials import best_and_baselines, measured, mix_result, study_document
from tuner.results.tracking import default_uri
from tuner.search.locks import HostLock, StudyMutex
from tuner.search.objective import make_subject_objective
from tuner.search.race import RaceResult, paired_ratio, race, race_subject
from tuner.search.storage import quiet_optuna
from tuner.search.strategy import MAX_SAMPLER_RETRIES, Sampled
from tuner.search.study import enqueue_baselines, run_trials

Say = Callable[[str], None]
Frozen = optuna.trial.FrozenTrial


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


@dataclass(frozen=True)
class DeploymentTuning:
    """A deployment study for ``run_optimize`` (tuner.app.optimize.Tuning): its study, trials, race
    (``race_k`` is its rounds, at least 2), document and MLflow runs; the host lock is waited for
    ``lock_wait_s`` (None: not taken); each model's workers come from ``fleet_factory`` (a simulated
    fleet in tests)."""

    cfg: MixStudyConfig
    lock_wait_s: float | None = None
    fleet_factory: FleetFactory = launch

    def open(self) -> optuna.Study:
        return open_mix_study(self.cfg)

    def tracker(self, tracking: TrackingRequest, warn: Say) -> MixTracker:
        return MixTracker(tracking.uri or default_uri(self.cfg.storage), tracking.experiment, warn=warn)

    def started(self, study: optuna.Study, target: int, mlflow_uri: str | None, experiment: str) -> OptimizeStart:
        return OptimizeStart(study_name=self.cfg.study_name, storage=self.cfg.storage,
                             already_measured=len(measured(study)), target_measured=target, space_name=self.cfg.space,
                             space_size=0, space_fixed={}, mlflow_uri=mlflow_uri, mlflow_experiment=experiment)

    def _lock(self):
        return HostLock(self.cfg.topology, wait_s=self.lock_wait_s) if self.lock_wait_s is not None else nullcontext()

    def run_trials(self, study: optuna.Study, on_trial: Callable, say: Say) -> optuna.Study:
        with self._lock():
            run_deployment_trials(study, self.cfg, say, HostLock(self.cfg.topology).key, self.fleet_factory, on_trial)
        return study

    def value(self, info: MixResult | None) -> float | None:
        return info.load_factor if info is not None and info.feasible else None

    def outcome(self, study: optuna.Study, target: int, config_path: Path | None,
                mlflow_uri: str | None) -> OptimizeOutcome:
        best, _ = best_and_baselines(study)
        return OptimizeOutcome(
            study=study, measured=len(measured(study)), target_measured=target,
            space_exhausted=bool(study.user_attrs.get("space_exhausted")), p99_bound_s=None, best=best, front=[],
            baselines={}, lowest_p99=None, config_path=config_path, mlflow_uri=mlflow_uri,
            document=study_document(study))

    def race(self, study: optuna.Study, k: int, time_limit_s: float | None, say: Say) -> RaceResult:
        """``k`` rounds (at least 2) of the best config against every baseline that served a load
        factor, stopped early by ``time_limit_s``; stored as the study's ``race`` (``race_document``)."""
        rounds = max(2, k)
        with self._lock():
            result = race_subject(study, DeploymentSubject(self.cfg, self.fleet_factory), 1, rounds, rounds,
                                  self.cfg.settings.confidence, say, time_limit_s=time_limit_s, first_seed=10_000)
        best, baselines = best_and_baselines(study)
        study.set_user_attr("race", race_document(result, best.user_attrs["label"], _raced_labels(baselines)))
        return result

    def save(self, study: optuna.Study, out: Path | None, race: RaceResult | None = None) -> bool:
        """Write the best-config document (the config the race recommends, with the race, once run)."""
        document = study_document(study) if out is not None else None
        if document is None:
            return False
        write_atomic(out, json.dumps(document.to_dict(), indent=1) + "\n")
        return True


def trial_line(trial: Frozen, result: MixResult | None) -> str | None:
    """What a finished deployment trial says (None: nothing)."""
    if result is not None:
        return f"trial {trial.number}: load factor {result.load_factor:.3g} ({result.verdict})"
    if trial.state == optuna.trial.TrialState.FAIL:
        return f"trial {trial.number} failed: {trial.user_attrs.get('fail_reason', '')}"
    return None


def _say_trial(say: Say) -> Callable[[Frozen, MixResult | None], None]:
    def on_trial(trial: Frozen, result: MixResult | None) -> None:
        if (line := trial_line(trial, result)) is not None:
            say(line)
    return on_trial


def run_deployment_trials(study: optuna.Study, cfg: MixStudyConfig, say: Say = lambda _m: None,
                          host_key: str = "", fleet_factory: FleetFactory = launch,
                          on_trial: Callable[[Frozen, MixResult | None], None] | None = None) -> None:
    """The baselines not yet measured, then what the sampler proposes, up to ``n_trials`` measured
    configs (tuner.search.study.run_trials); ``on_trial`` hears each trial with its result (None:
    none; by default a line to ``say``)."""
    subject = DeploymentSubject(cfg, fleet_factory)
    objective = make_subject_objective(subject, cfg.settings, say, host_key, cfg.topology.fingerprint())
    with quiet_optuna():
        with StudyMutex(cfg.storage, cfg.study_name):
            enqueue_baselines(study, cfg.topology, entries=subject.baselines())
        study.set_user_attr("space_exhausted", False)
        run_trials(study, cfg, Sampled(subject, "tpe", cfg.seed), objective, on_trial or _say_trial(say), say,
                   mutex=lambda: StudyMutex(cfg.storage, cfg.study_name),
                   summarize=lambda t: mix_result(t) if "result" in t.user_attrs else None)
    if study.user_attrs.get("space_exhausted"):
        say(f"the sampler proposed only measured configs {MAX_SAMPLER_RETRIES} times in a row: the space is "
            "exhausted")


def final_race(cfg: MixStudyConfig, study: optuna.Study, say: Say = lambda _m: None,
               fleet_factory: FleetFactory = launch) -> dict:
    """The final race of a finished study (``DeploymentTuning.race``: ``cfg.race_rounds`` rounds, at
    least 2), as the study stores it (``race_document``)."""
    DeploymentTuning(cfg, fleet_factory=fleet_factory).race(study, cfg.race_rounds, None, say)
    return study.user_attrs["race"]


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
            ratio, low, high = paired_ratio(lf, best_label, label, result.confidence)
            ratios[name] = {"ratio": ratio, "ci": [low, high], "rounds": min(len(lf[best_label]), len(lf[label]))}
    return {**out, "best_label": best_label, "load_factors": lf, "vs_baselines": ratios,
            "mean": {k: float(np.mean(v)) for k, v in lf.items()},
            "entrants": [{"label": e.label, "baseline": e.baseline} for e in result.entrants]}
