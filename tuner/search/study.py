"""The Optuna study: baselines first, then what the strategy proposes; resumable, one trial at a
time per host.

Every trial is a config measured once (the objective is in ``tuner/search/objective.py``): the
search space is conditional (always plannable) and the strategy (``tuner/search/strategy.py``)
never proposes a config already measured, being measured or queued. Only a fleet race (two hosts
picking the same config at once) can still produce a repeat: that trial is FAILED with
``user_attrs["repeat_of"]``, is not measured, and every view hides it. Only Optuna's public API.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import optuna

from tuner.bench.measure import MeasureSettings, measure
from tuner.bench.model import ModelInfo
from tuner.bench.replay import TailPool
from tuner.errors import PlacetuneError, StudyMismatch, UsageError
from tuner.machine.placement import Params
from tuner.machine.topology import Topology
from tuner.results.trials import REFIGURED, summarize_trial
from tuner.search import screening
from tuner.search.locks import HostLock, StudyMutex
from tuner.search.objective import CONSTRAINT as CONSTRAINT
from tuner.search.objective import INFEASIBLE_P99 as INFEASIBLE_P99
from tuner.search.objective import TRIAL_FAULTS, MeasureFn, RepeatedConfig, make_objective
from tuner.search.objective import requeue_once as requeue_once
from tuner.search.space import INT_DIMS, SearchSpace
from tuner.search.storage import engine_kwargs, ensure_study_uuid, quiet_optuna
from tuner.search.strategy import Proposal, choose_strategy

SAMPLERS = ("tpe", "nsga2", "random", "grid")


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
    # measured in this order: the many-worker configs first, so that the replay's tail pool
    # (tuner.bench.replay.TailPool) holds their stalls when the one-worker configs come
    candidates = [
        ("one_per_core", Params(workers=n_cores, cores_per_worker=1, intra_op_threads=1, numa_policy=policy)),
        ("intel_throughput", Params(workers=max(1, instances), cores_per_worker=chunk,
                                    intra_op_threads=chunk, numa_policy=policy)),
        ("intel_latency", Params(workers=len(nodes), cores_per_worker=max(1, per_node),
                                 intra_op_threads=max(1, per_node), numa_policy=policy)),
        ("ort_default", Params(workers=1, pin=False, intra_op_threads=0)),
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
    # screening (tuner/search/screening.py) where the space is far larger than the budget; not part of
    # the study's identity: results are full measurements either way, so a resumed run may change it
    screening: bool = True


def default_study_name(model: ModelInfo, bound_ms: float | None, scenario: str) -> str:
    bound = f"p99-{bound_ms:g}ms" if bound_ms is not None else "no-bound"
    return f"{model.name}-{model.sha256[:8]}-{bound}-{scenario}"


def make_sampler(name: str, seed: int | None, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The Optuna sampler ``--sampler`` names."""
    with quiet_optuna():  # TPE's multivariate mode is experimental
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
        if name in ("random", "grid"):  # the conditional space has no static grid: the Exhaustive strategy walks it
            return optuna.samplers.RandomSampler(seed=seed)
    raise UsageError(f"--sampler {name!r} is not one of {', '.join(SAMPLERS)}")


def _retry_stale_trial() -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    """What happens to a trial whose tuner died (heartbeat or ``fail_orphaned_trials``): queued again,
    at most twice."""
    with quiet_optuna():  # an experimental class of Optuna
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)


def _open_storage(cfg: StudyConfig) -> optuna.storages.RDBStorage:
    """The study's storage, with the heartbeat that fails (and re-queues) a dead tuner's trial."""
    heartbeat = max(1, int(round(cfg.heartbeat_s)))
    try:
        with StudyMutex(cfg.storage, "(schema)"):  # hosts starting at once must not all create the tables
            return optuna.storages.RDBStorage(
                cfg.storage, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=_retry_stale_trial(), engine_kwargs=engine_kwargs(cfg.storage))
    except Exception as exc:
        raise UsageError(f"--storage {cfg.storage}: cannot open ({str(exc).splitlines()[0][:200]})") from None


def open_study(cfg: StudyConfig) -> optuna.Study:
    """Create or join the study; refuse to resume with another model/bound/scenario, or to join
    from a host whose topology differs (unless --allow-heterogeneous)."""
    with quiet_optuna():
        study = optuna.create_study(
            storage=_open_storage(cfg), study_name=cfg.study_name, directions=["maximize", "minimize"],
            sampler=make_sampler(cfg.sampler, cfg.seed, cfg.space), load_if_exists=True,
        )
        with StudyMutex(cfg.storage, cfg.study_name):
            if "model_sha256" in study.user_attrs:
                _check_identity(study, cfg)
            else:
                _record_identity(study, cfg)
            ensure_study_uuid(study)
        optuna.storages.fail_stale_trials(study)
    return study


def _identity(cfg: StudyConfig) -> dict:
    """What a study's results depend on: the model, the bound, the scenario, and what a trial's
    throughput is (``MeasureSettings.estimator``: an estimate and a proven bound do not compare)."""
    return {"model_sha256": cfg.model.sha256,
            "p99_bound_ms": cfg.settings.p99_bound_s * 1000 if cfg.settings.p99_bound_s else None,
            "scenario": cfg.settings.scenario, "estimator": cfg.settings.estimator}


def _record_identity(study: optuna.Study, cfg: StudyConfig) -> None:
    """A new study records its identity, the machine and the space it was made with."""
    for k, v in _identity(cfg).items():
        study.set_user_attr(k, v)
    study.set_user_attr("topology_fingerprint", cfg.topology.fingerprint())
    study.set_user_attr("model", cfg.model.to_dict())
    study.set_user_attr("topology", cfg.topology.to_dict())
    study.set_user_attr("space", {k: list(v) for k, v in cfg.space.choices.items()})


def _check_identity(study: optuna.Study, cfg: StudyConfig) -> None:
    """Refuse another model/bound/scenario (unless --force) or another topology (unless
    --allow-heterogeneous or --force, which mark the study heterogeneous)."""
    existing = {"estimator": "bound", **study.user_attrs}  # a study made before estimates: proven bounds
    diff = [f"{k}: study has {existing.get(k)!r}, this run has {v!r}"
            for k, v in _identity(cfg).items() if existing.get(k) != v]
    if diff and not cfg.force:
        raise StudyMismatch(f"study {cfg.study_name!r} was made with a different setup "
                            f"({'; '.join(diff)}); use another --study-name, or --force to mix them")
    fingerprint = cfg.topology.fingerprint()
    theirs = existing.get("topology_fingerprint")
    if theirs == fingerprint:
        return
    if not (cfg.allow_heterogeneous or cfg.force):
        raise StudyMismatch(
            f"this host ({socket.gethostname()}: {cfg.topology.summary()}) has topology fingerprint "
            f"{fingerprint}, study {cfg.study_name!r} was measured on {theirs}: its results would not "
            "be comparable; run it on an identical host, or pass --allow-heterogeneous to record the "
            "fingerprint per trial (the report groups by it)")
    study.set_user_attr("heterogeneous", True)


def enqueue_baselines(study: optuna.Study, topology: Topology, space: SearchSpace | None = None,
                      entries: list[tuple[str, dict, dict]] | None = None) -> None:
    """Enqueue each baseline that has not run yet (again after an interrupted run). A baseline the
    search space can express is enqueued with its values, so that the sampler learns from it.
    ``entries`` (name, values, user attrs) stand in for a single model's baselines (a deployment's:
    tuner.mix.study.DeploymentSubject.baselines)."""
    done_or_waiting = {
        t.user_attrs.get("baseline")
        for t in study.get_trials(deepcopy=False)
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                       optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING)
    }
    final_failures = {t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False, states=(
        optuna.trial.TrialState.FAIL,)) if "retry_of" in t.user_attrs}  # failed twice: that is its verdict
    if entries is None:
        entries = [(name, (space.express(params) if space is not None else None) or {}, {"params": params.to_dict()})
                   for name, params in baselines(topology)]
    for name, values, attrs in entries:
        if name not in done_or_waiting and name not in final_failures:
            study.enqueue_trial(values, user_attrs={"baseline": name, **attrs})


TrialCallback = Callable[[optuna.trial.FrozenTrial, dict], None]
MAX_CONSECUTIVE_FAILURES = 3  # then something is wrong with the setup, not with one config
OTHERS_POLL_S = 1.0  # how often a tuner with nothing left to measure looks at the other hosts' trials


def enqueue_proposal(study: optuna.Study, proposal: Proposal) -> None:
    """Queue a strategy's proposal: the next trial suggests exactly these values."""
    study.enqueue_trial(proposal.values, user_attrs={"proposed_by": proposal.source,
                                                     "label": proposal.params.label(),
                                                     "fidelity": proposal.fidelity})


def run_trials(study: optuna.Study, cfg: StudyConfig, strategy, objective, on_trial: TrialCallback,
               on_progress: Callable[[str], None], stop_flag: Callable[[], bool] | None = None,
               mutex: Callable[[], AbstractContextManager] = nullcontext,
               summarize: Callable[[optuna.trial.FrozenTrial], object] = summarize_trial) -> None:
    """The study loop of every study, a single model's or a deployment's (the replay in
    experiments/replay.py drives it too): when the queue is empty, ask ``strategy`` for a config and
    queue it; run the next queued trial (``objective``) and tell ``on_trial`` (with ``summarize``'s
    view of it); stop at ``n_trials`` measured configs, the timeout, ``stop_flag``, or when nothing
    is left to measure (then the study's ``space_exhausted`` attribute is set).
    ``MAX_CONSECUTIVE_FAILURES`` failed trials in a row raise ``PlacetuneError``."""
    started = time.monotonic()
    failures = 0
    with quiet_optuna():  # also when driven without run_study (the replay)
        while not _should_stop(study, cfg, started, stop_flag, strategy):
            if not _queue_next(study, strategy, mutex):
                if not _others_running(study):
                    study.set_user_attr("space_exhausted", True)
                    return
                on_progress("nothing new to measure; waiting for the other hosts' trials")
                optuna.storages.fail_stale_trials(study)
                time.sleep(OTHERS_POLL_S)  # the storage has no change notification: poll it
                continue
            last = _run_next_trial(study, objective)
            if last is None or "repeat_of" in last.user_attrs:
                continue  # a repeat is neither a result nor a failure, and is not shown
            on_trial(last, summarize(last))
            failures = failures + 1 if last.state == optuna.trial.TrialState.FAIL else 0
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise PlacetuneError(f"{failures} trials in a row failed (last: {last.user_attrs.get('fail_reason')}); "
                                     "fix the cause and re-run the same command to resume the study")


def _should_stop(study: optuna.Study, cfg: StudyConfig, started: float, stop_flag: Callable[[], bool] | None,
                 strategy: object = None) -> bool:
    """``n_trials`` spent (full measurements, a screening one counting as a fraction:
    ``screening.budget_spent``), the timeout passed since ``started`` (monotonic), or ``stop_flag``."""
    spent = screening.budget_spent(study.get_trials(deepcopy=False), strategy)
    if cfg.n_trials is not None and spent >= cfg.n_trials:
        return True
    if cfg.timeout_s is not None and time.monotonic() - started >= cfg.timeout_s:
        return True
    return stop_flag is not None and stop_flag()


def _queue_next(study: optuna.Study, strategy, mutex: Callable[[], AbstractContextManager]) -> bool:
    """Whether a trial is queued: one already waits, or ``strategy`` proposes one now (under
    ``mutex``: a fleet's tuners must not queue the same proposal twice)."""
    with mutex():
        trials = study.get_trials(deepcopy=False)
        if any(t.state == optuna.trial.TrialState.WAITING for t in trials):
            return True
        proposal = strategy.propose(trials)
        if proposal is not None:
            enqueue_proposal(study, proposal)
        return proposal is not None


def _run_next_trial(study: optuna.Study, objective) -> optuna.trial.FrozenTrial | None:
    """Run the next queued trial; the trial as it ended (None if none ran)."""
    ended: list[optuna.trial.FrozenTrial] = []
    study.optimize(objective, n_trials=1, catch=(*TRIAL_FAULTS, RepeatedConfig), gc_after_trial=False,
                   callbacks=[lambda s, t: ended.append(t)])
    return ended[-1] if ended else None


def study_strategy(cfg: StudyConfig):
    """The strategy for this study's space and budget (tuner/search/strategy.py ``choose_strategy``)."""
    extra = sum(1 for _, params in baselines(cfg.topology) if cfg.space.express(params) is None)
    with quiet_optuna():  # its sampler may use experimental options
        return choose_strategy(cfg.space, cfg.sampler, cfg.seed, cfg.n_trials, extra, screen=cfg.screening)


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
    with quiet_optuna():
        study = open_study(cfg) if study is None else study
        _refuse_static_space_study(study)
        from tuner.search.subject import ModelSubject

        with StudyMutex(cfg.storage, cfg.study_name):  # what is tuned says what its baselines are
            enqueue_baselines(study, cfg.topology, entries=ModelSubject(cfg.model, cfg.topology, cfg.space,
                                                                         cfg.settings, measure_fn).baselines())
        lock = HostLock(cfg.topology, wait_s=cfg.lock_wait_s)
        objective = make_objective(cfg, study, on_progress, lock.key, measure_fn)
        if study.user_attrs.get("space_exhausted"):
            study.set_user_attr("space_exhausted", False)
        with lock:
            fail_orphaned_trials(study, lock.key)
            run_trials(study, cfg, study_strategy(cfg), objective, on_trial, on_progress, stop_flag,
                       mutex=lambda: StudyMutex(cfg.storage, cfg.study_name))
        refigure(study, cfg.settings.tails, on_progress)
    return study


REFIGURE_GROWTH = 2.0  # a figure is replayed again where the pool it could borrow from has grown this much


def refigure(study: optuna.Study, pool: TailPool, say: Callable[[str], None] = lambda _m: None) -> list[int]:
    """Replay again, with the whole study's tail pool, every figure this process replayed from a
    pool since grown ``REFIGURE_GROWTH`` times (``TailPool.grown``: the baselines, measured first,
    and the first searched configs), and keep each new figure beside its trial
    (``tuner.results.trials.REFIGURED``: Optuna's finished trials cannot change; every table, the
    report, MLflow's summary and the race read trials through it). Returns the trial numbers.

    Why (2026-12-08): a one-worker config's rate at the bound moves about 2.5 times its stalls'
    fitted mean excess, which the study's first replays borrow from only the two many-worker
    baselines' 100-200 excesses; replayed at the study's end (``experiments/final_pool.py``, the
    simulator, 40 seeds) the ORT default's median figure / truth went from 1.043 to 0.995 (64
    cores) and 1.064 to 1.033 (16), at no measuring cost."""
    done = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        stored = t.user_attrs.get("result") or {}
        key = stored.get("replay_id")
        if not key or not stored.get("feasible") or not pool.grown(key, REFIGURE_GROWTH):
            continue
        again = pool.again(key)
        if again is None or again.rate <= 0:
            continue
        study.set_user_attr(f"{REFIGURED}{t.number}", {
            "throughput": again.rate, "throughput_ci": [again.low, again.high], "was": stored["throughput"],
            "was_ci": list(stored.get("throughput_ci") or [math.nan, math.nan]), "stalls": pool.count()})
        done.append(t.number)
    if done:
        say(f"replayed {len(done)} figure(s) again with the study's whole tail pool ({pool.count()} stalls)")
    return done


def _others_running(study: optuna.Study) -> bool:
    """Whether a trial of another tuner (another process or host) is running."""
    mine = os.getpid()
    return any(t.user_attrs.get("tuner_pid") != mine or t.user_attrs.get("hostname") != socket.gethostname()
               for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def fail_orphaned_trials(study: optuna.Study, host_key: str) -> list[int]:
    """Trials left RUNNING by a tuner of this host (same usable CPUs) that was killed: we hold
    the host lock, so nothing here is still measuring them. Fail them now, and queue each again as
    the heartbeat would, instead of waiting for the heartbeat's grace period (which still covers
    other hosts). Their ``fail_reason`` was written when they started (``killed_reason``).
    Returns the failed trials' numbers."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get("host") != host_key or t.user_attrs.get("tuner_pid") == os.getpid():
            continue
        try:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # the heartbeat of another host failed it first, and re-queued it
        _retry_stale_trial()(study, t)
        failed.append(t.number)
    return failed
