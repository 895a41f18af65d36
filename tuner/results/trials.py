"""Queries over a study's trials: what was measured, what is shown, the best, the baselines."""

from __future__ import annotations

import math

import optuna


def measured_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that cost a measurement: complete, with a result, and not a repeat (``reused_from``:
    studies made before repeats were dropped). ``--n-trials`` counts these."""
    return [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if "result" in t.user_attrs and "reused_from" not in t.user_attrs]


def shown_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Every trial but repeats (a fleet race, or a reuse in an older study): what views show."""
    return [t for t in study.get_trials(deepcopy=False)
            if "repeat_of" not in t.user_attrs and "reused_from" not in t.user_attrs]


def summarize_trial(t: optuna.trial.FrozenTrial) -> dict:
    """The one-line view of a trial: label, throughput, P99, feasible or why not."""
    result = t.user_attrs.get("result")
    info = {"number": t.number, "label": t.user_attrs.get("label", ""), "baseline": t.user_attrs.get("baseline"),
            "state": t.state.name}
    if t.state == optuna.trial.TrialState.PRUNED:
        info.update(feasible=False, reason=f"not measured: {t.user_attrs.get('plan_infeasible', 'pruned')}",
                    throughput=0.0, p99_ms=math.inf)
    elif result is not None:
        info.update(feasible=result["feasible"], reason=result["reason"], throughput=result["throughput"],
                    p99_ms=result["p99_ms"], params=result["params"])
    else:
        reason = t.user_attrs.get("fail_reason", t.state.name.lower())
        info.update(feasible=False, reason=f"trial failed: {reason}" if t.state.name == "FAIL" else reason,
                    throughput=0.0, p99_ms=math.inf)
    return info


def feasible_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        result = t.user_attrs.get("result")
        constraints = t.constraints or {}
        values = constraints.values() if isinstance(constraints, dict) else constraints
        if result and result["feasible"] and all(c <= 0 for c in values):
            out.append(t)
    return out


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Feasible trials that no other feasible trial beats on both throughput and P99 (Optuna's
    constraint-aware ``Study.best_trials``), one per config, by throughput."""
    front = [t for t in study.best_trials if (t.user_attrs.get("result") or {}).get("feasible")]
    unique: dict[str, optuna.trial.FrozenTrial] = {}
    for t in sorted(front, key=lambda t: (-t.values[0], t.number)):
        unique.setdefault(t.user_attrs.get("label", str(t.number)), t)
    return list(unique.values())


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    trials = feasible_trials(study)
    return max(trials, key=lambda t: (t.values[0], -t.values[1], -t.number)) if trials else None


def baseline_results(study: optuna.Study) -> dict[str, dict]:
    """Each baseline's result; a baseline that only failed gets an infeasible row with the reason."""
    out = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if "baseline" in t.user_attrs and "result" in t.user_attrs:
            out[t.user_attrs["baseline"]] = t.user_attrs["result"]
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
        name = t.user_attrs.get("baseline")
        if name and name not in out or (name in out and out[name].get("failed")):
            out[name] = {"feasible": False, "failed": True, "throughput": 0.0,
                         "reason": f"trial failed: {t.user_attrs.get('fail_reason', 'unknown reason')}"}
    return out


def best_config_document(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict:
    """The file ``measure --config`` and the exporters read."""
    result = trial.user_attrs["result"]
    return {
        "format": "placetune-config/1",
        "study": study.study_name,
        "trial": trial.number,
        "label": trial.user_attrs.get("label"),
        "params": result["params"],
        "plan": result["plan"],
        "scenario": result["scenario"],
        "p99_bound_ms": result["p99_bound_ms"],
        "throughput": result["throughput"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "model": {k: result["model"][k] for k in ("name", "path", "sha256")},
        "topology_fingerprint": study.user_attrs.get("topology_fingerprint"),
        "machine": result["machine"],
    }

