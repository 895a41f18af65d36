"""The application services without processes: the fleet summary over a hand-made study, and the
optimize service on a 2-core machine fixture with an oracle standing in for the measurement."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from pathlib import Path

import optuna
import pytest

from tests.conftest import fixture_dirs, fixture_topology
from tuner.app.fleet import NOT_STARTED, fleet_status
from tuner.app.optimize import OptimizeListener, OptimizeRequest, run_optimize
from tuner.results.records import TrialResult
from tuner.results.trials import measured_trials, result_of
from tuner.search.space import load_space
from tuner.search.study import CONSTRAINT, StudyConfig

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0)
NOW_S = NOW.timestamp()
RESULTS = Path(__file__).resolve().parent / "data" / "results"


def _stored_result(throughput: float, p99_ms: float) -> dict:
    """A real stored result (tests/data/results, read and written in today's format) with these figures."""
    sample = TrialResult.from_dict(json.loads((RESULTS / "format2.json").read_text()))
    return dataclasses.replace(sample, feasible=True, throughput=throughput, p99_ms=p99_ms).to_dict()


def _trial(number: int, state: optuna.trial.TrialState, host: str | None, started_s_ago: float | None = None,
           throughput: float | None = None, **attrs) -> optuna.trial.FrozenTrial:
    """A trial as a tuner of the fleet leaves it: ``throughput`` given, it measured a feasible result."""
    user_attrs = {**attrs}
    if host is not None:
        user_attrs.update(host=host, hostname=host.split(":")[0], topology_fingerprint=f"fp-{host[0]}")
    start = NOW - datetime.timedelta(seconds=started_s_ago) if started_s_ago is not None else None
    values = None
    if throughput is not None:
        user_attrs["result"] = _stored_result(throughput, p99_ms=5.0)
        values = [throughput, 5.0]
    done = state.is_finished()
    trial = optuna.trial.FrozenTrial(
        number=number, state=state, value=None, datetime_start=start,
        datetime_complete=start + datetime.timedelta(seconds=1) if done and start else None,
        params={}, distributions={}, user_attrs=user_attrs, system_attrs={}, intermediate_values={},
        trial_id=number, values=values)
    if throughput is not None:
        trial.set_constraint(CONSTRAINT, -1.0)
    return trial


def _fleet_study() -> optuna.Study:
    states = optuna.trial.TrialState
    study = optuna.create_study(directions=["maximize", "minimize"], study_name="fleet")
    for trial in (
        _trial(0, states.COMPLETE, "a:0-3", 100, throughput=50.0, label="w1xc4"),
        _trial(1, states.COMPLETE, "b:0-3", 90, throughput=80.0, label="w4xc1"),
        _trial(2, states.FAIL, "a:0-3", 60, fail_reason="WorkerError: worker 0 died"),
        _trial(3, states.FAIL, "b:0-3", 50, repeat_of=0, label="w1xc4"),  # a fleet race's twin
        _trial(4, states.PRUNED, "b:0-3", 40, plan_infeasible="needs 8 cores"),
        _trial(5, states.RUNNING, "a:0-3", 30, label="w2xc2"),
    ):
        study.add_trial(trial)
    study.enqueue_trial({}, user_attrs={"baseline": "ort_default"})
    return study


def test_fleet_status_counts_each_hosts_trials_by_state_and_leaves_repeats_out():
    status = fleet_status(_fleet_study(), NOW_S, heartbeat_ages_s={5: 4.0})
    assert (status.study_name, status.trials, status.measured, status.waiting) == ("fleet", 6, 2, 1)
    hosts = {h.host: h for h in status.hosts}
    assert list(hosts) == sorted(hosts) == ["(not started)", "a:0-3", "b:0-3"]
    a, b = hosts["a:0-3"], hosts["b:0-3"]
    assert (a.measured, a.complete, a.failed, a.pruned, a.running) == (1, 1, 1, 0, 1)
    assert (b.measured, b.complete, b.failed, b.pruned, b.running) == (1, 1, 0, 1, 0), "a repeat is no failure"
    assert hosts[NOT_STARTED].waiting == 1 and hosts[NOT_STARTED].last_activity_age_s is None
    assert a.fingerprints == ("fp-a",) and a.hostname == "a"
    assert b.last_activity_age_s == pytest.approx(39.0)  # its pruned trial ended 39 s ago; the repeat is not shown
    assert a.last_activity_age_s == pytest.approx(30.0)  # its running trial started 30 s ago


def test_fleet_status_shows_running_trials_with_their_heartbeat_and_the_best_so_far():
    status = fleet_status(_fleet_study(), NOW_S, heartbeat_ages_s={5: 4.0})
    (running,) = status.running
    assert (running.number, running.label, running.hostname) == (5, "w2xc2", "a")
    assert running.age_s == pytest.approx(30.0) and running.heartbeat_age_s == 4.0
    assert (status.best.number, status.best.hostname, status.best.throughput) == (1, "b", 80.0)
    assert fleet_status(_fleet_study(), NOW_S).running[0].heartbeat_age_s is None


def test_fleet_status_of_a_study_with_nothing_feasible_has_no_best():
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(_trial(0, optuna.trial.TrialState.FAIL, "a:0", 10))
    status = fleet_status(study, NOW_S)
    assert status.best is None and status.running == () and status.hosts[0].failed == 1


class Recorder(OptimizeListener):
    """Every event the optimize service reports, in order."""

    def __init__(self):
        self.events: list[tuple[str, object]] = []

    def started(self, start):
        self.events.append(("started", start))

    def trial_done(self, event):
        self.events.append(("trial_done", event))

    def search_done(self, outcome):
        self.events.append(("search_done", outcome))

    def race_started(self, k):
        self.events.append(("race_started", k))

    def race_done(self, race):
        self.events.append(("race_done", race))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events if kind != "trial_done"]


def _two_core_config(tmp_path, n_trials: int | None = 50) -> StudyConfig:
    from experiments.replay import ORACLE_MODEL
    from tuner.bench.measure import MeasureSettings

    topo = fixture_topology(next(p for p in fixture_dirs() if p.name.startswith("2arm")))
    space = load_space("default", topo).without_batching("the replay oracle does not model batching")
    return StudyConfig(model=ORACLE_MODEL, topology=topo, space=space,
                       settings=MeasureSettings(p99_bound_s=0.05), storage=f"sqlite:///{tmp_path / 'study.db'}",
                       study_name="app", seed=0, n_trials=n_trials, lock_wait_s=60)


def _oracle(throughput_of=None):
    from experiments.oracles import amdahl_bandwidth
    from experiments.replay import oracle_measure

    return oracle_measure(throughput_of or amdahl_bandwidth)


def test_optimize_writes_the_best_config_with_its_race_and_reports_every_step(tmp_path, monkeypatch):
    import tuner.app.optimize
    import tuner.search.study

    opened: list[str] = []
    real_open = tuner.search.study.open_study

    def counting_open(cfg):
        opened.append(cfg.study_name)
        return real_open(cfg)

    monkeypatch.setattr(tuner.app.optimize, "open_study", counting_open)
    monkeypatch.setattr(tuner.search.study, "open_study", counting_open)
    out = tmp_path / "best_config.json"
    heard = Recorder()
    outcome = run_optimize(OptimizeRequest(_two_core_config(tmp_path), out, race_k=2, measure_fn=_oracle()), heard)
    assert opened == ["app"], "the study is opened once"
    assert heard.kinds() == ["started", "search_done", "race_started", "race_done"]
    trials = [event for kind, event in heard.events if kind == "trial_done"]
    assert len(trials) == outcome.measured == len(measured_trials(outcome.study))
    assert trials[-1].best_throughput == max(t.info.throughput for t in trials)
    assert outcome.exit_code == 0 and outcome.space_exhausted and outcome.config_path == out
    assert outcome.race is not None and outcome.race.entrants and outcome.race is heard.events[-1][1]
    document = json.loads(out.read_text())
    assert document["trial"] == outcome.best.number and document["label"] == outcome.best.user_attrs["label"]
    assert document["race"] == json.loads(json.dumps(outcome.race.to_dict()))


def test_a_race_that_a_baseline_wins_puts_that_baseline_in_the_best_config(tmp_path):
    oracle, seen = _oracle(), {}

    def lucky_in_the_study(the_plan, model, settings, progress=None):
        """The study's best searched config was a lucky window: re-measured, it is half as fast."""
        result = oracle(the_plan, model, settings, progress)
        label = the_plan.params.label()
        seen[label] = seen.get(label, 0) + 1
        if seen[label] == 1 and label == "w1xc2-intra2-nospin":
            return dataclasses.replace(result, throughput=result.throughput * 10)
        return result

    out = tmp_path / "best_config.json"
    outcome = run_optimize(OptimizeRequest(_two_core_config(tmp_path), out, race_k=2,
                                           measure_fn=lucky_in_the_study), Recorder())
    assert outcome.best.user_attrs["label"] == "w1xc2-intra2-nospin" and "baseline" not in outcome.best.user_attrs
    race = outcome.race
    assert race.searched["label"] == "w1xc2-intra2-nospin" and race.searched["outcome"] == "slower"
    document = json.loads(out.read_text())
    raced = next(t for t in outcome.study.trials if t.user_attrs.get("label") == race.recommended)
    assert "baseline" in raced.user_attrs and document["label"] == race.recommended
    assert document["trial"] == raced.number and document["race"]["recommended"] == race.recommended


def test_optimize_without_a_race_still_writes_the_best_config(tmp_path):
    out = tmp_path / "best.json"
    heard = Recorder()
    outcome = run_optimize(OptimizeRequest(_two_core_config(tmp_path, n_trials=3), out, race_k=0,
                                           measure_fn=_oracle()), heard)
    assert heard.kinds() == ["started", "search_done"]
    assert outcome.race is None and outcome.measured == 3 and not outcome.space_exhausted
    assert "race" not in json.loads(out.read_text())
    start = heard.events[0][1]
    assert (start.already_measured, start.target_measured, start.mlflow_uri) == (0, 3, None)


def test_optimize_with_no_feasible_config_writes_nothing_and_exits_3(tmp_path):
    out = tmp_path / "best.json"
    heard = Recorder()
    outcome = run_optimize(OptimizeRequest(_two_core_config(tmp_path, n_trials=2), out,
                                           measure_fn=_oracle(lambda params: 0.0)), heard)
    assert outcome.exit_code == 3 and outcome.best is None and outcome.config_path is None
    assert outcome.lowest_p99 is not None and math.isinf(result_of(outcome.lowest_p99).p99_ms)
    assert heard.kinds() == ["started", "search_done"] and not out.exists()


def test_an_interrupted_optimize_keeps_the_best_config_so_far_and_raises(tmp_path):
    out = tmp_path / "best.json"
    inner = _oracle()
    calls: list[str] = []

    def measure_then_interrupt(the_plan, model, settings, progress=None):
        calls.append(the_plan.params.label())
        if len(calls) == 3:
            raise KeyboardInterrupt
        return inner(the_plan, model, settings, progress)

    with pytest.raises(KeyboardInterrupt):
        run_optimize(OptimizeRequest(_two_core_config(tmp_path), out, measure_fn=measure_then_interrupt))
    assert json.loads(out.read_text())["label"] in calls[:2]


def _study_with_a_beating_trial(tmp_path) -> tuple[str, optuna.Study]:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=60)
    study = optuna.create_study(storage=storage, study_name="beats", directions=["maximize", "minimize"])
    trial = study.ask()
    trial.set_user_attr("host", "x:0")
    study_id = storage.get_study_id_from_name("beats")
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(study_id, trial.number))
    return url, study


def test_fleet_status_reads_the_running_trials_heartbeats_from_the_storage(tmp_path):
    from tuner.app.fleet import read_fleet_status

    url, study = _study_with_a_beating_trial(tmp_path)
    (running,) = read_fleet_status(study, url, NOW_S).running
    assert running.number == 0 and 0.0 <= running.heartbeat_age_s < 3600  # on the database's clock


def test_fleet_status_says_why_heartbeats_could_not_be_read(tmp_path):
    from tuner.app.fleet import read_fleet_status

    _, study = _study_with_a_beating_trial(tmp_path)
    status = read_fleet_status(study, f"sqlite:///{tmp_path / 'empty.db'}", NOW_S)  # no Optuna tables there
    assert status.heartbeat_error == "OperationalError" and status.running[0].heartbeat_age_s is None


def test_a_race_time_limit_reaches_the_race_and_is_recorded_in_the_best_config(tmp_path):
    out = tmp_path / "best.json"
    outcome = run_optimize(OptimizeRequest(_two_core_config(tmp_path), out, race_k=2, measure_fn=_oracle(),
                                           race_time_limit_s=1e-9), Recorder())
    assert outcome.race is not None and outcome.race.stopped == "time_limit"
    race = json.loads(out.read_text())["race"]
    assert race["rounds"] == 1 and race["stopped"] == "time_limit"  # one round always, no interval
