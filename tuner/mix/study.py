"""What a deployment study needs that a single model's does not: its identity (the deployment and
the machine) and the deployment as a subject to tune
(``DeploymentSubject``: its space, which tuner.search.strategy.Sampled proposes from, its
baselines, and one config measured by tuner.mix.measure into a ``MixResult``, the load factor
maximized). The loop is tuner.search.study.run_trials, the objective
tuner.search.objective.make_subject_objective and the race tuner.search.race, driven by
tuner.app.deployment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import optuna

from tuner.bench.measure import MeasureSettings
from tuner.bench.model import ModelInfo
from tuner.errors import StudyMismatch, UsageError
from tuner.machine.topology import Topology
from tuner.mix.bench import FleetFactory, launch
from tuner.mix.division import even_split, ort_defaults, suggest_config
from tuner.mix.measure import measure_mix
from tuner.results.mixrecords import Deployment, MixConfig, MixResult
from tuner.results.mixtrials import DEPLOYMENT_KIND, best_and_baselines, mix_result
from tuner.search.race import Entrant, dithered
from tuner.search.storage import engine_kwargs, quiet_optuna

Say = Callable[[str], None]


@dataclass(frozen=True)
class MixStudyConfig:
    deployment: Deployment
    models: dict[str, ModelInfo]
    topology: Topology
    settings: MeasureSettings
    storage: str
    study_name: str
    space: str = "default"
    seed: int | None = None
    n_trials: int | None = 20  # measured configs in all, baselines included
    timeout_s: float | None = None
    race_rounds: int = 3  # final race: rounds of best vs baselines (0: no race)


def default_study_name(deployment: Deployment, models: dict[str, ModelInfo]) -> str:
    parts = [f"{m.name}-{models[m.name].sha256[:8]}-{m.p99_bound_s * 1000:g}ms-x{m.share:g}"
             for m in deployment.models]
    return "mix-" + "+".join(parts) + ("-shared" if deployment.shared_cores else "")


def open_mix_study(cfg: MixStudyConfig) -> optuna.Study:
    """Create or resume the study; a resumed study must describe the same deployment."""
    try:
        storage = optuna.storages.RDBStorage(cfg.storage, engine_kwargs=engine_kwargs(cfg.storage))
    except Exception as exc:
        raise UsageError(f"--storage {cfg.storage}: cannot open ({str(exc).splitlines()[0][:200]})") from None
    with quiet_optuna():
        study = optuna.create_study(storage=storage, study_name=cfg.study_name, direction="maximize",
                                    load_if_exists=True)
    identity = {"deployment": [[m.name, cfg.models[m.name].sha256, m.p99_bound_s, m.share]
                               for m in cfg.deployment.models],
                "shared_cores": cfg.deployment.shared_cores, "topology": cfg.topology.fingerprint()}
    stored = study.user_attrs.get("mix_identity")
    if stored is None:
        study.set_user_attr("mix_identity", identity)
        study.set_user_attr("deployment", cfg.deployment.to_dict())
        study.set_user_attr("kind", DEPLOYMENT_KIND)
    elif stored != identity:
        raise StudyMismatch(f"study {cfg.study_name!r} was run for another deployment or machine; "
                            "give another --study-name")
    study.set_user_attr("model_paths", {n: info.path for n, info in cfg.models.items()})
    return study


@dataclass(frozen=True)
class DeploymentSubject:
    """A deployment as a study tunes it (tuner.search.subject.Subject): its define-by-run space (the
    division, then each model's config in its part), its baselines, one config measured by
    ``measure_mix`` into a ``MixResult`` whose load factor is maximized, and its race (the best
    config against every baseline that served a load factor, three load-factor runs each)."""

    cfg: MixStudyConfig
    fleet_factory: FleetFactory = launch  # each model's workers (a simulated fleet in tests)
    unit: str = "load factor"

    def suggest(self, trial) -> MixConfig:
        return suggest_config(trial, self.cfg.topology, self.cfg.deployment, self.cfg.space)

    def express(self, _config: MixConfig) -> None:
        """A proposal is enqueued with the values the sampler suggested (tuner.search.strategy)."""
        return None

    def baselines(self) -> list[tuple[str, dict, dict]]:
        """Every model one unpinned ORT-default worker; the even split by share (for
        tuner.search.study.enqueue_baselines: name, values, user attrs)."""
        return [(name, {}, {"label": config.label(), "config": config.to_dict()})
                for name, config in (("ort_default", ort_defaults(self.cfg.deployment)),
                                     ("even_split", even_split(self.cfg.topology, self.cfg.deployment)))]

    def config_of(self, stored: dict) -> MixConfig:
        return MixConfig.from_dict(stored)

    def measure(self, config: MixConfig, settings: MeasureSettings, say: Say) -> MixResult:
        cfg = self.cfg
        return measure_mix(cfg.topology, config, cfg.deployment, cfg.models, settings, say, self.fleet_factory)

    def value(self, result: MixResult) -> float:
        return result.load_factor

    def entrants(self, study: optuna.Study, _k: int) -> list[Entrant]:
        return race_entrants(*best_and_baselines(study))

    def race_value(self, entrant: Entrant, seed: int) -> float:
        """Three runs at most, the first near the entrant's load factor in the study (dithered), as a
        single model's race measures (tuner.search.subject.ModelSubject.race_value)."""
        quick = replace(self.cfg.settings, seed=seed, search_steps=min(2, self.cfg.settings.search_steps),
                        start_rate=dithered(entrant.rate, seed) or None)
        return self.measure(entrant.params, quick, lambda _m: None).load_factor


def race_entrants(best, baselines: dict) -> list[Entrant]:
    """The best config (a baseline's name when it is one), then every baseline that served a load
    factor (one that served none has nothing to race); each entrant's ``params`` is its MixConfig."""
    def entrant(t, name: str) -> Entrant:
        result = mix_result(t)
        return Entrant(t.user_attrs["label"], result.config, name, result.load_factor)

    entrants = {best.user_attrs["label"]: entrant(best, best.user_attrs.get("baseline", ""))}
    for name, t in sorted(baselines.items()):
        if mix_result(t).feasible:
            entrants.setdefault(t.user_attrs["label"], entrant(t, name))
    return list(entrants.values())
