"""The study's objective: one trial is one config, planned, measured once, and stored.

Its steps, in order, each a function below: record which tuner runs the trial (``_record_tuner``),
decide the config (``_trial_params``), refuse a config another trial measured (``_refuse_repeat``),
plan it or prune the trial (``_plan_or_prune``), measure it (``_measure_or_requeue``) and store the
result with the objectives and the bound's constraint (``_record_result``).

Objectives: maximize throughput at the bound, minimize P99. The bound is a constraint
(``trial.set_constraint([p99 - bound])``, Optuna >= 5), so the Pareto front is made of feasible
trials only.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import replace

import optuna

from tuner.bench.measure import measure
from tuner.errors import Infeasible, PlacementMismatch, WorkerError
from tuner.machine.placement import Params, Plan, plan
from tuner.machine.topology import Topology
from tuner.results.records import TrialResult
from tuner.results.trials import best_trial, measured_trials
from tuner.search import screening
from tuner.search.space import SearchSpace

CONSTRAINT = "p99_over_bound_ms"  # <= 0: feasible
INFEASIBLE_P99 = 1e9  # objective value for trials that met no rate (keeps the front finite)
TRIAL_FAULTS = (WorkerError, PlacementMismatch)  # the trial fails, the study goes on
MeasureFn = Callable[..., TrialResult]  # measure(plan, model, settings, progress=...) or a stand-in
SAME_CONFIG_POLL_S = 1.0  # how often a tuner looks whether another host's measurement of its config ended


class RepeatedConfig(Exception):
    """A trial got a config another trial already measured (a fleet race): it is not measured."""


def killed_reason(pid: int, hostname: str) -> str:
    """The ``fail_reason`` a trial carries while it runs: what its failure means if its tuner dies
    without a word (SIGKILL, out of memory, host down) and the trial is failed by the heartbeat of
    another host or by this host's next tuner (``fail_orphaned_trials``). Any other end of the
    trial replaces it."""
    return f"its tuner (pid {pid} on {hostname}) was killed mid-trial"


# a baseline's wait for calm CPUs when its windows left it short of calm service times
# (MeasureSettings.replay_wait_s, 20 s for other configs): every speedup the study claims is over a
# baseline's figure, and a figure from windows under a neighbour sits far under the truth. In the
# simulated 16-core VM (a neighbour on 2/3 of the time, for 20 s on average) one worker with all
# cores got its replay in about 2 of 3 studies at 20 s; a model of that neighbour
# (python -m experiments.wait_model) gives 0.67 at 20 s, 0.82 at 40 s, 0.91 at 60 s, for 9 s more
# per such baseline on average
BASELINE_REPLAY_WAIT_S = 60.0


def make_objective(cfg, study: optuna.Study, on_progress: Callable[[str], None], host_key: str = "",
                   measure_fn: MeasureFn = measure) -> Callable[[optuna.Trial], tuple[float, float]]:
    """The Optuna objective of the study ``cfg`` (a ``StudyConfig``): the trial's config (a baseline,
    or the space's define-by-run suggestion, which an enqueued proposal fixes), measured by
    ``measure_fn``. Returns (throughput, P99 ms)."""
    bound_ms = cfg.settings.p99_bound_s * 1000 if cfg.settings.p99_bound_s else None
    fingerprint = cfg.topology.fingerprint()

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        _record_tuner(trial, host_key, fingerprint)
        try:
            params = _trial_params(trial, cfg.space)
            _refuse_repeat(study, trial, params.label(), on_progress)
            the_plan = _plan_or_prune(trial, cfg.topology, params)
            fidelity = trial.user_attrs.get("fidelity")  # screening: short settings for a screening trial
            settings = screening.settings_for(cfg.settings, fidelity)
            if "baseline" not in trial.user_attrs and fidelity != screening.SCREEN:
                settings = replace(settings, incumbent_rate=_incumbent(study))
            elif "baseline" in trial.user_attrs and settings.replay_wait_s > 0:
                settings = replace(settings, replay_wait_s=max(settings.replay_wait_s, BASELINE_REPLAY_WAIT_S))
            result = _measure_or_requeue(study, trial, the_plan, lambda p: measure_fn(
                p, cfg.model, settings, progress=on_progress))
        except BaseException as exc:  # its reason replaces the one written for a killed tuner
            _note_failure(trial, exc)
            raise
        trial.set_user_attr("fail_reason", "")
        if fidelity == screening.SCREEN:  # kept in "screen_result"; the trial ends PRUNED
            screening.record_screen(trial, result)
        return _record_result(trial, result, bound_ms)

    return objective


def make_subject_objective(subject, settings, on_progress: Callable[[str], None], host_key: str = "",
                           fingerprint: str = "") -> Callable[[optuna.Trial], float]:
    """The objective of a study with one value to maximize over ``subject`` (tuner.search.subject; a
    deployment's: tuner.mix.study.DeploymentSubject): the trial's config (a baseline's, stored in
    its ``config`` attr, or ``subject.suggest``'s, which an enqueued proposal fixes) measured by
    ``subject.measure`` with ``settings`` (its seed advanced by the trial's number); the result is
    stored and ``subject.value(result)`` returned. A config the planner refuses prunes the trial."""

    def objective(trial: optuna.Trial) -> float:
        _record_tuner(trial, host_key, fingerprint)
        try:
            stored = trial.user_attrs.get("config")
            config = subject.config_of(stored) if "baseline" in trial.user_attrs else subject.suggest(trial)
            trial.set_user_attr("label", config.label())
            on_progress(f"trial {trial.number}: {config.label()}")
            result = subject.measure(config, replace(settings, seed=settings.seed + trial.number), on_progress)
        except Infeasible as exc:
            trial.set_user_attr("plan_infeasible", str(exc))
            trial.set_user_attr("fail_reason", "")
            raise optuna.TrialPruned(f"planner: {exc}") from None
        except BaseException as exc:  # its reason replaces the one written for a killed tuner
            _note_failure(trial, exc)
            raise
        trial.set_user_attr("fail_reason", "")
        trial.set_user_attr("result", result.to_dict())
        return subject.value(result)

    return objective


def _incumbent(study: optuna.Study) -> float | None:
    """The best throughput a full measurement of the study has estimated so far (None: none yet):
    a searched config is first measured there, and one that fails there stops at once
    (``tuner.bench.estimate``). Baselines and screening trials are measured without it."""
    best = best_trial(study)
    return float(best.values[0]) if best is not None and best.values[0] > 0 else None


def _record_tuner(trial: optuna.Trial, host_key: str, fingerprint: str) -> None:
    """Which tuner runs the trial, on which host and topology; and the reason its failure will
    show if that tuner is killed mid-trial (see ``killed_reason``)."""
    hostname = socket.gethostname()
    trial.set_user_attr("host", host_key)
    trial.set_user_attr("hostname", hostname)
    trial.set_user_attr("tuner_pid", os.getpid())
    trial.set_user_attr("topology_fingerprint", fingerprint)
    trial.set_user_attr("fail_reason", killed_reason(os.getpid(), hostname))


def _trial_params(trial: optuna.Trial, space: SearchSpace) -> Params:
    """The trial's config, recorded as ``params`` and ``label``: a baseline's fixed params (suggested
    too when the space can express them, so that the sampler learns from them), or the space's
    suggestion."""
    if "baseline" in trial.user_attrs:
        params = Params.from_dict(trial.user_attrs["params"])
        if space.express(params) is not None:
            space.suggest(trial)
    else:
        params = space.suggest(trial)
        trial.set_user_attr("params", params.to_dict())
    trial.set_user_attr("label", params.label())
    return params


def _refuse_repeat(study: optuna.Study, trial: optuna.Trial, label: str, on_progress: Callable[[str], None]) -> None:
    """Raise ``RepeatedConfig`` (with ``repeat_of`` recorded) when another trial measured this
    config, after waiting for an earlier trial that is measuring it right now."""
    _wait_for_same_config(study, label, trial.number, on_progress)
    previous = _measured_config(study, label, trial.number)
    if previous is not None:
        trial.set_user_attr("repeat_of", previous)
        raise RepeatedConfig(f"{label} was measured by trial {previous}")


def _plan_or_prune(trial: optuna.Trial, topology: Topology, params: Params) -> Plan:
    """The config's plan; a config the planner refuses (a baseline, or an old custom space) prunes
    the trial, with the planner's reason and an infeasible constraint."""
    try:
        return plan(topology, params)
    except Infeasible as exc:
        trial.set_user_attr("plan_infeasible", str(exc))
        trial.set_constraint(CONSTRAINT, INFEASIBLE_P99)
        raise optuna.TrialPruned(f"planner: {exc}") from None


def _measure_or_requeue(study: optuna.Study, trial: optuna.Trial, the_plan: Plan,
                        measure_plan: Callable[[Plan], TrialResult]) -> TrialResult:
    """Measure the plan; a trial fault (a worker crashed, hung, ran out of memory, or the placement
    was not verified) queues the config once more before it fails the trial."""
    try:
        return measure_plan(the_plan)
    except TRIAL_FAULTS:
        requeue_once(study, trial)
        raise


def _note_failure(trial: optuna.Trial, exc: BaseException) -> None:
    """Record why the trial ends without a result (a pruned trial says it in ``plan_infeasible``)."""
    if isinstance(exc, optuna.TrialPruned | RepeatedConfig):
        reason = ""
    else:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    try:
        trial.set_user_attr("fail_reason", reason)
    except Exception:  # noqa: BLE001 - the storage itself failing: its error is the one to raise
        pass


def _record_result(trial: optuna.Trial, result: TrialResult, bound_ms: float | None) -> tuple[float, float]:
    """Store the result and the bound's constraint (<= 0: feasible); the objectives (throughput,
    P99 ms), with ``INFEASIBLE_P99`` for a config that met no rate."""
    stored = result.to_dict()
    stored["_trial"] = trial.number
    trial.set_user_attr("result", stored)
    p99 = result.p99_ms if math.isfinite(result.p99_ms) else INFEASIBLE_P99
    if not result.feasible:
        trial.set_constraint(CONSTRAINT, INFEASIBLE_P99)
    elif result.estimator == "estimate" or bound_ms is None:
        # the estimate is the rate where the long-run P99 meets the bound: feasible by construction
        # (the shown window's own P99, at a rate at or under it, is one noisy look at that)
        trial.set_constraint(CONSTRAINT, 0.0)
    else:
        trial.set_constraint(CONSTRAINT, p99 - bound_ms)
    return result.throughput, (p99 if result.feasible else INFEASIBLE_P99)


def requeue_once(study: optuna.Study, trial: optuna.Trial) -> bool:
    """A trial that failed for a transient reason (a worker crashed, hung, ran out of memory, or its
    placement was not verified) is queued once more with the same config; a retry that fails again
    is the verdict. Returns whether it was queued."""
    if "retry_of" in trial.user_attrs:
        return False
    attrs = {k: v for k, v in trial.user_attrs.items() if k in ("baseline", "params", "exploration", "fidelity")}
    study.enqueue_trial(dict(trial.params), user_attrs={**attrs, "retry_of": trial.number},
                        skip_if_exists=False)
    trial.set_user_attr("retry_queued", True)
    return True


def _wait_for_same_config(study: optuna.Study, label: str, number: int, on_progress: Callable[[str], None]) -> None:
    """Another tuner of the fleet (an earlier trial) is measuring this very config: wait for its
    result instead of measuring it twice. If that tuner dies, the heartbeat fails its trial and we
    measure it ourselves. (The storage has no change notification: it is polled.)"""
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
        time.sleep(SAME_CONFIG_POLL_S)


def _measured_config(study: optuna.Study, label: str, number: int) -> int | None:
    """The number of another trial that measured this config, if any."""
    for t in measured_trials(study):
        if t.number != number and t.user_attrs.get("label") == label:
            return t.number
    return None
