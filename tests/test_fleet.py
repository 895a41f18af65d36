"""One study shared by several tuners on a real PostgreSQL server and a real MLflow server. Each
tuner is confined to one CPU of this machine (taskset), so each sees an identical 1-CPU host."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.events import wait_until
from tests.models import conv_net
from tests.procs import no_process_left, wait_for_workers
from tuner.results.trials import best_trial, measured_trials

CLI = [sys.executable, "-m", "tuner.cli"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or shutil.which("taskset") is None,
                                reason="needs 2 CPUs and taskset")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    return str(conv_net(tmp_path_factory.mktemp("fleet") / "conv.onnx"))


def tuner(cpu: int | None, workdir: Path, model: str, storage: str, *extra: str) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    prefix = ["taskset", "-c", str(cpu)] if cpu is not None else []
    return subprocess.Popen(
        [*prefix, *CLI, "optimize", "--model", model, "--p99", "2s", "--window", "0.3s", "--revalidate", "0",
         "--space", "placement", "--storage", storage, "--study-name", "fleet", "--heartbeat", "2s", *extra],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def load(storage: str) -> optuna.Study:
    return optuna.load_study(study_name="fleet", storage=storage)


def running_trials(storage: str, tuner_pid: int | None = None) -> list[optuna.trial.FrozenTrial]:
    """The study's running trials that have their config (of one tuner when ``tuner_pid`` is given)."""
    try:
        trials = load(storage).trials
    except KeyError:  # the study is not created yet
        return []
    return [t for t in trials if t.state.name == "RUNNING" and "label" in t.user_attrs
            and tuner_pid in (None, t.user_attrs.get("tuner_pid"))]


def test_two_hosts_share_one_study_and_measure_no_config_twice(tmp_path, model_path, postgres_db, mlflow_server):
    # a 1-CPU host has two distinct configs: ORT's default and one pinned single-threaded worker. The
    # first host stops after one measured config and the second starts once the first is measuring, so
    # each host measures one: the second takes the config the first queued
    mlflow = ["--mlflow-uri", mlflow_server, "--mlflow-experiment", "fleet-two-hosts"]
    first = tuner(0, tmp_path / "host0", model_path, postgres_db, "--n-trials", "1", *mlflow)
    wait_until(lambda: running_trials(postgres_db, first.pid), "the first host's trial", 300)
    procs = [first, tuner(1, tmp_path / "host1", model_path, postgres_db, "--n-trials", "2", *mlflow)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err + out
        assert "warning" not in err
    study = load(postgres_db)
    measured = measured_trials(study)
    assert len(measured) == 2
    labels = [t.user_attrs["label"] for t in measured]
    assert len(labels) == len(set(labels)), f"a config was measured twice: {labels}"
    assert {t.user_attrs["tuner_pid"] for t in measured} == {p.pid for p in procs}, "each host measured one"
    assert len({t.user_attrs["host"] for t in measured}) == 2
    assert len({t.user_attrs["topology_fingerprint"] for t in measured}) == 1
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("fleet-two-hosts")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1, "one parent run per study"
    numbers = [int(c.data.tags["placetune.trial"]) for c in children]
    finished = [t.number for t in study.trials if t.state.is_finished()]
    assert sorted(numbers) == sorted(finished), "every finished trial logged exactly once"
    status = subprocess.run([*CLI, "fleet", "status", "--storage", postgres_db, "--study", "fleet"],
                            capture_output=True, text=True, timeout=120, env=ENV)
    assert status.returncode == 0, status.stderr
    assert "2 configs measured" in status.stdout
    assert all(t.user_attrs["host"] in status.stdout for t in measured), "a row per host"
    assert f"best so far: {best_trial(study).user_attrs['label']} (trial {best_trial(study).number}" in status.stdout


def test_a_host_killed_mid_trial_is_failed_by_heartbeat_and_the_other_finishes(tmp_path, model_path, postgres_db):
    a = tuner(0, tmp_path / "a", model_path, postgres_db, "--n-trials", "2", "--no-mlflow")
    workers = [w.pid for w in wait_for_workers(a)]  # a is measuring its first config
    (victim,) = running_trials(postgres_db, a.pid)
    a.send_signal(signal.SIGKILL)
    a.communicate(timeout=60)
    b = tuner(1, tmp_path / "b", model_path, postgres_db, "--n-trials", "2", "--no-mlflow")
    out, err = b.communicate(timeout=600)
    assert b.returncode == 0, err + out
    study = load(postgres_db)
    dead = study.trials[victim.number]
    assert dead.state.name == "FAIL" and f"(pid {a.pid} on " in dead.user_attrs["fail_reason"]
    assert "killed mid-trial" in dead.user_attrs["fail_reason"]
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retried, "the failed trial was re-queued"
    measured = measured_trials(study)
    assert len(measured) == 2 and {t.user_attrs["tuner_pid"] for t in measured} == {b.pid}
    labels = [t.user_attrs["label"] for t in measured]
    assert len(labels) == len(set(labels))
    assert victim.user_attrs["label"] in labels, "the other host measured the dead host's config"
    assert no_process_left(workers)


def test_a_host_with_another_topology_is_refused_unless_heterogeneous(tmp_path, model_path, postgres_db):
    first = tuner(0, tmp_path / "one-cpu", model_path, postgres_db, "--n-trials", "1", "--no-mlflow")
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err + out
    second = tuner(None, tmp_path / "two-cpus", model_path, postgres_db, "--n-trials", "2", "--no-mlflow")
    out, err = second.communicate(timeout=300)
    assert second.returncode == 2 and "topology fingerprint" in err and "--allow-heterogeneous" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    third = tuner(None, tmp_path / "two-cpus", model_path, postgres_db, "--n-trials", "2", "--no-mlflow",
                  "--allow-heterogeneous")
    out, err = third.communicate(timeout=600)
    assert third.returncode == 0, err + out
    prints = {t.user_attrs["topology_fingerprint"] for t in measured_trials(load(postgres_db))}
    assert len(prints) == 2
    report = subprocess.run([*CLI, "report", "--storage", postgres_db, "--study", "fleet"], capture_output=True,
                            text=True, timeout=120, env=ENV)
    assert report.returncode == 0, report.stderr
    assert "by topology fingerprint" in report.stdout
