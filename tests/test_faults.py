"""Faults the tuner survives, through the real CLI: the trial is failed with its reason, the study
goes on or resumes with the same command, and no process is left behind."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import psutil
import pytest

from tests.models import conv_net, memory_hog_model
from tests.procs import no_process_left, start_mlflow_server, wait_for_server_window, wait_for_workers
from tuner.bench.measure import noise_notes
from tuner.results.records import WindowResult
from tuner.results.trials import measured_trials

CLI = [sys.executable, "-m", "tuner.cli"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    return str(conv_net(tmp_path_factory.mktemp("faults") / "conv.onnx"))


def optimize(workdir: Path, model: str, n_trials: int, *extra: str, p99: str | None = "2s") -> subprocess.Popen:
    bound = ["--p99", p99] if p99 else []
    return subprocess.Popen(
        [*CLI, "optimize", "--model", model, *bound, "--n-trials", str(n_trials), "--window", "0.3s",
         "--seed", "5", "--revalidate", "0", "--no-mlflow", *extra],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def study_of(workdir: Path) -> optuna.Study:
    storage = f"sqlite:///{workdir / 'placetune.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """What --n-trials counts: configs measured."""
    return measured_trials(study)


def mine() -> list[psutil.Process]:
    return [c for c in psutil.Process().children(recursive=True)
            if c.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(c.cmdline())]


def test_a_worker_killed_mid_window_fails_its_trial_and_the_study_goes_on(tmp_path, model_path):
    proc = optimize(tmp_path, model_path, 4)
    victims = wait_for_server_window(proc)
    victims[0].send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err + out
    study = study_of(tmp_path)
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and "SIGKILL" in failed[0].user_attrs["fail_reason"]
    retried = [t for t in study.trials if t.user_attrs.get("retry_of") == failed[0].number]
    assert [t.state.name for t in retried] == ["COMPLETE"], "a transient failure is measured once more"
    assert retried[0].user_attrs["label"] == failed[0].user_attrs["label"]
    assert retried[0].user_attrs.get("baseline") == failed[0].user_attrs.get("baseline")
    assert len(counted(study)) == 4
    assert "trial failed" in out and "SIGKILL" in out
    assert no_process_left([v.pid for v in victims]) and not mine()


def test_a_hung_worker_is_detected_and_its_trial_failed(tmp_path, model_path):
    proc = optimize(tmp_path, model_path, 2, "--hang-timeout", "3s")
    victims = wait_for_server_window(proc)
    victims[0].send_signal(signal.SIGSTOP)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err + out
    failed = [t for t in study_of(tmp_path).trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and "hung or stopped" in failed[0].user_attrs["fail_reason"]
    assert len(counted(study_of(tmp_path))) == 2  # the study went on past the hung trial
    assert no_process_left([v.pid for v in victims]) and not mine()


def test_a_worker_over_its_memory_limit_fails_trials_then_the_study_resumes(tmp_path):
    """Offline trials with no bound: the limit bites at start-up whatever the scenario, and a slow
    model's offline trial is one short window where a server trial's rate search runs windows of
    hundreds of requests (minutes)."""
    hog = str(memory_hog_model(tmp_path / "hog.onnx"))
    offline = ("--scenario", "offline")
    proc = optimize(tmp_path, hog, 3, *offline, "--worker-memory-limit", "200M", p99=None)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err + out
    assert "3 trials in a row failed" in err and "out of memory" in err and "Traceback" not in err
    # the hog's output does not keep the batch: the study says once that it searches without batching
    lines = err.strip().splitlines()
    notes = [line for line in lines if line.startswith("placetune: warning: batching disabled: model hog")]
    assert len(notes) == 1 and len([line for line in lines if line not in notes]) == 1, err
    failed = [t for t in study_of(tmp_path).trials if t.state.name == "FAIL"]
    assert len(failed) == 3 and all("memory" in t.user_attrs["fail_reason"] for t in failed)
    assert not mine()
    proc = optimize(tmp_path, hog, 3, *offline, p99=None)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err + out
    assert len(counted(study_of(tmp_path))) == 3


def test_sigterm_abandons_the_trial_and_the_same_command_resumes(tmp_path, model_path):
    proc = optimize(tmp_path, model_path, 4)
    for line in proc.stdout:
        if line.startswith("#") and "  feasible  " in line:
            break
    workers = wait_for_workers(proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "resumes when you re-run the same command" in err and "Traceback" not in err
    assert no_process_left([w.pid for w in workers]) and not mine()
    saved = json.loads((tmp_path / "best_config.json").read_text())  # written at the first feasible trial
    assert saved["format"] == "placetune-config/1" and saved["params"]
    proc = optimize(tmp_path, model_path, 4)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err + out
    study = study_of(tmp_path)
    assert len(counted(study)) == 4
    baselines = [t.user_attrs["baseline"] for t in counted(study) if "baseline" in t.user_attrs]
    assert len(baselines) == len(set(baselines)), "a baseline was measured twice"


def test_sigkill_of_the_tuner_leaves_no_worker_and_resume_fails_the_orphaned_trial(tmp_path, model_path):
    proc = optimize(tmp_path, model_path, 3)
    workers = wait_for_workers(proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert no_process_left([w.pid for w in workers]), "workers outlived a kill -9 of the tuner"
    running = [t for t in study_of(tmp_path).trials if t.state.name == "RUNNING"]
    assert len(running) == 1
    proc = optimize(tmp_path, model_path, 3)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err + out
    study = study_of(tmp_path)
    orphan = study.trials[running[0].number]
    assert orphan.state.name == "FAIL" and "killed mid-trial" in orphan.user_attrs["fail_reason"]
    assert len(counted(study)) == 3
    assert not [t for t in study.trials if t.state.name == "RUNNING"]


def test_a_second_tuner_on_the_same_cpus_waits_refuses_then_takes_over_a_dead_ones_lock(tmp_path, model_path):
    first = optimize(tmp_path, model_path, 3)
    wait_for_workers(first)
    other = tmp_path / "other"
    other.mkdir()
    second = optimize(other, model_path, 2, "--lock-wait", "1s")
    out, err = second.communicate(timeout=120)
    assert second.returncode == 1 and f"another placetune (pid {first.pid}" in err and "--lock-wait" in err
    first.kill()
    first.communicate(timeout=60)
    third = optimize(other, model_path, 2, "--lock-wait", "30s")
    out, err = third.communicate(timeout=600)
    assert third.returncode == 0, err + out
    assert not mine()


def test_a_locked_sqlite_storage_is_waited_for(tmp_path, model_path):
    warm = optimize(tmp_path, model_path, 1)
    assert warm.wait(timeout=300) == 0
    db = tmp_path / "placetune.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time\n"
         f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
         "c.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\ntime.sleep(4)\nc.execute('COMMIT')\n"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(sqlite3.OperationalError):
        sqlite3.connect(db, timeout=0.1).execute("BEGIN EXCLUSIVE")
    proc = optimize(tmp_path, model_path, 2)
    out, err = proc.communicate(timeout=600)
    holder.wait(timeout=30)
    assert proc.returncode == 0, err + out
    assert len(counted(study_of(tmp_path))) == 2


def test_mlflow_dying_mid_study_warns_once_and_the_study_completes(tmp_path, model_path):
    server, port = start_mlflow_server(tmp_path)
    try:
        proc = subprocess.Popen(
            [*CLI, "optimize", "--model", model_path, "--p99", "2s", "--n-trials", "3", "--window", "0.3s",
             "--revalidate", "0", "--mlflow-uri", f"http://127.0.0.1:{port}"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        for line in proc.stdout:
            if line.startswith("#"):
                break
        os.killpg(server.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    assert proc.returncode == 0, err + out
    assert err.count("unreachable") == 1 and "placetune log" in err
    assert len(counted(study_of(tmp_path))) == 3


def _window(service_p50: float, service_p99: float) -> WindowResult:
    return WindowResult("server", 100.0, 100.0, 100, 100, 1.0, 1.0, 2.0, 2.0, 1.0, 1.0, True, True, "", (1.0,), 0.1,
                        service_p50, service_p99)


def test_a_noisy_window_is_flagged_and_a_quiet_one_is_not():
    assert noise_notes(_window(1.0, 1.5)) == []
    (note,) = noise_notes(_window(1.0, 5.0))
    assert "noisy machine" in note and "5.0x" in note


def test_a_failed_baseline_keeps_its_row_with_the_reason_and_a_second_failure_is_final():
    from tuner.machine.sysfs import read_topology
    from tuner.results.report import summary_text
    from tuner.results.trials import baseline_results
    from tuner.search.study import baselines, enqueue_baselines

    topo = read_topology("/")
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("p99_bound_ms", 20.0)
    name = baselines(topo)[0][0]
    for attrs in ({}, {"retry_of": 0}):  # the trial, then its retry, fail (a crash each time)
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={
            "baseline": name, "fail_reason": "WorkerError: worker 0 died (killed by SIGKILL)", **attrs}))
    rows = baseline_results(study)
    assert rows[name].feasible is False and "killed by SIGKILL" in rows[name].reason
    assert f"vs {name}: failed: WorkerError" in summary_text(study)
    enqueue_baselines(study, topo)  # a resume does not queue a baseline whose retry failed too
    queued = [t.user_attrs["baseline"] for t in study.trials if t.state.name == "WAITING"]
    assert name not in queued and len(queued) == len(baselines(topo)) - 1
