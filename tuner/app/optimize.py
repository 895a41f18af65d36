"""The optimize service: run (or resume) a study, race its best configs, write the best config and
log it all to MLflow, reporting progress to an ``OptimizeListener``. No argument parsing, no
rendering: ``placetune optimize`` builds an ``OptimizeRequest`` and renders what the listener hears.

One service for whatever is tuned: the request's ``tuning`` says how its kind of study is opened,
run, raced, written and tracked (``ModelTuning`` here, for one model, the default;
``tuner.app.deployment.DeploymentTuning`` for several models on one server). ``run_optimize``
never tells them apart.

    outcome = run_optimize(OptimizeRequest(study=cfg, out=Path("best_config.json")))
    if outcome.best is not None:
        print(outcome.best.user_attrs["label"], outcome.race.summary if outcome.race else "")
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import optuna

from tuner.bench.measure import measure
from tuner.outputs import write_atomic
from tuner.results.tracking import EXPERIMENT, Tracker, default_uri
from tuner.results.trials import (
    BaselineRow,
    TrialSummary,
    baseline_results,
    best_trial,
    config_document,
    feasible_trials,
    measured_trials,
    pareto_front,
    result_of,
)
from tuner.search import screening
from tuner.search.locks import StudyMutex
from tuner.search.race import RaceResult, race_subject
from tuner.search.study import MeasureFn, StudyConfig, open_study, run_study
from tuner.search.subject import ModelSubject


@dataclass(frozen=True)
class TrackingRequest:
    """Where the study is logged in MLflow."""

    uri: str | None = None  # None: a SQLite mlflow.db beside the study's storage (tracking.default_uri)
    experiment: str = EXPERIMENT


@dataclass(frozen=True)
class OptimizeRequest:
    """Everything ``run_optimize`` needs: the study, where the best config goes (None: nowhere), the
    final race's size, MLflow tracking (None: none), the measurement (``measure_fn`` stands in for
    it in tests) and what is tuned (``tuning``)."""

    study: StudyConfig  # a deployment's: tuner.mix.study.MixStudyConfig (with its ``tuning``)
    out: Path | None
    race_k: int = 3  # the best K configs and every baseline race at the end (a deployment: its rounds); 0: no race
    race_time_limit_s: float | None = None  # no race round starts that would end after this (tuner.search.race)
    tracking: TrackingRequest | None = None
    measure_fn: MeasureFn = measure
    tuning: Tuning | None = field(default=None, compare=False)  # None: ModelTuning(study, measure_fn)

    def tuned(self) -> Tuning:
        return self.tuning if self.tuning is not None else ModelTuning(self.study, self.measure_fn)


@dataclass(frozen=True)
class OptimizeStart:
    """The study as it is found, before any trial runs."""

    study_name: str
    storage: str
    already_measured: int  # configs measured by earlier runs (a resumed or shared study)
    target_measured: int  # configs measured in all when the study stops (the progress bar's total)
    space_name: str
    space_size: int  # plannable configs in the space
    space_fixed: dict  # dimensions this machine cannot vary, with their one value
    mlflow_uri: str | None  # None: not tracking (off, or MLflow unreachable)
    mlflow_experiment: str


@dataclass(frozen=True)
class TrialEvent:
    """One trial this tuner finished (repeats are never reported)."""

    trial: optuna.trial.FrozenTrial
    info: TrialSummary  # tuner.results.trials.summarize_trial (a deployment: its MixResult, None when it failed)
    best_throughput: float  # req/s: the best feasible throughput this run has seen so far (a deployment: load factor)
    measured: int  # configs measured in the study (every host's)
    spent: float = 0.0  # of --n-trials: full measurements plus screening ones at their fraction


@dataclass(frozen=True)
class OptimizeOutcome:
    """What a study found. ``search_done`` hears it before the race (``race`` None); ``run_optimize``
    returns it with the race."""

    study: optuna.Study
    measured: int
    target_measured: int
    space_exhausted: bool  # the study stopped because every config of the space is measured
    p99_bound_s: float | None
    best: optuna.trial.FrozenTrial | None  # None: no config met the bound
    front: list[optuna.trial.FrozenTrial]  # the Pareto front, best throughput first
    baselines: dict[str, BaselineRow]  # name -> row (tuner.results.trials.baseline_results)
    lowest_p99: optuna.trial.FrozenTrial | None  # the measured trial with the lowest unloaded P99
    config_path: Path | None  # where the best config was written (None: no feasible config)
    mlflow_uri: str | None
    race: RaceResult | None = None
    document: object | None = None  # a deployment: its best-config document (tuner.results.documents)

    @property
    def exit_code(self) -> int:
        """0 when a config met the bound, 3 when none did."""
        return 0 if self.best is not None else 3


class OptimizeListener:
    """What ``run_optimize`` reports while it runs; every method does nothing unless overridden."""

    def started(self, start: OptimizeStart) -> None:
        """The study is open; trials start next."""

    def progress(self, message: str) -> None:
        """What the trial in progress is doing (starting workers, a window's rate, ...)."""

    def trial_done(self, event: TrialEvent) -> None:
        """A trial ended (measured, refused by the planner, or failed)."""

    def search_done(self, outcome: OptimizeOutcome) -> None:
        """The trials are over; the best config is written; the race (if any) comes next."""

    def race_started(self, k: int) -> None:
        """The final race starts (the best ``k`` configs and every feasible baseline)."""

    def race_progress(self, message: str) -> None:
        """Which entrant of which round the race measures."""

    def race_done(self, race: RaceResult) -> None:
        """The race is over; best_config.json records it."""

    def warning(self, message: str) -> None:
        """Something went wrong that does not stop the study (MLflow unreachable)."""


class Tuning(Protocol):
    """What one kind of study needs of the optimize service (``ModelTuning``; a deployment's:
    tuner.app.deployment.DeploymentTuning). The study loop, the strategy and the race behind it are
    the same for both (tuner.search.study.run_trials, tuner.search.race.race_subject)."""

    def open(self) -> optuna.Study: ...

    def tracker(self, tracking: TrackingRequest, warn: Callable[[str], None]): ...

    def started(self, study: optuna.Study, target: int, mlflow_uri: str | None, experiment: str) -> OptimizeStart: ...

    def run_trials(self, study: optuna.Study, on_trial: Callable, say: Callable[[str], None]) -> optuna.Study: ...

    def value(self, info) -> float | None: ...

    def outcome(self, study: optuna.Study, target: int, config_path: Path | None,
                mlflow_uri: str | None) -> OptimizeOutcome: ...

    def race(self, study: optuna.Study, k: int, time_limit_s: float | None,
             say: Callable[[str], None]) -> RaceResult: ...

    def save(self, study: optuna.Study, out: Path | None, race: RaceResult | None = None) -> bool: ...


def run_optimize(request: OptimizeRequest, listener: OptimizeListener | None = None) -> OptimizeOutcome:
    """Run (or resume) the study of ``request``, then the final race of its best configs; write the best
    config to ``request.out`` (after every better trial, after the study, with the race); log to MLflow.
    The study is opened once. Interrupted (Ctrl-C, SIGTERM) or failed, the MLflow parent run is ended
    KILLED and the exception goes on."""
    listener = listener or OptimizeListener()
    tuning = request.tuned()
    study = tuning.open()
    tracker = tuning.tracker(request.tracking, listener.warning) if request.tracking is not None else None
    _tracked(request.study, tracker, lambda t: t.start(study))
    already = len(measured_trials(study))
    target = request.study.n_trials or max(already + 1, 1)
    uri = _tracking_uri(tracker)
    listener.started(tuning.started(study, target, uri,
                                    tracker.experiment_name if tracker is not None else EXPERIMENT))
    try:
        study = tuning.run_trials(study, _TrialReporter(request, tuning, study, tracker, listener), listener.progress)
        written = tuning.save(study, request.out)  # the study's answer, written before the race (it may be cut short)
        config_path = request.out if written else None
        outcome = tuning.outcome(study, target, config_path, uri)
        listener.search_done(outcome)
        if outcome.best is not None and request.race_k > 0:
            listener.race_started(request.race_k)
            race = tuning.race(study, request.race_k, request.race_time_limit_s, listener.race_progress)
            tuning.save(study, request.out, race=race)
            outcome = replace(tuning.outcome(study, target, config_path, uri), race=race)
            listener.race_done(race)
    except BaseException:
        _tracked(request.study, tracker, lambda t: t.finish(study, "KILLED"))
        raise
    _tracked(request.study, tracker, lambda t: t.finish(study, "FINISHED"))
    return outcome


@dataclass(frozen=True)
class ModelTuning:
    """One model (tuner.search.subject.ModelSubject): its study (tuner.search.study), best_config.json
    (tuner.results.trials) and MLflow runs (tuner.results.tracking)."""

    cfg: StudyConfig
    measure_fn: MeasureFn = measure

    def open(self) -> optuna.Study:
        return open_study(self.cfg)

    def tracker(self, tracking: TrackingRequest, warn: Callable[[str], None]) -> Tracker:
        cfg = self.cfg
        uri = tracking.uri or default_uri(cfg.storage)
        hint = f"placetune log --study {cfg.study_name} --storage {cfg.storage} --mlflow-uri {uri}"
        return Tracker(uri, tracking.experiment, warn=warn, retry_hint=hint)

    def started(self, study: optuna.Study, target: int, mlflow_uri: str | None, experiment: str) -> OptimizeStart:
        cfg = self.cfg
        return OptimizeStart(
            study_name=cfg.study_name, storage=cfg.storage, already_measured=len(measured_trials(study)),
            target_measured=target, space_name=cfg.space.name, space_size=cfg.space.size(),
            space_fixed=dict(cfg.space.fixed), mlflow_uri=mlflow_uri, mlflow_experiment=experiment)

    def run_trials(self, study: optuna.Study, on_trial: Callable, say: Callable[[str], None]) -> optuna.Study:
        return run_study(self.cfg, on_trial, say, measure_fn=self.measure_fn, study=study)

    def value(self, info: TrialSummary) -> float | None:
        return info.throughput if info.feasible else None

    def outcome(self, study: optuna.Study, target: int, config_path: Path | None,
                mlflow_uri: str | None) -> OptimizeOutcome:
        """The study's answer (``config_path``: where its best config was written, None: nowhere)."""
        best = best_trial(study)
        with_result = [t for t in study.get_trials(deepcopy=False) if "result" in t.user_attrs]
        lowest = min(with_result, key=lambda t: result_of(t).unloaded_p99_ms, default=None)
        return OptimizeOutcome(
            study=study, measured=len(measured_trials(study)), target_measured=target,
            space_exhausted=bool(study.user_attrs.get("space_exhausted")), p99_bound_s=self.cfg.settings.p99_bound_s,
            best=best, front=pareto_front(study) if best is not None else [], baselines=baseline_results(study),
            lowest_p99=lowest, config_path=config_path, mlflow_uri=mlflow_uri)

    def race(self, study: optuna.Study, k: int, time_limit_s: float | None, say: Callable[[str], None]) -> RaceResult:
        cfg = self.cfg
        subject = ModelSubject(cfg.model, cfg.topology, cfg.space, cfg.settings, self.measure_fn)
        return race_subject(study, subject, k, confidence=cfg.settings.confidence, say=say, time_limit_s=time_limit_s,
                            first_seed=cfg.settings.seed + 1)

    def save(self, study: optuna.Study, out: Path | None, race: RaceResult | None = None) -> bool:
        return out is not None and save_best_config(study, out, race=race.to_dict() if race is not None else None)


def save_best_config(study: optuna.Study, out: Path, race: dict | None = None) -> bool:
    """Write the study's best feasible config to ``out`` atomically (a temporary file renamed over
    it); with the final race, the config the race recommends (a baseline when no searched config
    is proven faster); False when there is no feasible trial yet."""
    best = best_trial(study)
    if best is None:
        return False
    if race is not None and race.get("recommended"):
        raced = [t for t in feasible_trials(study) if t.user_attrs.get("label") == race["recommended"]]
        best = max(raced, key=lambda t: t.values[0], default=best)
    document = replace(config_document(study, best), race=race)
    write_atomic(out, json.dumps(document.to_dict(), indent=1) + "\n")
    return True


class _TrialReporter:
    """run_trials' ``on_trial``: keeps the best config written, tells the listener, logs the trial."""

    def __init__(self, request: OptimizeRequest, tuning: Tuning, study: optuna.Study, tracker,
                 listener: OptimizeListener):
        self.request, self.tuning, self.study, self.tracker, self.listener = request, tuning, study, tracker, listener
        self.best = 0.0

    def __call__(self, trial: optuna.trial.FrozenTrial, info) -> None:
        value = self.tuning.value(info) if info is not None else None
        if value is not None and value > self.best:
            self.best = value
            self.tuning.save(self.study, self.request.out)  # a Ctrl-C later must not lose the best so far
        trials = self.study.get_trials(deepcopy=False)
        self.listener.trial_done(TrialEvent(trial, info, self.best, len(measured_trials(self.study)),
                                            screening.budget_spent(trials)))
        _tracked(self.request.study, self.tracker, lambda t: t.log_trial(self.study, trial))


def _tracking_uri(tracker: Tracker | None) -> str | None:
    return tracker.uri if tracker is not None and tracker.enabled else None


def _tracked(cfg, tracker, call: Callable) -> None:
    """Call the tracker under the study mutex, the one place optimize takes it. Each of them
    looks for a run in MLflow (the study's parent run, a trial's child run) and creates it when it is
    missing, and MLflow cannot refuse a duplicate: the tuners of a fleet, each logging its trials
    while another's ``finish`` logs every trial of the study, must not both create the same run.
    (Opening the study and queueing trials take the mutex themselves, in tuner.search.study.)"""
    if tracker is None or not tracker.enabled:
        return
    with StudyMutex(cfg.storage, cfg.study_name):  # a StudyConfig's or a MixStudyConfig's
        call(tracker)
