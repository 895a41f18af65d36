"""The load generator's pure window logic (tuner.bench.loadgen), fed synthetic request times: no
process, no model. A window's latency, keep-up, verdict and reason follow from its arrays alone."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from tuner.bench import stats
from tuner.bench.interference import Snapshot
from tuner.bench.loadgen import (
    Segment,
    VerdictSettings,
    keep_up,
    latencies,
    percentiles_ms,
    poisson_schedule,
    summarise,
    window_requests,
    window_verdict,
)
from tuner.bench.protocol import Abort

RATE = 100.0  # req/s offered
SERVICE_S = 0.005
BOUND_S = 0.010
VS = VerdictSettings()
FLEET = SimpleNamespace(plan=SimpleNamespace(workers=[SimpleNamespace(cpus=(0,))]))  # where interference is read


def segment(scheduled: np.ndarray, latency_s: np.ndarray | float, abort: Abort = Abort.NONE,
            wall_s: float = 2.0, worker_cpu_s: float = 1.0) -> Segment:
    """A segment whose request i arrived at ``scheduled[i]`` and completed ``latency_s`` later (NaN:
    never), each having run for SERVICE_S."""
    completed = scheduled + latency_s
    nothing = Snapshot({}, 0, None, None)
    return Segment(scheduled, completed - SERVICE_S, completed, abort, wall_s, [worker_cpu_s], 0.01, nothing, nothing)


def arrivals(n: int, start: float = 1000.0, rate: float = RATE) -> np.ndarray:
    return start + np.arange(n) / rate


def test_latency_runs_from_scheduled_arrival_and_a_request_never_completed_is_infinitely_late():
    first = segment(arrivals(3), np.array([0.004, np.nan, 0.006]))
    second = segment(arrivals(2, start=2000.0), 0.5)
    assert latencies([first, second]) == pytest.approx([0.004, math.inf, 0.006, 0.5, 0.5])


def test_percentiles_of_nothing_are_infinite_and_unfinished_requests_raise_the_tail():
    assert percentiles_ms(np.array([])) == (math.inf,) * 4
    p50, _, p99, _ = percentiles_ms(np.array([0.001] * 95 + [math.inf] * 5))
    assert p50 == pytest.approx(1.0) and p99 == math.inf


def test_a_window_served_as_it_arrived_kept_up_at_the_offered_rate():
    kept, achieved = keep_up([segment(arrivals(200), SERVICE_S)], RATE, SERVICE_S)
    assert kept and achieved == pytest.approx(RATE, rel=0.01)


@pytest.mark.parametrize("why, seg", [
    ("a request never completed", segment(arrivals(200), np.r_[np.full(199, SERVICE_S), np.nan])),
    ("the backlog grew past its limit", segment(arrivals(200), SERVICE_S, abort=Abort.BACKLOG)),
])
def test_a_window_did_not_keep_up_when(why, seg):
    assert not keep_up([seg], RATE, SERVICE_S)[0], why


def test_completions_at_half_the_arrival_rate_did_not_keep_up_and_achieved_half():
    kept, achieved = keep_up([segment(arrivals(200), np.arange(200) / RATE)], RATE, SERVICE_S)  # i waits i gaps
    assert not kept and achieved == pytest.approx(RATE / 2, rel=0.01)


def test_the_gap_between_an_extension_and_its_window_does_not_count_against_keeping_up():
    segments = [segment(arrivals(200), SERVICE_S), segment(arrivals(200, start=5000.0), SERVICE_S)]
    kept, achieved = keep_up(segments, RATE, SERVICE_S)
    assert kept and achieved == pytest.approx(RATE, rel=0.01)


def test_a_settled_queue_whose_latency_is_long_against_the_window_kept_up():
    """Every request waits 0.5 s (a steady queue) in a 2 s window: the last completes 0.5 s after
    the last arrival, as the first half's requests did; the queue held."""
    kept, achieved = keep_up([segment(arrivals(200), 0.5)], RATE, SERVICE_S)
    assert kept


def test_one_stalled_request_at_the_end_does_not_fail_keeping_up():
    """The last request waited 60 ms (a stall: 3% of the 2-s window) where every other took 5 ms:
    the queue held, and the end of the window is not the last completion."""
    kept, achieved = keep_up([segment(arrivals(200), np.r_[np.full(199, SERVICE_S), 0.06])], RATE, SERVICE_S)
    assert kept and achieved == pytest.approx(RATE, rel=0.01)


def test_a_queue_that_grows_slowly_did_not_keep_up():
    """Latency grows by 5% of each gap (served at 1/1.05 of the arrival rate): the end drains far
    later than the first half's latency says."""
    kept, _ = keep_up([segment(arrivals(2000), 0.05 * np.arange(2000) / RATE)], RATE, SERVICE_S)
    assert not kept


def test_a_short_schedule_is_judged_against_the_rate_it_really_offered():
    """Poisson arrivals can bunch: achieved is compared with min(offered, what the schedule offered)."""
    sparse = segment(arrivals(50, rate=RATE / 2), SERVICE_S)
    assert keep_up([sparse], RATE, SERVICE_S)[0]


def verdict_of(segments: list[Segment], kept_up: bool = True, achieved: float = RATE,
               scenario: str = "server") -> tuple[stats.Verdict | None, str]:
    return window_verdict(segments, scenario, RATE, achieved, kept_up, BOUND_S, VS, VS.looks)


def test_enough_requests_all_under_the_bound_pass_with_no_reason():
    n = stats.samples_needed(0.0, VS.quantile, VS.confidence, VS.looks)
    verdict, reason = verdict_of([segment(arrivals(n), SERVICE_S)])
    assert verdict.verdict == stats.PASS and reason == ""
    assert verdict.ci_s[1] <= BOUND_S


def test_too_few_requests_under_the_bound_are_undecided_and_say_why():
    verdict, reason = verdict_of([segment(arrivals(100), SERVICE_S)])
    assert verdict.verdict == stats.UNDECIDED
    assert reason.startswith("P99 undecided after 100 requests") and "straddle the 10 ms bound" in reason


def test_requests_over_the_bound_fail_and_the_reason_counts_them():
    verdict, reason = verdict_of([segment(arrivals(500), 5 * BOUND_S)])
    assert verdict.verdict == stats.FAIL and verdict.over == 500
    assert reason.startswith("P99 over the 10 ms bound (500 of 500 requests over") and "stopped early" not in reason


def test_a_window_stopped_once_its_failure_was_proven_says_so_and_what_it_achieved():
    seg = segment(arrivals(40), 5 * BOUND_S, abort=Abort.OVER_BOUND)
    verdict, reason = verdict_of([seg], kept_up=False, achieved=42.0)
    assert verdict.verdict == stats.FAIL
    assert reason.endswith(", stopped early; achieved 42.0 of 100.0 req/s")


def test_not_keeping_up_is_the_reason_even_when_the_latencies_would_pass():
    n = stats.samples_needed(0.0, VS.quantile, VS.confidence, VS.looks)
    verdict, reason = verdict_of([segment(arrivals(n), SERVICE_S)], kept_up=False, achieved=80.0)
    assert verdict.verdict == stats.PASS and reason == "did not keep up (achieved 80.0 of 100.0 req/s)"
    _, reason = verdict_of([segment(arrivals(n), SERVICE_S, abort=Abort.BACKLOG)], kept_up=False)
    assert reason == "did not keep up (backlog grew past the limit)"


def test_without_a_bound_there_is_no_statistical_verdict():
    verdict, reason = window_verdict([segment(arrivals(50), SERVICE_S)], "server", RATE, RATE, True, None, VS,
                                     VS.looks)
    assert verdict is None and reason == ""


def test_a_summary_of_a_passing_window_with_an_extension():
    n = stats.samples_needed(0.0, VS.quantile, VS.confidence, VS.looks)
    segments = [segment(arrivals(n // 2), SERVICE_S), segment(arrivals(n - n // 2, start=9000.0), SERVICE_S)]
    w = summarise(segments, "server", RATE, BOUND_S, SERVICE_S, VS, FLEET)
    assert w.passed and w.verdict == stats.PASS and w.kept_up and w.reason == ""
    assert w.requests == w.completed == n and w.extensions == 1 and w.over_bound == 0
    assert w.p99_ms == pytest.approx(SERVICE_S * 1000) and w.mean_service_ms == pytest.approx(SERVICE_S * 1000)
    assert w.p99_ci_ms[1] <= BOUND_S * 1000 and w.confidence == VS.confidence
    assert w.worker_cpu == pytest.approx((2.0 / 4.0,)), "CPU seconds over both segments' wall time"


def test_a_summary_that_did_not_keep_up_fails_whatever_its_latencies():
    seg = segment(arrivals(200), np.r_[np.full(199, SERVICE_S), np.nan])
    w = summarise([seg], "server", RATE, None, SERVICE_S, VS, FLEET)
    assert not w.passed and w.verdict == stats.FAIL and not w.kept_up
    assert w.completed == 199 and w.requests == 200 and w.p999_ms == math.inf
    assert w.reason.startswith("did not keep up")


def test_an_offline_summary_keeps_up_by_definition_and_achieves_completions_over_its_span():
    seg = segment(arrivals(100), SERVICE_S)
    w = summarise([seg], "offline", 0.0, None, 0.0, VS, FLEET)
    assert w.kept_up and w.passed and w.offered_rate == 0.0
    span_s = (seg.completed.max() - seg.scheduled.min())
    assert w.achieved_rate == pytest.approx(100 / span_s)


def test_a_window_holds_what_its_verdict_needs_within_the_block():
    need = stats.samples_needed(0.0, VS.quantile, VS.confidence, VS.looks)
    assert window_requests(RATE, 0.1, 0, 10**6, VS) == need, "a short window grows to what a pass needs"
    assert window_requests(RATE, 0.1, 0, 10**6, None) == 10, "without a bound: the duration at the rate"
    assert window_requests(RATE, 100.0, 0, 10**6, VS) == 10_000
    assert window_requests(RATE, 100.0, 0, 500, VS) == 500, "never more than the shared block holds"
    assert window_requests(RATE, 0.001, 0, 10**6, None) == 2
    assert window_requests(RATE, 0.1, 50, 10**6, None) == 50


def test_a_poisson_schedule_starts_at_zero_and_never_goes_back():
    offsets = poisson_schedule(RATE, 5000, np.random.default_rng(0))
    assert offsets.size == 5000 and offsets[0] == 0.0 and (np.diff(offsets) >= 0).all()
    assert offsets[-1] / 4999 == pytest.approx(1 / RATE, rel=0.1)
