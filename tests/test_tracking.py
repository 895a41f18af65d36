"""MLflow tracking against a real `mlflow server` on loopback (sqlite backend in a temp dir)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import free_port as _free_port
from tests.models import conv_net
from tuner.machine.placement import Params
from tuner.results.tracking import HTTP_SETTINGS, METRIC_KEYS, QUIET_SETTINGS, Tracker, mlflow_settings

CLI = [sys.executable, "-m", "tuner.cli"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    return str(conv_net(tmp_path_factory.mktemp("tracking") / "conv.onnx"))


def _optimize(workdir: Path, model: str, bound: str, uri: str, experiment: str, n_trials: int = 3):
    return subprocess.run(
        [*CLI, "optimize", "--model", model, "--p99", bound, "--n-trials", str(n_trials), "--window", "0.2s",
         "--seed", "3", "--revalidate", "0", "--mlflow-uri", uri, "--mlflow-experiment", experiment],
        cwd=workdir, capture_output=True, text=True, timeout=600, env=ENV)


def _runs(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def test_two_studies_on_two_bounds_are_two_comparable_parent_runs(tmp_path, model_path, mlflow_server):
    for bound in ("2s", "1s"):
        done = _optimize(tmp_path, model_path, bound, mlflow_server, "two-bounds")
        assert done.returncode == 0, done.stderr + done.stdout
        assert "warning" not in done.stderr
    client, parents, children = _runs(mlflow_server, "two-bounds")
    assert len(parents) == 2
    assert {p.data.params["p99_bound_ms"] for p in parents} == {"2000.0", "1000.0"}
    for parent in parents:
        assert parent.info.status == "FINISHED"
        assert parent.info.run_name.endswith(f"p99-{float(parent.data.params['p99_bound_ms']):g}ms-server")
        note = parent.data.tags["mlflow.note.content"]
        assert "conv" in note and "P99 <=" in note and "Best:" in note
        mine = [c for c in children if c.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        assert len(mine) == parent.data.metrics["trials"] >= 3
        assert len({c.data.tags["placetune.trial"] for c in mine}) == len(mine)
        assert any(c.data.tags.get("pareto") == "true" for c in mine)
        assert all(c.data.tags.get("pareto") in ("true", "false") for c in mine)
        assert any(c.data.tags.get("baseline") == "ort_default" for c in mine)
        artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert {"trials.csv", "pareto.png", "pareto.html", "envelope.png", "topology.json", "best_config.json",
                "best_config.yaml", "summary.md"} <= artifacts
        assert parent.data.metrics["best_throughput"] > 0
    names = {frozenset(c.data.params) for c in children}
    assert len(names) == 1, "every child run has the same param names"
    assert {"scenario", "p99_bound_ms", "model_name", "model_sha256"} <= set(next(iter(names)))
    configs = _trial_configs(tmp_path / "placetune.db")
    for c in children:  # each run carries its own trial's whole config
        config = configs[c.data.tags["placetune.study_uuid"], c.data.tags["placetune.trial"]]
        assert {k: c.data.params[k] for k in config} == {k: str(v) for k, v in config.items()}
    for c in children:
        assert "feasible" in c.data.metrics
        assert "-" in c.info.run_name and c.info.run_name.startswith("w")  # readable: w2xc1-intra1, ...
        if c.data.metrics["feasible"] == 1.0:
            assert set(METRIC_KEYS) <= set(c.data.metrics)


def _trial_configs(db: Path) -> dict[tuple[str, str], dict]:
    """(study uuid, trial number) -> the config the study stored for that trial."""
    import optuna

    storage = f"sqlite:///{db}"
    configs = {}
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for t in study.trials:
            configs[study.user_attrs["study_uuid"], str(t.number)] = Params.from_dict(t.user_attrs["params"]).to_dict()
    return configs


def test_a_tracker_leaves_the_process_environment_as_it_was(monkeypatch):
    import optuna

    for key in (*HTTP_SETTINGS, *QUIET_SETTINGS):
        monkeypatch.delenv(key, raising=False)
    before = dict(os.environ)
    warnings: list[str] = []
    tracker = Tracker(f"http://127.0.0.1:{_free_port()}", warn=warnings.append)
    assert dict(os.environ) == before
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("study_uuid", "u")
    tracker.start(study)  # a dead server: one warning, tracking off, the environment untouched
    assert not tracker.enabled and len(warnings) == 1 and "unreachable" in warnings[0]
    assert dict(os.environ) == before and tracker.logged_trials() == 0


def test_mlflow_settings_hold_during_a_call_only_and_keep_what_the_user_set(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "99")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    with mlflow_settings(HTTP_SETTINGS):
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_SETTINGS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99"


def test_server_down_study_completes_then_log_fills_mlflow_once(tmp_path, model_path, mlflow_server):
    dead = f"http://127.0.0.1:{_free_port()}"
    done = _optimize(tmp_path, model_path, "2s", dead, "after-outage")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("unreachable") == 1 and "placetune log" in done.stderr
    log = [*CLI, "log", "--mlflow-uri", mlflow_server, "--mlflow-experiment", "after-outage"]
    first = subprocess.run(log, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=ENV)
    assert first.returncode == 0, first.stderr
    import optuna

    storage = f"sqlite:///{tmp_path / 'placetune.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    n = len(optuna.load_study(study_name=summary.study_name, storage=storage).trials)
    assert f"{n} trial run(s) added" in first.stdout
    second = subprocess.run(log, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=ENV)
    assert second.returncode == 0, second.stderr
    assert "0 trial run(s) added" in second.stdout
    _, parents, children = _runs(mlflow_server, "after-outage")
    assert len(parents) == 1 and len(children) == n
    down = subprocess.run([*CLI, "log", "--mlflow-uri", dead], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=ENV)
    assert down.returncode == 1 and "cannot log to MLflow" in down.stderr and "Traceback" not in down.stderr
    report = subprocess.run([*CLI, "report", "--html", "report.html"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env=ENV)
    assert report.returncode == 0, report.stderr
    assert "Pareto front" in report.stdout and "ort_default" in report.stdout
    page = (tmp_path / "report.html").read_text()
    assert page.count("<img alt=") == 2 and "plotly" in page.lower()
    for fmt in ("yaml", "numactl"):
        exported = subprocess.run([*CLI, "export", "--format", fmt], cwd=tmp_path, capture_output=True, text=True,
                                  timeout=120, env=ENV)
        assert exported.returncode == 0 and exported.stdout, exported.stderr
    below = subprocess.run([*CLI, "export", "--p99", "1us"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120, env=ENV)
    assert below.returncode == 2 and "below what was measured" in below.stderr
    above = subprocess.run([*CLI, "export", "--p99", "60s"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120, env=ENV)
    assert above.returncode == 0 and "lower bound" in above.stderr
    missing = subprocess.run([*CLI, "report", "--study", "nope"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=120, env=ENV)
    assert missing.returncode == 2 and "no study 'nope'" in missing.stderr
