"""The simulator behind the Fleet seam (experiments/sim): the real window code, rate search and race
run on simulated workers, in simulated time, with no process and no model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.sim.calibration import SIM_MODEL
from experiments.sim.fleet import STARTUP_S, TEARDOWN_S, SimFleet
from experiments.sim.machine import Episodes, SimMachine
from experiments.sim.machines import vm16
from experiments.sim.presets import QUIET, VM
from experiments.sim.truth import true_throughput
from tuner.bench import interference, stats
from tuner.bench.loadgen import run_server_window
from tuner.bench.measure import MeasureSettings, measure
from tuner.bench.ratesearch import search_rate
from tuner.machine.placement import Params, plan
from tuner.search.race import Entrant, race

BOUND_S = 0.05
TOPOLOGY = vm16()
ONE_PER_CORE = Params(workers=16)
FOUR_BY_FOUR = Params(workers=4, cores_per_worker=4, intra_op_threads=4)


def measured(params: Params, machine: SimMachine, seed: int = 0, window_s: float = 1.0):
    return measure(plan(TOPOLOGY, params), SIM_MODEL, MeasureSettings(p99_bound_s=BOUND_S, window_s=window_s,
                                                                      seed=seed),
                   fleet_factory=lambda p, _m, s: SimFleet(machine, p, s.hang_grace_s))


def test_the_rate_search_on_a_quiet_machine_converges_below_and_near_the_true_throughput():
    machine = SimMachine(TOPOLOGY, QUIET, seed=1)
    truth = true_throughput(ONE_PER_CORE, TOPOLOGY, QUIET, BOUND_S)
    rng = np.random.default_rng(0)
    with SimFleet(machine, plan(TOPOLOGY, ONE_PER_CORE)) as fleet:
        outcome = search_rate(lambda rate: run_server_window(fleet, rate, 1.0, 0, BOUND_S, 0.006, rng),
                              capacity=truth * 1.1, steps=6)
    assert outcome.verdict == stats.PASS
    assert 0.85 * truth <= outcome.best.offered_rate <= 1.02 * truth
    assert outcome.throughput_ci[0] <= outcome.best.achieved_rate <= outcome.throughput_ci[1]


def test_measure_runs_the_real_steps_in_simulated_time_and_records_the_simulated_machine():
    machine = SimMachine(TOPOLOGY, QUIET, seed=2)
    result = measured(ONE_PER_CORE, machine)
    assert result.feasible and result.verdict == stats.PASS
    assert result.windows[0].scenario == "offline" and all(w.scenario == "server" for w in result.windows[1:])
    assert result.machine.hostname == "simulated"
    assert result.duration_s == pytest.approx(machine.now - STARTUP_S - TEARDOWN_S, rel=0.05), "simulated seconds"
    assert result.throughput <= result.capacity * 1.02
    assert [p.planned_cpus for p in result.placement] == [(i,) for i in range(16)]


def test_a_window_far_over_capacity_stops_early_once_its_failure_is_proven():
    machine = SimMachine(TOPOLOGY, QUIET, seed=3)
    with SimFleet(machine, plan(TOPOLOGY, ONE_PER_CORE)) as fleet:
        w = run_server_window(fleet, 10_000.0, 1.0, 0, BOUND_S, 0.006, np.random.default_rng(0))
    assert w.verdict == stats.FAIL and "stopped early" in w.reason and w.completed < w.requests


def test_the_race_on_the_simulator_finds_the_truly_faster_config_significant():
    machine = SimMachine(TOPOLOGY, QUIET, seed=4)
    seeds = iter(range(100))
    assert true_throughput(ONE_PER_CORE, TOPOLOGY, QUIET, BOUND_S) > true_throughput(FOUR_BY_FOUR, TOPOLOGY, QUIET,
                                                                                     BOUND_S)
    result = race([Entrant("16x1", ONE_PER_CORE), Entrant("4x4", FOUR_BY_FOUR, baseline="intel_throughput")],
                  lambda e: measured(e.params, machine, next(seeds), window_s=0.5).throughput)
    assert result.winner == "16x1" and result.significant and result.searched["outcome"] == "faster"


def test_the_same_seed_gives_the_same_measurement_and_another_seed_another():
    def once(seed: int):
        machine = SimMachine(TOPOLOGY, VM, seed=seed)
        machine.advance(100.0)
        r = measured(ONE_PER_CORE, machine)
        return r.throughput, [(w.offered_rate, w.p99_ms, w.over_bound) for w in r.windows], machine.now

    assert once(7) == once(7)
    assert once(7) != once(8)


def test_proc_stat_counters_show_a_neighbour_as_foreign_load_and_steal_as_steal():
    machine = SimMachine(TOPOLOGY, QUIET, seed=5)
    cpus = np.zeros((2, 16), bool)
    cpus[0, :4] = True  # a neighbour on CPUs 0-3 for half their time, from 10 s to 20 s
    cpus[1, :] = True  # the hypervisor steals 30% of every CPU from 30 s to 40 s
    machine.episodes = Episodes(np.array([10.0, 30.0]), np.array([20.0, 40.0]), np.array([0.5, 0.3]),
                                np.array([False, True]), cpus)
    machine.advance(10.0)
    before = machine.snapshot()
    machine.advance(20.0)
    neighbour = interference.window_interference(before, machine.snapshot(), list(range(16)), 10.0, 0.0)
    machine.advance(30.0)
    before = machine.snapshot()
    machine.advance(40.0)
    steal = interference.window_interference(before, machine.snapshot(), list(range(16)), 10.0, 0.0)
    assert neighbour["foreign_cpu"] == pytest.approx(2.0, abs=0.02) and neighbour["disturbed"]
    assert steal["steal_pct"] == pytest.approx(30.0, abs=0.2) and steal["disturbed"]


def test_a_neighbour_slows_the_workers_on_its_cores_only():
    machine = SimMachine(TOPOLOGY, QUIET, seed=6)
    cpus = np.zeros((1, 16), bool)
    cpus[0, :4] = True
    machine.episodes = Episodes(np.array([0.0]), np.array([math.inf]), np.array([0.5]), np.array([False]), cpus)
    speeds = machine.worker_speeds([(0,), (8,), tuple(range(16))], [True, True, False], 0.0, 10.0)
    assert speeds.rows[0] == pytest.approx([0.5, 1.0, 1.0 - 0.5 * 4 / 16])


def test_a_disturbed_measurement_is_re_run_by_the_real_code_and_its_windows_say_so():
    machine = SimMachine(TOPOLOGY, QUIET, seed=7)
    cpus = np.ones((1, 16), bool)
    machine.episodes = Episodes(np.array([0.0]), np.array([math.inf]), np.array([0.5]), np.array([False]), cpus)
    result = measured(ONE_PER_CORE, machine)
    assert result.interference.disturbed_windows >= 3  # the two re-runs at the first rate, at least
    assert all(w.interference.foreign_cpu == pytest.approx(8.0, rel=0.05) for w in result.windows[1:])


def test_a_disturbed_window_waits_for_calm_cpus_before_its_re_run_when_allowed():
    machine = SimMachine(TOPOLOGY, QUIET, seed=8)
    cpus = np.ones((1, 16), bool)
    # a neighbour on every CPU for the first 12 simulated seconds, then nothing
    machine.episodes = Episodes(np.array([0.0]), np.array([12.0]), np.array([0.5]), np.array([False]), cpus)
    the_plan = plan(TOPOLOGY, ONE_PER_CORE)
    settings = MeasureSettings(p99_bound_s=BOUND_S, window_s=1.0, seed=0, calm_wait_s=30.0)
    result = measure(the_plan, SIM_MODEL, settings, fleet_factory=lambda p, _m, s: SimFleet(machine, p, s.hang_grace_s))
    served = [w for w in result.windows[1:]]
    assert served[0].interference.disturbed, "the first window ran inside the episode"
    assert not served[1].interference.disturbed, "its re-run waited for the episode's end"
    assert result.interference.disturbed_windows == 2  # the probe and the first window


def test_without_a_wait_budget_the_re_run_follows_at_once_inside_the_episode():
    machine = SimMachine(TOPOLOGY, QUIET, seed=8)
    cpus = np.ones((1, 16), bool)
    machine.episodes = Episodes(np.array([0.0]), np.array([12.0]), np.array([0.5]), np.array([False]), cpus)
    result = measured(ONE_PER_CORE, machine)
    assert result.windows[1].interference.disturbed and result.windows[2].interference.disturbed


def test_a_window_lead_settles_the_queue_and_is_left_out_of_the_window():
    machine = SimMachine(TOPOLOGY, QUIET, seed=9)
    rng = np.random.default_rng(0)
    with SimFleet(machine, plan(TOPOLOGY, ONE_PER_CORE)) as fleet:
        began = fleet.clock()
        plain = run_server_window(fleet, 1000.0, 1.0, 0, BOUND_S, 0.006, rng)
        middle = fleet.clock()
        led = run_server_window(fleet, 1000.0, 1.0, 0, BOUND_S, 0.006, rng, lead_s=0.5)
        after = fleet.clock()
    assert plain.requests == led.requests == 1000
    assert (after - middle) - (middle - began) == pytest.approx(0.5, abs=0.1), "the lead takes its time"


def test_a_window_stopped_inside_its_lead_keeps_the_requests_that_failed_it():
    machine = SimMachine(TOPOLOGY, QUIET, seed=10)
    rng = np.random.default_rng(0)
    with SimFleet(machine, plan(TOPOLOGY, ONE_PER_CORE)) as fleet:
        window = run_server_window(fleet, 20_000.0, 1.0, 0, BOUND_S, 0.006, rng, lead_s=1.0)
    assert window.verdict == stats.FAIL and window.stopped_early and window.over_bound > 0


def test_the_settling_lead_grows_with_the_load_and_is_the_longest_at_and_over_the_capacity():
    from tuner.bench.loadgen import settle_s

    leads = [settle_s(rate, 1000.0, 2.0) for rate in (100.0, 500.0, 800.0, 950.0, 1000.0, 1500.0)]
    assert leads == sorted(leads) and leads[0] < 0.01 and leads[-2] == leads[-1] == 2.0
    assert settle_s(0.0, 1000.0, 2.0) == 0.0 and settle_s(10.0, 0.0, 2.0) == 0.0


def test_one_workers_precise_truth_is_the_shared_fifo_carried_from_chunk_to_chunk():
    """The precise truth of one worker (``experiments.sim.truth``): Lindley's recursion with the
    wait carried from chunk to chunk counts the same late requests as one run over all the draws
    and as the simulator's own queue, which holds the bound at the root and not 10% over it."""
    from experiments.sim import truth
    from experiments.sim.model import ServiceModel, WorkerModel
    from experiments.sim.queue import Speeds, serve_server

    model, quiet, service = WorkerModel(0.0014, 1, 1.75, ()), VM.without_episodes(), ServiceModel()
    chunks = truth.one_worker_draws(model, quiet, service, 60_000, chunk=7_000)
    gaps, served = (np.concatenate(part) for part in zip(*chunks, strict=True))
    for rate in (100.0, 250.0, 400.0):
        assert truth.one_worker_over(chunks, rate, BOUND_S) == truth.one_worker_over([(gaps, served)], rate, BOUND_S)
    root = truth._one_worker_truth(model, quiet, BOUND_S, service, requests=60_000, chunk=7_000)
    for rate in (root, root * 1.1):
        arrivals = np.cumsum(gaps) / rate
        done = serve_server(arrivals, [served.tolist()], [[0.0] * served.size], [0], 0.0, Speeds([0.0], [[1.0]]))
        late = int(np.count_nonzero(done.completed - arrivals > BOUND_S))
        assert late == truth.one_worker_over(chunks, rate, BOUND_S)
        assert (late <= 0.01 * served.size) is (rate == root)
    assert truth.truth_requests(1, truth.PRECISE) == truth.ONE_WORKER_PRECISE_REQUESTS
    assert truth.truth_requests(1) == truth.MAX_TRUTH_REQUESTS
