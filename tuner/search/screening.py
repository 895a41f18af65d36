"""Multi-fidelity screening: many configs measured cheaply, the promising ones measured in full.

A study that cannot measure its whole space (the space is larger than ``--n-trials``) spends most
of its time on configs that turn out mediocre. Screening measures each new config first with short
settings (``screen_settings``: quarter windows, two rate-search steps, a 80% verdict), and promotes
a screened config to a full measurement only when it ranks in the top ``1/ETA`` of everything
screened so far (asynchronous successive halving, ASHA) and could still be the best (its screened
throughput is within ``PROMOTE_MARGIN`` of the best full result). Only full results are results:
best config, Pareto front, baselines ratio and the final race read measured (COMPLETE) trials, and
a screening trial is PRUNED, its measurement kept in ``user_attrs["screen_result"]`` with
``user_attrs["fidelity"] == "screen"``. A screened config is taken (never proposed again); a
promoted one is measured once more, in full (that is not a repeat).

Screening runs when the space is larger than the budget and the budget is at least
``SCREENING_MIN_TRIALS`` (``tuner.search.strategy.choose_strategy``). The budget (``--n-trials``)
counts full measurements; a screening measurement counts as
``SCREEN_COST`` of one (``budget_spent``), so a study of N trials takes about as long with or
without screening, and covers more configs with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import optuna

from tuner.bench.measure import MeasureSettings
from tuner.results.records import TrialResult

SCREEN = "screen"
FULL = "full"
ETA = 3  # successive halving: the top third of the screened configs may be promoted
PROMOTE_MARGIN = 0.15  # a screened config this far below the best full result cannot win: not promoted
# A screening measurement's time as a share of a full one: 1 probe and 3 windows of 0.5 s instead
# of 1 probe and 6 windows of 2 s (+ worker start, about 1.5 s, in both) is 0.23; a slow model's
# windows are sized by the verdict's samples (270 at 80% instead of 408 at 95%), about 0.35.
SCREEN_COST = 0.3
SCREEN_CONFIDENCE = 0.8
# Screening needs room: the baselines (4 at most) take the first measurements, and a rung (ETA
# screens and a promotion) costs 1 + ETA * SCREEN_COST = 1.9. A budget under 15 leaves fewer than
# 6 rungs: the user asked for a handful of configs, and gets them measured in full.
SCREENING_MIN_TRIALS = 15
SCREEN_SEARCH_STEPS = 2


def screen_settings(full: MeasureSettings) -> MeasureSettings:
    """The short measurement of a screening trial: a quarter of each window (at least 0.25 s), half
    the warm-up, two rate-search steps, a verdict at 80% confidence, one window extension and one
    re-run of a disturbed window at most, no wait for calm service times to replay and no closed
    loop to narrow a replay's interval. Never longer than ``full`` in any of these."""
    return replace(full, window_s=min(full.window_s, max(0.25, full.window_s / 4)), warmup_s=full.warmup_s / 2,
                   search_steps=min(full.search_steps, SCREEN_SEARCH_STEPS),
                   confidence=min(full.confidence, SCREEN_CONFIDENCE),
                   max_extensions=min(full.max_extensions, 1), disturbed_reruns=min(full.disturbed_reruns, 1),
                   replay_wait_s=0.0, narrow_top_up_s=0.0)


def settings_for(full: MeasureSettings, fidelity: str | None) -> MeasureSettings:
    """The settings a trial of this fidelity measures with (None: a full trial, e.g. a baseline)."""
    return screen_settings(full) if fidelity == SCREEN else full


def is_screened(t: optuna.trial.FrozenTrial) -> bool:
    """A screening trial whose short measurement came back."""
    return t.user_attrs.get("fidelity") == SCREEN and "screen_result" in t.user_attrs


def screen_value(t: optuna.trial.FrozenTrial) -> float:
    """A screened trial's throughput at the bound (0.0 when the short measurement missed it)."""
    result = t.user_attrs["screen_result"]
    return float(result["throughput"]) if result["feasible"] else 0.0


def record_screen(trial: optuna.Trial, result: TrialResult) -> None:
    """Keep a screening measurement apart from the results, and end its trial as PRUNED (Optuna's
    word for a trial stopped at a low fidelity): it is never a best config, a Pareto point or raced."""
    stored = result.to_dict()
    stored["_trial"] = trial.number
    trial.set_user_attr("screen_result", stored)
    raise optuna.TrialPruned(f"screened: {result.throughput:.1f} req/s" if result.feasible
                             else f"screened: {result.reason}")


def _is_full_result(t: optuna.trial.FrozenTrial) -> bool:
    """A measured trial (tuner.results.trials.measured_trials's rule, on a list of trials)."""
    return (t.state == optuna.trial.TrialState.COMPLETE and "result" in t.user_attrs
            and "reused_from" not in t.user_attrs)


def budget_spent(trials: Iterable[optuna.trial.FrozenTrial], strategy: object = None) -> float:
    """What ``--n-trials`` counts: full measurements, plus each screening measurement as
    ``SCREEN_COST`` of one (the ``strategy``'s own ``screen_cost`` when it has one)."""
    screen_cost = getattr(strategy, "screen_cost", SCREEN_COST)
    full = screened = 0
    for t in trials:
        if _is_full_result(t):
            full += 1
        elif is_screened(t):
            screened += 1
    return full + screen_cost * screened


def promotion(screened: list[tuple[str, float]], promoted: set[str], best_full: float, eta: int = ETA,
              margin: float = PROMOTE_MARGIN) -> str | None:
    """The screened config to measure in full next, or None. ``screened``: (label, screened
    throughput) of the rung; ``promoted``: labels already measured (or queued) in full.

    ASHA's rule: of the n screened configs, the top ``n // eta`` may be promoted, best first; one
    that is not yet promoted is, when it is feasible and its screened throughput is at least
    ``(1 - margin) * best_full`` (it could beat the best full result: screening noise is about
    ``margin / 2``)."""
    ranked = sorted(screened, key=lambda lv: (-lv[1], lv[0]))
    for label, value in ranked[: len(ranked) // eta]:
        if label not in promoted and value > 0 and value >= (1 - margin) * best_full:
            return label
    return None


def rung(trials: Iterable[optuna.trial.FrozenTrial]) -> tuple[dict[str, optuna.trial.FrozenTrial], set[str], float]:
    """The study's screening state: screened trials by label, labels measured or queued in full
    (a promotion, a baseline, a fleet's full trial), and the best full throughput (0.0: none yet)."""
    screened: dict[str, optuna.trial.FrozenTrial] = {}
    full: set[str] = set()
    best_full = 0.0
    for t in trials:
        label = t.user_attrs.get("label")
        if is_screened(t):
            screened[label] = t
        elif label is not None and t.user_attrs.get("fidelity") != SCREEN and "repeat_of" not in t.user_attrs:
            full.add(label)
        if _is_full_result(t) and t.user_attrs["result"]["feasible"]:
            best_full = max(best_full, float(t.user_attrs["result"]["throughput"]))
    return screened, full, best_full
