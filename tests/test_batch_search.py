"""experiments/batch_search.py's study logic: the batched arm starts with the unbatched arm's
baselines and never counts them as its winner (no measuring here: stored results)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import yaml

from experiments.batch_search import arm_winner, batched_space, copy_baselines
from tuner.results.records import TrialResult
from tuner.search.space import SPACES_DIR

SAMPLE = Path(__file__).resolve().parent / "data" / "results" / "format2.json"


def _trial(throughput: float, max_batch: int, baseline: str = "", feasible: bool = True):
    sample = TrialResult.from_dict(json.loads(SAMPLE.read_text()))
    params = dataclasses.replace(sample.params, max_batch=max_batch)
    result = dataclasses.replace(sample, params=params, throughput=throughput, feasible=feasible).to_dict()
    attrs = {"result": result, "label": params.label(), **({"baseline": baseline} if baseline else {})}
    return optuna.trial.create_trial(values=[throughput, 10.0], user_attrs=attrs,
                                     system_attrs={"constraints": [0.0 if feasible else 1.0]})


def _study(storage: str, name: str, trials) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=storage, directions=["maximize", "minimize"])
    for t in trials:
        study.add_trial(t)
    return study


def test_the_batched_arm_starts_with_the_baselines_once_and_its_winner_batches(tmp_path):
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    _study(storage, "u", [_trial(50.0, 1, "ort_default"), _trial(80.0, 1, "one_per_core"), _trial(90.0, 1)])
    assert copy_baselines(storage, "u", "b") == 2
    assert copy_baselines(storage, "u", "b") == 2  # a re-run copies nothing more
    batched = optuna.load_study(study_name="b", storage=storage)
    copies = batched.get_trials()
    assert sorted(t.user_attrs["baseline"] for t in copies) == ["one_per_core", "ort_default"]
    assert all(t.user_attrs["copied_from"] == "u" and t.system_attrs["constraints"] == [0.0] for t in copies)
    assert arm_winner(storage, "b", batched=True) == (None, 2)  # no batched config measured yet
    batched.add_trial(_trial(120.0, 8, feasible=False))
    batched.add_trial(_trial(70.0, 4))
    best, measured = arm_winner(storage, "b", batched=True)
    assert best.user_attrs["result"]["params"]["max_batch"] == 4 and measured == 4  # the infeasible 120 is out
    best, _ = arm_winner(storage, "u", batched=False)
    assert best.values[0] == 90.0


def test_the_batched_space_is_the_default_one_with_only_batches_above_1(tmp_path):
    path = batched_space(tmp_path, [2, 8])
    data, default = yaml.safe_load(path.read_text()), yaml.safe_load((SPACES_DIR / "default.yaml").read_text())
    assert data["dimensions"]["max_batch"] == [2, 8]
    assert {k: v for k, v in data["dimensions"].items() if k != "max_batch"} == {
        k: v for k, v in default["dimensions"].items() if k != "max_batch"}


def test_a_stopped_benchmark_stops_its_tuner_first(tmp_path):
    """SIGTERM to the benchmark reaches the optimize it is waiting for, which exits before it does."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    child = tmp_path / "child.py"
    child.write_text("import pathlib, signal, sys, time\n"
                     "signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path(sys.argv[1]).write_text('term'), "
                     "sys.exit(0)))\n"
                     "pathlib.Path(sys.argv[2]).write_text('up')\n"
                     "time.sleep(60)\n")
    wrapper = ("import signal, sys\n"
               "from experiments.batch_search import run_child\n"
               "signal.signal(signal.SIGTERM, lambda s, f: sys.exit(128 + s))\n"
               f"run_child([sys.executable, {str(child)!r}, {str(tmp_path / 'got')!r}, {str(tmp_path / 'up')!r}],"
               " None, dict(__import__('os').environ))\n")
    proc = subprocess.Popen([sys.executable, "-c", wrapper], cwd=Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + 30
    while not (tmp_path / "up").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    kids = psutil.Process(proc.pid).children()
    assert len(kids) == 1
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert (tmp_path / "got").read_text() == "term"
    assert not psutil.pid_exists(kids[0].pid) or kids[0].status() == psutil.STATUS_ZOMBIE
