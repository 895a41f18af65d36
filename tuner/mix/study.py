"""What a deployment study needs that a single model's does not: its identity (the deployment and
the machine), the bound check of each model alone, its space (the division, then each model's
config: ``DeploymentSpace``, which tuner.search.strategy.Sampled proposes from) and its objective
(one config measured by tuner.mix.measure into a ``MixResult``; the load factor, maximized). The
loop is tuner.search.study.run_trials and the race tuner.search.race, driven by
tuner.app.deployment.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace

import optuna

from tuner.bench import stats
from tuner.bench.launcher import Launcher
from tuner.bench.loadgen import run_offline_window
from tuner.bench.measure import MeasureSettings
from tuner.bench.model import ModelInfo
from tuner.errors import Infeasible, StudyMismatch, UsageError
from tuner.machine.placement import Params, plan
from tuner.machine.topology import Topology
from tuner.mix.division import even_split, ort_defaults, suggest_config
from tuner.mix.measure import measure_mix
from tuner.results.mixrecords import Deployment, MixConfig
from tuner.results.mixtrials import DEPLOYMENT_KIND
from tuner.search.objective import killed_reason
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


def check_bounds_alone(topology: Topology, deployment: Deployment, models: dict[str, ModelInfo],
                       settings: MeasureSettings, say: Say = lambda _m: None) -> dict[str, float]:
    """Each model ALONE on the whole machine (one pinned worker, a thread per core): its unloaded
    P99 in ms. A bound no config can meet even then is a UsageError naming the model."""
    cores = len(topology.cores())
    alone = plan(topology, Params(workers=1, cores_per_worker=cores, intra_op_threads=cores))
    unloaded = {}
    for m in deployment.models:
        say(f"{m.name} alone: unloaded latency")
        with Launcher(alone, models[m.name], start_timeout_s=settings.start_timeout_s,
                      hang_grace_s=settings.hang_grace_s) as fleet:
            run_offline_window(fleet, settings.warmup_s)
            probe = run_offline_window(fleet, settings.window_s, m.p99_bound_s)
        if probe.verdict == stats.FAIL:
            raise UsageError(f"{deployment.path}: model {m.name}'s P99 bound {m.p99_bound_s * 1000:g} ms is "
                             f"unreachable: alone on the whole machine, unloaded, its P99 is {probe.p99_ms:.2f} ms "
                             f"(lower bound {probe.p99_ci_ms[0]:.2f} ms); relax its p99")
        unloaded[m.name] = probe.p99_ms
    return unloaded


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
class DeploymentSpace:
    """A deployment's define-by-run space: the division, then each model's config in its part."""

    topology: Topology
    deployment: Deployment
    space_name: str

    def suggest(self, trial) -> MixConfig:
        return suggest_config(trial, self.topology, self.deployment, self.space_name)

    def express(self, _config: MixConfig) -> None:
        """A proposal is enqueued with the values the sampler suggested (tuner.search.strategy)."""
        return None

    def baselines(self) -> list[tuple[str, dict, dict]]:
        """Every model one unpinned ORT-default worker; the even split by share (for
        tuner.search.study.enqueue_baselines: name, values, user attrs)."""
        return [(name, {}, {"label": config.label(), "config": config.to_dict()})
                for name, config in (("ort_default", ort_defaults(self.deployment)),
                                     ("even_split", even_split(self.topology, self.deployment)))]


def make_mix_objective(cfg: MixStudyConfig, host_key: str, say: Say) -> Callable[[optuna.Trial], float]:
    """The deployment study's objective: the trial's config (a baseline's, or the space's
    suggestion, which an enqueued proposal fixes) measured by ``measure_mix``; the load factor."""
    space = DeploymentSpace(cfg.topology, cfg.deployment, cfg.space)

    def objective(trial: optuna.Trial) -> float:
        hostname = socket.gethostname()
        for key, value in (("host", host_key), ("hostname", hostname), ("tuner_pid", os.getpid()),
                           ("fail_reason", killed_reason(os.getpid(), hostname))):
            trial.set_user_attr(key, value)
        if "baseline" in trial.user_attrs:
            config = MixConfig.from_dict(trial.user_attrs["config"])
        else:
            config = space.suggest(trial)
        trial.set_user_attr("label", config.label())
        say(f"trial {trial.number}: {config.label()}")
        try:
            result = measure_mix(cfg.topology, config, cfg.deployment, cfg.models,
                                 replace(cfg.settings, seed=cfg.settings.seed + trial.number), say)
        except Infeasible as exc:  # a part too small for a model's params: not measured
            trial.set_user_attr("fail_reason", f"not measured: {exc}")
            raise optuna.TrialPruned(str(exc)) from None
        except BaseException as exc:
            trial.set_user_attr("fail_reason", str(exc) or type(exc).__name__)
            raise
        trial.set_user_attr("fail_reason", "")
        trial.set_user_attr("result", result.to_dict())
        say(f"trial {trial.number}: load factor {result.load_factor:.3g} ({result.verdict})")
        return result.load_factor

    return objective
