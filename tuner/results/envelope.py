"""The throughput-vs-P99 envelope of a study: from every measured window of every trial, the best
config for any P99 bound, without re-running anything.

A window counts when it ran to completion (no early stop) and the system kept up with its offered
rate; its point is (P99, achieved rate). For a bound B the best config is the point with the
highest rate among those with P99 <= B. The rate search only explored rates up to the study's own
bound, so for a looser bound the figure is a lower bound, and the answer says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna

from tuner.errors import UsageError
from tuner.results.trials import result_of


@dataclass(frozen=True)
class EnvelopePoint:
    p99_ms: float
    p50_ms: float
    throughput: float
    trial: int
    label: str


def envelope_points(study: optuna.Study) -> list[EnvelopePoint]:
    """One point per counted window, over all complete trials (reused results counted once)."""
    scenario = study.user_attrs.get("scenario", "server")
    points = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        result = result_of(t)
        if result is None or "reused_from" in t.user_attrs:
            continue
        for w in result.windows:
            if w.scenario != scenario or not w.kept_up or w.completed < w.requests:
                continue
            if not math.isfinite(w.p99_ms) or w.achieved_rate <= 0:
                continue
            points.append(EnvelopePoint(w.p99_ms, w.p50_ms, w.achieved_rate, t.number,
                                        t.user_attrs.get("label", str(t.number))))
    return points


def envelope(points: list[EnvelopePoint]) -> list[EnvelopePoint]:
    """The staircase: points sorted by P99 where throughput beats every point with a lower P99."""
    out: list[EnvelopePoint] = []
    for p in sorted(points, key=lambda p: (p.p99_ms, -p.throughput)):
        if not out or p.throughput > out[-1].throughput:
            out.append(p)
    return out


@dataclass(frozen=True)
class Choice:
    point: EnvelopePoint
    bound_ms: float
    note: str  # "" when the bound lies inside what was measured


def best_for_bound(study: optuna.Study, bound_ms: float) -> Choice:
    """The best counted window with P99 <= ``bound_ms``; its note says when the figure is only a
    lower bound (the bound lies above the study's, or above everything measured)."""
    points = envelope_points(study)
    if not points:
        raise UsageError(f"study {study.study_name!r} has no measured window to choose from; run "
                         "'placetune optimize' first")
    eligible = [p for p in points if p.p99_ms <= bound_ms]
    if not eligible:
        lowest = min(points, key=lambda p: p.p99_ms)
        raise UsageError(f"no window of study {study.study_name!r} had P99 <= {bound_ms:g} ms (the lowest was "
                         f"{lowest.p99_ms:.2f} ms with {lowest.label}): this bound lies below what was measured; "
                         f"run a study with --p99 {bound_ms:g}ms")
    best = max(eligible, key=lambda p: (p.throughput, -p.p99_ms))
    study_bound = study.user_attrs.get("p99_bound_ms")
    highest = max(p.p99_ms for p in points)
    note = ""
    if study_bound is not None and bound_ms > study_bound:
        note = (f"{bound_ms:g} ms is above the study's bound of {study_bound:g} ms, where its rate search stopped: "
                f"{best.throughput:.1f} req/s is a lower bound; run a study with --p99 {bound_ms:g}ms for a real "
                "number")
    elif bound_ms > highest:
        note = (f"every window measured had P99 <= {highest:.2f} ms: {bound_ms:g} ms lies above what was "
                "measured, so the figure is a lower bound")
    return Choice(best, bound_ms, note)
