"""The replay of calm service times (tuner.bench.replay): its queue against closed forms, its
pooling of workers' samples, and its figure on the simulated fleet (simulated time only)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from experiments.sim.calibration import SIM_MODEL
from experiments.sim.fleet import SimFleet
from experiments.sim.machine import SimMachine
from experiments.sim.machines import vm16
from experiments.sim.presets import QUIET, VM
from experiments.sim.truth import true_throughput
from tuner.bench import replay
from tuner.bench.measure import MeasureSettings, measure
from tuner.machine.placement import Params, plan


def test_one_worker_replay_matches_the_mm1_tail():
    """Exponential service (mean 1 ms), Poisson arrivals: P(latency > B) = exp(-(mu - lambda) B),
    so the rate at a 1% share over 10 ms is mu - ln(100) / B = 539.5 req/s."""
    rng = np.random.default_rng(3)
    sample = rng.exponential(0.001, 20_000)
    answer = replay.estimate([sample], 0.010, 0.99, seed=1)
    expected = 1 / sample.mean() - math.log(100) / 0.010
    assert answer.rate == pytest.approx(expected, rel=0.05)
    assert answer.low <= answer.rate <= answer.high


def test_the_shared_queue_of_one_worker_is_lindleys_recursion():
    rng = np.random.default_rng(4)
    gaps, service = rng.exponential(1.0, 5000), rng.exponential(0.001, 5000)
    for rate in (300.0, 700.0, 950.0):
        assert replay._share_one(gaps, service, rate, 0.01) == pytest.approx(
            replay._share_many(gaps, [service.tolist()], rate, 0.01), abs=1e-12)


def test_more_workers_hold_more_and_constant_service_never_waits_under_capacity():
    service = np.full(4000, 0.004)  # 4 ms, no spread
    one = replay.estimate([service], 0.010, 0.99, replicates=1).rate
    four = replay.estimate([service] * 4, 0.010, 0.99, replicates=1).rate
    assert 3.2 * one < four <= 4 * 250 * 1.05


def test_a_worker_short_of_calm_samples_borrows_its_kinds_and_a_kind_with_none_is_refused():
    a, b = np.ones(replay.MIN_CALM_REQUESTS), np.ones(10)
    samples = replay.worker_samples({0: [a], 1: [b]}, kinds=[4, 4])
    assert samples is not None and samples[0].size == a.size and samples[1].size == a.size + b.size
    assert replay.worker_samples({0: [a]}, kinds=[4, 1]) is None  # no one-core worker was ever calm


def test_the_bootstrap_draws_whole_windows_so_a_replicate_may_miss_the_slow_one():
    """A measurement of two 2-s windows, one while the VM ran fast (2 ms per request) and one
    while it ran slow (3 ms): a replicate's share of slow requests is 0, a half or all, not
    always the sample's half (what blocks of 50 from the joined sample gave)."""
    fast, slow = np.full(500, 0.002), np.full(500, 0.003)
    sample = np.concatenate([fast, slow])
    rng = np.random.default_rng(5)
    by_windows = {round(float(np.mean(replay._draw(rng, sample, 1000, True, windows=[fast, slow]) > 0.0025)), 2)
                  for _ in range(60)}
    by_blocks = {round(float(np.mean(replay._draw(rng, sample, 1000, True) > 0.0025)), 1) for _ in range(60)}
    assert by_windows == {0.0, 0.5, 1.0}
    assert 0.0 not in by_blocks and 1.0 not in by_blocks
    many = [np.full(replay.MIN_CALM_REQUESTS // 2, 0.002), np.full(replay.MIN_CALM_REQUESTS // 2, 0.003)]
    chosen = replay.worker_windows({0: many}, kinds=[1])
    assert chosen is not None and [p.size for p in chosen[0]] == [p.size for p in many]


def test_a_slow_spell_leaves_the_sample_and_a_lone_stall_stays():
    rng = np.random.default_rng(9)
    calm_part = 0.002 * np.exp(rng.normal(0.0, 0.1, 300))
    stalled = calm_part.copy()
    stalled[[50, 120, 121]] += 0.020  # the VM's hiccups: one request, and two in a row
    spell = stalled.copy()
    spell[-12:] *= 3.0  # a neighbour came back for the window's last dozen requests
    out = replay.without_slow_spells({0: [spell], 1: [calm_part]}, kinds=[4, 4])
    assert out[0][0].size == 300 - 12 and np.array_equal(out[0][0], stalled[:-12])
    assert np.array_equal(out[1][0], calm_part)


def test_the_tail_takes_the_pools_mean_excess_only_where_the_own_agrees_with_it():
    rng = np.random.default_rng(5)
    own = rng.exponential(0.020, 15)
    agreeing = (0.020 * 1000, 1000)  # 1,000 excesses of mean 20 ms
    expected = (own.sum() + agreeing[0]) / (own.size + agreeing[1])
    assert replay.tail_mean(own, agreeing) == pytest.approx(expected)
    assert replay.tail_mean(own, (0.2 * 1000, 1000)) == pytest.approx(own.mean())  # a pool 10x longer: own
    assert replay.tail_mean(own, (0.020 * 10, 10)) == pytest.approx(own.mean())  # too few pooled


def test_a_measurements_excesses_join_the_pool_once_and_count_for_the_others():
    rng = np.random.default_rng(6)
    pool = replay.TailPool()
    sample = 0.002 + rng.exponential(0.0005, 3000) + (rng.random(3000) < 0.02) * rng.exponential(0.02, 3000)
    replay.estimate([sample], 0.05, 0.99, seed=1, replicates=1, pool=pool, key="a")
    replay.estimate([sample, sample], 0.05, 0.99, seed=1, replicates=1, pool=pool, key="a")  # the same measurement
    count = replay.excesses(sample).size
    assert pool.others("b") == (pytest.approx(replay.excesses(sample).sum()), count)
    assert pool.others("a") == (0.0, 0)
    settings = MeasureSettings(p99_bound_s=0.05)
    assert dataclasses.replace(settings, seed=3).tails is settings.tails  # a study's measurements share one
    assert MeasureSettings(p99_bound_s=0.05).tails is not settings.tails


@pytest.mark.parametrize("noise", [QUIET, VM], ids=["quiet", "vm"])
def test_a_measurement_with_replay_reports_near_the_truth_for_one_worker_per_core(noise):
    """16 one-core workers: on a quiet machine every worker is calm; on the vm preset the
    neighbour takes some cores, and the workers on the others still are. The replayed figure
    lands within 10% of the truth in both, where the windows' own estimate (vm) sits far under."""
    topology, params = vm16(), Params(workers=16)
    truth = true_throughput(params, topology, noise, 0.05)
    the_plan = plan(topology, params)
    ratios = []
    for seed in range(3):
        machine = SimMachine(topology, noise, seed)
        result = measure(the_plan, SIM_MODEL,
                         MeasureSettings(p99_bound_s=0.05, window_s=2.0, seed=seed, replay=True),
                         fleet_factory=lambda p, _m, s, machine=machine: SimFleet(machine, p, s.hang_grace_s))
        assert any("replay" in n for n in result.notes)
        assert result.throughput_ci[0] <= result.throughput <= result.throughput_ci[1]
        ratios.append(result.throughput / truth)
    assert 0.9 <= float(np.median(ratios)) <= 1.1, ratios


def test_the_interval_stretches_the_replicates_spread_to_95_percent_and_keeps_their_range():
    low, high = replay._interval(100.0, [90.0, 95.0, 105.0, 110.0])
    spread = float(np.std(np.log([90.0, 95.0, 105.0, 110.0]), ddof=1))
    assert low == pytest.approx(100.0 * math.exp(-3.18 * spread))
    assert high == pytest.approx(100.0 * math.exp(3.18 * spread))
    assert low < 90.0 and high > 110.0
    assert replay._interval(100.0, [100.0]) == (100.0, 100.0)  # one replicate: its range only
    assert replay._interval(0.0, [0.0, 5.0]) == (0.0, 5.0)


def test_a_top_up_keeps_its_calm_chunks_when_a_neighbour_comes_back_midway():
    """One worker on all 16 cores, a neighbour on every core until t=10 s and again over
    [13, 16): the top-up waits for the calm, runs 2-s closed-loop chunks, waits again after the
    chunk the neighbour disturbed, and replays once the calm chunks hold enough service times
    (one 8-s window would have been disturbed as a whole and given nothing)."""
    from tuner.bench import measure as m
    from tuner.bench.loadgen import run_offline_window
    from tuner.search.study import baselines

    topology = vm16()
    the_plan = plan(topology, dict(baselines(topology))["intel_latency"])
    assert [len(w.cpus) for w in the_plan.workers] == [16]
    machine = SimMachine(topology, VM, 0)
    n = len(machine.cpu_ids)
    machine.episodes = replace_episodes(machine, [(0.0, 10.0), (13.0, 16.0)], n)
    settings = MeasureSettings(p99_bound_s=0.05, window_s=2.0, seed=0, replay=True, replay_wait_s=20.0)
    said: list[str] = []
    with SimFleet(machine, the_plan) as fleet:
        probe = run_offline_window(fleet, 0.5, 0.05)
        assert probe.calm_service[0] is None  # the neighbour was there
        run_log: list = []
        replayed = m._calm_top_up(fleet, the_plan, probe, run_log, settings, said.append, object(),
                                  [settings.replay_wait_s], calm=False)
    assert replayed is not None and replayed.rate > 0
    calm = [w.calm_service[0] is not None for w in run_log]
    assert calm[0] and not all(calm) and calm[-1], calm  # calm, disturbed (the neighbour's return), calm
    assert sum("closed loop after" in s for s in said) == 2, said


def replace_episodes(machine, spans, n):
    """Neighbour episodes on every CPU over ``spans``, and no others ever (none drawn later)."""
    from experiments.sim.machine import Episodes

    machine.drawn_to = machine.neighbour_free = 1e9
    return Episodes(np.array([a for a, _ in spans]), np.array([b for _, b in spans]),
                    np.full(len(spans), VM.neighbour_share), np.zeros(len(spans), bool), np.ones((len(spans), n), bool))


def test_a_figure_from_disturbed_windows_alone_is_marked_not_calm_for_the_race():
    """A neighbour on every core for the whole measurement: no calm service time to replay, and
    the figure (the windows' estimate) is marked so that a race pairs no interval on it."""
    from tuner.bench import measure as m
    from tuner.search.study import baselines

    topology = vm16()
    the_plan = plan(topology, dict(baselines(topology))["intel_latency"])
    machine = SimMachine(topology, VM, 0)
    machine.episodes = replace_episodes(machine, [(0.0, 1e6)], len(machine.cpu_ids))
    settings = MeasureSettings(p99_bound_s=0.05, window_s=2.0, seed=0, replay=True, replay_wait_s=2.0)
    result = m.measure(the_plan, SIM_MODEL, settings, fleet_factory=lambda p, _m, _s: SimFleet(machine, p))
    assert result.feasible and not m.calm_figure(result)
    assert any(n.startswith(m.TOO_FEW_CALM) for n in result.notes)


def _replayed_count(result) -> int:
    note = next(n for n in result.notes if n.startswith("figure from a replay of "))
    return int(note.split()[5])


def test_a_wide_replay_gets_more_calm_closed_loop_and_a_worker_per_core_gets_none():
    """On calm CPUs (the VM's stalls, no neighbour), one worker with all 16 cores replays its
    probe with an interval wider than ``NARROW_WIDTH``: it runs more closed loop and its figure
    rests on more calm service times, in a narrower interval, than without the top-up; sixteen
    one-core workers replay within it already and measure the same either way."""
    from tuner.bench import measure as m
    from tuner.search.study import baselines

    topology = vm16()
    configs = dict(baselines(topology))
    for name, narrowed in (("intel_latency", True), ("one_per_core", False)):
        the_plan = plan(topology, configs[name])
        out = {}
        for top_up in (0.0, 12.0):
            machine = SimMachine(topology, VM, 3)
            machine.episodes = replace_episodes(machine, [], len(machine.cpu_ids))
            settings = MeasureSettings(p99_bound_s=0.05, window_s=2.0, seed=3, replay=True, narrow_top_up_s=top_up)
            out[top_up] = m.measure(the_plan, SIM_MODEL, settings,
                                    fleet_factory=lambda p, _m, _s, machine=machine: SimFleet(machine, p))
        before, after = out[0.0], out[12.0]
        width = [math.log(r.throughput_ci[1] / r.throughput_ci[0]) for r in (before, after)]
        if narrowed:
            assert width[0] > m.NARROW_WIDTH
            assert _replayed_count(after) > _replayed_count(before) and width[1] < width[0], (name, width)
            assert len(after.windows) > len(before.windows)
        else:
            assert width[0] <= m.NARROW_WIDTH
            assert (after.throughput, len(after.windows)) == (before.throughput, len(before.windows))


def test_a_measurement_asked_for_a_longer_sample_runs_that_much_closed_loop():
    """``--sample 20s`` (``MeasureSettings.min_sample_s``): the replay's figure rests on at least
    about 20 s of closed loop, where by default a quiet machine's 1,500 service times take a few."""
    topology, params = vm16(), Params(workers=4, cores_per_worker=4, intra_op_threads=4)
    the_plan = plan(topology, params)

    def closed_s(settings):
        machine = SimMachine(topology, QUIET, 0)
        result = measure(the_plan, SIM_MODEL, settings,
                         fleet_factory=lambda p, _m, s: SimFleet(machine, p, s.hang_grace_s))
        assert any("replay" in n for n in result.notes)
        return sum(w.duration_s for w in result.windows if w.scenario == "offline")

    settings = MeasureSettings(p99_bound_s=0.05, window_s=2.0, seed=0, replay=True)
    assert closed_s(settings) < 10
    assert closed_s(dataclasses.replace(settings, min_sample_s=20.0)) >= 20 - 1e-6
