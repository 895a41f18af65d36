"""The final race over a seeded fake machine (no processes): interleaving, stopping, summary."""

from __future__ import annotations

import numpy as np
import pytest

from tuner.machine.placement import Params
from tuner.search.race import Entrant, race

BEST = Entrant("w2xc1-intra1", Params(workers=2))
DEFAULT = Entrant("w1xc2-intra2", Params(workers=1, cores_per_worker=2, intra_op_threads=2), "ORT default")
HEURISTIC = Entrant("w1xc2-intra1", Params(workers=1, cores_per_worker=2), "Intel heuristic")


def fake_machine(true_rates: dict[str, float], seed: int = 0, noise: float = 0.15):
    """Each round's machine state scales every entrant alike (a drifting neighbour), plus own noise."""
    rng = np.random.default_rng(seed)
    order: list[str] = []
    state = {"factor": 1.0, "left": 0}

    def measure(e: Entrant) -> float:
        if state["left"] == 0:
            state["factor"], state["left"] = float(rng.uniform(0.5, 1.0)), len(true_rates)
        state["left"] -= 1
        order.append(e.label)
        return true_rates[e.label] * state["factor"] * float(rng.lognormal(0, noise / 3))
    return measure, order


def test_a_real_advantage_is_reported_with_intervals_and_rounds_are_interleaved():
    measure, order = fake_machine({BEST.label: 300.0, DEFAULT.label: 100.0, HEURISTIC.label: 200.0})
    result = race([BEST, DEFAULT, HEURISTIC], measure, min_rounds=3, max_rounds=8)
    assert result.winner == BEST.label and result.recommended == BEST.label and result.significant
    assert order[:3] == [BEST.label, DEFAULT.label, HEURISTIC.label]
    assert order[3:6] == [DEFAULT.label, HEURISTIC.label, BEST.label]  # the order rotates
    first, second = result.comparisons
    assert first["baseline"] == "Intel heuristic" and first["ci"][0] < 1.5 < first["ci"][1]
    assert second["ci"][0] < 3.0 < second["ci"][1]
    assert result.summary.startswith("w2xc1-intra1: 1.") and "x Intel heuristic (95% CI " in result.summary
    assert "x ORT default (" in result.summary
    assert result.to_dict()["rounds"] == len(result.throughputs[BEST.label]) >= 3


def test_no_significant_difference_recommends_the_simpler_config():
    measure, _ = fake_machine({BEST.label: 100.0, DEFAULT.label: 100.0}, seed=4)
    result = race([BEST, DEFAULT], measure, min_rounds=3, max_rounds=5)
    assert len(result.throughputs[BEST.label]) == 5  # never settled: ran to the round limit
    assert not result.significant and result.recommended == result.winner == DEFAULT.label
    assert result.searched["outcome"] == "no difference" and result.searched["label"] == BEST.label
    assert "x ORT default (95% CI " in result.summary and "no significant difference" in result.summary
    assert "recommending the simpler config, w1xc2-intra2;" in result.summary


def test_a_baseline_faster_than_every_searched_config_wins_the_race_and_says_so():
    measure, _ = fake_machine({BEST.label: 100.0, DEFAULT.label: 150.0, HEURISTIC.label: 120.0})
    result = race([BEST, DEFAULT, HEURISTIC], measure, min_rounds=3, max_rounds=8)
    assert result.winner == result.recommended == DEFAULT.label and result.significant
    assert result.searched["outcome"] == "slower" and result.searched["ci"][1] < 1.0
    assert "ORT default is faster than every searched config, w1xc2-intra2" in result.summary
    assert "no significant difference" not in result.summary
    (other,) = result.comparisons  # the winner against the other baseline, never against itself
    assert other["baseline"] == "Intel heuristic" and other["ratio"] > 1.0
    assert result.to_dict()["searched"]["label"] == BEST.label


class FakeClock:
    """A clock that each measurement moves on by ``step_s`` seconds (no real time passes)."""

    def __init__(self, step_s: float):
        self.now, self.step_s = 0.0, step_s

    def __call__(self) -> float:
        return self.now

    def measuring(self, measure):
        def timed(e: Entrant) -> float:
            self.now += self.step_s
            return measure(e)
        return timed


def test_a_time_limit_starts_no_measurement_that_would_end_after_it_and_drops_a_cut_round():
    measure, _ = fake_machine({BEST.label: 100.0, DEFAULT.label: 100.0}, seed=4)  # never settles
    clock = FakeClock(step_s=10.0)  # a measurement: 10 s, a round of two entrants: 20 s
    result = race([BEST, DEFAULT], clock.measuring(measure), min_rounds=3, max_rounds=6, time_limit_s=75.0,
                  clock=clock)
    # round 4's first measurement ends at 70 s; its second would end at 80 s > 75 s: round 4 is dropped
    assert len(result.throughputs[BEST.label]) == len(result.throughputs[DEFAULT.label]) == 3
    assert result.stopped == "time_limit" and result.to_dict()["stopped"] == "time_limit"
    assert clock.now <= 75.0  # the race ended within its limit
    tight = FakeClock(step_s=10.0)
    result = race([BEST, DEFAULT], tight.measuring(measure), min_rounds=3, max_rounds=6, time_limit_s=1.0,
                  clock=tight)
    assert len(result.throughputs[BEST.label]) == 1 and result.stopped == "time_limit"  # one round always
    assert result.winner and result.summary

def test_a_race_says_why_it_stopped():
    measure, _ = fake_machine({BEST.label: 300.0, DEFAULT.label: 100.0, HEURISTIC.label: 200.0})
    assert race([BEST, DEFAULT, HEURISTIC], measure, min_rounds=3, max_rounds=8).stopped == "settled"
    measure, _ = fake_machine({BEST.label: 100.0, DEFAULT.label: 100.0}, seed=4)
    assert race([BEST, DEFAULT], measure, min_rounds=3, max_rounds=5).stopped == "max_rounds"


def test_a_time_limit_too_short_for_every_entrant_races_the_deciding_pair_for_an_interval():
    """Six entrants of 10 s each and 120 s: every entrant gets two rounds (no interval). After the
    first round the race keeps the best searched config and the best baseline, then what still
    fits three rounds (here the next baseline), and those get three rounds and intervals."""
    second = Entrant("w1xc2-intra1-nospin", Params(workers=3), rate=250.0)
    third = Entrant("w2xc1-intra1-nospin", Params(workers=4), rate=240.0)
    best = Entrant(BEST.label, BEST.params, rate=300.0)
    default = Entrant(DEFAULT.label, DEFAULT.params, "ORT default", rate=100.0)
    heuristic = Entrant(HEURISTIC.label, HEURISTIC.params, "Intel heuristic", rate=200.0)
    one_per = Entrant("w2xc1-intra2", Params(workers=2, intra_op_threads=2), "one per core", rate=150.0)
    entrants = [best, second, third, default, heuristic, one_per]
    measure, _ = fake_machine({best.label: 300.0, second.label: 250.0, third.label: 240.0,
                               default.label: 100.0, heuristic.label: 200.0, one_per.label: 150.0}, seed=2)
    said: list[str] = []
    clock = FakeClock(step_s=10.0)
    result = race(entrants, clock.measuring(measure), min_rounds=3, max_rounds=4, time_limit_s=120.0, clock=clock,
                  say=said.append)
    assert clock.now <= 120.0
    assert set(result.dropped) == {second.label, third.label, default.label}
    assert any("3 of 6 entrants go on" in line for line in said)
    assert all(len(result.throughputs[label]) == 1 for label in result.dropped)
    assert len(result.throughputs[best.label]) == len(result.throughputs[heuristic.label]) == 3
    assert result.winner == best.label and result.searched["baseline_label"] == heuristic.label
    assert result.searched["ci"][0] > 0 and result.searched["ci"][1] < float("inf")
    by = {c["label"]: c for c in result.comparisons}
    assert by[one_per.label]["ci"][1] < float("inf")  # the next baseline: raced three rounds
    assert by[default.label]["ci"] == [0.0, float("inf")]  # raced one: no interval, still listed
    assert result.to_dict()["rounds"] == 3 and result.to_dict()["dropped"] == result.dropped
    unlimited = race(entrants, fake_machine({e.label: 100.0 for e in entrants})[0], min_rounds=3, max_rounds=3)
    assert unlimited.dropped == []  # without a limit every entrant races


def test_a_round_from_disturbed_windows_alone_is_shown_but_paired_in_no_interval():
    measure, _ = fake_machine({BEST.label: 300.0, DEFAULT.label: 100.0, HEURISTIC.label: 200.0}, seed=2)
    rounds = {"n": 0}

    def with_flags(e: Entrant):
        rounds["n"] += 1
        value = measure(e)
        if e is HEURISTIC:  # a neighbour on its CPUs in every round: its figure far under the truth
            return value / 3, False
        if e is DEFAULT and rounds["n"] <= 3:  # disturbed in the first round only
            return value / 3, False
        return value, True

    result = race([BEST, DEFAULT, HEURISTIC], with_flags, min_rounds=3, max_rounds=5)
    assert result.calm[HEURISTIC.label] == [False] * len(result.throughputs[HEURISTIC.label])
    assert result.calm[DEFAULT.label][0] is False and all(result.calm[DEFAULT.label][1:])
    by_label = {c["label"]: c for c in result.comparisons}
    assert by_label[HEURISTIC.label]["ci"] == [0.0, float("inf")]  # no calm round to pair: unknown
    assert not by_label[HEURISTIC.label]["significant"]
    low, high = by_label[DEFAULT.label]["ci"]
    assert low < 3.0 < high  # the calm rounds alone: the disturbed first round does not pull it off
    assert result.to_dict()["calm"] == result.calm


def test_the_race_table_marks_a_round_from_disturbed_windows_alone():
    from rich.console import Console

    from tuner.cli.render_study import race_table

    result = race([BEST, DEFAULT], lambda e: (100.0, e is BEST), min_rounds=2, max_rounds=2)
    console = Console(width=120, record=True)
    console.print(race_table(result))
    text = console.export_text()
    assert "100*" in text and "left out of the intervals" in text


def test_a_race_interval_is_never_narrower_than_the_systematic_floor():
    import math

    from tuner.search.race import SYSTEMATIC, paired_ratio

    rounds = {"a": [102.0, 204.0, 153.0], "b": [100.0, 200.0, 150.0]}  # the same ratio in every round
    ratio, low, high = paired_ratio(rounds, "a", "b")
    assert ratio == pytest.approx(1.02)
    assert low == pytest.approx(1.02 * math.exp(-SYSTEMATIC)) and high == pytest.approx(1.02 * math.exp(SYSTEMATIC))
    assert low < 1.0  # a 2% advantage no round contradicts is not claimed
