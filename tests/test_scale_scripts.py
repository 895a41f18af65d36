"""The scale-proof scripts (experiments/scale/) without a 16-core machine: the summariser on artefact
sets made by the real study loop (an oracle stands in for the measurement) and by hand, the shell
steps' statuses, the calibration's choice of configs. No measurement, no timing asserted."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

from experiments.scale import summarize
from experiments.scale.artefacts import race_figures, read_steps, study_counts
from experiments.scale.screen_calibration import pick_configs
from experiments.scale.summarize2 import calibration_figures, repeat_figures
from tests.conftest import fixture_dirs, fixture_topology
from tuner.app.optimize import OptimizeRequest, run_optimize
from tuner.results.records import TrialResult
from tuner.results.trials import measured_trials
from tuner.search.screening import is_screened
from tuner.search.space import load_space
from tuner.search.study import StudyConfig, baselines

SCALE = Path(__file__).resolve().parents[1] / "experiments" / "scale"
SAMPLE = Path(__file__).resolve().parent / "data" / "results" / "format2.json"


def _topology(prefix: str):
    return fixture_topology(next(p for p in fixture_dirs() if p.name.startswith(prefix)))


def _status(raw: Path, name: str, state: str, rc, wall_s: float, log: str = "") -> None:
    steps = raw / "steps"
    steps.mkdir(parents=True, exist_ok=True)
    (steps / f"{name}.cmd").write_text(f"{name} ...\n")
    (steps / f"{name}.log").write_text(log)
    (steps / f"{name}.status.json").write_text(json.dumps(
        {"name": name, "state": state, "rc": rc, "limit_s": 200, "wall_s": wall_s, "ended": "2026-12-03T08:00:00Z"}))


def _oracle_study(folder: Path, n_trials: int) -> None:
    """A default study on the 16-core fixture, oracle-measured, with its race: placetune.db and
    best_config.json as run.sh leaves them."""
    from experiments.oracles import amdahl_bandwidth
    from experiments.replay import ORACLE_MODEL, oracle_measure
    from tuner.bench.measure import MeasureSettings

    topo = _topology("16amd64")
    full = MeasureSettings(p99_bound_s=0.05)
    cfg = StudyConfig(model=ORACLE_MODEL, topology=topo, space=load_space("default", topo), settings=full,
                      storage=f"sqlite:///{folder / 'placetune.db'}", study_name="s", seed=0, n_trials=n_trials,
                      lock_wait_s=60)
    measure = oracle_measure(amdahl_bandwidth, full=full, screen_noise=0.1)
    run_optimize(OptimizeRequest(cfg, folder / "best_config.json", race_k=1, measure_fn=measure,
                                 race_time_limit_s=3600.0))


def test_run1_summary_reports_the_race_and_the_counts_the_artefacts_hold(tmp_path):
    raw = tmp_path / "scale1"
    (raw / "squeezenet").mkdir(parents=True)
    (raw / "plan.txt").write_text("profile: device; budget_s: 510\nstudy: squeezenet onnx:squeezenet 50ms 215 80 30\n"
                                  "study: resnet50 onnx:resnet50 300ms 480 90 60 --n-trials 5 --window 1s\n")
    _oracle_study(raw / "squeezenet", n_trials=16)
    _status(raw, "preflight", "ok", 0, 2)
    _status(raw, "squeezenet", "ok", 0, 190)
    _status(raw, "resnet50", "timed_out", 124, 300, log="trial 3 ...\nplacetune: terminated (SIGTERM)\n")
    assert summarize.main(["run1", str(raw)]) == 0

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{raw / 'squeezenet' / 'placetune.db'}")
    race = json.loads((raw / "squeezenet" / "best_config.json").read_text())["race"]
    counts = study_counts(raw / "squeezenet" / "placetune.db")
    assert counts["measured"] == len(measured_trials(study))
    assert counts["baselines"] == len(baselines(_topology("16amd64")))
    assert counts["screened"] == sum(is_screened(t) for t in study.trials) > 0  # 16 trials on 16 cores: screening
    assert counts["repeats"] == counts["failed"] == counts["planner_infeasible"] == 0
    figures = race_figures(raw / "squeezenet" / "best_config.json")
    assert figures["winner"] == race["winner"] and figures["rounds"] == race["rounds"] >= 2
    ort = next(c for c in race["comparisons"] if "ort_default" in c["baseline"].split("+"))
    assert figures["vs_ort_default"]["ratio"] == ort["ratio"] and figures["vs_ort_default"]["ci"] == ort["ci"]

    text = (raw / "summary.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| squeezenet |"))
    assert f"`{race['winner']}`" in row and f"{ort['ratio']:.2f}x (95% CI {ort['ci'][0]:.2f}-{ort['ci'][1]:.2f})" in row
    assert f"| {counts['measured']} ({counts['baselines']}) |" in row and f"| {counts['screened']} |" in row
    assert "Profile: device" in text and "a test of the script" not in text
    assert "step `resnet50`: cut by the guard after 300 s" in text and "terminated (SIGTERM)" in text
    resnet = next(line for line in text.splitlines() if line.startswith("| resnet50 |"))
    assert "no best_config.json" in resnet and "- resnet50: no study storage" in text
    assert json.loads((raw / "summary.json").read_text())["studies"][0]["race"]["winner"] == race["winner"]


def test_a_race_won_by_the_ort_default_is_1x_itself_and_a_missing_race_is_named(tmp_path):
    entrants = [{"label": "w1-unpinned-intradefault", "baseline": "ort_default", "params": {}},
                {"label": "w16xc1-intra1", "baseline": "", "params": {}}]
    doc = {"label": "w1-unpinned-intradefault", "race": {
        "rounds": 2, "throughputs": {"w1-unpinned-intradefault": [100.0, 110.0], "w16xc1-intra1": [90.0, 95.0]},
        "winner": "w1-unpinned-intradefault", "recommended": "w1-unpinned-intradefault", "comparisons": [],
        "searched": {"label": "w16xc1-intra1", "baseline": "ort_default", "ratio": 0.88, "ci": [0.8, 0.95],
                     "baseline_label": "w1-unpinned-intradefault", "outcome": "slower"},
        "stopped": "time_limit", "entrants": entrants}}
    (tmp_path / "best_config.json").write_text(json.dumps(doc))
    figures = race_figures(tmp_path / "best_config.json")
    assert figures["winner_is"] == "ort_default" and figures["vs_ort_default"]["ratio"] == 1.0
    assert figures["winner_req_s"] == 105.0 and figures["stopped"] == "time_limit"
    (tmp_path / "best_config.json").write_text(json.dumps({"label": "x"}))
    assert "no race" in race_figures(tmp_path / "best_config.json")["error"]
    assert "no best_config.json" in race_figures(tmp_path / "missing.json")["error"]


def _result(throughput: float, feasible: bool = True, steal: float = 0.5, foreign: float = 0.1) -> dict:
    sample = TrialResult.from_dict(json.loads(SAMPLE.read_text()))
    doc = dataclasses.replace(sample, feasible=feasible, throughput=throughput).to_dict()
    for w in doc["windows"]:
        w["interference"] = {"steal_pct": steal, "foreign_cpu": foreign, "disturbed": steal > 5 or foreign > 0.25}
    return doc


def test_calibration_figures_are_the_pairs_cost_ratio_and_lognormal_error(tmp_path):
    path = tmp_path / "calibration.jsonl"
    rows = [(0, "screen", 110.0, 4.0), (0, "full", 100.0, 16.0), (1, "full", 200.0, 20.0), (1, "screen", 180.0, 5.0),
            (2, "screen", 0.0, 3.0), (2, "full", 0.0, 12.0), (3, "screen", 50.0, 4.0)]  # the last pair was cut short
    with path.open("w") as f:
        for index, fidelity, req_s, wall_s in rows:
            f.write(json.dumps({"index": index, "label": f"c{index}", "baseline": "", "fidelity": fidelity,
                                "wall_s": wall_s, "result": _result(req_s, feasible=req_s > 0)}) + "\n")
    c = calibration_figures(path, full_cv=0.05)
    assert c["pairs"] == 3 and c["both_met_bound"] == 2 and c["neither_met_bound"] == 1
    assert c["cost_ratio"] == pytest.approx((4 + 5 + 3) / (16 + 20 + 12))
    logs = [math.log(1.1), math.log(0.9)]
    assert c["log_mean"] == pytest.approx(np.mean(logs)) and c["log_sigma"] == pytest.approx(np.std(logs, ddof=1))
    assert c["screen_sigma"] == pytest.approx(math.sqrt(c["log_sigma"] ** 2 - 0.05 ** 2))


def test_repeat_figures_count_windows_over_each_disturbance_threshold(tmp_path):
    runs = [{"tag": "w16xc1-intra1 round 1", "result": _result(1000.0, steal=0.5, foreign=0.1)},
            {"tag": "ORT default round 1", "result": _result(350.0, steal=7.0, foreign=0.3)},
            {"tag": "ORT default round 2", "result": _result(370.0, steal=1.5, foreign=0.6)},
            {"tag": "w16xc1-intra1 round 2", "result": _result(1200.0, steal=0.5, foreign=0.1)}]
    doc = {"config": {"workers": 16, "cores_per_worker": 1, "intra_op_threads": 1}, "runs": runs, "complete": False,
           "interleaved": {"ratio": 3.1, "ci": [2.5, 3.6]}}
    (tmp_path / "r.json").write_text(json.dumps(doc))
    r = repeat_figures(tmp_path / "r.json")
    per_run = len(runs[0]["result"]["windows"])
    assert r["windows"] == 4 * per_run and r["label"] == "w16xc1-intra1"
    assert r["flagged_steal"][5.0] == per_run and r["flagged_steal"][1.0] == 2 * per_run
    assert r["flagged_foreign"][0.25] == 2 * per_run and r["flagged_foreign"][0.5] == per_run
    assert r["disturbed"] == 2 * per_run and r["range_config"] == [1000.0, 1200.0]
    assert r["cv_config"] == pytest.approx(np.std([1000.0, 1200.0], ddof=1) / 1100.0, rel=0.2)
    assert not r["complete"] and "error" in repeat_figures(tmp_path / "missing.json")


def test_run2_summary_names_each_part_and_what_is_missing(tmp_path):
    raw = tmp_path / "scale2"
    (raw / "mix").mkdir(parents=True)
    (raw / "plan.txt").write_text("profile: quick; budget_s: 660; parts: repeat,calibrate,mix; cores: 2\n")
    _status(raw, "repeat", "failed", 1, 3, log="Traceback ...\nValueError: bad\n")
    _status(raw, "calibrate", "skipped", None, 0)
    _status(raw, "mix", "ok", 0, 100)
    (raw / "mix" / "best_deployment.json").write_text(json.dumps({
        "label": "small=w1xc1 | big=w1xc1", "load_factor": 20.0, "load_factor_ci": [20.0, 24.0],
        "baselines": {"ort_default": {"label": "ort", "load_factor": 10.0}, "even_split": {"label": "even",
                                                                                           "load_factor": 20.0}},
        "race": {"vs_baselines": {"ort_default": {"ratio": 2.0, "ci": [1.5, 2.6], "rounds": 2}},
                 "load_factors": {"small=w1xc1 | big=w1xc1": [20.0, 22.0]}}}))
    assert summarize.main(["run2", str(raw)]) == 0
    text = (raw / "summary.md").read_text()
    assert "a test of the script, not a proof" in text
    assert "step `repeat`: failed (exit 1)" in text and "ValueError: bad" in text
    assert "step `calibrate`: skipped" in text and "no calibration results" in text
    assert "vs ort_default (`ort`, L 10 in the study): 2.00x (95% CI 1.50-2.60) over 2 race rounds" in text
    assert "vs even_split (`even`, L 20 in the study): not raced" in text


def test_summarize_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert summarize.main(["run1", str(tmp_path)]) == 2
    assert "not a scale run's results" in capsys.readouterr().err


def test_calibration_configs_are_the_baselines_then_distinct_draws_from_the_space():
    topo = _topology("16amd64")
    picked = pick_configs(topo, 10, seed=1)
    assert len(picked) == len({p for _, p in picked}) == 10
    named = [name for name, _ in baselines(topo)]
    assert [name for name, _ in picked[: len(named)]] == named and not any(n for n, _ in picked[len(named):])
    space = {p for _, p in load_space("default", topo).configurations()}
    assert all(p in space for name, p in picked if not name)
    assert picked == pick_configs(topo, 10, seed=1) and picked != pick_configs(topo, 10, seed=2)


def _bash(script: str, tmp_path: Path, **env) -> subprocess.CompletedProcess:
    import os

    lib = SCALE / "lib.sh"
    return subprocess.run(["bash", "-c", f'source "{lib}"; PY=(python3); raw="{tmp_path}"; steps="{tmp_path}/steps"; '
                           f'mkdir -p "$steps"; {script}'], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_a_step_records_ok_failed_cut_and_skipped_and_never_stops_the_run(tmp_path):
    done = _bash("start_clock 600; run_step good 60 true; run_step bad 60 false; run_step cut 1 sleep 30; "
                 "start_clock 0; run_step late 60 true; echo still here", tmp_path,
                 STEP_MIN_S="1", STEP_RESERVE_S="0")
    assert done.returncode == 0 and done.stdout.rstrip().endswith("still here"), done.stderr
    states = {p.name.split(".")[0]: json.loads(p.read_text())["state"]
              for p in (tmp_path / "steps").glob("*.status.json")}
    assert states == {"good": "ok", "bad": "failed", "cut": "timed_out", "late": "skipped"}
    steps = read_steps(tmp_path)
    assert steps["bad"].rc == 1 and steps["cut"].describe().startswith("cut by the guard")


@pytest.mark.parametrize("script", ["run.sh", "run2.sh"])
def test_the_scripts_parse_and_refuse_bad_arguments_with_one_line(script, tmp_path):
    path = SCALE / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    for args, message in ((["--budget", "soon", "--out", str(tmp_path)], "--budget needs whole seconds"),
                          (["--frobnicate"], "unknown argument '--frobnicate'"), ([], "--out DIR is required")):
        done = subprocess.run(["bash", str(path), *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and message in done.stderr.splitlines()[-1], done.stderr
    assert not any(tmp_path.iterdir()), "nothing is written before the arguments are checked"


@pytest.mark.parametrize("script,name", [("run.sh", "scale1"), ("run2.sh", "scale2")])
def test_a_run_out_of_time_skips_its_measurements_and_still_packs_a_summary(script, name, tmp_path):
    """The whole script for real, with a budget too small for any measurement: the preflight and the
    machine info run, every measuring step is skipped with its reason, and OUT holds exactly the
    summary and the tarball (what the device tool brings back)."""
    cli = Path(sys.executable).with_name("placetune")  # the CLI of the interpreter running the tests
    env = {**os.environ, "PLACETUNE": str(cli), "PLACETUNE_PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCALE / script), "--budget", "30", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}-summary.md", f"{name}.tar.gz"]
    summary = (tmp_path / f"{name}-summary.md").read_text()
    assert "skipped: no time left" in summary and "Profile: device" in summary
    import tarfile

    with tarfile.open(tmp_path / f"{name}.tar.gz") as tar:
        names = tar.getnames()
    assert f"{name}/summary.md" in names and f"{name}/machine/topology.json" in names and f"{name}/plan.txt" in names


def test_nothing_the_scripts_run_imports_mlflow_or_plotly_which_the_device_lacks():
    """The device has no mlflow and no plotly: every module the scripts run (the CLI's optimize paths
    with --no-mlflow, the Python entry points, the summariser) must import without them."""
    modules = ["tuner.cli.main", "tuner.app.optimize", "tuner.cli.optimize_view", "tuner.cli.mix", "tuner.mix.study",
               "experiments.repeatability", "experiments.scale.screen_calibration", "experiments.scale.summarize",
               "experiments.scale.summarize2"]
    code = ("import importlib, importlib.abc, sys\n"
            "class Absent(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] in ('mlflow', 'plotly'):\n"
            "            raise ImportError(name + ' is not on the device')\n"
            "sys.meta_path.insert(0, Absent())\n"
            f"for m in {modules!r}:\n    importlib.import_module(m)\n")
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=SCALE.parents[1])
    assert done.returncode == 0, done.stderr
