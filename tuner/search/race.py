"""The final race: a study's answer from interleaved re-measurement, not from one noisy window.

The top-K configs and every baseline are measured again in rounds (A B C, then B C A, ...: the
order rotates so no entrant always runs first or last). After ``min_rounds`` rounds, the race
stops once the best config's advantage over the best baseline has a paired interval (Fieller's,
``tuner.bench.stats.ratio_ci``) that excludes 1 and is narrow enough (``rel_width``), at
``max_rounds``, or, with a time limit, before a measurement that would end after it (judged by
the longest measurement so far; a round the limit cuts short is dropped, its pairs incomplete),
so the race ends within about one measurement's time of the limit. A limit too short for every
entrant's ``min_rounds`` is met by racing fewer: after the first round, only the entrants whose
measurements (timed in that round) fit the remaining rounds go on, the best searched config and
the best baseline first (ranked by their study estimate and first-round figure), then the other
baselines, then the other searched configs; the rest keep their first round, and a comparison
with them has no interval. An interval needs at least two rounds: a race of six entrants that fits
two rounds in its limit says nothing about any ratio, one of two entrants that fits three does
(the README's first command on a slow 2-core moment got 2 rounds of 6 and intervals 0-inf).
Pairing by round cancels the slow drifts of a noisy machine (a neighbour's load, thermal state) that hit every
entrant of a round alike. When the interval includes 1 there is no significant difference and
the simpler config (the baseline) is recommended; when it lies below 1 the best baseline is
faster than anything the search found, and it is the winner.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tuner.bench import stats
from tuner.machine.placement import Params


@dataclass(frozen=True)
class Entrant:
    label: str
    params: Params  # a deployment's entrant: its MixConfig (tuner.mix.study.race_entrants)
    baseline: str = ""  # the baseline's name ("ORT default"), "" for a searched config
    rate: float = 0.0  # its estimate in the study (req/s): where its race measurements start; 0: unknown


@dataclass
class RaceResult:
    entrants: list[Entrant]
    throughputs: dict[str, list[float]] = field(default_factory=dict)  # label -> req/s per round
    confidence: float = stats.DEFAULT_CONFIDENCE
    winner: str = ""
    recommended: str = ""
    comparisons: list[dict] = field(default_factory=list)  # winner vs each (other) baseline: ratio and interval
    significant: bool = False  # the best searched config vs the best baseline: the interval excludes 1
    summary: str = ""
    searched: dict = field(default_factory=dict)  # the best searched config vs the best baseline
    unit: str = "req/s"  # what ``throughputs`` holds (a deployment's race: "load factor")
    stopped: str = ""  # why the race ended: "settled", "max_rounds" or "time_limit"
    dropped: list[str] = field(default_factory=list)  # entrants raced for the first round only (the time limit)
    seconds: float = 0.0  # how long it ran (on the race's clock)
    # label -> per round: False where the round's figure rests on disturbed windows alone (no calm service
    # times to replay): it is shown, and left out of every interval (``paired_ratio``)
    calm: dict[str, list[bool]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"rounds": max((len(v) for v in self.throughputs.values()), default=0), "confidence": self.confidence,
                "throughputs": self.throughputs, "winner": self.winner, "recommended": self.recommended,
                "significant": self.significant, "comparisons": self.comparisons, "summary": self.summary,
                "searched": self.searched, "stopped": self.stopped, "seconds": self.seconds, "dropped": self.dropped,
                "calm": self.calm,
                "entrants": [{"label": e.label, "baseline": e.baseline, "params": e.params.to_dict()}
                             for e in self.entrants]}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


# a race interval is never narrower than the ratio times exp(+-SYSTEMATIC): what every round of a config
# shares (the replay's own error, per config) the rounds' spread cannot show. In the simulated 64-core VM
# (2026-12-07, v18) the race's figures of many-worker configs sat 0.6-4% off their ratios' truth with
# intervals of +-0.4-1%: 4 of 40 decisive intervals missed; with this floor none did, and no claim or
# recommendation changed (experiments/README.md, "A floor under the race's intervals"). 0.03 until
# 2026-12-08: in the simulated 16-core VM (v27) 4 of 40 decisive intervals missed by lying 3-4% over
# their truth (the best searched config, 2-core or 1-core workers, against one worker per core); at
# 0.04 one did, and no claim or recommendation changed in any run since v25 (``experiments/race_floor.py``
# on their JSON; exact: a floor under 5% changes no race's course)
SYSTEMATIC = 0.04


def _floored(ratio: float, low: float, high: float) -> tuple[float, float, float]:
    if not (math.isfinite(high) and ratio > 0 and math.isfinite(ratio)):
        return ratio, low, high
    return ratio, min(low, ratio * math.exp(-SYSTEMATIC)), max(high, ratio * math.exp(SYSTEMATIC))


def paired_ratio(throughputs: dict[str, list[float]], a: str, b: str,
                 confidence: float = stats.DEFAULT_CONFIDENCE,
                 calm: dict[str, list[bool]] | None = None) -> tuple[float, float, float]:
    """``a`` over ``b`` on the rounds both ran (an entrant dropped after the first round has one:
    no interval), Fieller's interval (``tuner.bench.stats.ratio_ci``), never narrower than
    ``SYSTEMATIC`` either side. With ``calm``, only the
    rounds where both figures were calm are paired; fewer than two such rounds out of two or more:
    the ratio of every round's mean, and no interval (0, inf).

    Why: a figure from disturbed windows alone sits under the truth by however much the
    neighbour took, and it does so again in the next round while the neighbour stays. In the
    simulated 16-core VM one worker with all cores had such figures in every race round of 6 of
    39 races: ratios of 10-12x against a true 7.2x, with intervals (7.3-15, 8.8-20) that missed it."""
    n = min(len(throughputs[a]), len(throughputs[b]))
    rounds = list(range(n))
    if calm is not None:
        flags_a, flags_b = calm.get(a, []), calm.get(b, [])
        rounds = [i for i in rounds if (i >= len(flags_a) or flags_a[i]) and (i >= len(flags_b) or flags_b[i])]
        if len(rounds) < min(2, n):
            mb = _mean(throughputs[b][:n])
            return (_mean(throughputs[a][:n]) / mb if mb > 0 else math.inf), 0.0, math.inf
    return _floored(*stats.ratio_ci([throughputs[a][i] for i in rounds], [throughputs[b][i] for i in rounds],
                                    confidence))


def compare(result: RaceResult) -> RaceResult:
    """Fill winner, comparisons, significance, recommendation and summary from the throughputs;
    the winner is chosen among the entrants still racing (not ``dropped``)."""
    th = result.throughputs
    racing = [e for e in result.entrants if e.label not in result.dropped]
    candidates = [e for e in racing if not e.baseline]
    baselines = sorted((e for e in racing if e.baseline), key=lambda e: -_mean(th[e.label]))
    best_searched = max(candidates or racing, key=lambda e: _mean(th[e.label]))
    result.searched, winner = {}, best_searched
    if candidates and baselines:
        ratio, lo, hi = paired_ratio(th, best_searched.label, baselines[0].label, result.confidence, result.calm)
        result.searched = {"label": best_searched.label, "baseline": baselines[0].baseline,
                           "baseline_label": baselines[0].label, "ratio": ratio, "ci": [lo, hi],
                           "outcome": "faster" if lo > 1.0 else "slower" if hi < 1.0 else "no difference"}
        if result.searched["outcome"] != "faster":  # the simpler config, or the faster one: the baseline
            winner = baselines[0]
    result.winner = result.recommended = winner.label
    result.comparisons = []  # the baselines still racing, then those dropped after one round
    for b in sorted((e for e in result.entrants if e.baseline),
                    key=lambda e: (e.label in result.dropped, -_mean(th[e.label]))):
        if b.label != winner.label:
            ratio, lo, hi = paired_ratio(th, winner.label, b.label, result.confidence, result.calm)
            result.comparisons.append({"baseline": b.baseline, "label": b.label, "ratio": ratio, "ci": [lo, hi],
                                       "significant": lo > 1.0})
    result.significant = not result.searched or result.searched["outcome"] != "no difference"
    result.summary = summary_text(result)
    return result


def summary_text(result: RaceResult) -> str:
    """'w16xc1-intra1: 3.1x ORT default (95% CI 2.7-3.5), 1.4x Intel heuristic (1.2-1.6)'; when the
    best searched config is not proven faster than the best baseline, the baseline wins and the text
    says whether there is no significant difference or the baseline is faster."""
    pct = round(result.confidence * 100)
    s = result.searched
    head = ""
    if s and s["outcome"] != "faster":
        lo, hi = s["ci"]
        head = (f"best searched config {s['label']} is {s['ratio']:.2f}x {s['baseline']} "
                f"({pct}% CI {lo:.2f}-{hi:.2f}): "
                + ("no significant difference, recommending the simpler config" if s["outcome"] == "no difference"
                   else f"{s['baseline']} is faster than every searched config") + f", {result.winner}")
    parts = []
    for i, c in enumerate(result.comparisons):
        lo, hi = c["ci"]
        interval = f"{lo:.2f}-{hi:.2f}" if math.isfinite(hi) else "unknown"
        parts.append(f"{c['ratio']:.2f}x {c['baseline']} ({pct}% CI {interval})" if i == 0 else
                     f"{c['ratio']:.2f}x {c['baseline']} ({interval})")
    text = f"{result.winner}: " + (", ".join(parts) if parts else
                                   f"{_mean(result.throughputs[result.winner]):.1f} {result.unit}" +
                                   ("" if head else " (no baseline raced)"))
    return f"{head}; {text}" if head else text


def keep_racing(entrants: list[Entrant], first: dict[str, float], seconds: dict[str, float],
                budget_s: float, rounds: int) -> list[Entrant]:
    """Which entrants go on after the first round so that ``rounds`` more rounds of them fit in
    ``budget_s`` (each entrant's measurement taking what it took in the first round, and the
    race's start rule judging the last one by the longest): the best searched config and the best
    baseline always (by the geometric mean of the study's estimate and the first round's figure),
    then the other baselines, then the other searched configs, each while it fits."""
    def score(e: Entrant) -> float:
        return math.sqrt(max(e.rate, 0.0) * first[e.label]) if e.rate > 0 else first[e.label]

    searched = sorted((e for e in entrants if not e.baseline), key=lambda e: -score(e))
    baselines = sorted((e for e in entrants if e.baseline), key=lambda e: -score(e))
    order = searched[:1] + baselines[:1]
    order += [e for e in baselines + searched if e not in order]
    keep: list[Entrant] = []
    longest = max(seconds.values(), default=0.0)
    for e in order:
        trial = keep + [e]
        need = rounds * sum(seconds[x.label] for x in trial) + longest - min(seconds[x.label] for x in trial)
        if len(keep) < 2 or need <= budget_s:
            keep.append(e)
    return [e for e in entrants if e in keep]  # the race's own order


TIE_WIDTH = 0.1  # an interval that holds 1 and is at most this wide (relative) settles a tie


def settled(result: RaceResult, rel_width: float) -> bool:
    """The best searched config's interval against the best baseline excludes 1 and is at most
    ``rel_width`` wide (relative to the ratio), or it holds 1 and is at most ``TIE_WIDTH`` wide:
    more rounds would only narrow a tie (a futility stop)."""
    c = result.searched or (result.comparisons[0] if result.comparisons else None)
    if c is None:
        return True
    lo, hi = c["ci"]
    if not math.isfinite(hi):
        return False
    excludes_one = lo > 1.0 or hi < 1.0
    return (hi - lo) <= (rel_width if excludes_one else TIE_WIDTH) * c["ratio"]


def race(entrants: list[Entrant], measure_throughput: Callable[[Entrant], float | tuple[float, bool]],
         min_rounds: int = 3,
         max_rounds: int = 5, confidence: float = stats.DEFAULT_CONFIDENCE, rel_width: float = 0.25,
         say: Callable[[str], None] = lambda _m: None, time_limit_s: float | None = None,
         clock: Callable[[], float] = time.monotonic, unit: str = "req/s") -> RaceResult:
    """Race ``entrants`` in rotating interleaved rounds; ``measure_throughput`` measures one entrant
    once (0 for an infeasible measurement; ``unit`` names what it returns), or returns (figure,
    calm): calm False for a figure from disturbed windows alone, which no interval pairs
    (``paired_ratio``). With ``time_limit_s``
    (seconds from the start, on ``clock``), no measurement starts that would end after the limit,
    judged by the longest one so far, once the first round is complete (a limit shorter than one
    round still gets one round, without an interval); the round it would have belonged to is
    dropped. When ``min_rounds`` rounds of every entrant do not fit the limit (timed on the first
    round), only those that fit go on after it (``keep_racing``; the others are ``dropped``)."""
    if not entrants:
        raise ValueError("a race needs at least one entrant")
    result = RaceResult(entrants, {e.label: [] for e in entrants}, confidence, unit=unit, stopped="max_rounds",
                        calm={e.label: [] for e in entrants})
    began = clock()
    longest_s = 0.0
    took: dict[str, float] = {}
    racing = list(entrants)
    for round_no in range(max_rounds):
        if round_no == 1 and time_limit_s is not None and len(racing) > 2:
            racing = keep_racing(racing, {e.label: result.throughputs[e.label][0] for e in racing}, took,
                                 time_limit_s - (clock() - began), min_rounds - 1)
            result.dropped = [e.label for e in entrants if e not in racing]
            if result.dropped:
                say(f"race: {len(racing)} of {len(entrants)} entrants go on ({', '.join(result.dropped)} "
                    f"raced one round: {min_rounds} rounds of every entrant do not fit the time limit)")
        shift = round_no % len(racing)
        done: list[str] = []
        for e in racing[shift:] + racing[:shift]:
            if time_limit_s is not None and round_no >= 1 and clock() - began + longest_s > time_limit_s:
                result.stopped = "time_limit"
                break
            say(f"race round {round_no + 1}/{max_rounds}: {e.label}")
            measuring_began = clock()
            got = measure_throughput(e)
            value, calm = got if isinstance(got, tuple) else (got, True)
            result.throughputs[e.label].append(float(value))
            result.calm[e.label].append(bool(calm))
            done.append(e.label)
            took[e.label] = clock() - measuring_began
            longest_s = max(longest_s, took[e.label])
        if result.stopped == "time_limit":
            for label in done:  # an incomplete round pairs nothing
                result.throughputs[label].pop()
                result.calm[label].pop()
            break
        compare(result)
        if round_no + 1 >= min_rounds and settled(result, rel_width):
            result.stopped = "settled"
            break
    compare(result)
    result.seconds = clock() - began
    return result


def study_entrants(study, k: int) -> list[Entrant]:
    """The best ``k`` distinct feasible configs of a study, then every feasible baseline."""
    from tuner.results.trials import baseline_results, feasible_trials, result_of

    entrants: dict[str, Entrant] = {}
    for t in sorted(feasible_trials(study), key=lambda t: -t.values[0]):
        label = t.user_attrs.get("label") or f"trial {t.number}"
        if "baseline" not in t.user_attrs and label not in entrants and len(entrants) < k:
            entrants[label] = Entrant(label, result_of(t).params, rate=float(t.values[0]))
    for name, row in sorted(baseline_results(study).items()):
        if row.feasible:  # a failed baseline has no result to race
            params = row.result.params
            entrants.setdefault(params.label(), Entrant(params.label(), params, baseline=name,
                                                        rate=float(row.result.throughput)))
    return list(entrants.values())


DITHER = 0.2  # a race measurement starts within this log share of the entrant's estimate, at random


def dithered(rate: float, seed: int) -> float:
    """``rate`` times a random factor in [e^-DITHER, e^DITHER] (seeded): each round's bracket falls
    elsewhere, so the error of one bracket's interpolation varies from round to round and shows in
    the rounds' spread (where the race's interval sees it) instead of repeating in every round."""
    return rate * math.exp(random.Random(seed).uniform(-DITHER, DITHER)) if rate > 0 else rate


def race_subject(study, subject, k: int, min_rounds: int = 3, max_rounds: int = 4,
                 confidence: float = stats.DEFAULT_CONFIDENCE, say: Callable[[str], None] = lambda _m: None,
                 time_limit_s: float | None = None, first_seed: int = 1) -> RaceResult:
    """The final race of a finished study over what it tuned (tuner.search.subject: a model or a
    deployment): ``subject.entrants(study, k)``, each measured by ``subject.race_value`` with a
    fresh seed per measurement (``first_seed``, then the next ones); ``time_limit_s``: see ``race``."""
    seeds = iter(range(first_seed, first_seed + 1_000_000))
    return race(subject.entrants(study, k), lambda e: subject.race_value(e, next(seeds)), min_rounds, max_rounds,
                confidence, say=say, time_limit_s=time_limit_s, unit=subject.unit)


def race_study(study, topology, model, settings, k: int, min_rounds: int = 3, max_rounds: int = 4,
               say: Callable[[str], None] = lambda _m: None, measure_fn: Callable | None = None,
               time_limit_s: float | None = None) -> RaceResult:
    """The final race of a finished single-model study: its top ``k`` configs and its baselines,
    each measured with the study's settings (a fresh seed per measurement) by ``measure_fn``
    (default: ``measure``); ``time_limit_s``: see ``race``."""
    from tuner.bench.measure import measure
    from tuner.search.subject import ModelSubject

    subject = ModelSubject(model, topology, None, settings, measure_fn or measure)
    return race_subject(study, subject, k, min_rounds, max_rounds, settings.confidence, say, time_limit_s,
                        first_seed=settings.seed + 1)
