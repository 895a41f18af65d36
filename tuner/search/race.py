"""The final race: a study's answer from interleaved re-measurement, not from one noisy window.

The top-K configs and every baseline are measured again in rounds (A B C, then B C A, ...: the
order rotates so no entrant always runs first or last). After ``min_rounds`` rounds, the race
stops once the best config's advantage over the best baseline has a paired-bootstrap interval
that excludes 1 and is narrow enough (``rel_width``), or at ``max_rounds``. Pairing by round
cancels the slow drifts of a noisy machine (a neighbour's load, thermal state) that hit every
entrant of a round alike. When the interval includes 1 there is no significant difference and
the simpler config (the baseline) is recommended.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from tuner.bench import stats
from tuner.machine.placement import Params


@dataclass(frozen=True)
class Entrant:
    label: str
    params: Params
    baseline: str = ""  # the baseline's name ("ORT default"), "" for a searched config


@dataclass
class RaceResult:
    entrants: list[Entrant]
    throughputs: dict[str, list[float]] = field(default_factory=dict)  # label -> req/s per round
    confidence: float = stats.DEFAULT_CONFIDENCE
    winner: str = ""
    recommended: str = ""
    comparisons: list[dict] = field(default_factory=list)  # winner vs each baseline: ratio and interval
    significant: bool = False
    summary: str = ""

    def to_dict(self) -> dict:
        return {"rounds": len(next(iter(self.throughputs.values()), [])), "confidence": self.confidence,
                "throughputs": self.throughputs, "winner": self.winner, "recommended": self.recommended,
                "significant": self.significant, "comparisons": self.comparisons, "summary": self.summary,
                "entrants": [{"label": e.label, "baseline": e.baseline, "params": e.params.to_dict()}
                             for e in self.entrants]}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def compare(result: RaceResult) -> RaceResult:
    """Fill winner, comparisons, significance, recommendation and summary from the throughputs."""
    th = result.throughputs
    candidates = [e for e in result.entrants if not e.baseline]
    baselines = [e for e in result.entrants if e.baseline]
    pool = candidates or result.entrants
    winner = max(pool, key=lambda e: _mean(th[e.label]))
    result.winner = winner.label
    result.comparisons = []
    for b in sorted(baselines, key=lambda e: -_mean(th[e.label])):
        ratio, lo, hi = stats.ratio_ci(th[winner.label], th[b.label], result.confidence)
        result.comparisons.append({"baseline": b.baseline, "label": b.label, "ratio": ratio, "ci": [lo, hi],
                                   "significant": lo > 1.0})
    best_baseline = result.comparisons[0] if result.comparisons else None
    result.significant = best_baseline is None or best_baseline["significant"]
    result.recommended = winner.label if result.significant else best_baseline["label"]
    result.summary = summary_text(result)
    return result


def summary_text(result: RaceResult) -> str:
    """'w16xc1-intra1: 3.1x ORT default (95% CI 2.7-3.5), 1.4x Intel heuristic (1.2-1.6)' and, when
    the best baseline's interval includes 1, that there is no significant difference."""
    pct = round(result.confidence * 100)
    parts = []
    for i, c in enumerate(result.comparisons):
        lo, hi = c["ci"]
        interval = f"{lo:.2f}-{hi:.2f}" if math.isfinite(hi) else "unknown"
        parts.append(f"{c['ratio']:.2f}x {c['baseline']} ({pct}% CI {interval})" if i == 0 else
                     f"{c['ratio']:.2f}x {c['baseline']} ({interval})")
    text = f"{result.winner}: " + (", ".join(parts) if parts else
                                   f"{_mean(result.throughputs[result.winner]):.1f} req/s (no baseline raced)")
    if not result.significant:
        text += (f"; no significant difference from {result.comparisons[0]['baseline']}: "
                 f"recommending the simpler config, {result.recommended}")
    return text


def settled(result: RaceResult, rel_width: float) -> bool:
    """The winner's interval against the best baseline excludes 1 and is at most ``rel_width`` wide
    (relative to the ratio)."""
    if not result.comparisons:
        return True
    c = result.comparisons[0]
    lo, hi = c["ci"]
    excludes_one = lo > 1.0 or hi < 1.0
    return excludes_one and math.isfinite(hi) and (hi - lo) <= rel_width * c["ratio"]


def race(entrants: list[Entrant], measure_throughput: Callable[[Entrant], float], min_rounds: int = 3,
         max_rounds: int = 6, confidence: float = stats.DEFAULT_CONFIDENCE, rel_width: float = 0.25,
         say: Callable[[str], None] = lambda _m: None) -> RaceResult:
    """Race ``entrants`` in rotating interleaved rounds; ``measure_throughput`` measures one entrant
    once (0 for an infeasible measurement)."""
    if not entrants:
        raise ValueError("a race needs at least one entrant")
    result = RaceResult(entrants, {e.label: [] for e in entrants}, confidence)
    for round_no in range(max_rounds):
        shift = round_no % len(entrants)
        for e in entrants[shift:] + entrants[:shift]:
            say(f"race round {round_no + 1}/{max_rounds}: {e.label}")
            result.throughputs[e.label].append(float(measure_throughput(e)))
        compare(result)
        if round_no + 1 >= min_rounds and settled(result, rel_width):
            break
    return result


def study_entrants(study, k: int) -> list[Entrant]:
    """The best ``k`` distinct feasible configs of a study, then every feasible baseline."""
    from tuner.results.trials import baseline_results, feasible_trials, result_of

    entrants: dict[str, Entrant] = {}
    for t in sorted(feasible_trials(study), key=lambda t: -t.values[0]):
        label = t.user_attrs.get("label") or f"trial {t.number}"
        if "baseline" not in t.user_attrs and label not in entrants and len(entrants) < k:
            entrants[label] = Entrant(label, result_of(t).params)
    for name, row in sorted(baseline_results(study).items()):
        if row.feasible:  # a failed baseline has no result to race
            params = row.result.params
            entrants.setdefault(params.label(), Entrant(params.label(), params, baseline=name))
    return list(entrants.values())


def race_study(study, topology, model, settings, k: int, min_rounds: int = 3, max_rounds: int = 6,
               say: Callable[[str], None] = lambda _m: None, measure_fn: Callable | None = None) -> RaceResult:
    """The final race of a finished study: its top ``k`` configs and its baselines, each measured
    with the study's settings (a fresh seed per measurement) by ``measure_fn`` (default: ``measure``)."""
    from dataclasses import replace

    from tuner.bench.measure import measure
    from tuner.machine.placement import plan

    measure_one = measure_fn or measure

    counter = iter(range(1, 1_000_000))

    def measure_throughput(e: Entrant) -> float:
        # three search windows (and the boundary re-test) per run: the race's evidence is its rounds
        quick = replace(settings, seed=settings.seed + next(counter), search_steps=min(3, settings.search_steps))
        result = measure_one(plan(topology, e.params), model, quick)
        return result.throughput if result.feasible else 0.0

    return race(study_entrants(study, k), measure_throughput, min_rounds, max_rounds, settings.confidence, say=say)
