"""What a study tuned, for every command that reads a study or its best config (``report``, ``log``,
``export``, ``fleet status``): one ``StudyKind`` per kind of study, a single model's or a
deployment's, chosen by the study's ``kind`` attribute in ``kind_of`` (a best-config file's format
in ``kind_of_file``: the two places that tell them apart). Each kind
says how its best config's document is built, how its study goes to MLflow and what its best so
far is; the commands call these and never test the kind themselves. Light: reads results only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import optuna

from tuner.errors import UsageError
from tuner.results import mixtrials, trials
from tuner.results.documents import DeploymentDocument, is_deployment


@dataclass(frozen=True)
class BestSoFar:
    number: int
    label: str
    hostname: str
    throughput: float  # req/s (a deployment: every model's, summed)
    p99_ms: float  # a deployment: the slowest model's
    load_factor: float | None = None  # a deployment study's objective; None: a single-model study
    models: tuple[tuple[str, float, float], ...] = ()  # a deployment: (model, req/s, P99 ms) each


@dataclass(frozen=True)
class StudyKind:
    """How the commands read one kind of study."""

    name: str  # the study's ``kind`` attribute ("model" when it has none)
    noun: str  # how messages name such a study
    document: Callable[[optuna.Study, str | None], object]  # export --study: the config (a bound for --p99)
    sync: Callable[[optuna.Study, str, str], tuple[int, int]]  # log: MLflow runs added, runs in all
    best_so_far: Callable[[optuna.Study], BestSoFar | None]  # fleet status
    load: Callable[[Path], object]  # export --config: a best-config file of this kind, checked
    model_documents: Callable[[object], dict[str, dict] | None]  # its models' config documents (None: one model's)


def _model_document(study: optuna.Study, p99: str | None) -> dict:
    """The config document of a study's best trial, or of the best one for another bound (``--p99``)."""
    from tuner.units import parse_duration

    if p99 is None:
        trial = trials.best_trial(study)
        if trial is None:
            raise UsageError(f"study {study.study_name!r} has no feasible trial to export; relax --p99 "
                             "and run 'placetune optimize', or export another bound with --p99")
        return trials.best_config_document(study, trial)
    from tuner.results.envelope import best_for_bound

    choice = best_for_bound(study, parse_duration(p99, "--p99") * 1000)
    document = replace(trials.config_document(study, study.trials[choice.point.trial]),
                       p99_bound_ms=choice.bound_ms, throughput=choice.point.throughput,
                       p50_ms=choice.point.p50_ms, p99_ms=choice.point.p99_ms,
                       selected_from="envelope", envelope_note=choice.note)
    return document.to_dict()


def _deployment_document(study: optuna.Study, p99: str | None):
    """The deployment document ``export --study`` writes: the config the race recommends."""
    if p99 is not None:
        raise UsageError(f"study {study.study_name!r} is a deployment study: each model has its own bound "
                         "(its p99 in the deployment file), so --p99 does not apply; drop it")
    document = mixtrials.study_document(study)
    if document is None:
        raise UsageError(f"deployment study {study.study_name!r} has no config that served a load factor within "
                         "every model's bound; nothing to export (relax a model's p99 and run "
                         "'placetune optimize --deployment' again)")
    return document


def _model_sync(study: optuna.Study, uri: str, experiment: str) -> tuple[int, int]:
    from tuner.results.tracking import Tracker
    from tuner.search.storage import ensure_study_uuid

    ensure_study_uuid(study)
    tracker = Tracker(uri, experiment)
    added = tracker.sync(study)
    return added, tracker.logged_trials()


def _deployment_sync(study: optuna.Study, uri: str, experiment: str) -> tuple[int, int]:
    from tuner.results.mixtracking import MixTracker

    tracker = MixTracker(uri, experiment)
    added = tracker.sync(study)
    return added, len(tracker.children)


def _model_best(study: optuna.Study) -> BestSoFar | None:
    best = trials.best_trial(study)
    if best is None:
        return None
    result = trials.result_of(best)
    return BestSoFar(best.number, best.user_attrs.get("label", ""), best.user_attrs.get("hostname", "?"),
                     result.throughput, result.p99_ms)


def _deployment_best(study: optuna.Study) -> BestSoFar | None:
    best, _ = mixtrials.best_and_baselines(study)
    if best is None:
        return None
    result = mixtrials.mix_result(best)
    models = tuple((name, m.throughput, m.p99_ms) for name, m in result.models.items())
    return BestSoFar(best.number, best.user_attrs["label"], best.user_attrs.get("hostname", "?"),
                     sum(m[1] for m in models), max(m[2] for m in models), result.load_factor, models)


def _model_load(path: Path) -> dict:
    from tuner.deploy import load_config

    return load_config(path)


def _deployment_load(path: Path) -> dict[str, dict]:
    """Each model's config document in a deployment's best-config file, checked as
    ``tuner.deploy.load_config`` checks a config (a bad one is a usage error naming the model)."""
    from tuner.deploy import load_config

    document = json.loads(Path(path).read_text())
    models = document.get("models")
    if not isinstance(models, dict) or not models:
        raise UsageError(f"--config {path} is a deployment's config without a 'models' mapping; export it again "
                         "with 'placetune export --study NAME'")
    return {name: load_config(document, model=name) for name in models}


def _deployment_models(document) -> dict[str, dict]:
    """A deployment's models' config documents, from its study's document or its file's."""
    if isinstance(document, DeploymentDocument):
        return {name: m.to_dict() for name, m in document.models.items()}
    return document


MODEL = StudyKind("model", "study", _model_document, _model_sync, _model_best, _model_load, lambda _d: None)
DEPLOYMENT = StudyKind(mixtrials.DEPLOYMENT_KIND, "deployment study", _deployment_document, _deployment_sync,
                       _deployment_best, _deployment_load, _deployment_models)
KINDS = {k.name: k for k in (MODEL, DEPLOYMENT)}


def kind_of(study: optuna.Study) -> StudyKind:
    """The kind of ``study`` (a study made before kinds existed is a single model's)."""
    return KINDS.get(study.user_attrs.get("kind", MODEL.name), MODEL)


def kind_of_file(path: Path) -> StudyKind:
    """The kind of a best-config file: a deployment's (JSON, format placetune-deployment/1), else a
    single model's (JSON or YAML; ``load`` says what is wrong with it)."""
    try:
        return DEPLOYMENT if is_deployment(json.loads(Path(path).read_text())) else MODEL
    except (OSError, ValueError):
        return MODEL
