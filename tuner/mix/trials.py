"""Queries over a deployment study (tuner.mix.study stores it), as tuner.results.trials does for a
single-model one: what kind of study it is, what was measured, the best, the baselines, the Pareto
view, the race and the config it recommends. Light: no launcher, no worker, no ONNX Runtime.

A study is a deployment study when ``user_attrs["kind"] == "deployment"`` (``is_deployment_study``:
the one test every command that reads studies dispatches on).
"""

from __future__ import annotations

import optuna

from tuner.bench import stats
from tuner.mix.records import MixResult

DEPLOYMENT_KIND = "deployment"
Frozen = optuna.trial.FrozenTrial


def is_deployment_study(study: optuna.Study) -> bool:
    """Whether ``study`` was made by ``optimize --deployment`` (tuner.mix.study.open_mix_study)."""
    return study.user_attrs.get("kind") == DEPLOYMENT_KIND


def mix_result(t: Frozen) -> MixResult:
    """A measured trial's result (the trial must have one: see ``measured``)."""
    return MixResult.from_dict(t.user_attrs["result"])


def measured(study: optuna.Study) -> list[Frozen]:
    """Completed trials that measured something (repeats excluded)."""
    return [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if "result" in t.user_attrs and "repeat_of" not in t.user_attrs]


def passing(study: optuna.Study) -> list[Frozen]:
    """Measured trials that served a load factor within every model's bound."""
    return [t for t in measured(study) if t.user_attrs["result"]["verdict"] == stats.PASS]


def best_and_baselines(study: optuna.Study) -> tuple[Frozen | None, dict[str, Frozen]]:
    """The trial with the largest passing load factor, and each baseline's trial."""
    best = max(passing(study), key=lambda t: (t.value, -t.number), default=None)
    return best, {t.user_attrs["baseline"]: t for t in measured(study) if "baseline" in t.user_attrs}


def worst_p99_ratio(result: MixResult) -> float:
    """The tightest model's P99 over its bound at the best load factor (below 1: headroom)."""
    return max(m["p99_ms"] / m["p99_bound_ms"] for m in result.models.values())


def pareto_front(study: optuna.Study) -> list[Frozen]:
    """The passing configs no other passing config beats on both the load factor (higher) and the
    tightest model's P99 relative to its bound (lower): the trade-off between serving more and
    keeping latency headroom. One trial per config, largest load factor first."""
    points = {}
    for t in passing(study):
        points.setdefault(t.user_attrs["label"], (t, t.value, worst_p99_ratio(mix_result(t))))
    front = [(t, lf, r) for t, lf, r in points.values()
             if not any(lf2 >= lf and r2 <= r and (lf2 > lf or r2 < r) for _, lf2, r2 in points.values())]
    return [t for t, _, _ in sorted(front, key=lambda p: (-p[1], p[0].number))]


def race_of(study: optuna.Study, best: Frozen | None) -> dict | None:
    """The study's final race (``user_attrs["race"]``), when it raced today's best config: a
    resumed study that found a better config since has no race for it yet."""
    race = study.user_attrs.get("race")
    if race is None or best is None or race.get("best_label") != best.user_attrs["label"]:
        return None
    return race


def recommended_trial(study: optuna.Study, best: Frozen, race: dict | None) -> Frozen:
    """The trial whose config the race recommends (a baseline proven faster than every searched
    config, or the simpler one when there is no significant difference: tuner.search.race.compare),
    else ``best``."""
    if race is None or not race.get("recommended"):
        return best
    chosen = [t for t in passing(study) if t.user_attrs["label"] == race["recommended"]]
    return max(chosen, key=lambda t: (t.value, -t.number), default=best)


def study_document(study: optuna.Study) -> dict | None:
    """The study's best-config document (``placetune-deployment/1``, tuner.mix.document): the
    config the race recommends, with the race; None when no config passed."""
    from tuner.mix.document import deployment_document

    best, baselines = best_and_baselines(study)
    if best is None:
        return None
    race = race_of(study, best)
    return deployment_document(study, recommended_trial(study, best, race), baselines, race)
