"""The study's logic without processes: the objective, the queue, the stopping rules and the
queries over a study, with a fake measurement on the 2-core fixture machine."""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import optuna
import pytest

from tests.conftest import TOPOLOGIES
from tuner.bench.measure import MeasureSettings
from tuner.bench.model import ModelInfo
from tuner.errors import PlacetuneError, WorkerError
from tuner.machine.placement import Params, Plan, plan
from tuner.machine.sysfs import read_topology
from tuner.machine.topology import Topology
from tuner.results.records import MachineInfo, TrialResult
from tuner.results.trials import (
    baseline_results,
    best_trial,
    measured_trials,
    pareto_front,
    refigured,
    result_of,
    summarize_trial,
)
from tuner.search import study as study_module
from tuner.search.objective import (
    CONSTRAINT,
    INFEASIBLE_P99,
    TRIAL_FAULTS,
    RepeatedConfig,
    killed_reason,
    make_objective,
)
from tuner.search.space import load_space
from tuner.search.strategy import Proposal
from tuner.search.study import (
    StudyConfig,
    baselines,
    enqueue_baselines,
    enqueue_proposal,
    fail_orphaned_trials,
    make_sampler,
    run_study,
    run_trials,
    study_strategy,
)

MODEL = ModelInfo("fake", "fake.onnx", "f" * 64, ())
ORACLE_MACHINE = MachineInfo("fake", "", "", "", "", 0)
BOUND_MS = 50.0
FAIL, WAITING, COMPLETE, PRUNED = (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING,
                                   optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@pytest.fixture(scope="module")
def two_cores(tmp_path_factory) -> Topology:
    """The 2-core fixture machine, alone (extracting every fixture takes seconds)."""
    root = tmp_path_factory.mktemp("topology")
    with tarfile.open(TOPOLOGIES / "2arm-2c.tar.bz2") as tar:
        tar.extractall(root, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return read_topology(root / "2arm-2c")


@pytest.fixture(autouse=True)
def private_host_locks(tmp_path, monkeypatch):
    """Host locks live in this test's folder: a real tuner on this machine must not block the test."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@dataclass
class FakeMachine:
    """A stand-in for ``measure``: throughput grows with the workers, P99 is 10 ms unless ``p99_ms``
    says otherwise for a label; ``raises`` makes a label's measurement raise. Records what it measured."""

    p99_ms: dict[str, float] = field(default_factory=dict)
    raises: dict[str, BaseException] = field(default_factory=dict)
    measured: list[str] = field(default_factory=list)

    def __call__(self, the_plan: Plan, model: ModelInfo, settings: MeasureSettings, progress=None) -> TrialResult:
        label = the_plan.params.label()
        self.measured.append(label)
        if label in self.raises:
            raise self.raises[label]
        p99 = self.p99_ms.get(label, 10.0)
        feasible = p99 <= BOUND_MS
        throughput = 100.0 * the_plan.params.workers + the_plan.params.intra_op_threads if feasible else 0.0
        zeros = dict.fromkeys(("p50_ms", "p90_ms", "p999_ms", "offered_rate", "achieved_rate", "capacity",
                               "unloaded_p50_ms", "unloaded_p99_ms", "cpu_util", "harness_cpu", "duration_s"), 0.0)
        return TrialResult(params=the_plan.params, plan=the_plan, scenario=settings.scenario,
                           p99_bound_ms=BOUND_MS, feasible=feasible, reason="" if feasible else "P99 over the bound",
                           throughput=throughput, p99_ms=p99, worker_cpu=(), placement=(), windows=(),
                           model=model, machine=ORACLE_MACHINE, **zeros)


@pytest.fixture
def config(tmp_path, two_cores) -> Callable[..., StudyConfig]:
    """``config(n_trials=..., **StudyConfig fields)``: a study of the 2-core machine in ``tmp_path``."""

    def make(n_trials: int | None = 50, **kwargs) -> StudyConfig:
        space = load_space("default", two_cores).without_batching("the study's logic, on placements")
        return StudyConfig(model=MODEL, topology=two_cores, space=space,
                           settings=MeasureSettings(p99_bound_s=BOUND_MS / 1000),
                           storage=f"sqlite:///{tmp_path}/s.db", study_name="logic", seed=0, n_trials=n_trials,
                           lock_wait_s=5, **kwargs)

    return make


def run(cfg: StudyConfig, machine: FakeMachine, **kwargs) -> tuple[optuna.Study, list[dict]]:
    shown: list[dict] = []
    study = run_study(cfg, lambda t, info: shown.append(info), lambda _m: None, measure_fn=machine, **kwargs)
    return study, shown


def run_in_memory(cfg: StudyConfig, machine: FakeMachine, study: optuna.Study | None = None,
                  **kwargs) -> tuple[optuna.Study, list[dict]]:
    """The loop ``run_study`` runs once it holds the host lock, over an in-memory study (faster)."""
    if study is None:
        study = optuna.create_study(directions=["maximize", "minimize"],
                                    sampler=make_sampler(cfg.sampler, cfg.seed, cfg.space))
        enqueue_baselines(study, cfg.topology, cfg.space)
    shown: list[dict] = []
    run_trials(study, cfg, study_strategy(cfg), make_objective(cfg, study, lambda _m: None, "host:key", machine),
               lambda t, info: shown.append(info), lambda _m: None, **kwargs)
    return study, shown


def all_labels(cfg: StudyConfig) -> set[str]:
    return {p.label() for _, p in cfg.space.configurations()} | {p.label() for _, p in baselines(cfg.topology)}


def in_memory(cfg: StudyConfig, machine: FakeMachine):
    """An in-memory study and the objective measuring with ``machine``."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    return study, make_objective(cfg, study, lambda _m: None, "host:key", machine)


def enqueue(study: optuna.Study, cfg: StudyConfig, params: Params) -> None:
    enqueue_proposal(study, Proposal(cfg.space.express(params), params, "test"))


def one_trial(study: optuna.Study, objective) -> optuna.trial.FrozenTrial:
    """Run the next queued trial; the trial as it ended."""
    ended: list[optuna.trial.FrozenTrial] = []
    study.optimize(objective, n_trials=1, catch=(*TRIAL_FAULTS, RepeatedConfig),
                   callbacks=[lambda s, t: ended.append(t)])
    return ended[0]


def test_the_objective_stores_the_result_and_the_bound_as_a_constraint(config):
    cfg = config()
    slow = Params(workers=1, cores_per_worker=2, intra_op_threads=1)
    study, objective = in_memory(cfg, FakeMachine(p99_ms={slow.label(): 80.0}))
    enqueue(study, cfg, Params(workers=2))
    fast = one_trial(study, objective)
    assert fast.state == COMPLETE and fast.values == [201.0, 10.0]
    assert fast.constraints == {CONSTRAINT: 10.0 - BOUND_MS}
    assert fast.user_attrs["label"] == "w2xc1-intra1" and fast.user_attrs["result"]["_trial"] == fast.number
    assert fast.user_attrs["host"] == "host:key" and fast.user_attrs["tuner_pid"] == os.getpid()
    assert fast.user_attrs["fail_reason"] == ""  # the reason written for a killed tuner is gone
    enqueue(study, cfg, slow)
    missed = one_trial(study, objective)
    assert missed.state == COMPLETE and missed.values == [0.0, INFEASIBLE_P99]
    assert missed.constraints == {CONSTRAINT: INFEASIBLE_P99}
    assert pareto_front(study) == [study.trials[fast.number]] and best_trial(study).number == fast.number


def test_a_config_measured_before_is_a_repeat_that_is_not_measured(config):
    cfg = config()
    machine = FakeMachine()
    study, objective = in_memory(cfg, machine)
    enqueue(study, cfg, Params(workers=2))
    first = one_trial(study, objective)
    enqueue(study, cfg, Params(workers=2))
    again = one_trial(study, objective)
    assert machine.measured == ["w2xc1-intra1"]
    assert again.state == FAIL and again.user_attrs["repeat_of"] == first.number
    assert measured_trials(study) == [study.trials[first.number]]


def test_a_config_the_planner_refuses_is_pruned_without_a_measurement(config):
    cfg = config()
    machine = FakeMachine()
    study, objective = in_memory(cfg, machine)
    too_big = Params(workers=2, cores_per_worker=2, intra_op_threads=2)
    study.enqueue_trial({}, user_attrs={"baseline": "too_big", "params": too_big.to_dict()})
    pruned = one_trial(study, objective)
    assert machine.measured == []
    assert pruned.state == PRUNED and "4 cores" in pruned.user_attrs["plan_infeasible"]
    assert pruned.constraints == {CONSTRAINT: INFEASIBLE_P99}
    info = summarize_trial(pruned)
    assert info.feasible is False and info.reason.startswith("not measured: ")


def test_a_worker_fault_is_retried_once_and_the_second_failure_is_the_verdict(config):
    cfg = config()
    crash = WorkerError("worker 0 died (killed by SIGKILL)")
    study, objective = in_memory(cfg, FakeMachine(raises={"w2xc1-intra1": crash}))
    enqueue(study, cfg, Params(workers=2))
    first = one_trial(study, objective)
    assert first.state == FAIL and first.user_attrs["fail_reason"] == f"WorkerError: {crash}"
    (retry,) = study.get_trials(states=(WAITING,))
    assert retry.user_attrs["retry_of"] == first.number
    second = one_trial(study, objective)
    assert second.state == FAIL and second.user_attrs["retry_of"] == first.number
    assert not study.get_trials(states=(WAITING,)), "a retry is not retried"
    assert summarize_trial(second).reason == f"trial failed: WorkerError: {crash}"


def test_a_running_trial_carries_the_reason_its_failure_has_if_its_tuner_is_killed(config):
    cfg = config()
    seen: list[str] = []

    def measure_and_look(the_plan, model, settings, progress=None):
        seen.append(study.trials[-1].user_attrs["fail_reason"])
        return FakeMachine()(the_plan, model, settings)

    study = optuna.create_study(directions=["maximize", "minimize"])
    enqueue(study, cfg, Params(workers=2))
    one_trial(study, make_objective(cfg, study, lambda _m: None, "host:key", measure_and_look))
    assert seen == [killed_reason(os.getpid(), socket.gethostname())]
    assert "killed mid-trial" in seen[0]


def test_orphaned_trials_of_this_host_are_failed_and_queued_again_once():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for host in ("here:cpus", "elsewhere:cpus"):  # two tuners killed mid-trial, one of another host
        trial = study.ask()
        for key, value in {"host": host, "tuner_pid": -1, "label": f"{host} config",
                           "fail_reason": killed_reason(-1, host)}.items():
            trial.set_user_attr(key, value)
    assert fail_orphaned_trials(study, "here:cpus") == [0]
    orphan, other, retry = study.trials
    assert orphan.state == FAIL and "killed mid-trial" in summarize_trial(orphan).reason
    assert other.state == optuna.trial.TrialState.RUNNING, "another host's trial is left to its heartbeat"
    assert retry.state == WAITING and retry.system_attrs["failed_trial"] == 0
    assert retry.user_attrs["label"] == "here:cpus config"
    assert fail_orphaned_trials(study, "here:cpus") == []


def test_an_interrupted_study_resumes_without_running_a_baseline_twice(config):
    cfg = config()
    second_baseline = baselines(cfg.topology)[1][1].label()
    interrupted = FakeMachine(raises={second_baseline: KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        run(cfg, interrupted)
    study = optuna.load_study(study_name="logic", storage=cfg.storage)
    (cut,) = study.get_trials(states=(FAIL,))
    assert cut.user_attrs["fail_reason"] == "KeyboardInterrupt" and cut.user_attrs["label"] == second_baseline
    with study_module.StudyMutex(cfg.storage, cfg.study_name):
        enqueue_baselines(study, cfg.topology, cfg.space)
        enqueue_baselines(study, cfg.topology, cfg.space)  # idempotent: queued once
    queued = [t.user_attrs.get("baseline") for t in study.get_trials(states=(WAITING,))]
    assert sorted(queued) == sorted(name for name, _ in baselines(cfg.topology)[1:])
    resumed = FakeMachine()
    study, _ = run(cfg, resumed)
    assert sorted(interrupted.measured + resumed.measured) == sorted([*all_labels(cfg), second_baseline])
    assert second_baseline in resumed.measured and len(resumed.measured) == len(set(resumed.measured))
    ran = [t.user_attrs["baseline"] for t in measured_trials(study) if "baseline" in t.user_attrs]
    assert sorted(ran) == sorted(name for name, _ in baselines(cfg.topology))


def test_a_study_stops_at_n_trials_measured_configs(config):
    cfg = config(n_trials=2)
    machine = FakeMachine(p99_ms={baselines(cfg.topology)[0][1].label(): 80.0})  # infeasible still counts
    study, shown = run_in_memory(cfg, machine)
    assert len(machine.measured) == len(measured_trials(study)) == len(shown) == 2
    assert not study.user_attrs.get("space_exhausted")
    run_in_memory(config(n_trials=3), machine, study)  # the same command with a larger budget goes on
    assert len(machine.measured) == len(set(machine.measured)) == 3


def test_a_study_stops_when_the_space_is_exhausted_and_says_so(config):
    cfg = config(n_trials=None)
    machine = FakeMachine()
    study, shown = run(cfg, machine)
    assert sorted(machine.measured) == sorted(all_labels(cfg))
    assert [info.label for info in shown] == machine.measured
    assert study.user_attrs["space_exhausted"] is True


def test_consecutive_failures_stop_the_study_with_the_last_reason(config):
    cfg = config()
    crash = WorkerError("worker 0 hung or stopped")
    machine = FakeMachine(raises={label: crash for label in all_labels(cfg)})
    with pytest.raises(PlacetuneError, match=r"3 trials in a row failed \(last: WorkerError: worker 0 hung"):
        run_in_memory(cfg, machine)
    assert len(machine.measured) == 3


def test_a_timeout_or_a_stop_flag_ends_the_study_before_the_next_trial(config):
    machine = FakeMachine()
    run_in_memory(config(timeout_s=0.0), machine)
    assert machine.measured == []
    calls = []
    run_in_memory(config(), machine, stop_flag=lambda: calls.append(1) or len(calls) > 2)
    assert len(machine.measured) == 2


def test_with_nothing_left_but_another_hosts_trial_the_study_waits_for_it(config, monkeypatch):
    monkeypatch.setattr(study_module, "OTHERS_POLL_S", 0.0)
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.ask().set_user_attr("tuner_pid", -1)  # another host's tuner, still measuring

    class NothingLeft:
        def propose(self, trials):
            return None

    said: list[str] = []
    run_trials(study, config(), NothingLeft(), None, lambda t, info: None, said.append,
               stop_flag=lambda: len(said) >= 2)
    assert said == ["nothing new to measure; waiting for the other hosts' trials"] * 2
    assert "space_exhausted" not in study.user_attrs
    study.tell(0, state=FAIL)  # the other host's trial ended
    run_trials(study, config(), NothingLeft(), None, lambda t, info: None, said.append)
    assert study.user_attrs["space_exhausted"] is True and len(said) == 2


def test_baseline_results_give_each_baseline_its_result_or_why_it_failed(config):
    cfg = config()
    found = baselines(cfg.topology)
    (working, working_params), (failing, failing_params) = found[0], found[-1]  # one per core, the ORT default
    crash = WorkerError("worker 0 ran out of memory")
    study, _ = run_in_memory(cfg, FakeMachine(raises={failing_params.label(): crash}))
    rows = baseline_results(study)
    assert rows[working].feasible is True and rows[working].result.params == working_params
    assert rows[failing].failed and not rows[failing].feasible and rows[failing].throughput == 0.0
    assert rows[failing].reason == f"trial failed: WorkerError: {crash}"
    assert best_trial(study).user_attrs["label"] == "w2xc1-intra1"  # the most workers: the fake's best


def _stored(topology: Topology, feasible: bool, throughput: float, p99_ms: float) -> dict:
    """A stored result (today's format) with these figures, from the fake machine's measurement."""
    result = FakeMachine()(plan(topology, Params()), MODEL, MeasureSettings(p99_bound_s=BOUND_MS / 1000))
    return dataclasses.replace(result, feasible=feasible, throughput=throughput, p99_ms=p99_ms).to_dict()


def test_the_pareto_front_holds_the_feasible_configs_nothing_beats_on_both_objectives(two_cores):
    study = optuna.create_study(directions=["maximize", "minimize"])
    points = [(100.0, 10.0, True), (90.0, 5.0, True), (80.0, 8.0, True), (200.0, 1.0, False), (100.0, 12.0, True)]
    for i, (throughput, p99, feasible) in enumerate(points):
        study.add_trial(optuna.create_trial(
            values=[throughput, p99], constraints={CONSTRAINT: 0.0 if feasible else INFEASIBLE_P99},
            user_attrs={"label": f"c{i}", "result": _stored(two_cores, feasible, throughput, p99)}))
    assert [t.user_attrs["label"] for t in pareto_front(study)] == ["c0", "c1"]
    assert math.isclose(best_trial(study).values[0], 100.0) and best_trial(study).number == 0


def test_a_host_lock_held_elsewhere_is_refused_after_its_wait_and_taken_once_free(two_cores):
    from tuner.search.locks import HostLock

    said: list[str] = []
    with HostLock(two_cores) as holder:
        with (pytest.raises(PlacetuneError, match=rf"another placetune \(pid {os.getpid()}"),
              HostLock(two_cores, wait_s=0.0, on_wait=said.append)):
            pass
        assert holder.path.read_text() == f"{os.getpid()}\n"
    assert said == [] or "waiting for it" in said[0]
    with HostLock(two_cores, wait_s=0.0):
        pass


@dataclass
class ReplayingMachine(FakeMachine):
    """The fake machine whose figure is a replay (``tuner.bench.replay.estimate``) of one worker's
    service times (5 ms, and 3% of requests stalled by an exponential 20 ms), in the study's tail pool."""

    def __call__(self, the_plan: Plan, model: ModelInfo, settings: MeasureSettings, progress=None) -> TrialResult:
        from tuner.bench import replay

        result = super().__call__(the_plan, model, settings, progress)
        rng = np.random.default_rng(settings.seed)
        sample = 0.005 + np.where(rng.random(2000) < 0.03, rng.exponential(0.02, 2000), 0.0)
        key = f"m{len(self.measured)}"
        answer = replay.estimate([sample], BOUND_MS / 1000, 0.99, seed=1, replicates=2, pool=settings.tails, key=key)
        return dataclasses.replace(result, throughput=answer.rate, throughput_ci=(answer.low, answer.high),
                                   replay_id=key)


def test_the_first_replays_are_done_again_at_the_studys_end_with_its_whole_tail_pool(config):
    cfg = config(n_trials=3)
    study, _ = run(cfg, ReplayingMachine())
    measured = sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
                      key=lambda t: t.number)
    first, last = measured[0], measured[-1]
    figures = refigured(study)
    # the first borrowed from no one's stalls; the last from all the others', as it would now
    assert first.number in figures and last.number not in figures
    figure = figures[first.number]
    assert figure["was"] == first.user_attrs["result"]["throughput"]
    again = cfg.settings.tails.again(first.user_attrs["result"]["replay_id"])
    assert math.isclose(figure["throughput"], again.rate) and figure["throughput_ci"] == [again.low, again.high]
    # every view reads the end-of-study figure; the trial keeps the one of its time
    shown = next(t for t in measured_trials(study) if t.number == first.number)
    assert math.isclose(result_of(shown).throughput, again.rate) and math.isclose(shown.values[0], again.rate)
    assert "replayed again at the study's end" in result_of(shown).notes[-1]
    assert summarize_trial(shown).throughput == result_of(shown).throughput
    if "baseline" in first.user_attrs:
        assert math.isclose(baseline_results(study)[first.user_attrs["baseline"]].throughput, again.rate)
    assert first.values[0] == figure["was"]


def test_mlflow_shows_a_trials_end_of_study_figure_as_its_latest_throughput(tmp_path, two_cores):
    from mlflow.tracking import MlflowClient

    from tuner.results.tracking import Tracker
    from tuner.search.storage import ensure_study_uuid

    study = optuna.create_study(directions=["maximize", "minimize"], storage=f"sqlite:///{tmp_path}/s.db")
    ensure_study_uuid(study)
    study.add_trial(optuna.create_trial(values=[100.0, 10.0], constraints={CONSTRAINT: 0.0},
                                        user_attrs={"label": "c0", "result": _stored(two_cores, True, 100.0, 10.0)}))
    study.set_user_attr("refigured:0", {"throughput": 90.0, "throughput_ci": [80.0, 99.0], "was": 100.0,
                                        "was_ci": [85.0, 120.0], "stalls": 1234})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert Tracker(uri).sync(study) == 1
    client = MlflowClient(uri)
    child = next(r for r in client.search_runs([client.get_experiment_by_name("placetune").experiment_id])
                 if "mlflow.parentRunId" in r.data.tags)
    assert child.data.metrics["throughput"] == 90.0 and child.data.tags["refigured"] == "true"
    assert sorted(m.value for m in client.get_metric_history(child.info.run_id, "throughput")) == [90.0, 100.0]
    assert best_trial(study).values[0] == 90.0
