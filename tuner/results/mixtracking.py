"""MLflow for a deployment study: one parent run per study, one child run per trial with the load
factor and every model's metrics (``NAME.throughput``, ``NAME.p50_ms``, ``NAME.p99_ms``, ...).
Tracking never stops a study: after the first failure it warns once and does nothing more.
``placetune log`` fills MLflow afterwards from the study (``MixTracker.sync``: idempotent, a trial
already logged is not logged again). Light: reads results only, never starts a worker."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from tuner.errors import PlacetuneError
from tuner.results.documents import DeploymentDocument
from tuner.results.mixrecords import Deployment, MixResult, finite
from tuner.results.tracking import HTTP_SETTINGS, QUIET_SETTINGS, mlflow_settings, quiet_mlflow_logs

MODEL_METRICS = ("throughput", "offered_rate", "p50_ms", "p99_ms", "capacity", "cpu_util")


class MixTracker:
    """Parent and child runs of one deployment study (tuner.results.tracking does the same for one model)."""

    def __init__(self, uri: str, experiment: str = "placetune", warn: Callable[[str], None] = lambda _m: None):
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.uri, self.experiment, self.warn = uri, experiment, warn
        self.enabled = True
        self.parent: str | None = None
        self.children: dict[int, str] = {}
        self._client = None
        self._experiment_id = ""

    def _safe(self, fn, *args) -> None:
        if not self.enabled:
            return
        try:
            fn(*args)
        except Exception as exc:  # MLflow down or misconfigured: the study goes on
            self.enabled = False
            self.warn(f"MLflow at {self.uri} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                      "the study goes on without tracking")

    @property
    def experiment_name(self) -> str:
        return self.experiment

    def start(self, study) -> None:
        """Find or create the study's parent run."""
        self._safe(self._start, study.study_name, Deployment.from_dict(study.user_attrs["deployment"]))

    def _start(self, study_name: str, deployment: Deployment) -> None:
        from mlflow.tracking import MlflowClient

        quiet_mlflow_logs()
        self._client = MlflowClient(tracking_uri=self.uri)
        found = self._client.get_experiment_by_name(self.experiment)
        self._experiment_id = found.experiment_id if found else self._client.create_experiment(self.experiment)
        found = self._client.search_runs(  # a resumed study keeps its parent run
            [self._experiment_id], filter_string=f"tags.`placetune.study` = '{study_name}' and "
                                                 "tags.`placetune.kind` = 'deployment-study'", max_results=1)
        if found:
            self.parent = found[0].info.run_id
            self._client.update_run(self.parent, status="RUNNING")
            self._load_children()
            return
        run = self._client.create_run(self._experiment_id, run_name=study_name,
                                      tags={"placetune.study": study_name, "placetune.kind": "deployment-study"})
        self.parent = run.info.run_id
        for m in deployment.models:
            self._client.log_param(self.parent, f"{m.name}.model", m.model)
            self._client.log_param(self.parent, f"{m.name}.p99_bound_ms", m.p99_bound_s * 1000)
            self._client.log_param(self.parent, f"{m.name}.share", m.share)

    def log_trial(self, study, trial) -> None:
        """One child run (a measured trial): its config, its load factor and every model's metrics."""
        from tuner.results.mixtrials import mix_result

        if "result" in trial.user_attrs and trial.number not in self.children:
            self._safe(self._log_trial, trial.number, mix_result(trial), trial.user_attrs.get("baseline", ""))

    def _log_trial(self, number: int, result: MixResult, baseline: str) -> None:
        from mlflow.entities import Metric, Param

        tags = {"mlflow.parentRunId": self.parent, "placetune.trial": str(number), "placetune.label": result.label}
        if baseline:
            tags["placetune.baseline"] = baseline
        run = self._client.create_run(self._experiment_id, run_name=f"trial {number}", tags=tags)
        now = int(time.time() * 1000)
        metrics = [Metric("load_factor", finite(result.load_factor), now, 0)]
        params = [Param("division", result.config.division)]
        for name, m in result.models.items():
            metrics += [Metric(f"{name}.{k}", finite(getattr(m, k)), now, 0) for k in MODEL_METRICS]
            params += [Param(f"{name}.{k}", str(v)) for k, v in result.config.params[name].to_dict().items()]
        self._client.log_batch(run.info.run_id, metrics=metrics, params=params)
        self._client.set_terminated(run.info.run_id, "FINISHED" if result.feasible else "KILLED")
        self.children[number] = run.info.run_id

    def finish(self, study, status: str = "FINISHED") -> None:
        """Close the parent run with the best load factor (and its models' metrics); FAILED when no
        config served a load factor within every bound."""
        from tuner.results.mixtrials import study_document

        document = study_document(study)
        self._safe(self._finish, document, status if document is not None or status != "FINISHED" else "FAILED")

    def _finish(self, best: DeploymentDocument | None, status: str) -> None:
        if best is not None:
            self._client.log_metric(self.parent, "best_load_factor", finite(best.load_factor))
            for name, m in best.models.items():
                for k in ("throughput", "p50_ms", "p99_ms"):
                    self._client.log_metric(self.parent, f"best.{name}.{k}", finite(getattr(m, k)))
        self._client.set_terminated(self.parent, status)

    def _load_children(self) -> None:
        """The parent's child runs already in MLflow, by trial number (a resumed or re-logged study)."""
        children = self._client.search_runs([self._experiment_id],
                                            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent}'")
        for run in children:
            number = run.data.tags.get("placetune.trial")
            if number is not None and number.isdigit():
                self.children[int(number)] = run.info.run_id

    def sync(self, study) -> int:
        """Log a deployment study from its storage (``placetune log``): the parent run, found or
        created, a child run per measured trial not yet in MLflow, and the best config's figures;
        returns how many child runs were added. Raises PlacetuneError when MLflow cannot be reached."""
        from tuner.results.mixtrials import measured, mix_result, study_document

        try:
            with mlflow_settings({**HTTP_SETTINGS, **QUIET_SETTINGS}):
                self._start(study.study_name, Deployment.from_dict(study.user_attrs["deployment"]))
                added = 0
                for t in measured(study):
                    if t.number not in self.children:
                        self._log_trial(t.number, mix_result(t), t.user_attrs.get("baseline", ""))
                        added += 1
                document = study_document(study)
                self._finish(document, "FINISHED" if document is not None else "FAILED")
            return added
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise PlacetuneError(f"cannot log to MLflow at {self.uri} ({first}); check --mlflow-uri and that "
                                 "the server is up, then run this again") from None
