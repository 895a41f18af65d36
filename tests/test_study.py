"""A real short study in CI (small generated model, a handful of trials, short windows)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import psutil
import pytest

from tests.conftest import fixture_dirs, fixture_topology
from tests.events import wait_for_line
from tests.models import conv_net
from tests.procs import wait_for_workers
from tuner.errors import UsageError
from tuner.machine.placement import Params, plan
from tuner.results.trials import measured_trials, pareto_front
from tuner.search.space import check, load_space
from tuner.search.study import baselines

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "tuner.cli"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    return str(conv_net(tmp_path_factory.mktemp("study") / "conv.onnx"))


def _optimize(workdir: Path, model: str, n_trials: int, extra: list[str] = ()) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "optimize", "--model", model, "--p99", "2s", "--n-trials", str(n_trials), "--window", "0.2s",
         "--seed", "3", "--revalidate", "1", *extra],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
    )


def _load(workdir: Path) -> optuna.Study:
    storage = f"sqlite:///{workdir / 'placetune.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def test_a_short_real_study_runs_baselines_and_writes_a_config_that_remeasures(tmp_path, model_path):
    proc = _optimize(tmp_path, model_path, 4, ["--race-timeout", "10s"])  # 2 rounds: a race, not its length
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err + out
    study = _load(tmp_path)
    assert len(measured_trials(study)) == 4  # the 3 baselines and one searched config
    ran = {t.user_attrs.get("baseline") for t in study.trials} - {None}
    assert "ort_default" in ran and any("one_per_core" in name for name in ran)
    front = pareto_front(study)
    assert front
    for t in front:
        assert t.user_attrs["result"]["feasible"]
        assert not any(o.values[0] > t.values[0] and o.values[1] < t.values[1] for o in front)
    config = json.loads((tmp_path / "best_config.json").read_text())
    assert config["race"]["summary"] and config["params"]
    again = subprocess.run([*CLI, "measure", "--model", model_path, "--config", "best_config.json",
                            "--p99", "2s", "--window", "0.2s", "--json"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["params"] == config["params"]


def test_an_interrupted_study_resumes_with_the_same_command(tmp_path, model_path):
    proc = _optimize(tmp_path, model_path, 4, ["--revalidate", "0", "--no-mlflow"])  # MLflow: test_tracking
    wait_for_line(proc.stdout, lambda line: line.startswith("#"))  # the first trial's line, then Ctrl-C
    wait_for_workers(proc)  # inside the next trial (its workers have loaded the model)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    before = _load(tmp_path)
    done_before = [t.number for t in before.trials if t.state.name == "COMPLETE"]
    assert 1 <= len(done_before) < 4
    proc = _optimize(tmp_path, model_path, 4, ["--revalidate", "0", "--no-mlflow"])
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err + out
    after = _load(tmp_path)
    finished = [t for t in after.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(measured_trials(after)) == 4
    assert set(done_before) <= {t.number for t in finished}
    labels = [t.user_attrs.get("baseline") for t in finished if t.user_attrs.get("baseline")]
    assert len(labels) == len(set(labels)), "a baseline ran twice"
    children = [c for c in psutil.Process().children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]
    assert not [c for c in children if "resource_tracker" not in " ".join(c.cmdline())]


def test_resuming_with_another_bound_is_refused(tmp_path, model_path):
    proc = _optimize(tmp_path, model_path, 1, ["--revalidate", "0", "--study-name", "s", "--no-mlflow"])
    proc.communicate(timeout=300)
    proc = subprocess.run([*CLI, "optimize", "--model", model_path, "--p99", "3s", "--n-trials", "2",
                           "--study-name", "s"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "different setup" in proc.stderr and "p99_bound_ms" in proc.stderr


FIXTURES = fixture_dirs()


@pytest.mark.parametrize("machine", FIXTURES, ids=lambda p: p.name)
def test_space_collapses_what_the_machine_cannot_vary(machine):
    topo = fixture_topology(machine)
    space = load_space("default", topo)
    assert (len(space.choices["smt"]) == 2) == topo.smt
    assert (len(space.choices["numa_policy"]) > 1) == (len(topo.usable_nodes) > 1)
    assert max(space.choices["workers"]) == len(topo.cores())
    assert space.choices["inter_op_threads"] == (1,)  # sequential only in the default space


def test_planner_infeasible_outer_values_are_flagged():
    topo = fixture_topology(next(p for p in FIXTURES if p.name.startswith("2arm")))
    space = load_space("default", topo)
    assert "need 4 cores" in check(space, topo, {"workers": 2, "cores_per_worker": 2})
    assert check(space, topo, {"workers": 2, "cores_per_worker": 1}) is None


def test_bad_search_spaces_are_usage_errors(tmp_path):
    topo = fixture_topology(FIXTURES[0])
    bad = tmp_path / "bad.yaml"
    bad.write_text("dimensions:\n  wrokers: [1]\n")
    with pytest.raises(UsageError, match="unknown dimension"):
        load_space(str(bad), topo)
    bad.write_text("dimensions: [1, 2\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_space(str(bad), topo)
    bad.write_text("dimensions:\n  workers: {min: 1000, max: 1000}\n  cores_per_worker: [1000]\n")
    with pytest.raises(UsageError, match="no combination"):
        load_space(str(bad), topo)
    with pytest.raises(UsageError, match="not found"):
        load_space("nope", topo)


@pytest.mark.parametrize("machine", FIXTURES, ids=lambda p: p.name)
def test_baselines_are_plannable_and_distinct(machine):
    topo = fixture_topology(machine)
    found = baselines(topo)
    # one worker per core first (its stalls fill the replay's tail pool), the ORT default last
    assert found[0][0].startswith("one_per_core") and found[-1][0].endswith("ort_default")
    assert len({p for _, p in found}) == len(found)
    for _, params in found:
        plan(topo, params)
    named = {part: params for name, params in found for part in name.split("+")}
    assert set(named) == {"ort_default", "intel_throughput", "intel_latency", "one_per_core"}
    assert named["ort_default"] == Params(workers=1, pin=False, intra_op_threads=0)  # what ORT does unasked
    assert named["one_per_core"].workers == len(topo.cores()) and named["one_per_core"].cores_per_worker == 1
    multi = len(topo.usable_nodes) > 1
    assert named["intel_latency"].workers == (len(topo.usable_nodes) if multi else 1)  # one instance per node
    assert {p.numa_policy for p in named.values() if p.pin} == {"bind" if multi else "none"}


def _oracle_config(tmp_path, machine: str, n_trials: int | None, sampler: str = "tpe"):
    from experiments.replay import ORACLE_MODEL
    from tuner.bench.measure import MeasureSettings
    from tuner.search.study import StudyConfig

    topo = fixture_topology(next(p for p in FIXTURES if p.name.startswith(machine)))
    space = load_space("default", topo).without_batching("the replay oracle does not model batching")
    return StudyConfig(model=ORACLE_MODEL, topology=topo, space=space,
                       settings=MeasureSettings(p99_bound_s=0.05), storage=f"sqlite:///{tmp_path / 'study.db'}",
                       study_name="oracle", sampler=sampler, seed=0, n_trials=n_trials, lock_wait_s=60)


def _counting_oracle_measure(calls: list[str]):
    from experiments.oracles import amdahl_bandwidth
    from experiments.replay import oracle_measure

    inner = oracle_measure(amdahl_bandwidth)

    def measure_fn(the_plan, model, settings, progress=None):
        calls.append(the_plan.params.label())
        return inner(the_plan, model, settings, progress)

    return measure_fn


def test_a_2_core_study_measures_each_feasible_config_once_and_stops(tmp_path):
    from tuner.search.strategy import Exhaustive
    from tuner.search.study import run_study, study_strategy

    cfg = _oracle_config(tmp_path, "2arm", n_trials=50)
    assert isinstance(study_strategy(cfg), Exhaustive)
    calls: list[str] = []
    shown: list[str] = []
    study = run_study(cfg, lambda t, info: shown.append(info.label), lambda _m: None,
                      measure_fn=_counting_oracle_measure(calls))
    expected = {p.label() for _, p in cfg.space.configurations()} | {p.label() for _, p in baselines(cfg.topology)}
    assert sorted(calls) == sorted(expected)  # every config once, nothing else
    assert sorted(shown) == sorted(expected)
    assert study.user_attrs["space_exhausted"] is True
    assert len(measured_trials(study)) == len(expected) == len(study.trials)
    again: list[str] = []  # resuming an exhausted study measures nothing
    run_study(cfg, lambda t, info: None, lambda _m: None, measure_fn=_counting_oracle_measure(again))
    assert again == []


def test_a_sampled_study_never_measures_a_config_twice(tmp_path):
    from tuner.search.strategy import Sampled
    from tuner.search.study import run_study, study_strategy

    cfg = _oracle_config(tmp_path, "8em64t-2s2ca2c", n_trials=14)  # under SCREENING_MIN_TRIALS
    assert isinstance(study_strategy(cfg), Sampled)
    calls: list[str] = []
    study = run_study(cfg, lambda t, info: None, lambda _m: None, measure_fn=_counting_oracle_measure(calls))
    assert len(calls) == len(set(calls)) == 14 == len(measured_trials(study))
    assert not [t for t in study.trials if t.state.name == "PRUNED"]


def test_a_repeat_from_a_fleet_race_is_not_measured_and_not_shown(tmp_path):
    from tuner.results import report
    from tuner.search.strategy import Proposal
    from tuner.search.study import enqueue_proposal, run_study

    cfg = _oracle_config(tmp_path, "2arm", n_trials=3)
    calls: list[str] = []
    study = run_study(cfg, lambda t, info: None, lambda _m: None, measure_fn=_counting_oracle_measure(calls))
    done = next(t for t in measured_trials(study)
                if cfg.space.express(Params.from_dict(t.user_attrs["result"]["params"])) is not None)
    params = Params.from_dict(done.user_attrs["result"]["params"])
    enqueue_proposal(study, Proposal(cfg.space.express(params), params, "another host"))  # a race's twin
    cfg = _oracle_config(tmp_path, "2arm", n_trials=4)
    shown: list[str] = []
    study = run_study(cfg, lambda t, info: shown.append(info.label), lambda _m: None,
                      measure_fn=_counting_oracle_measure(calls))
    repeats = [t for t in study.trials if "repeat_of" in t.user_attrs]
    assert len(repeats) == 1 and repeats[0].user_attrs["repeat_of"] == done.number
    assert len(calls) == len(set(calls)) == 4
    assert params.label() not in shown
    assert repeats[0].number not in set(report.trials_frame(study).trial)


def test_a_study_made_with_the_static_space_is_not_resumed(tmp_path):
    import shutil

    from tuner.errors import StudyMismatch
    from tuner.search.study import _refuse_static_space_study

    shutil.copy(REPO / "experiments/results/squeezenet-p99-100ms-2core/placetune.db", tmp_path / "old.db")
    storage = f"sqlite:///{tmp_path / 'old.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    with pytest.raises(StudyMismatch, match="older placetune"):
        _refuse_static_space_study(optuna.load_study(study_name=summary.study_name, storage=storage))
