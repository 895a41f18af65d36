"""MLflow tracking, on the MLflow client directly: one parent run per study, one nested child run
per trial, artifacts on the parent.

Idempotent: runs carry ``placetune.study_uuid`` (and children ``placetune.trial``), so logging a
study twice (``placetune log`` after an outage, a resumed study) adds only what is missing.
If the tracking server cannot be reached, the study goes on: one warning, tracking is switched off
for the rest of the run, and ``placetune log`` fills MLflow afterwards from the Optuna storage.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna

from tuner.errors import PlacetuneError, UsageError
from tuner.machine.placement import PARAM_NAMES
from tuner.results.run_content import METRIC_KEYS, trial_metrics, trial_tags, write_artifacts
from tuner.results.trials import result_of

__all__ = ["EXPERIMENT", "METRIC_KEYS", "Tracker", "default_uri"]

EXPERIMENT = "placetune"
TAG_STUDY = "placetune.study_uuid"
TAG_TRIAL = "placetune.trial"
_STATUS = {optuna.trial.TrialState.COMPLETE: "FINISHED", optuna.trial.TrialState.PRUNED: "KILLED",
           optuna.trial.TrialState.FAIL: "FAILED"}
# fail fast instead of MLflow's minutes of retries against a dead server; no run URL on stdout
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
QUIET_SETTINGS = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def quiet_mlflow_logs() -> None:
    """MLflow's own INFO lines (a new store creating its tables) are not placetune's output: only
    its warnings and errors reach stderr. Call after importing mlflow (its import sets the level)."""
    import logging

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def default_uri(storage_url: str) -> str:
    """A local MLflow store beside the Optuna storage: ``mlflow.db`` next to a SQLite study file,
    else in the working directory."""
    if storage_url.startswith("sqlite:///"):
        directory = Path(storage_url[len("sqlite:///"):]).resolve().parent
    else:
        directory = Path.cwd()
    return f"sqlite:///{directory / 'mlflow.db'}"


def _short(exc: BaseException) -> str:
    """One readable line for an MLflow client error (not urllib3's retry essay)."""
    text = str(exc).strip()
    if "Max retries exceeded" in text or "Connection refused" in text or "NewConnectionError" in text:
        return "cannot connect"
    if "timed out" in text.lower():
        return "timed out"
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _ms(dt) -> int | None:
    return int(dt.timestamp() * 1000) if dt is not None else None


@contextlib.contextmanager
def mlflow_settings(settings: dict[str, str]) -> Iterator[None]:
    """MLflow's client reads its HTTP retry, timeout and printing settings only from the process
    environment (no client argument takes them): they are set for the duration of one call into
    MLflow, where the user did not set them, and the environment is restored afterwards."""
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update({k: v for k, v in settings.items() if saved[k] is None})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)


class Tracker:
    """Logs one study to MLflow. Every public method is safe to call when tracking failed: it
    does nothing after the first failure (which is reported once through ``warn``). Creating one
    touches neither MLflow nor the process environment."""

    def __init__(self, uri: str, experiment: str = EXPERIMENT, warn: Callable[[str], None] | None = None,
                 retry_hint: str = ""):
        self.uri = uri
        self.experiment_name = experiment
        self.warn = warn or (lambda msg: None)
        self.retry_hint = retry_hint
        self.enabled = True
        self.settings = {**QUIET_SETTINGS, **(HTTP_SETTINGS if uri.startswith(("http://", "https://")) else {})}
        self._client = None
        self._experiment_id: str | None = None
        self._parent: str | None = None
        self._children: dict[int, str] = {}  # trial number -> run id
        self._logged_states: dict[int, str] = {}

    def logged_trials(self) -> int:
        """How many of the study's trials have a run in MLflow (after ``start`` or ``sync``)."""
        return len(self._children)

    # -- plumbing --------------------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        if self.enabled:
            self.enabled = False
            self.warn(f"MLflow at {self.uri} is unreachable ({_short(exc)}); the study goes on without tracking"
                      + (f"; afterwards run: {self.retry_hint}" if self.retry_hint else ""))

    def _safe(self, fn, *args, **kwargs):
        if not self.enabled:
            return None
        try:
            with mlflow_settings(self.settings):
                return fn(*args, **kwargs)
        except Exception as exc:
            self._fail(exc)
            return None

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            quiet_mlflow_logs()
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _experiment(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment_name)
            if found is not None:
                self._experiment_id = found.experiment_id
            else:
                location = None
                if self.uri.startswith("sqlite:///"):
                    location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
                self._experiment_id = self.client.create_experiment(self.experiment_name, artifact_location=location)
        return self._experiment_id

    # -- the study ---------------------------------------------------------------------------------
    def start(self, study: optuna.Study) -> None:
        """Find or create the parent run of ``study`` and learn which trials are already logged."""
        self._safe(self._start, study)

    def _start(self, study: optuna.Study) -> None:
        from mlflow.entities import Param, RunTag

        uuid = study.user_attrs["study_uuid"]
        experiment = self._experiment()
        self._load_runs(study)
        model = study.user_attrs.get("model", {})
        if self._parent is None:
            run = self.client.create_run(
                experiment, run_name=study.study_name,
                tags={TAG_STUDY: uuid, "placetune.study": study.study_name, "placetune.kind": "study"},
            )
            self._parent = run.info.run_id
            bound = study.user_attrs.get("p99_bound_ms")
            self.client.log_batch(self._parent, params=[
                Param("study", study.study_name), Param("model_name", str(model.get("name"))),
                Param("model_sha256", str(model.get("sha256"))), Param("p99_bound_ms", str(bound)),
                Param("scenario", str(study.user_attrs.get("scenario"))),
                Param("topology_fingerprint", str(study.user_attrs.get("topology_fingerprint"))),
            ], tags=[RunTag("placetune.host", socket.gethostname())])
        else:
            self.client.update_run(self._parent, status="RUNNING")
        self._describe(study, best=None)

    def _load_runs(self, study: optuna.Study) -> None:
        """What MLflow already holds for this study (other hosts of a fleet log there too)."""
        uuid = study.user_attrs["study_uuid"]
        runs = self.client.search_runs([self._experiment()], filter_string=f"tags.`{TAG_STUDY}` = '{uuid}'",
                                       max_results=50000)
        for run in runs:
            if "mlflow.parentRunId" in run.data.tags:
                number = int(run.data.tags[TAG_TRIAL])
                self._children[number] = run.info.run_id
                self._logged_states[number] = run.info.status
            elif self._parent is None:
                self._parent = run.info.run_id

    def _describe(self, study: optuna.Study, best: dict | None) -> None:
        model = study.user_attrs.get("model", {})
        bound = study.user_attrs.get("p99_bound_ms")
        text = (f"**{study.study_name}**: model `{model.get('name')}` (sha256 {str(model.get('sha256'))[:12]}), "
                f"{'P99 <= ' + format(bound, 'g') + ' ms' if bound else 'no P99 bound'}, "
                f"scenario {study.user_attrs.get('scenario')}. ")
        if best is None:
            text += "Best so far: none yet."
        else:
            text += (f"Best: **{best['label']}** (trial {best['trial']}) {best['throughput']:.1f} req/s at "
                     f"P99 {best['p99_ms']:.2f} ms.")
        self.client.set_tag(self._parent, "mlflow.note.content", text)

    def log_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """One child run for a finished trial (skipped when it is already logged)."""
        self._safe(self._log_trial, study, trial)

    def _log_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        from mlflow.entities import RunTag

        status = _STATUS.get(trial.state)
        if status is None or self._parent is None or "repeat_of" in trial.user_attrs:
            return  # a repeat (a fleet race) measured nothing: it is not a run
        if trial.number not in self._children:  # another host of a fleet may have logged it already
            self._find_child(study, trial.number)
        if trial.number in self._children and self._logged_states.get(trial.number) == status:
            return
        result = result_of(trial)
        now = int(time.time() * 1000)
        if trial.number in self._children:  # logged in another state earlier (a re-run): refresh it
            run_id = self._children[trial.number]
        else:
            run_id = self._create_child(study, trial, now)
        metrics = trial_metrics(result, now)
        tags = [RunTag(k, v) for k, v in trial_tags(trial, result).items()]
        for i in range(0, len(metrics), 900):
            self.client.log_batch(run_id, metrics=metrics[i:i + 900], tags=tags if i == 0 else [])
        self.client.set_terminated(run_id, status=status, end_time=_ms(trial.datetime_complete) or now)
        self._children[trial.number] = run_id
        self._logged_states[trial.number] = status

    def _find_child(self, study: optuna.Study, number: int) -> None:
        """Learn the run of trial ``number`` if MLflow already holds one."""
        found = self.client.search_runs(
            [self._experiment()], max_results=1,
            filter_string=f"tags.`{TAG_STUDY}` = '{study.user_attrs['study_uuid']}' and "
                          f"tags.`{TAG_TRIAL}` = '{number}'")
        if found:
            self._children[number] = found[0].info.run_id
            self._logged_states[number] = found[0].info.status

    def _create_child(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, now: int) -> str:
        """A new child run for ``trial`` with its config as params; returns its run id."""
        from mlflow.entities import Param

        from tuner.results.report import trial_params

        tags = {"mlflow.parentRunId": self._parent, TAG_STUDY: study.user_attrs["study_uuid"],
                TAG_TRIAL: str(trial.number), "placetune.kind": "trial"}
        run = self.client.create_run(self._experiment(), start_time=_ms(trial.datetime_start) or now, tags=tags,
                                     run_name=trial.user_attrs.get("label") or f"trial-{trial.number}")
        params = trial_params(trial)
        model = study.user_attrs.get("model", {})
        self.client.log_batch(run.info.run_id, params=[
            *(Param(k, str(getattr(params, k))) for k in PARAM_NAMES),
            Param("scenario", str(study.user_attrs.get("scenario"))),
            Param("p99_bound_ms", str(study.user_attrs.get("p99_bound_ms"))),
            Param("model_name", str(model.get("name"))), Param("model_sha256", str(model.get("sha256"))),
            Param("trial", str(trial.number)),
        ])
        return run.info.run_id

    def finish(self, study: optuna.Study, status: str = "FINISHED") -> None:
        """Pareto tags on every child, summary metrics, artifacts and description on the parent."""
        self._safe(self._finish, study, status)

    def _finish(self, study: optuna.Study, status: str) -> None:
        from mlflow.entities import Metric

        from tuner.results import report
        from tuner.results.trials import pareto_front

        self._load_runs(study)
        for trial in study.get_trials(deepcopy=False):  # what a dead host of the fleet could not log
            self._log_trial(study, trial)
        self._log_refigured(study)
        front = {t.number for t in pareto_front(study)}
        for number, run_id in self._children.items():
            self.client.set_tag(run_id, "pareto", "true" if number in front else "false")
        s = report.summary(study)
        now = int(time.time() * 1000)
        metrics = [Metric("trials", float(s["trials"]), now, 0)]
        if s["best"]:
            metrics += [Metric("best_throughput", s["best"]["throughput"], now, 0),
                        Metric("best_p99_ms", s["best"]["p99_ms"], now, 0)]
            for name, b in s["baselines"].items():
                if b["best_ratio"] is not None:
                    metrics.append(Metric(f"ratio_vs_{name.replace('+', '_')}", b["best_ratio"], now, 0))
        self.client.log_batch(self._parent, metrics=metrics)
        with tempfile.TemporaryDirectory() as tmp:
            write_artifacts(study, Path(tmp), s, with_plots=bool(front))
            self.client.log_artifacts(self._parent, tmp)
        self._describe(study, s["best"])
        self.client.set_terminated(self._parent, status=status)

    def _log_refigured(self, study: optuna.Study) -> None:
        """A trial's end-of-study figure (``tuner.results.trials.REFIGURED``) on its run, at step 1
        of its throughput metrics (MLflow shows a metric's latest step), and a ``refigured`` tag."""
        from mlflow.entities import Metric, RunTag

        from tuner.results.trials import refigured

        now = int(time.time() * 1000)
        for number, figure in refigured(study).items():
            run_id = self._children.get(number)
            if run_id is None:
                continue
            low, high = figure["throughput_ci"]
            values = {"throughput": figure["throughput"], "throughput_ci_lo": low, "throughput_ci_hi": high}
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 1) for k, v in values.items()
                                                   if math.isfinite(v)],
                                  tags=[RunTag("refigured", "true")])

    def sync(self, study: optuna.Study) -> int:
        """Log every finished trial not yet in MLflow, then finish the parent; returns how many
        child runs were added. Raises when MLflow cannot be reached."""
        self.warn, warn = (lambda msg: None), self.warn
        try:
            with mlflow_settings(self.settings):
                self._start(study)
                before = len(self._children)
                for trial in study.get_trials(deepcopy=False):
                    self._log_trial(study, trial)
                added = len(self._children) - before
                self._finish(study, "FINISHED")
            return added
        except UsageError:
            raise
        except Exception as exc:
            raise PlacetuneError(f"cannot log to MLflow at {self.uri} ({_short(exc)}); check --mlflow-uri and "
                                 "that the server is up, then run this again") from None
        finally:
            self.warn = warn
