"""One config in, one honest result out: warm-up, capacity probe, rate estimate.

Server scenario:
1. start the plan's workers (pinned, memory policy set, model loaded) and verify their
   placement from /proc;
2. warm-up (closed loop, excluded);
3. capacity probe (closed loop): capacity C and the unloaded latency; the config is infeasible
   only when the unloaded P99's LOWER confidence bound is over the bound (proven);
4. rate estimate (``estimator="estimate"``, the default; ``tuner.bench.estimate``): open-loop
   Poisson windows (not extended), the over-bound share of each fitted against the rate; the
   result's ``throughput`` is the fitted highest rate at the bound, ``throughput_ci`` its
   interval, ``verdict`` pass when some window proved its P99 under the bound, fail when the
   unloaded P99 is proven over it, else undecided;
   or rate search (``estimator="bound"``, the rule before 2026-12-05; ``tuner.bench.ratesearch``):
   bisection on window verdicts, then a boundary re-test; ``throughput`` is the highest rate
   proven to pass (a lower bound), ``throughput_ci`` = [its achieved rate, the lowest offered
   rate not proven to pass].

Offline scenario: one closed-loop window after the warm-up; feasible when its P99 meets the bound.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from tuner.bench import interference, replay, stats
from tuner.bench.estimate import EstimateOutcome, estimate, estimate_rate, point_of
from tuner.bench.fleet import Fleet, FleetFactory
from tuner.bench.launcher import Launcher
from tuner.bench.launcher import machine_metadata as machine_metadata
from tuner.bench.loadgen import VerdictSettings, run_offline_window, run_server_window, settle_s
from tuner.bench.model import ModelInfo
from tuner.bench.ratesearch import SearchOutcome, search_rate
from tuner.bench.replay import TailPool
from tuner.errors import UsageError
from tuner.machine.placement import Plan
from tuner.results.records import Interference, TrialResult, WindowResult

SCENARIOS = ("server", "offline")
ESTIMATE, BOUND = "estimate", "bound"
ESTIMATORS = (ESTIMATE, BOUND)
NARROW_WINDOWS = 6  # MeasureSettings.narrow_top_up_s's default, in windows


@dataclass(frozen=True)
class MeasureSettings:
    scenario: str = "server"
    p99_bound_s: float | None = None
    window_s: float = 2.0  # minimum duration of a window
    # minimum requests in a server window's first segment; 0: what the P99 verdict needs (408 at 95%
    # with its looks), an undecided window being extended. A fixed 1,000 made a slow model's windows
    # minutes long for no better verdict: the interval, not a request count, says when P99 is known.
    min_requests: int = 0
    warmup_s: float = 0.5
    search_steps: int = 5
    seed: int = 0
    start_timeout_s: float = 120.0
    worker_memory_limit: int = 0  # bytes of address space per worker (RLIMIT_AS); 0 = none
    hang_grace_s: float = 30.0  # a worker silent this long past a window's end is hung
    confidence: float = stats.DEFAULT_CONFIDENCE  # of each window's P99 verdict
    max_extensions: int = 2  # times an undecided window is extended before it is reported undecided
    disturbed_reruns: int = 2  # disturbed windows (steal, foreign load) re-run per measurement, at most
    calm_wait_s: float = 0.0  # seconds per measurement a disturbed window's re-run may wait for calm CPUs
    # how a window's pass accounts for correlated latencies (tuner.bench.stats.inflation): "clusters"
    # (slow requests in runs count as one), "batch-means" (stricter: in simulation about twice the
    # measuring time and half the throughput found) or "independent" (the verdict before issue 22: 9% of
    # passed windows in simulation were at rates whose long-run P99 was over the bound)
    dependence: str = stats.CLUSTERS
    # what ``throughput`` is: "estimate" (the fitted highest rate at the bound, with its interval;
    # windows are not extended) or "bound" (the highest rate proven to pass: bisection on verdicts)
    estimator: str = ESTIMATE
    rel_tol: float = 0.1  # the estimate stops once its interval is within this share of it
    start_rate: float | None = None  # where the estimate's first window goes (a race: the known answer)
    incumbent_rate: float | None = None  # the study's best so far: a config failing there stops at once
    # the figure from a replay of the calm windows' service times (tuner.bench.replay) where they
    # are enough; the CLI's default since 2026-12-06 (--estimator replay), False here for callers
    # that build their own settings (experiments, deployments)
    replay: bool = False
    # seconds in all a measurement short of calm service times waits for calm CPUs (10 s before
    # 2026-12-07; a race's measurement waits tuner.search.subject.RACE_REPLAY_WAIT_S at most)
    replay_wait_s: float = 20.0
    # seconds of closed loop on calm CPUs a replay whose interval is wide may add to narrow it
    # (``_narrowed``); None: ``NARROW_WINDOWS`` windows' worth (12 s at the default 2-s windows: a
    # user who asks for short windows asks for a quick study). A screening's and a race round's take
    # none: screening only ranks, and a race round is one of several whose spread the race's
    # interval measures
    narrow_top_up_s: float | None = None
    # the stalls seen by every measurement made with these settings or a replace() of them (a study's,
    # its screening's and its race's): the replay's tails count them (tuner.bench.replay.TailPool)
    tails: TailPool = field(default_factory=TailPool, compare=False, repr=False)
    # seconds of closed loop, at least, that a replay's figure rests on (``_spanned``; ``placetune
    # measure --sample``): 0, as many as its calm service times need
    min_sample_s: float = 0.0

    @property
    def narrow_s(self) -> float:
        """The seconds ``narrow_top_up_s`` allows."""
        return NARROW_WINDOWS * self.window_s if self.narrow_top_up_s is None else self.narrow_top_up_s

    @property
    def verdicts(self) -> VerdictSettings:
        extensions = 0 if self.estimator == ESTIMATE else self.max_extensions
        return VerdictSettings(confidence=self.confidence, max_extensions=extensions, dependence=self.dependence)

    def __post_init__(self) -> None:
        if not 0.5 < self.confidence < 1.0:
            raise UsageError(f"--confidence {self.confidence:g} must be between 0.5 and 1 (e.g. 0.95)")
        if self.dependence not in stats.DEPENDENCE_RULES:
            raise UsageError(f"dependence rule {self.dependence!r} is not one of {', '.join(stats.DEPENDENCE_RULES)}")
        if self.estimator not in ESTIMATORS:
            raise UsageError(f"estimator {self.estimator!r} is not one of {', '.join(ESTIMATORS)}")
        if self.scenario not in SCENARIOS:
            raise UsageError(f"scenario {self.scenario!r} is not one of {', '.join(SCENARIOS)}")
        if self.window_s <= 0:
            raise UsageError("--window must be positive")
        if self.p99_bound_s is not None and self.p99_bound_s <= 0:
            raise UsageError("the P99 bound must be positive")


ProgressFn = Callable[[str], None]


def launch(plan: Plan, model: ModelInfo, settings: MeasureSettings) -> Launcher:
    """The real fleet of ``plan``: its pinned worker processes (``tuner.bench.launcher``)."""
    return Launcher(plan, model, start_timeout_s=settings.start_timeout_s,
                    memory_limit=settings.worker_memory_limit, hang_grace_s=settings.hang_grace_s)


def measure(plan: Plan, model: ModelInfo, settings: MeasureSettings,
            progress: ProgressFn | None = None, fleet_factory: FleetFactory | None = None) -> TrialResult:
    """Measure one planned config. Workers never outlive this call. ``fleet_factory`` opens the
    fleet (default ``launch``: real processes; a simulator passes its own, ``tuner.bench.fleet``);
    the duration counts the fleet's clock inside it and real time outside it."""
    say = progress or (lambda _msg: None)
    began = time.monotonic()
    rng = np.random.default_rng(settings.seed)
    bound = settings.p99_bound_s
    windows: list[WindowResult] = []
    notes: list[str] = []
    key = uuid.uuid4().hex  # this measurement's share of the replay's tail pool (its ``replay_id``)
    with (fleet_factory or launch)(plan, model, settings) as fleet:
        inside_began, fleet_began = time.monotonic(), fleet.clock()
        seen = fleet.placement_seen()
        say("warm-up")
        run_offline_window(fleet, settings.warmup_s)
        say("capacity probe")
        # a race's measurement knows where its answer is (start_rate): its probe only checks the
        # unloaded latency and bounds the steps, and a short one does that
        probe_s = settings.window_s if settings.start_rate is None else min(settings.window_s, 0.5)
        probe = run_offline_window(fleet, probe_s, bound, settings.verdicts)
        windows.append(probe)
        capacity = probe.achieved_rate
        run_log: list[WindowResult] = []
        outcome = (_server_search(fleet, settings, probe, rng, say, run_log, key) if settings.scenario == "server"
                   else None)
        replayed = None
        if (_replayable(plan, settings) and isinstance(outcome, EstimateOutcome) and outcome.estimate.rate > 0
                and not outcome.replay_refuted):
            replayed = _replay_with_top_up(fleet, plan, probe, run_log, settings, say, key,
                                           top_up=outcome.stopped != "below incumbent")
        fleet.check_alive()
        machine = fleet.machine_info()
        inside = time.monotonic() - inside_began, fleet.clock() - fleet_began  # (real, fleet clock) seconds
    result_window, feasible, verdict, reason, throughput_ci = _conclude(settings, probe, outcome)
    windows.extend(run_log)
    notes += noise_notes(result_window)
    replay_id = ""
    if probe.requests < 1000:
        notes.append(f"capacity probe had only {probe.requests} requests: its P99 rests on few samples")
    if isinstance(outcome, EstimateOutcome):
        throughput = outcome.estimate.rate if feasible else 0.0
        if feasible and replayed is not None:
            throughput, throughput_ci = replayed.rate, (replayed.low, replayed.high)
            replay_id = key
            notes.append(f"figure from a replay of {replayed.requests} calm service times "
                         f"(the windows' own estimate: {outcome.estimate.rate:.1f} req/s)")
        elif (feasible and _replayable(plan, settings)
              and (disturbed := sum(w.interference.disturbed for w in run_log))
              and outcome.stopped != "below incumbent" and not outcome.replay_refuted):
            notes.append(f"{TOO_FEW_CALM}: the figure is the windows' estimate, and {disturbed} "
                         f"of {len(run_log)} windows were disturbed (other load or steal on its CPUs): on calm CPUs "
                         "it may be far from this either way")
        if outcome.replay_refuted:
            check = outcome.windows[0]
            notes.append(f"{REPLAY_REFUTED} at {check.offered_rate:.1f} req/s: the figure is the windows' estimate, "
                         "that window among them")
        if outcome.stopped == "below incumbent":
            notes.append(f"failed at the incumbent's rate {outcome.windows[0].offered_rate:.1f} req/s: "
                         "stopped there (its estimate rests on that window)")
    else:
        throughput = result_window.achieved_rate if feasible else 0.0
    return TrialResult(
        params=plan.params, plan=plan, scenario=settings.scenario,
        p99_bound_ms=bound * 1000 if bound is not None else None, feasible=feasible, reason=reason,
        throughput=float(throughput), p50_ms=result_window.p50_ms, p90_ms=result_window.p90_ms,
        p99_ms=result_window.p99_ms, p999_ms=result_window.p999_ms,
        offered_rate=result_window.offered_rate, achieved_rate=result_window.achieved_rate,
        capacity=float(capacity), unloaded_p50_ms=probe.p50_ms, unloaded_p99_ms=probe.p99_ms,
        cpu_util=float(sum(result_window.worker_cpu)), worker_cpu=tuple(result_window.worker_cpu),
        harness_cpu=result_window.harness_cpu, placement=tuple(seen),
        windows=tuple(windows), model=model, machine=machine,
        duration_s=time.monotonic() - began - inside[0] + inside[1], notes=tuple(notes), verdict=verdict,
        throughput_ci=(float(throughput_ci[0]), float(throughput_ci[1])), p99_ci_ms=result_window.p99_ci_ms,
        confidence=settings.confidence, interference=Interference.of_windows(windows, result_window),
        estimator=settings.estimator if settings.scenario == "server" else BOUND, replay_id=replay_id,
    )


TOO_FEW_CALM = "too few calm service times to replay"  # a note's start: see ``calm_figure``
REPLAY_REFUTED = "a calm window failed under the replay's figure"  # a note's start


def calm_figure(result: TrialResult) -> bool:
    """False where the result's figure is its windows' estimate, some of them disturbed, with no
    replay of calm service times (its note starts with ``TOO_FEW_CALM``): on calm CPUs the config
    may serve far more or less, and a race pairs no interval on it (``tuner.search.race.paired_ratio``)."""
    return not any(n.startswith(TOO_FEW_CALM) for n in result.notes)


# 8 s at most: SqueezeNet on 2 cores serves about 250 req/s, and 5 s (the cap before 2026-12-07) left
# a race's probe short of 1,500, so every race measurement ran the whole search and a wait as well
# (the README's first command: one race round of 17 s per entrant in 102 s)
REPLAY_TOP_UP_S = 8.0
TOP_UP_CHUNK_S = 2.0  # the closed-loop windows a replay's top-up runs in (_calm_top_up)
TOP_UP_MARGIN = 1.5  # over what the replay needs: part of a top-up may be disturbed
REPLAY_CHECK = 0.9  # where the window checking a replayed probe goes, as a share of its rate
# calm service times per kind of worker before a failed check's top-up stops (_more_calm): replays of
# one calm worker (the simulator's draws, true tail given) spread 0.77-1.30 of the truth from 2,500,
# 0.88-1.12 from 10,000 (10%-90%); a kind that has these already gets no top-up (8 s for nothing)
MORE_CALM_REQUESTS = 4 * replay.MIN_CALM_REQUESTS


def _replay_with_top_up(fleet: Fleet, plan: Plan, probe: WindowResult, run_log: list[WindowResult],
                        settings: MeasureSettings, say: ProgressFn, key: object, top_up: bool = True):
    """The replay's estimate from every window so far; where some kind of worker was never calm
    long enough (and ``top_up``: not for a config already shown under the incumbent), first a
    top-up (``_calm_top_up``) that waits ``replay_wait_s`` in all at most for calm CPUs; with
    ``top_up``, a wide replay then narrows (``_narrowed``)."""
    replayed = _replayed(plan, [probe, *run_log], settings, key)
    if not top_up:
        return replayed
    if replayed is None and settings.replay_wait_s > 0:
        replayed = _calm_top_up(fleet, plan, probe, run_log, settings, say, key, [settings.replay_wait_s],
                                calm=False)
    return None if replayed is None else _narrowed(fleet, plan, probe, run_log, settings, key, replayed)


def _calm_top_up(fleet: Fleet, plan: Plan, probe: WindowResult, run_log: list[WindowResult],
                 settings: MeasureSettings, say: ProgressFn, key: object, wait_left: list[float],
                 calm: bool, first_s: float = TOP_UP_CHUNK_S):
    """Closed-loop windows (appended to ``run_log``; the first ``first_s``, then ``TOP_UP_CHUNK_S``)
    until the replay of every window so far has what it needs (its estimate is returned) or
    ``REPLAY_TOP_UP_S`` of them have run (None). A chunk starts at once where ``calm`` (the last
    window had a calm worker of each size), else once a look finds such CPUs, waiting
    ``wait_left[0]`` seconds at most (taken from it); no calm look in that time, or no time to
    look at all: None.

    Chunks, not one window (2026-12-07): a window's service times count only where its worker's
    CPUs were calm over the whole window, and a neighbour that came back 6 s into an 8-s top-up
    threw all 8 s away. In the simulated 16-core VM one worker with all cores lost its replay so
    in about half the seeds."""
    closed_left, waited, length = REPLAY_TOP_UP_S, 0.0, first_s
    while closed_left > 1e-9:
        if not calm:
            if wait_left[0] < CALM_POLL_S and not waited:  # no wait allowed (a calm probe's top-up): done
                return None
            spent, calm = _wait_for_calm(fleet, wait_left, any_of_each=True)
            waited += spent
            if not calm:  # no calm look in the time allowed: a window now would be disturbed too
                say(f"too few calm service times to replay, and no calm CPUs in {waited:.1f} s waiting")
                return None
            say(f"too few calm service times to replay: closed loop after {waited:.1f} s waiting for calm CPUs")
        length = min(closed_left, length)
        chunk = run_offline_window(fleet, length, settings.p99_bound_s, settings.verdicts)
        run_log.append(chunk)
        closed_left -= length
        replayed = _replayed(plan, [probe, *run_log], settings, key)
        if replayed is not None:
            return replayed
        calm, length = _calm_of_each_size(plan, chunk), TOP_UP_CHUNK_S
    return None


def _more_calm(fleet: Fleet, plan: Plan, probe: WindowResult, last: WindowResult, run_log: list[WindowResult],
               settings: MeasureSettings, key: object, target: float = MORE_CALM_REQUESTS,
               seconds: float = REPLAY_TOP_UP_S):
    """Up to ``seconds`` more of closed loop in ``TOP_UP_CHUNK_S`` chunks (appended to
    ``run_log``) while some kind of worker has fewer than ``target`` calm service times
    and each chunk, and ``last`` before them, found a calm worker of each size; then the replay of
    every window so far (None where it has too few)."""
    left, calm = seconds, _calm_of_each_size(plan, last)
    while left > 1e-9 and calm and min(_calm_counts(plan, [probe, *run_log]).values(), default=0) < target:
        chunk = run_offline_window(fleet, min(left, TOP_UP_CHUNK_S), settings.p99_bound_s, settings.verdicts)
        run_log.append(chunk)
        left -= chunk.duration_s if chunk.duration_s > 0 else TOP_UP_CHUNK_S
        calm = _calm_of_each_size(plan, chunk)
    return _replayed(plan, [probe, *run_log], settings, key)


# the width a replay's interval aims for: log(high / low), about +-35% (``_narrowed``)
NARROW_WIDTH = 0.6


def _narrowed(fleet: Fleet, plan: Plan, probe: WindowResult, run_log: list[WindowResult],
              settings: MeasureSettings, key: object, replayed):
    """``replayed``, or where its interval is wider than ``NARROW_WIDTH`` (log high / low) and the
    CPUs were calm in the last window, the replay after more calm closed loop (``_more_calm``, up to
    ``MeasureSettings.narrow_s``): until each kind of worker has the calm service times that width
    asks for (the interval narrows as one over the square root of the count).

    Why (2026-12-07): one worker with every CPU waits for its rare stalls; from 2,250 calm service
    times its replay's interval was 0.5x-2.2x its figure and the figure itself 0.73-1.39x the truth
    (10%-90%, simulated 64-core VM, ``experiments/replay_tail.py``), 0.85-1.20x from 12,000: a
    study's ORT default, the figure every speedup is claimed over, moved by a third from study to
    study. A worker per core is at +-5% from 2,000 and gets none."""
    if settings.narrow_s <= 0 or replayed.rate <= 0:
        return replayed
    width = math.log(replayed.high / replayed.low) if replayed.low > 0 else math.inf
    if width <= NARROW_WIDTH:
        return replayed
    have = min(_calm_counts(plan, [probe, *run_log]).values(), default=0)
    target = math.inf if not math.isfinite(width) else math.ceil(have * (width / NARROW_WIDTH) ** 2)
    again = _more_calm(fleet, plan, probe, run_log[-1] if run_log else probe, run_log, settings, key,
                       target=target, seconds=settings.narrow_s)
    return again if again is not None and again.rate > 0 else replayed


def _spanned(fleet: Fleet, plan: Plan, probe: WindowResult, run_log: list[WindowResult],
             settings: MeasureSettings, key: object, replayed):
    """``replayed``, or where its closed loop so far is shorter than ``min_sample_s``, the replay
    after more of it (``_more_calm``: while the CPUs stay calm).

    Why (2026-12-07): a cloud VM's CPU speed steps for seconds at a time (the 2-core VM: 3.6-3.9,
    5.4-5.7 and 6.2-6.6 ms per SqueezeNet request, about 10 s each), and a measurement's 8-10 s of
    closed loop may fall in one step: 254 req/s from a sample all at 3.6 ms, where the reference
    harness held 178 over the next two minutes and two measurements around it read 163 and 175
    (``experiments/README.md``, "The VM's speed steps")."""
    closed = sum(w.duration_s for w in [probe, *run_log] if w.scenario == "offline")
    if settings.min_sample_s <= closed or replayed.rate <= 0:
        return replayed
    again = _more_calm(fleet, plan, probe, run_log[-1] if run_log else probe, run_log, settings, key,
                       target=math.inf, seconds=settings.min_sample_s - closed)
    return again if again is not None and again.rate > 0 else replayed


def _calm_counts(plan: Plan, windows: list[WindowResult]) -> dict[int, int]:
    """Calm service times in ``windows`` per kind of worker (its CPUs' count), every kind listed."""
    counts = {len(spec.cpus): 0 for spec in plan.workers}
    for w in windows:
        for spec, values in zip(plan.workers, w.calm_service, strict=False):
            if values is not None:
                counts[len(spec.cpus)] += values.size
    return counts


def _calm_of_each_size(plan: Plan, window: WindowResult) -> bool:
    """Whether some worker of each size served calm in ``window`` (then its CPUs are calm still,
    most likely, and the next top-up chunk need not wait)."""
    calm = {len(spec.cpus) for spec, values in zip(plan.workers, window.calm_service, strict=False)
            if values is not None and values.size}
    return bool(window.calm_service) and calm >= {len(spec.cpus) for spec in plan.workers}


def _replayable(plan: Plan, settings: MeasureSettings) -> bool:
    """Whether the replay may give this config's figure: asked for, and no worker batches (one run
    serves several requests: the replay's queue serves one at a time). A batching config gets no
    closed-loop top-up and no wait for calm CPUs either: in the README's first command two
    batching entrants of the race spent them for nothing."""
    return settings.replay and (getattr(plan.params, "max_batch", 1) or 1) <= 1


def _replayed(plan: Plan, windows: list[WindowResult], settings: MeasureSettings, key: object):
    """The replay's estimate (tuner.bench.replay) from every window's calm service times, or None
    where some kind of worker has too few; callers ask ``_replayable`` first."""
    calm: dict[int, list[np.ndarray]] = {}
    for w in windows:
        for i, values in enumerate(w.calm_service):
            if values is not None and values.size:
                calm.setdefault(i, []).append(values)
    kinds = [len(spec.cpus) for spec in plan.workers]
    calm = replay.without_slow_spells(calm, kinds)
    windows = replay.worker_windows(calm, kinds)
    if windows is None:
        return None
    answer = replay.estimate(replay.joined(windows), settings.p99_bound_s, stats.DEFAULT_QUANTILE, seed=settings.seed,
                             pool=settings.tails, key=key, windows=windows)
    return replace(answer, requests=sum(v.size for parts in calm.values() for v in parts))


def _server_search(fleet: Fleet, settings: MeasureSettings, probe: WindowResult, rng: np.random.Generator,
                   say: ProgressFn, run_log: list[WindowResult], key: object = None
                   ) -> SearchOutcome | EstimateOutcome | None:
    """The rate search, unless the unloaded P99 is proven over the bound (then None). Every window
    run, disturbed ones included, is appended to ``run_log``; a disturbed window (steal or foreign
    load over the thresholds of tuner.bench.interference) is re-run, ``disturbed_reruns`` times at most
    per measurement (a machine that is always busy must not multiply the work)."""
    if probe.verdict == stats.FAIL:
        return None
    service_s = probe.mean_service_ms / 1000 if math.isfinite(probe.mean_service_ms) else 0.0
    # with the replay a disturbed window is not re-run: the replay reads its calm workers, and a
    # measurement short of calm service times waits for calm CPUs once, at its end
    reruns_left = [0 if settings.replay else settings.disturbed_reruns]
    wait_left = [settings.calm_wait_s]

    def run(rate: float) -> WindowResult:
        while True:
            # the queue's capacity: the probe's, or more where a window kept up at a higher rate (a probe
            # in a busy moment is low, and the lead would be the longest for every rate over it)
            capacity = max([probe.achieved_rate] + [w.achieved_rate for w in run_log if w.kept_up])
            lead = settle_s(rate, capacity, settings.window_s) if settings.estimator == ESTIMATE else 0.0
            window = run_server_window(fleet, rate, settings.window_s, settings.min_requests,
                                       settings.p99_bound_s, service_s, rng, verdicts=settings.verdicts,
                                       lead_s=lead)
            run_log.append(window)
            if not window.interference.disturbed or reruns_left[0] <= 0:
                return window
            reruns_left[0] -= 1
            seen = interference.describe(window.interference.to_dict())
            waited, _calm = _wait_for_calm(fleet, wait_left)
            say(f"window at {rate:.1f} req/s disturbed ({seen}): re-run"
                + (f" after {waited:.1f} s waiting for calm CPUs" if waited else ""))

    refuted: list[WindowResult] = []
    if settings.estimator == ESTIMATE and _replayable(fleet.plan, settings):
        early = _replayed(fleet.plan, [probe], settings, key)
        if early is None and probe.achieved_rate > 0 and _calm_of_each_size(fleet.plan, probe):
            # too few calm service times: more closed loop now, while the CPUs are calm (no wait:
            # waiting here for a disturbed probe cost a simulated study 24 s, since a config
            # under the incumbent stops at its first window, and bought no figure nearer the truth)
            need_s = TOP_UP_MARGIN * replay.MIN_CALM_REQUESTS / probe.achieved_rate - probe.duration_s
            early = _calm_top_up(fleet, fleet.plan, probe, run_log, settings, say, key, [0.0], calm=True,
                                 first_s=min(TOP_UP_CHUNK_S, max(settings.window_s / 4, need_s)))
        if early is not None and early.rate > 0:
            early = _narrowed(fleet, fleet.plan, probe, run_log, settings, key, early)
            early = _spanned(fleet, fleet.plan, probe, run_log, settings, key, early)
            # the probe's calm service times already say where the answer is: one window checks it,
            # a little under it
            say(f"replay of the probe's service times: {early.rate:.1f} req/s; checking {REPLAY_CHECK:g} of it")
            check = run(REPLAY_CHECK * early.rate)
            if check.verdict != stats.FAIL or check.interference.disturbed:
                return EstimateOutcome(estimate([point_of(check)], probe.achieved_rate), [check], "replay")
            # a short sample misses one worker's rare slow spells (simulated: the probe's replay 342
            # req/s against a true 284, and the check at 308 failed): more calm service times first,
            # and the replay of them all decides if it now lies under the failed window
            again = _more_calm(fleet, fleet.plan, probe, check, run_log, settings, key)
            if again is not None and 0 < again.rate < check.offered_rate:
                say(f"a calm window at {check.offered_rate:.1f} req/s failed; the replay of "
                    f"{again.requests} calm service times: {again.rate:.1f} req/s")
                return EstimateOutcome(estimate([point_of(check)], probe.achieved_rate), [check], "replay")
            say(f"a calm window at {check.offered_rate:.1f} req/s failed: the windows decide, not the replay")
            refuted = [check]
    if settings.estimator == ESTIMATE:
        # a refuted replay's failed check is evidence: the windows start under it, not at the
        # incumbent or 0.8 of the capacity (2026-12-07: simulated, one worker with every CPU, true
        # 284 req/s, replayed 342, failed at 308; the windows then passed at 535 and 608 by luck,
        # 2 s holding none of its rare stalls, and reported 564)
        outcome = estimate_rate(run, probe.achieved_rate, settings.search_steps + 1,
                                start_rate=settings.start_rate, incumbent=settings.incumbent_rate,
                                rel_tol=settings.rel_tol, say=say, prior=refuted)
        return replace(outcome, replay_refuted=bool(refuted))
    return search_rate(run, probe.achieved_rate, settings.search_steps, say)


CALM_POLL_S = 0.5  # how long each look for calm CPUs lasts


def _wait_for_calm(fleet: Fleet, wait_left: list[float], any_of_each: bool = False) -> tuple[float, bool]:
    """Idle in ``CALM_POLL_S`` looks until one finds the trial's CPUs calm (no steal or foreign load
    over ``tuner.bench.interference``'s thresholds) or ``wait_left[0]`` seconds are spent; the
    seconds waited (taken from ``wait_left``), and whether a look found them calm. With
    ``any_of_each`` (what a replay needs) one calm worker of each size is enough: its service
    times stand for its size's."""
    workers = fleet.plan.workers
    cpus = sorted({c for w in workers for c in w.cpus})
    by_size: dict[int, list[list[int]]] = {}
    for w in workers:
        by_size.setdefault(len(w.cpus), []).append(sorted(w.cpus))
    waited = 0.0
    while wait_left[0] >= CALM_POLL_S:
        before, cpu_before = fleet.snapshot(), fleet.cpu_seconds()
        own_before, t0 = fleet.own_cpu_seconds(), fleet.clock()
        fleet.idle(CALM_POLL_S)
        elapsed = fleet.clock() - t0
        own = sum(fleet.cpu_seconds()) - sum(cpu_before) + fleet.own_cpu_seconds() - own_before
        after = fleet.snapshot()
        cpus = cpus or sorted(before.cpu)
        wait_left[0] -= elapsed
        waited += elapsed
        if any_of_each and all(w.cpus for w in workers):  # (an unpinned worker's CPUs are the machine's)
            share = own / max(1, len(cpus))  # the idle fleet's own CPU time, spread over its CPUs
            if all(any(interference.worker_calm(before, after, group, elapsed, share * len(group))
                       for group in groups) for groups in by_size.values()):
                return waited, True
        elif not interference.window_interference(before, after, cpus, elapsed, own)["disturbed"]:
            return waited, True
    return waited, False


def _conclude(settings: MeasureSettings, probe: WindowResult, outcome: SearchOutcome | EstimateOutcome | None
              ) -> tuple[WindowResult, bool, str, str, tuple[float, float]]:
    """(result window, feasible, verdict, reason, throughput interval) of a measurement."""
    bound = settings.p99_bound_s
    if settings.scenario != "server":
        rate = probe.achieved_rate
        return probe, probe.passed, probe.verdict, probe.reason, (rate, rate)
    if outcome is None:
        reason = (f"unloaded P99 {probe.p99_ms:.2f} ms is over the {bound * 1000:g} ms bound "
                  f"(its {round(settings.confidence * 100)}% lower bound is {probe.p99_ci_ms[0]:.2f} ms)")
        return probe, False, stats.FAIL, reason, (0.0, 0.0)
    if isinstance(outcome, EstimateOutcome):
        return _conclude_estimate(outcome, probe)
    if outcome.best is not None:
        return outcome.best, True, stats.PASS, "", outcome.throughput_ci
    lowest = min(outcome.windows, key=lambda w: w.offered_rate) if outcome.windows else probe
    prefix = "no offered rate was proven to pass"
    return lowest, False, outcome.verdict, f"{prefix} (lowest tried: {lowest.reason})", outcome.throughput_ci


def _conclude_estimate(outcome: EstimateOutcome, probe: WindowResult
                       ) -> tuple[WindowResult, bool, str, str, tuple[float, float]]:
    """The estimate's result: the window nearest its rate (the highest at or under it, else the
    lowest above) shows the latencies; feasible when the estimate is above 0."""
    est = outcome.estimate
    under = [w for w in outcome.windows if w.offered_rate <= est.rate * 1.001]
    shown = (max(under, key=lambda w: w.offered_rate) if under
             else min(outcome.windows, key=lambda w: w.offered_rate) if outcome.windows else probe)
    verdict = stats.PASS if any(w.verdict == stats.PASS for w in outcome.windows) else stats.UNDECIDED
    if est.rate <= 0:
        reason = f"no rate was estimated to hold the bound (lowest tried: {shown.reason})"
        return shown, False, stats.UNDECIDED, reason, (0.0, est.high if math.isfinite(est.high) else 0.0)
    return shown, True, verdict, "", (est.low, est.high)


NOISE_RATIO = 3.0  # service-time P99 / P50 above this in one window: interference


def noise_notes(window: WindowResult) -> list[str]:
    """Within-window variance: every request does the same work, so a wide service-time spread
    means the CPUs were disturbed (other load, CPU steal), and the result is less trustworthy."""
    p50, p99 = window.service_p50_ms, window.service_p99_ms
    if math.isfinite(p50) and math.isfinite(p99) and p50 > 0 and p99 / p50 > NOISE_RATIO:
        return [f"noisy machine: inside session.run, P99 was {p99 / p50:.1f}x P50 ({p99:.2f} vs {p50:.2f} ms) "
                "for identical requests; other load or CPU steal disturbed this measurement"]
    return []
