"""Queries over a deployment study (``optimize --deployment``), as tuner.results.trials does for a
single-model one: what was measured, the best, the baselines, the Pareto view, the race and the
config it recommends, and its best-config document (``DeploymentDocument``). Light: no launcher,
no worker, no ONNX Runtime.

A study is a deployment study when ``user_attrs["kind"] == "deployment"`` (``is_deployment_study``;
the commands that read studies never test it: tuner.app.kinds.kind_of chooses their reading).
"""

from __future__ import annotations

import optuna

from tuner import verdicts
from tuner.results.documents import BaselineFigure, ConfigDocument, DeploymentDocument, ModelRef
from tuner.results.mixrecords import Deployment, MixResult

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
    return [t for t in measured(study) if t.user_attrs["result"]["verdict"] == verdicts.PASS]


def best_and_baselines(study: optuna.Study) -> tuple[Frozen | None, dict[str, Frozen]]:
    """The trial with the largest passing load factor, and each baseline's trial."""
    best = max(passing(study), key=lambda t: (t.value, -t.number), default=None)
    return best, {t.user_attrs["baseline"]: t for t in measured(study) if "baseline" in t.user_attrs}


def pareto_front(study: optuna.Study) -> list[Frozen]:
    """The passing configs no other passing config beats on both the load factor (higher) and the
    tightest model's P99 relative to its bound (lower): the trade-off between serving more and
    keeping latency headroom. One trial per config, largest load factor first."""
    points = {}
    for t in passing(study):
        points.setdefault(t.user_attrs["label"], (t, t.value, mix_result(t).worst_p99_ratio))
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


def study_document(study: optuna.Study) -> DeploymentDocument | None:
    """The study's best-config document: the config the race recommends, with the race; None when
    no config passed."""
    best, baselines = best_and_baselines(study)
    if best is None:
        return None
    race = race_of(study, best)
    return deployment_document(study, recommended_trial(study, best, race), baselines, race)


def deployment_document(study: optuna.Study, chosen: Frozen, baselines: dict[str, Frozen],
                        race: dict | None) -> DeploymentDocument:
    """The document for the trial ``chosen``: each model's own config document (what ``measure
    --config``, ``tuner.deploy.apply`` and the exporters read) inside the deployment's."""
    result = mix_result(chosen)
    deployment = Deployment.from_dict(study.user_attrs["deployment"])
    identity = study.user_attrs["mix_identity"]
    shas = {n: sha for n, sha, *_ in identity["deployment"]}
    paths = study.user_attrs.get("model_paths", {})
    models = {}
    for entry in deployment.models:
        m = result.models[entry.name]
        params = m.plan.params
        models[entry.name] = ConfigDocument(
            study=study.study_name, trial=chosen.number, label=f"{entry.name}: {params.label()}",
            params=params, plan=m.plan, scenario="server", p99_bound_ms=entry.p99_bound_s * 1000,
            share=entry.share, throughput=m.throughput, p50_ms=m.p50_ms, p99_ms=m.p99_ms, p99_ci_ms=m.p99_ci_ms,
            offered_rate=m.offered_rate, interference=m.interference,
            model=ModelRef(entry.name, paths.get(entry.name, entry.model), shas.get(entry.name, "")),
            topology_fingerprint=identity["topology"], machine=result.machine)
    return DeploymentDocument(
        study=study.study_name, trial=chosen.number, label=chosen.user_attrs["label"],
        baseline=chosen.user_attrs.get("baseline", ""), division=result.config.division,
        load_factor=result.load_factor, load_factor_ci=result.load_factor_ci,
        baselines={name: BaselineFigure(t.user_attrs["label"], mix_result(t).load_factor)
                   for name, t in baselines.items()},
        race=race, deployment=deployment, topology_fingerprint=identity["topology"], models=models)
