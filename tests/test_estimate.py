"""The rate estimator (tuner.bench.estimate): its bracket and interpolation on fake windows, its
search (steps, repeats, the Illinois rule, the incumbent's early stop), and its answer on the
simulated fleet against the simulator's truth, in simulated time (no wall clock anywhere)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.sim.calibration import SIM_MODEL
from experiments.sim.fleet import SimFleet
from experiments.sim.machine import SimMachine
from experiments.sim.machines import vm16
from experiments.sim.presets import QUIET
from experiments.sim.truth import true_throughput
from tuner.bench import estimate as est
from tuner.bench import stats
from tuner.bench.measure import MeasureSettings, measure
from tuner.machine.placement import Params, plan
from tuner.results.records import WindowResult

ROOT = 1000.0  # the synthetic config's answer: its over-bound share is 1% there


def share_at(rate: float) -> float:
    """A queue's tail: the over-bound share grows exponentially in the rate, 1% at ROOT."""
    return min(0.9, 0.01 * math.exp(12 * (rate / ROOT - 1)))


def window(rate: float, over: int, n: int = 2000, kept_up: bool = True, stopped_early: bool = False,
           inflation: float = 1.0) -> WindowResult:
    verdict = stats.verdict_from_counts(over, n) if kept_up else stats.FAIL
    return WindowResult("server", rate, rate * 0.99, n, n, 1, 2, 3, 4, 1, 1.0, kept_up, verdict == stats.PASS,
                        "" if verdict == stats.PASS else "x", (1.0,), 0.1, verdict=verdict, over_bound=over,
                        inflation=inflation, stopped_early=stopped_early)


def expected_window(rate: float, n: int = 2000) -> WindowResult:
    """The window a config with ``share_at`` gives at ``rate``: its expected over-bound count."""
    return window(rate, round(share_at(rate) * n), n)


def points(*windows: WindowResult) -> list[est.Point]:
    return [est.point_of(w) for w in windows]


def test_the_answer_is_interpolated_between_the_rates_that_bracket_it_in_log_share():
    answer = est.estimate(points(expected_window(800.0), expected_window(1200.0)), capacity=1500.0)
    assert answer.method == "bracket" and (answer.low, answer.high) == (800.0, 1200.0)
    # log share is linear in the rate here, and nearly so in log rate: the answer lands near ROOT
    assert answer.rate == pytest.approx(ROOT, rel=0.05)


def test_a_window_that_did_not_keep_up_or_was_cut_early_is_a_ceiling_whatever_its_count():
    for cut in (window(1300.0, 5, kept_up=False), window(1300.0, 5, stopped_early=True)):
        floor, ceiling = est.bracket(points(expected_window(700.0), cut))
        assert floor is not None and floor.rate == 700.0 and ceiling is not None and ceiling.rate == 1300.0
        assert not est.point_of(cut).usable  # its share is biased: it only bounds the answer


def test_a_ceiling_that_did_not_keep_up_with_few_slow_requests_puts_the_answer_in_the_middle():
    # a backlog building at 1000/s that had not yet reached the bound: the answer is under 1000/s,
    # and nothing says where (seen on a 2-core VM: every estimate sat at such a window's rate)
    answer = est.estimate(points(window(800.0, 0), window(1000.0, 0, kept_up=False)), capacity=1100.0)
    assert answer.method == "bracket" and (answer.low, answer.high) == (800.0, 1000.0)
    assert answer.rate == pytest.approx(math.sqrt(800.0 * 1000.0))


def test_a_rate_whose_pooled_windows_cannot_tell_their_side_is_measured_again():
    # 1% of 200 requests over: neither under nor over the target at 80%
    unsure = window(950.0, 2, n=200)
    first = points(expected_window(600.0), unsure)
    current = est.estimate(first, capacity=1500.0)
    assert est.next_rate(first, current, 1500.0) == 950.0
    again = first + points(unsure, unsure)  # MAX_REPEATS windows at that rate: the search moves on
    assert est.next_rate(again, est.estimate(again, 1500.0), 1500.0) != 950.0


def test_clustered_slow_requests_count_by_their_clusters_when_a_side_is_judged():
    alone = est.bracket(points(window(900.0, 0, n=600, inflation=1.0)))[0]
    clustered = est.bracket(points(window(900.0, 0, n=600, inflation=8.0)))[0]
    assert alone is not None and alone.rate == 900.0  # 600 independent requests, none over: under 1%
    assert clustered is None  # 75 clusters' worth of evidence proves nothing at 80%


def test_nothing_over_the_target_steps_up_past_the_probe_and_leaves_the_interval_open_above():
    low = points(window(400.0, 0))
    answer = est.estimate(low, capacity=500.0)
    assert answer.method == "lower" and answer.rate == 400.0 and answer.high == math.inf
    assert est.next_rate(low, answer, 500.0) == pytest.approx(400.0 * est.STEP_UP)
    top = points(window(est.MAX_OVER_CAPACITY * 500.0, 0))
    assert est.estimate(top, 500.0).method == "capacity" and est.next_rate(top, est.estimate(top, 500.0), 500.0) is None


def test_everything_over_the_target_extrapolates_below_the_lowest_rate_and_steps_down():
    high = points(window(2000.0, 1800, kept_up=False))
    answer = est.estimate(high, capacity=2500.0)
    assert answer.method == "upper" and 0 < answer.rate < 2000.0 and answer.high == 2000.0
    assert est.next_rate(high, answer, 2500.0) < 2000.0


def test_the_illinois_rule_halves_the_bracket_when_one_end_moved_twice():
    ws = points(expected_window(600.0), expected_window(1400.0), expected_window(700.0), expected_window(800.0))
    current = est.estimate(ws, 2000.0)
    assert current.method == "bracket" and (current.low, current.high) == (800.0, 1400.0)
    assert est.next_rate(ws, current, 2000.0) == pytest.approx(math.sqrt(800.0 * 1400.0))


def test_the_search_converges_on_the_answer_and_stops_once_its_bracket_is_narrow():
    tried: list[float] = []

    def run(rate: float) -> WindowResult:
        tried.append(rate)
        return expected_window(rate)

    out = est.estimate_rate(run, capacity=1300.0, max_windows=8, rel_tol=0.05)
    assert out.stopped == "precise" and len(tried) < 8
    assert out.estimate.rate == pytest.approx(ROOT, rel=0.05)
    assert out.estimate.low <= ROOT <= out.estimate.high


def test_a_config_that_fails_at_the_incumbents_rate_stops_after_that_one_window():
    tried: list[float] = []

    def run(rate: float) -> WindowResult:
        tried.append(rate)
        return window(rate, 900, kept_up=False)

    out = est.estimate_rate(run, capacity=1300.0, max_windows=6, incumbent=1200.0)
    assert tried == [1200.0] and out.stopped == "below incumbent"
    assert out.estimate.rate < 1200.0 and out.estimate.high == 1200.0


def test_a_race_measurement_starts_at_the_known_answer():
    tried: list[float] = []

    def run(rate: float) -> WindowResult:
        tried.append(rate)
        return expected_window(rate)

    est.estimate_rate(run, capacity=1300.0, max_windows=3, start_rate=900.0, incumbent=1200.0)
    assert tried[0] == 900.0  # not the incumbent's rate: a race compares, it does not stop early


def test_windows_already_run_count_and_the_first_new_one_goes_under_a_failed_prior():
    """A refuted replay's failed check (tuner.bench.measure) seeds the search: no window at the
    incumbent's rate or 0.8 of the capacity, the first one under the failed rate, the check kept."""
    tried: list[float] = []

    def run(rate: float) -> WindowResult:
        tried.append(rate)
        return expected_window(rate)

    failed = window(1200.0, 900, kept_up=False)
    out = est.estimate_rate(run, capacity=1300.0, max_windows=6, incumbent=1250.0, prior=[failed])
    assert tried and tried[0] < 1200.0 and out.stopped != "below incumbent"
    assert out.windows[0] is failed and len(out.windows) == len(tried) + 1
    assert out.estimate.rate == pytest.approx(ROOT, rel=0.15)


def test_a_prior_that_failed_at_the_floor_runs_no_window_over_it():
    """Nothing under the floor is measured: a failed prior there ends the search, where before the
    first window fell back to 0.8 of the capacity, over the failed rate."""
    tried: list[float] = []
    failed = window(est.MIN_RATE_SHARE * 1300.0, 900, kept_up=False)
    out = est.estimate_rate(lambda r: tried.append(r) or expected_window(r), capacity=1300.0, max_windows=6,
                            prior=[failed])
    assert tried == [] and out.stopped == "floor" and out.windows == [failed]


@pytest.mark.parametrize("params", [Params(workers=16), Params(workers=4, cores_per_worker=4, intra_op_threads=4)],
                         ids=["16x1", "4x4"])
def test_on_a_quiet_simulated_machine_the_estimates_center_on_the_true_throughput(params):
    """Eight measurements from different moments of a quiet simulated 16-core VM (hiccups, no
    neighbour, no steal): their median is within 10% of the truth, and most intervals hold it."""
    topology = vm16()
    truth = true_throughput(params, topology, QUIET, 0.05)
    the_plan = plan(topology, params)
    ratios, held = [], 0
    for seed in range(8):
        machine = SimMachine(topology, QUIET, seed)
        result = measure(the_plan, SIM_MODEL, MeasureSettings(p99_bound_s=0.05, window_s=2.0, seed=seed),
                         fleet_factory=lambda p, _m, s, machine=machine: SimFleet(machine, p, s.hang_grace_s))
        assert result.estimator == "estimate" and result.feasible
        ratios.append(result.throughput / truth)
        held += result.throughput_ci[0] <= truth * 1.01 and truth <= result.throughput_ci[1] * 1.01
    assert 0.9 <= float(np.median(ratios)) <= 1.1, ratios
    assert held >= 5, ratios
