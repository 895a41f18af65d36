"""Queries over a study's trials: what was measured, what is shown, the best, the baselines."""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import asdict, dataclass

import optuna

from tuner.machine.placement import Params
from tuner.results.documents import ConfigDocument, ModelRef
from tuner.results.records import TrialResult


def result_of(t: optuna.trial.FrozenTrial) -> TrialResult | None:
    """The trial's measured result (any stored format), or None when it has none."""
    stored = t.user_attrs.get("result")
    return TrialResult.from_dict(stored) if stored is not None else None


# a study user attr per trial whose replayed figure was done again at the study's end, with the
# whole study's tail pool (``tuner.search.study.refigure``): "refigured:<trial number>" -> {"throughput",
# "throughput_ci", "was", "was_ci", "stalls"}. Optuna's finished trials cannot change, so the
# queries here (and every view built on them) read a trial through it (``trials_of``)
REFIGURED = "refigured:"


def refigured(study: optuna.Study) -> dict[int, dict]:
    """The study's end-of-study figures, by trial number (``REFIGURED``)."""
    return {int(k[len(REFIGURED):]): v for k, v in study.user_attrs.items() if k.startswith(REFIGURED)}


def _as_refigured(t: optuna.trial.FrozenTrial, figure: dict | None) -> optuna.trial.FrozenTrial:
    """A copy of ``t`` whose result and first value carry its end-of-study figure (``t`` itself
    when it has none)."""
    stored = t.user_attrs.get("result")
    if figure is None or stored is None or not t.values:
        return t
    low, high = figure["was_ci"]
    note = (f"figure replayed again at the study's end with its whole tail pool ({figure['stalls']} stalls); "
            f"at the time: {figure['was']:.1f} req/s [{low:.1f}, {high:.1f}]")
    copied = copy.copy(t)
    copied.user_attrs = {**t.user_attrs, "result": {**stored, "throughput": figure["throughput"],
                                                    "throughput_ci": list(figure["throughput_ci"]),
                                                    "notes": [*stored.get("notes", []), note]}}
    copied.values = [float(figure["throughput"]), *t.values[1:]]
    return copied


def trials_of(study: optuna.Study, states: tuple[optuna.trial.TrialState, ...] | None = None
              ) -> list[optuna.trial.FrozenTrial]:
    """``study.get_trials`` with each trial's end-of-study figure where it has one (``REFIGURED``)."""
    trials = study.get_trials(deepcopy=False, states=states)
    figures = refigured(study)
    return [_as_refigured(t, figures.get(t.number)) for t in trials] if figures else trials


def measured_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that cost a measurement: complete, with a result, and not a repeat (``reused_from``:
    studies made before repeats were dropped). ``--n-trials`` counts these."""
    return [t for t in trials_of(study, states=(optuna.trial.TrialState.COMPLETE,))
            if "result" in t.user_attrs and "reused_from" not in t.user_attrs]


def shown_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Every trial but repeats (a fleet race, or a reuse in an older study): what views show."""
    return [t for t in trials_of(study)
            if "repeat_of" not in t.user_attrs and "reused_from" not in t.user_attrs]


@dataclass(frozen=True)
class TrialSummary:
    """The one-line view of a trial: label, throughput, P99, feasible or why not."""

    number: int
    label: str
    baseline: str | None
    state: str  # optuna.trial.TrialState's name
    feasible: bool
    reason: str
    throughput: float  # req/s, 0 when not measured
    p99_ms: float  # inf when not measured
    params: Params | None = None  # the measured config; None when not measured
    throughput_ci: tuple[float, float] = (math.nan, math.nan)  # the estimate's interval (req/s)
    estimator: str = "bound"  # what throughput is: "estimate" or "bound" (proven; older results)

    def to_dict(self) -> dict:
        return {**asdict(self), "params": self.params.to_dict() if self.params is not None else None,
                "throughput_ci": list(self.throughput_ci)}


def summarize_trial(t: optuna.trial.FrozenTrial) -> TrialSummary:
    """The one-line view of a trial (a pruned or failed one says why it was not measured)."""
    head = {"number": t.number, "label": t.user_attrs.get("label", ""), "baseline": t.user_attrs.get("baseline"),
            "state": t.state.name}
    result = result_of(t)
    screen = t.user_attrs.get("screen_result")
    if t.state == optuna.trial.TrialState.PRUNED and screen is not None:  # tuner.search.screening: a short look
        screened = TrialResult.from_dict(screen)
        why = f"{screened.throughput:.1f} req/s" if screened.feasible else screened.reason
        return TrialSummary(**head, feasible=False, throughput=0.0, p99_ms=math.inf,
                            reason=f"screened (short windows): {why}")
    if t.state == optuna.trial.TrialState.PRUNED:
        return TrialSummary(**head, feasible=False, throughput=0.0, p99_ms=math.inf,
                            reason=f"not measured: {t.user_attrs.get('plan_infeasible', 'pruned')}")
    if result is not None:
        return TrialSummary(**head, feasible=result.feasible, reason=result.reason, throughput=result.throughput,
                            p99_ms=result.p99_ms, params=result.params, throughput_ci=result.throughput_ci,
                            estimator=result.estimator)
    reason = t.user_attrs.get("fail_reason", t.state.name.lower())
    return TrialSummary(**head, feasible=False, throughput=0.0, p99_ms=math.inf,
                        reason=f"trial failed: {reason}" if t.state.name == "FAIL" else reason)


def feasible_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Complete trials whose result is feasible and whose constraints all hold."""
    out = []
    for t in trials_of(study, states=(optuna.trial.TrialState.COMPLETE,)):
        result = result_of(t)
        constraints = t.constraints or {}
        values = constraints.values() if isinstance(constraints, dict) else constraints
        if result is not None and result.feasible and all(c <= 0 for c in values):
            out.append(t)
    return out


def _non_dominated(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials no other beats on both values (throughput up, P99 down): one sweep by throughput,
    each group of equal throughput keeping its lowest P99 where it is under every higher group's."""
    out: list[optuna.trial.FrozenTrial] = []
    best = math.inf  # the lowest P99 of every trial of a higher throughput
    ordered = sorted(trials, key=lambda t: (-t.values[0], t.values[1]))
    for _throughput, group in itertools.groupby(ordered, key=lambda t: t.values[0]):
        group = list(group)
        low = group[0].values[1]
        if low < best:
            out += [t for t in group if t.values[1] == low]
        best = min(best, low)
    return out


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Feasible trials that no other feasible trial beats on both throughput and P99 (what Optuna's
    constraint-aware ``Study.best_trials`` gives, on the end-of-study figures: ``trials_of``), one
    per config, by throughput."""
    front = _non_dominated(feasible_trials(study))
    unique: dict[str, optuna.trial.FrozenTrial] = {}
    for t in sorted(front, key=lambda t: (-t.values[0], t.number)):
        unique.setdefault(t.user_attrs.get("label", str(t.number)), t)
    return list(unique.values())


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The feasible trial with the highest throughput (ties: lower P99, then the earlier trial)."""
    trials = feasible_trials(study)
    return max(trials, key=lambda t: (t.values[0], -t.values[1], -t.number)) if trials else None


@dataclass(frozen=True)
class BaselineRow:
    """A baseline's outcome: its measured result, or (``result`` None) why its trial failed."""

    result: TrialResult | None
    fail_reason: str = ""  # "trial failed: ..." when there is no result

    @property
    def failed(self) -> bool:
        return self.result is None

    @property
    def feasible(self) -> bool:
        return self.result is not None and self.result.feasible

    @property
    def throughput(self) -> float:
        return self.result.throughput if self.result is not None else 0.0

    @property
    def reason(self) -> str:
        return self.result.reason if self.result is not None else self.fail_reason


def baseline_results(study: optuna.Study) -> dict[str, BaselineRow]:
    """Each baseline's row; a baseline that only failed gets an infeasible row with the reason."""
    out: dict[str, BaselineRow] = {}
    for t in trials_of(study, states=(optuna.trial.TrialState.COMPLETE,)):
        result = result_of(t)
        if "baseline" in t.user_attrs and result is not None:
            out[t.user_attrs["baseline"]] = BaselineRow(result)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
        name = t.user_attrs.get("baseline")
        if name and (name not in out or out[name].failed):
            out[name] = BaselineRow(None, f"trial failed: {t.user_attrs.get('fail_reason', 'unknown reason')}")
    return out


def config_document(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> ConfigDocument:
    """The best-config document of ``trial`` (``placetune-config/1``), typed."""
    result = result_of(trial)
    if result is None:
        raise ValueError(f"trial {trial.number} has no result")
    return ConfigDocument(
        study=study.study_name, trial=trial.number, label=trial.user_attrs.get("label"), params=result.params,
        plan=result.plan, scenario=result.scenario, p99_bound_ms=result.p99_bound_ms, throughput=result.throughput,
        p50_ms=result.p50_ms, p99_ms=result.p99_ms,
        model=ModelRef(result.model.name, result.model.path, result.model.sha256),
        topology_fingerprint=study.user_attrs.get("topology_fingerprint"), machine=result.machine)


def best_config_document(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict:
    """The file ``measure --config`` and the exporters read (``placetune-config/1``; its JSON form
    of ``config_document``)."""
    return config_document(study, trial).to_dict()
