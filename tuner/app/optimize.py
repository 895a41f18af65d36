"""The optimize service: run (or resume) a study, race its best configs, write best_config.json and
log it all to MLflow, reporting progress to an ``OptimizeListener``. No argument parsing, no rendering:
``placetune optimize`` builds an ``OptimizeRequest`` and renders what the listener hears.

    outcome = run_optimize(OptimizeRequest(study=cfg, out=Path("best_config.json")))
    if outcome.best is not None:
        print(outcome.best.user_attrs["label"], outcome.race.summary if outcome.race else "")
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import optuna

from tuner.bench.measure import measure
from tuner.outputs import write_atomic
from tuner.results.tracking import EXPERIMENT, Tracker, default_uri
from tuner.results.trials import (
    BaselineRow,
    TrialSummary,
    baseline_results,
    best_config_document,
    best_trial,
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
    """Everything ``run_optimize`` needs: the study, where the best config goes, the final race's size,
    MLflow tracking (None: none) and the measurement (``measure_fn`` stands in for it in tests)."""

    study: StudyConfig
    out: Path
    race_k: int = 3  # the best K configs and every baseline race at the end; 0: no race
    race_time_limit_s: float | None = None  # no race round starts that would end after this (tuner.search.race)
    tracking: TrackingRequest | None = None
    measure_fn: MeasureFn = measure


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
    info: TrialSummary  # tuner.results.trials.summarize_trial
    best_throughput: float  # req/s: the best feasible throughput this run has seen so far
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


def run_optimize(request: OptimizeRequest, listener: OptimizeListener | None = None) -> OptimizeOutcome:
    """Run (or resume) the study of ``request``, then the final race of its best configs; write the best
    config to ``request.out`` (after every better trial, after the study, with the race); log to MLflow.
    The study is opened once. Interrupted (Ctrl-C, SIGTERM) or failed, the MLflow parent run is ended
    KILLED and the exception goes on."""
    listener = listener or OptimizeListener()
    cfg = request.study
    study = open_study(cfg)
    tracker = _start_tracking(request, study, listener)
    already = len(measured_trials(study))
    target = cfg.n_trials or max(already + 1, 1)
    listener.started(OptimizeStart(
        study_name=cfg.study_name, storage=cfg.storage, already_measured=already, target_measured=target,
        space_name=cfg.space.name, space_size=cfg.space.size(), space_fixed=dict(cfg.space.fixed),
        mlflow_uri=_tracking_uri(tracker), mlflow_experiment=tracker.experiment_name if tracker else EXPERIMENT))
    try:
        study = run_study(cfg, _TrialReporter(request, study, tracker, listener), listener.progress,
                          measure_fn=request.measure_fn, study=study)
        outcome = _search_outcome(request, study, target, _tracking_uri(tracker))
        listener.search_done(outcome)
        if outcome.best is not None and request.race_k > 0:
            listener.race_started(request.race_k)
            subject = ModelSubject(cfg.model, cfg.topology, cfg.space, cfg.settings, request.measure_fn)
            race = race_subject(study, subject, request.race_k, confidence=cfg.settings.confidence,
                                say=listener.race_progress, time_limit_s=request.race_time_limit_s,
                                first_seed=cfg.settings.seed + 1)
            save_best_config(study, request.out, race=race.to_dict())
            listener.race_done(race)
            outcome = replace(outcome, race=race)
    except BaseException:
        _tracked(cfg, tracker, lambda t: t.finish(study, "KILLED"))
        raise
    _tracked(cfg, tracker, lambda t: t.finish(study))
    return outcome


class _TrialReporter:
    """run_study's ``on_trial``: keeps the best config written, tells the listener, logs the trial."""

    def __init__(self, request: OptimizeRequest, study: optuna.Study, tracker: Tracker | None,
                 listener: OptimizeListener):
        self.request, self.study, self.tracker, self.listener = request, study, tracker, listener
        self.best_throughput = 0.0

    def __call__(self, trial: optuna.trial.FrozenTrial, info: TrialSummary) -> None:
        if info.feasible and info.throughput > self.best_throughput:
            self.best_throughput = info.throughput
            save_best_config(self.study, self.request.out)  # a Ctrl-C later must not lose the best so far
        trials = self.study.get_trials(deepcopy=False)
        self.listener.trial_done(TrialEvent(trial, info, self.best_throughput, len(measured_trials(self.study)),
                                            screening.budget_spent(trials)))
        _tracked(self.request.study, self.tracker, lambda t: t.log_trial(self.study, trial))


def _search_outcome(request: OptimizeRequest, study: optuna.Study, target: int,
                    mlflow_uri: str | None) -> OptimizeOutcome:
    """The study's answer before the race; the best config is written (the race may be cut short)."""
    best = best_trial(study)
    with_result = [t for t in study.get_trials(deepcopy=False) if "result" in t.user_attrs]
    lowest = min(with_result, key=lambda t: result_of(t).unloaded_p99_ms, default=None)
    written = save_best_config(study, request.out)
    return OptimizeOutcome(
        study=study, measured=len(measured_trials(study)), target_measured=target,
        space_exhausted=bool(study.user_attrs.get("space_exhausted")), p99_bound_s=request.study.settings.p99_bound_s,
        best=best, front=pareto_front(study) if best is not None else [], baselines=baseline_results(study),
        lowest_p99=lowest, config_path=request.out if written else None, mlflow_uri=mlflow_uri)


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
    document = best_config_document(study, best)
    if race is not None:
        document["race"] = race
    write_atomic(out, json.dumps(document, indent=1) + "\n")
    return True


def _start_tracking(request: OptimizeRequest, study: optuna.Study, listener: OptimizeListener) -> Tracker | None:
    """The study's MLflow parent run, found or created (None when the request asks for no tracking)."""
    if request.tracking is None:
        return None
    cfg = request.study
    uri = request.tracking.uri or default_uri(cfg.storage)
    hint = f"placetune log --study {cfg.study_name} --storage {cfg.storage} --mlflow-uri {uri}"
    tracker = Tracker(uri, request.tracking.experiment, warn=listener.warning, retry_hint=hint)
    _tracked(cfg, tracker, lambda t: t.start(study))
    return tracker


def _tracking_uri(tracker: Tracker | None) -> str | None:
    return tracker.uri if tracker is not None and tracker.enabled else None


def _tracked(cfg: StudyConfig, tracker: Tracker | None, call: Callable[[Tracker], None]) -> None:
    """Call the tracker under the study mutex, the one place optimize takes it. Each of them
    looks for a run in MLflow (the study's parent run, a trial's child run) and creates it when it is
    missing, and MLflow cannot refuse a duplicate: the tuners of a fleet, each logging its trials
    while another's ``finish`` logs every trial of the study, must not both create the same run.
    (Opening the study and queueing trials take the mutex themselves, in tuner.search.study.)"""
    if tracker is None or not tracker.enabled:
        return
    with StudyMutex(cfg.storage, cfg.study_name):
        call(tracker)
