"""The Optuna study: baselines first, then sampled configs; resumable, one trial at a time per host.

Objectives: maximize throughput at the bound, minimize P99. The bound is a constraint
(``trial.set_constraint([p99 - bound])``, Optuna >= 5), so the Pareto front is made of
feasible trials only. Trials whose params the planner rejects are PRUNED before any
measurement, with the planner's reason in ``user_attrs["plan_infeasible"]``.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import socket
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna

from tuner.errors import PlacementMismatch, PlacetuneError, StudyMismatch, UsageError, WorkerError
from tuner.measure import MeasureSettings, TrialResult, measure
from tuner.model import ModelInfo
from tuner.placement import Params, plan
from tuner.space import SearchSpace, check
from tuner.topology import Topology, format_cpulist

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
    candidates = [
        ("ort_default", Params(workers=1, pin=False, intra_op_threads=0)),
        ("intel_throughput", Params(workers=max(1, n_cores // chunk), cores_per_worker=chunk,
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
    if name == "grid":
        return optuna.samplers.GridSampler({k: list(v) for k, v in space.varying.items()}, seed=seed)
    raise UsageError(f"--sampler {name!r} is not one of {', '.join(SAMPLERS)}")


def open_study(cfg: StudyConfig) -> optuna.Study:
    """Create or resume the study; refuse to resume with another model/topology/bound/scenario."""
    try:
        storage = optuna.storages.RDBStorage(cfg.storage, heartbeat_interval=10, grace_period=40,
                                             engine_kwargs=engine_kwargs(cfg.storage))
    except Exception as exc:
        raise UsageError(f"--storage {cfg.storage}: cannot open ({str(exc).splitlines()[0][:200]})") from None
    study = optuna.create_study(
        storage=storage, study_name=cfg.study_name, directions=["maximize", "minimize"],
        sampler=make_sampler(cfg.sampler, cfg.seed, cfg.space), load_if_exists=True,
    )
    identity = {
        "model_sha256": cfg.model.sha256,
        "topology_fingerprint": cfg.topology.fingerprint(),
        "p99_bound_ms": cfg.settings.p99_bound_s * 1000 if cfg.settings.p99_bound_s else None,
        "scenario": cfg.settings.scenario,
    }
    existing = study.user_attrs
    if existing:
        diff = [f"{k}: study has {existing.get(k)!r}, this run has {v!r}"
                for k, v in identity.items() if existing.get(k) != v]
        if diff and not cfg.force:
            raise StudyMismatch(f"study {cfg.study_name!r} was made with a different setup ({'; '.join(diff)}); "
                                "use another --study-name, or --force to mix them")
    else:
        for k, v in identity.items():
            study.set_user_attr(k, v)
        study.set_user_attr("model", cfg.model.to_dict())
        study.set_user_attr("topology", cfg.topology.to_dict())
        study.set_user_attr("space", {k: list(v) for k, v in cfg.space.choices.items()})
    if "study_uuid" not in study.user_attrs:
        study.set_user_attr("study_uuid", uuid.uuid4().hex)
    optuna.storages.fail_stale_trials(study)
    return study


def load_study(storage: str | None, name: str | None) -> optuna.Study:
    """An existing study, for export/report/log; the only one in the storage when no name is given."""
    url = storage_url(storage)
    if storage is None and not Path("placetune.db").is_file():
        raise UsageError("no placetune.db here: give --storage URL (the study's Optuna storage) or run this "
                         "where 'placetune optimize' ran")
    try:
        rdb = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))
        names = [s.study_name for s in optuna.get_all_study_summaries(rdb, include_best_trial=False)]
    except Exception as exc:
        raise UsageError(f"--storage {url}: cannot open ({str(exc).splitlines()[0][:200]})") from None
    if name is None:
        if len(names) != 1:
            listed = ", ".join(names) if names else "none"
            raise UsageError(f"{len(names)} studies in {url} ({listed}): choose one with --study NAME")
        name = names[0]
    if name not in names:
        raise UsageError(f"no study {name!r} in {url}; studies there: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=rdb)


SQLITE_BUSY_TIMEOUT_S = 60.0


def engine_kwargs(url: str) -> dict:
    """SQLAlchemy options: a SQLite file locked by another process is waited for (up to a minute)
    instead of failing at once; server databases get connection health checks."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {"pool_pre_ping": True}


def storage_url(storage: str | None) -> str:
    """``--storage`` or the default SQLite file in the working directory."""
    return storage or f"sqlite:///{Path('placetune.db').resolve()}"


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


def enqueue_baselines(study: optuna.Study, topology: Topology) -> None:
    """Enqueue each baseline that has not run yet (again after an interrupted run)."""
    done_or_waiting = {
        t.user_attrs.get("baseline")
        for t in study.get_trials(deepcopy=False)
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                       optuna.trial.TrialState.WAITING)
    }
    for name, params in baselines(topology):
        if name not in done_or_waiting:
            study.enqueue_trial({}, user_attrs={"baseline": name, "params": params.to_dict()})


class HostLock:
    """One tuner per set of usable CPUs: overlapping trials would poison both measurements.
    A lock held by a killed process is released by the kernel (flock), so it is never stale."""

    def __init__(self, topology: Topology, wait_s: float = 3600.0):
        key = hashlib.sha256(format_cpulist(topology.usable_cpus).encode()).hexdigest()[:12]
        self.key = f"{socket.gethostname()}:{key}"
        self.path = Path(tempfile.gettempdir()) / f"placetune-{key}.lock"
        self.wait_s = wait_s
        self._fd: int | None = None

    def __enter__(self) -> HostLock:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.ftruncate(self._fd, 0)
                os.write(self._fd, f"{os.getpid()}\n".encode())
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    try:
                        holder = Path(self.path).read_text().strip() or "?"
                    except OSError:
                        holder = "?"
                    os.close(self._fd)
                    raise PlacetuneError(f"another placetune (pid {holder}) is measuring these CPUs "
                                         f"(lock {self.path}); overlapping trials would poison both "
                                         "measurements: wait for it (--lock-wait) or stop it") from None
                time.sleep(0.5)

    def __exit__(self, *exc) -> bool:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        return False


TrialCallback = Callable[[optuna.trial.FrozenTrial, dict], None]


TRIAL_FAULTS = (WorkerError, PlacementMismatch)  # the trial fails, the study goes on
MAX_CONSECUTIVE_FAILURES = 3  # then something is wrong with the setup, not with one config


def make_objective(cfg: StudyConfig, study: optuna.Study, on_progress: Callable[[str], None],
                   host_key: str = ""):
    bound_ms = cfg.settings.p99_bound_s * 1000 if cfg.settings.p99_bound_s else None

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        trial.set_user_attr("host", host_key)
        trial.set_user_attr("tuner_pid", os.getpid())
        if "baseline" in trial.user_attrs:
            params = Params.from_dict(trial.user_attrs["params"])
        else:
            values = {dim: trial.suggest_categorical(dim, list(choices))
                      for dim, choices in cfg.space.varying.items()}
            reason = check(cfg.space, cfg.topology, values)
            params = cfg.space.params(values) if reason is None else None
            if reason is not None:
                try:
                    trial.set_user_attr("label", cfg.space.params(values).label())
                except UsageError:
                    pass
                trial.set_user_attr("plan_infeasible", reason)
                trial.set_constraint(CONSTRAINT, INFEASIBLE_P99)
                raise optuna.TrialPruned(f"planner: {reason}")
            trial.set_user_attr("params", params.to_dict())
        trial.set_user_attr("label", params.label())
        previous = _same_config(study, params.label(), trial.number)
        if previous is not None:
            result = TrialResult.from_dict(previous)
            trial.set_user_attr("reused_from", previous.get("_trial", -1))
        else:
            try:
                result = measure(plan(cfg.topology, params), cfg.model, cfg.settings, progress=on_progress)
            except TRIAL_FAULTS as exc:
                trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
                raise
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


def _same_config(study: optuna.Study, label: str, number: int) -> dict | None:
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.number != number and t.user_attrs.get("label") == label and "result" in t.user_attrs:
            return t.user_attrs["result"]
    return None


def run_study(cfg: StudyConfig, on_trial: TrialCallback, on_progress: Callable[[str], None],
              stop_flag: Callable[[], bool] | None = None) -> optuna.Study:
    """Run (or resume) the study until ``n_trials`` trials in total have finished, or the timeout."""
    study = open_study(cfg)
    enqueue_baselines(study, cfg.topology)
    started = time.monotonic()
    lock = HostLock(cfg.topology, wait_s=cfg.lock_wait_s)
    objective = make_objective(cfg, study, on_progress, lock.key)
    failures = 0
    with lock:
        fail_orphaned_trials(study, lock.key)
        while True:
            finished = len(_finished(study))
            if cfg.n_trials is not None and finished >= cfg.n_trials:
                break
            if cfg.timeout_s is not None and time.monotonic() - started >= cfg.timeout_s:
                break
            if stop_flag is not None and stop_flag():
                break
            ended: list[optuna.trial.FrozenTrial] = []
            study.optimize(objective, n_trials=1, catch=TRIAL_FAULTS, gc_after_trial=False,
                           callbacks=[lambda s, t, ended=ended: (ended.append(t), on_trial(t, summarize_trial(t)))])
            last = ended[-1] if ended else None
            if last is None:
                continue
            failures = failures + 1 if last.state == optuna.trial.TrialState.FAIL else 0
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise PlacetuneError(f"{failures} trials in a row failed (last: {last.user_attrs.get('fail_reason')}); "
                                     "fix the cause and re-run the same command to resume the study")
            if cfg.sampler == "grid" and _grid_exhausted(study, cfg.space):
                break
    return study


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
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            failed.append(t.number)
    return failed


def _grid_exhausted(study: optuna.Study, space: SearchSpace) -> bool:
    sampled = sum(1 for t in study.get_trials(deepcopy=False) if "baseline" not in t.user_attrs)
    return sampled >= space.size()


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
    """Feasible trials that no other feasible trial beats on both throughput and P99."""
    trials = feasible_trials(study)
    front = []
    for t in trials:
        thr, p99 = t.values
        dominated = any(
            (o.values[0] >= thr and o.values[1] <= p99) and (o.values[0] > thr or o.values[1] < p99)
            for o in trials
        )
        if not dominated:
            front.append(t)
    unique: dict[str, optuna.trial.FrozenTrial] = {}
    for t in sorted(front, key=lambda t: (-t.values[0], t.number)):
        unique.setdefault(t.user_attrs.get("label", str(t.number)), t)
    return list(unique.values())


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    trials = feasible_trials(study)
    return max(trials, key=lambda t: (t.values[0], -t.values[1], -t.number)) if trials else None


def baseline_results(study: optuna.Study) -> dict[str, dict]:
    out = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if "baseline" in t.user_attrs and "result" in t.user_attrs:
            out[t.user_attrs["baseline"]] = t.user_attrs["result"]
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
