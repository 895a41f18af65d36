"""The Optuna study: baselines first, then what the strategy proposes; resumable, one trial at a
time per host.

Objectives: maximize throughput at the bound, minimize P99. The bound is a constraint
(``trial.set_constraint([p99 - bound])``, Optuna >= 5), so the Pareto front is made of
feasible trials only. Every trial is a config measured once: the search space is conditional
(always plannable) and the strategy (``tuner/search/strategy.py``) never proposes a config already
measured, being measured or queued. Only a fleet race (two hosts picking the same config at
once) can still produce a repeat: that trial is FAILED with ``user_attrs["repeat_of"]``, is not
measured, and every view hides it.
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import optuna

from tuner.bench.measure import MeasureSettings, measure
from tuner.bench.model import ModelInfo
from tuner.errors import Infeasible, PlacementMismatch, PlacetuneError, StudyMismatch, UsageError, WorkerError
from tuner.machine.placement import Params, plan
from tuner.machine.topology import Topology
from tuner.results.records import TrialResult
from tuner.results.trials import measured_trials, summarize_trial
from tuner.search import screening  # screening hook
from tuner.search.locks import HostLock, StudyMutex
from tuner.search.space import INT_DIMS, SearchSpace
from tuner.search.storage import engine_kwargs, ensure_study_uuid
from tuner.search.strategy import Proposal, choose_strategy

optuna.logging.set_verbosity(optuna.logging.ERROR)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

SAMPLERS = ("tpe", "nsga2", "random", "grid")
CONSTRAINT = "p99_over_bound_ms"  # <= 0: feasible
INFEASIBLE_P99 = 1e9  # objective value for trials that met no rate (keeps the front finite)


def baselines(topology: Topology) -> list[tuple[str, Params]]:
    """What users would run without placetune; identical configs collapse into one named a+b."""
    cores = topology.cores()
    n_cores = len(cores)
    nodes = topology.usable_nodes or (0,)
    per_node = min(sum(1 for c in cores if c.node == n) for n in nodes) if topology.usable_nodes else n_cores
    multi = len(topology.usable_nodes) > 1
    policy = "bind" if multi else "none"
    chunk = max(1, min(4, per_node))
    # bound to nodes, an instance never straddles two: 10-core nodes hold 2 instances of 4 each
    instances = sum(sum(1 for c in cores if c.node == n) // chunk for n in nodes) if multi else n_cores // chunk
    candidates = [
        ("ort_default", Params(workers=1, pin=False, intra_op_threads=0)),
        ("intel_throughput", Params(workers=max(1, instances), cores_per_worker=chunk,
                                    intra_op_threads=chunk, numa_policy=policy)),
        ("intel_latency", Params(workers=len(nodes), cores_per_worker=max(1, per_node),
                                 intra_op_threads=max(1, per_node), numa_policy=policy)),
        ("one_per_core", Params(workers=n_cores, cores_per_worker=1, intra_op_threads=1, numa_policy=policy)),
    ]
    merged: dict[Params, list[str]] = {}
    for name, params in candidates:
        merged.setdefault(params, []).append(name)
    return [("+".join(names), params) for params, names in merged.items()]


@dataclass(frozen=True)
class StudyConfig:
    model: ModelInfo
    topology: Topology
    space: SearchSpace
    settings: MeasureSettings
    storage: str
    study_name: str
    sampler: str = "tpe"
    seed: int | None = None
    n_trials: int | None = 20
    timeout_s: float | None = None
    force: bool = False
    lock_wait_s: float = 3600.0
    allow_heterogeneous: bool = False
    heartbeat_s: float = 10.0


def default_study_name(model: ModelInfo, bound_ms: float | None, scenario: str) -> str:
    bound = f"p99-{bound_ms:g}ms" if bound_ms is not None else "no-bound"
    return f"{model.name}-{model.sha256[:8]}-{bound}-{scenario}"


def make_sampler(name: str, seed: int | None, space: SearchSpace) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":  # the conditional space has no static grid: the Exhaustive strategy walks it
        return optuna.samplers.RandomSampler(seed=seed)
    raise UsageError(f"--sampler {name!r} is not one of {', '.join(SAMPLERS)}")


def open_study(cfg: StudyConfig) -> optuna.Study:
    """Create or join the study; refuse to resume with another model/bound/scenario, or to join
    from a host whose topology differs (unless --allow-heterogeneous)."""
    heartbeat = max(1, int(round(cfg.heartbeat_s)))
    try:
        with StudyMutex(cfg.storage, "(schema)"):  # hosts starting at once must not all create the tables
            storage = optuna.storages.RDBStorage(
                cfg.storage, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
                engine_kwargs=engine_kwargs(cfg.storage))
    except Exception as exc:
        raise UsageError(f"--storage {cfg.storage}: cannot open ({str(exc).splitlines()[0][:200]})") from None
    study = optuna.create_study(
        storage=storage, study_name=cfg.study_name, directions=["maximize", "minimize"],
        sampler=make_sampler(cfg.sampler, cfg.seed, cfg.space), load_if_exists=True,
    )
    fingerprint = cfg.topology.fingerprint()
    identity = {
        "model_sha256": cfg.model.sha256,
        "p99_bound_ms": cfg.settings.p99_bound_s * 1000 if cfg.settings.p99_bound_s else None,
        "scenario": cfg.settings.scenario,
    }
    with StudyMutex(cfg.storage, cfg.study_name):
        existing = study.user_attrs
        if "model_sha256" in existing:
            diff = [f"{k}: study has {existing.get(k)!r}, this run has {v!r}"
                    for k, v in identity.items() if existing.get(k) != v]
            if diff and not cfg.force:
                raise StudyMismatch(f"study {cfg.study_name!r} was made with a different setup "
                                    f"({'; '.join(diff)}); use another --study-name, or --force to mix them")
            theirs = existing.get("topology_fingerprint")
            if theirs != fingerprint:
                if not (cfg.allow_heterogeneous or cfg.force):
                    raise StudyMismatch(
                        f"this host ({socket.gethostname()}: {cfg.topology.summary()}) has topology fingerprint "
                        f"{fingerprint}, study {cfg.study_name!r} was measured on {theirs}: its results would not "
                        "be comparable; run it on an identical host, or pass --allow-heterogeneous to record the "
                        "fingerprint per trial (the report groups by it)")
                study.set_user_attr("heterogeneous", True)
        else:
            for k, v in identity.items():
                study.set_user_attr(k, v)
            study.set_user_attr("topology_fingerprint", fingerprint)
            study.set_user_attr("model", cfg.model.to_dict())
            study.set_user_attr("topology", cfg.topology.to_dict())
            study.set_user_attr("space", {k: list(v) for k, v in cfg.space.choices.items()})
        ensure_study_uuid(study)
    optuna.storages.fail_stale_trials(study)
    return study


def enqueue_baselines(study: optuna.Study, topology: Topology, space: SearchSpace | None = None) -> None:
    """Enqueue each baseline that has not run yet (again after an interrupted run). A baseline the
    search space can express is enqueued with its values, so that the sampler learns from it."""
    done_or_waiting = {
        t.user_attrs.get("baseline")
        for t in study.get_trials(deepcopy=False)
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                       optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING)
    }
    final_failures = {t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False, states=(
        optuna.trial.TrialState.FAIL,)) if "retry_of" in t.user_attrs}  # failed twice: that is its verdict
    for name, params in baselines(topology):
        if name not in done_or_waiting and name not in final_failures:
            values = space.express(params) if space is not None else None
            study.enqueue_trial(values or {}, user_attrs={"baseline": name, "params": params.to_dict()})


TrialCallback = Callable[[optuna.trial.FrozenTrial, dict], None]


TRIAL_FAULTS = (WorkerError, PlacementMismatch)  # the trial fails, the study goes on
MAX_CONSECUTIVE_FAILURES = 3  # then something is wrong with the setup, not with one config
MeasureFn = Callable[..., TrialResult]  # measure(plan, model, settings, progress=...) or a stand-in


class RepeatedConfig(Exception):
    """A trial got a config another trial already measured (a fleet race): it is not measured."""


def make_objective(cfg: StudyConfig, study: optuna.Study, on_progress: Callable[[str], None],
                   host_key: str = "", measure_fn: MeasureFn = measure):
    """The Optuna objective: the trial's config (a baseline, or the space's define-by-run
    suggestion, which an enqueued proposal fixes), measured by ``measure_fn``."""
    bound_ms = cfg.settings.p99_bound_s * 1000 if cfg.settings.p99_bound_s else None

    fingerprint = cfg.topology.fingerprint()

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        trial.set_user_attr("host", host_key)
        trial.set_user_attr("hostname", socket.gethostname())
        trial.set_user_attr("tuner_pid", os.getpid())
        trial.set_user_attr("topology_fingerprint", fingerprint)
        if "baseline" in trial.user_attrs:
            params = Params.from_dict(trial.user_attrs["params"])
            if cfg.space.express(params) is not None:  # enqueued with its values: let the sampler see them
                cfg.space.suggest(trial)
        else:
            params = cfg.space.suggest(trial)
            trial.set_user_attr("params", params.to_dict())
        label = params.label()
        trial.set_user_attr("label", label)
        _wait_for_same_config(study, label, trial.number, on_progress)
        previous = _measured_config(study, label, trial.number)
        if previous is not None:
            trial.set_user_attr("repeat_of", previous)
            raise RepeatedConfig(f"{label} was measured by trial {previous}")
        try:
            the_plan = plan(cfg.topology, params)
        except Infeasible as exc:  # a baseline or an old custom space the planner refuses
            trial.set_user_attr("plan_infeasible", str(exc))
            trial.set_constraint(CONSTRAINT, INFEASIBLE_P99)
            raise optuna.TrialPruned(f"planner: {exc}") from None
        fidelity = trial.user_attrs.get("fidelity")  # screening hook: short settings for a screening trial
        try:
            result = measure_fn(the_plan, cfg.model, screening.settings_for(cfg.settings, fidelity),
                                progress=on_progress)
        except TRIAL_FAULTS as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            requeue_once(study, trial)
            raise
        if fidelity == screening.SCREEN:  # screening hook: kept in "screen_result", the trial ends PRUNED
            screening.record_screen(trial, result)
        stored = result.to_dict()
        stored["_trial"] = trial.number
        trial.set_user_attr("result", stored)
        p99 = result.p99_ms if math.isfinite(result.p99_ms) else INFEASIBLE_P99
        if bound_ms is not None:
            trial.set_constraint(CONSTRAINT, (p99 - bound_ms) if result.feasible else INFEASIBLE_P99)
        else:
            trial.set_constraint(CONSTRAINT, 0.0 if result.feasible else INFEASIBLE_P99)
        return result.throughput, (p99 if result.feasible else INFEASIBLE_P99)

    return objective


def requeue_once(study: optuna.Study, trial: optuna.Trial) -> bool:
    """A trial that failed for a transient reason (a worker crashed, hung, ran out of memory, or its
    placement was not verified) is queued once more with the same config; a retry that fails again
    is the verdict. Returns whether it was queued."""
    if "retry_of" in trial.user_attrs:
        return False
    attrs = {k: v for k, v in trial.user_attrs.items()
             if k in ("baseline", "params", "exploration", "fidelity")}  # screening hook: + "fidelity"
    study.enqueue_trial(dict(trial.params), user_attrs={**attrs, "retry_of": trial.number},
                        skip_if_exists=False)
    trial.set_user_attr("retry_queued", True)
    return True


def _wait_for_same_config(study: optuna.Study, label: str, number: int, on_progress: Callable[[str], None]) -> None:
    """Another tuner of the fleet (an earlier trial) is measuring this very config: wait for its
    result instead of measuring it twice. If that tuner dies, the heartbeat fails its trial and we
    measure it ourselves."""
    while True:
        running = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                   if t.number < number and t.user_attrs.get("label") == label]
        if not running:
            return
        other = running[0]
        age = time.time() - other.datetime_start.timestamp() if other.datetime_start else 0.0
        on_progress(f"{label} is being measured by {other.user_attrs.get('hostname', '?')} (trial {other.number}, "
                    f"{age:.0f}s); waiting for its result")
        optuna.storages.fail_stale_trials(study)
        time.sleep(1.0)


def _measured_config(study: optuna.Study, label: str, number: int) -> int | None:
    """The number of another trial that measured this config, if any."""
    for t in measured_trials(study):
        if t.number != number and t.user_attrs.get("label") == label:
            return t.number
    return None


def enqueue_proposal(study: optuna.Study, proposal: Proposal) -> None:
    """Queue a strategy's proposal: the next trial suggests exactly these values."""
    study.enqueue_trial(proposal.values, user_attrs={"proposed_by": proposal.source, "label": proposal.params.label(),
                                                     "fidelity": proposal.fidelity})  # screening hook: fidelity


def run_trials(study: optuna.Study, cfg: StudyConfig, strategy, objective, on_trial: TrialCallback,
               on_progress: Callable[[str], None], stop_flag: Callable[[], bool] | None = None,
               mutex: Callable[[], AbstractContextManager] = nullcontext) -> None:
    """The study loop (the replay in experiments/replay.py drives it too): when the queue is empty,
    ask ``strategy`` for a config and queue it; run the next queued trial; stop at ``n_trials``
    measured configs, the timeout, ``stop_flag``, or when nothing is left to measure (then the
    study's ``space_exhausted`` attribute is set)."""
    started = time.monotonic()
    failures = 0
    while True:
        # screening hook: --n-trials counts full measurements, a screening one as a fraction
        spent = screening.budget_spent(study.get_trials(deepcopy=False), strategy)
        if cfg.n_trials is not None and spent >= cfg.n_trials:
            break
        if cfg.timeout_s is not None and time.monotonic() - started >= cfg.timeout_s:
            break
        if stop_flag is not None and stop_flag():
            break
        with mutex():  # a fleet's tuners must not queue the same proposal twice
            trials = study.get_trials(deepcopy=False)
            waiting = any(t.state == optuna.trial.TrialState.WAITING for t in trials)
            proposal = None if waiting else strategy.propose(trials)
            if proposal is not None:
                enqueue_proposal(study, proposal)
        if not waiting and proposal is None:
            if not _others_running(study):
                study.set_user_attr("space_exhausted", True)
                break
            on_progress("nothing new to measure; waiting for the other hosts' trials")
            optuna.storages.fail_stale_trials(study)
            time.sleep(1.0)
            continue
        ended: list[optuna.trial.FrozenTrial] = []
        study.optimize(objective, n_trials=1, catch=(*TRIAL_FAULTS, RepeatedConfig), gc_after_trial=False,
                       callbacks=[lambda s, t, ended=ended: ended.append(t)])
        last = ended[-1] if ended else None
        if last is None or "repeat_of" in last.user_attrs:
            continue  # a repeat is neither a result nor a failure, and is not shown
        on_trial(last, summarize_trial(last))
        failures = failures + 1 if last.state == optuna.trial.TrialState.FAIL else 0
        if failures >= MAX_CONSECUTIVE_FAILURES:
            raise PlacetuneError(f"{failures} trials in a row failed (last: {last.user_attrs.get('fail_reason')}); "
                                 "fix the cause and re-run the same command to resume the study")


def study_strategy(cfg: StudyConfig):
    """The strategy for this study's space and budget (tuner/search/strategy.py ``choose_strategy``)."""
    extra = sum(1 for _, params in baselines(cfg.topology) if cfg.space.express(params) is None)
    return choose_strategy(cfg.space, cfg.sampler, cfg.seed, cfg.n_trials, extra)


def _refuse_static_space_study(study: optuna.Study) -> None:
    """Studies made before the conditional space suggested integers as categories; Optuna cannot
    mix both kinds under one name, so such a study is read (report, export) but not resumed."""
    for t in study.get_trials(deepcopy=False):
        if any(isinstance(d, optuna.distributions.CategoricalDistribution) and name in INT_DIMS
               for name, d in t.distributions.items()):
            raise StudyMismatch(f"study {study.study_name!r} was made by an older placetune (a static search space) "
                                "and cannot be resumed; give another --study-name (report and export still read it)")


def run_study(cfg: StudyConfig, on_trial: TrialCallback, on_progress: Callable[[str], None],
              stop_flag: Callable[[], bool] | None = None, measure_fn: MeasureFn = measure,
              study: optuna.Study | None = None) -> optuna.Study:
    """Run (or resume) the study until ``n_trials`` configs are measured, the timeout, or the space
    is exhausted. ``measure_fn`` stands in for ``measure`` (tests, replays); ``study`` is the one
    ``open_study(cfg)`` returned, when the caller opened it already."""
    study = open_study(cfg) if study is None else study
    _refuse_static_space_study(study)
    with StudyMutex(cfg.storage, cfg.study_name):
        enqueue_baselines(study, cfg.topology, cfg.space)
    lock = HostLock(cfg.topology, wait_s=cfg.lock_wait_s)
    objective = make_objective(cfg, study, on_progress, lock.key, measure_fn)
    if study.user_attrs.get("space_exhausted"):
        study.set_user_attr("space_exhausted", False)
    with lock:
        fail_orphaned_trials(study, lock.key)
        run_trials(study, cfg, study_strategy(cfg), objective, on_trial, on_progress, stop_flag,
                   mutex=lambda: StudyMutex(cfg.storage, cfg.study_name))
    return study


def _others_running(study: optuna.Study) -> bool:
    mine = os.getpid()
    return any(t.user_attrs.get("tuner_pid") != mine or t.user_attrs.get("hostname") != socket.gethostname()
               for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def fail_orphaned_trials(study: optuna.Study, host_key: str) -> list[int]:
    """Trials left RUNNING by a tuner of this host (same usable CPUs) that was killed: we hold
    the host lock, so nothing here is still measuring them. Mark them FAILED now instead of
    waiting for the heartbeat's grace period (which still covers other hosts)."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get("host") == host_key and t.user_attrs.get("tuner_pid") != os.getpid():
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason",
                                               f"its tuner (pid {t.user_attrs.get('tuner_pid')}) was killed "
                                               "mid-trial; failed on resume")
            if study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL):
                getter = getattr(study._storage, "get_heartbeat_stale_trial_callback", None)
                callback = getter() if getter is not None else None
                if callback is not None:  # re-queue it, as the heartbeat would
                    callback(study, study._storage.get_trial(t._trial_id))
            failed.append(t.number)
    return failed


