"""The Optuna study: baselines first, then what the strategy proposes; resumable, one trial at a
time per host.

Objectives: maximize throughput at the bound, minimize P99. The bound is a constraint
(``trial.set_constraint([p99 - bound])``, Optuna >= 5), so the Pareto front is made of
feasible trials only. Every trial is a config measured once: the search space is conditional
(always plannable) and the strategy (``tuner/strategy.py``) never proposes a config already
measured, being measured or queued. Only a fleet race (two hosts picking the same config at
once) can still produce a repeat: that trial is FAILED with ``user_attrs["repeat_of"]``, is not
measured, and every view hides it.
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
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import optuna

from tuner.errors import Infeasible, PlacementMismatch, PlacetuneError, StudyMismatch, UsageError, WorkerError
from tuner.measure import MeasureSettings, TrialResult, measure
from tuner.model import ModelInfo
from tuner.placement import Params, plan
from tuner.space import INT_DIMS, SearchSpace
from tuner.strategy import Proposal, choose_strategy
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


class StudyMutex:
    """Serializes a study's bookkeeping (its identity, the baselines' enqueueing, the MLflow parent
    run) between tuners that share one storage, so that a fleet starting at once does not do it
    twice: a PostgreSQL advisory lock, a file lock beside a SQLite file, nothing elsewhere."""

    def __init__(self, url: str, study_name: str):
        self.url = url
        self.key = int(hashlib.sha256(f"placetune:{study_name}".encode()).hexdigest()[:15], 16)
        self._conn = None
        self._engine = None
        self._fd: int | None = None

    def __enter__(self) -> StudyMutex:
        if self.url.startswith("postgresql"):
            import sqlalchemy

            self._engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)
            self._conn = self._engine.connect()
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
        elif self.url.startswith("sqlite:///"):
            path = Path(self.url[len("sqlite:///"):])
            self._fd = os.open(f"{path}.placetune-lock", os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> bool:
        if self._conn is not None:
            import sqlalchemy

            try:
                self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            finally:
                self._conn.close()
                self._engine.dispose()
                self._conn = self._engine = None
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        return False


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


def ensure_study_uuid(study: optuna.Study) -> str:
    """The id MLflow runs carry to find their study again (given once, kept forever)."""
    if "study_uuid" not in study.user_attrs:
        study.set_user_attr("study_uuid", uuid.uuid4().hex)
    return study.user_attrs["study_uuid"]


def load_study(storage: str | None, name: str | None) -> optuna.Study:
    """An existing study, for export/report/log; the only one in the storage when no name is given."""
    url = storage_url(storage)
    if storage is None and not Path("placetune.db").is_file():
        raise UsageError("no placetune.db here: give --storage URL (the study's Optuna storage) or run this "
                         "where 'placetune optimize' ran")
    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None and not sqlite_file.is_file():  # SQLite would create an empty database there
        raise UsageError(f"--storage {url}: no database file {sqlite_file}; check the path (a study's storage "
                         "is where 'placetune optimize' wrote it)")
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


def _sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///path`` URL (None for other databases and in-memory SQLite)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


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


def measured_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that cost a measurement: complete, with a result, and not a repeat (``reused_from``:
    studies made before repeats were dropped). ``--n-trials`` counts these."""
    return [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if "result" in t.user_attrs and "reused_from" not in t.user_attrs]


def shown_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Every trial but repeats (a fleet race, or a reuse in an older study): what views show."""
    return [t for t in study.get_trials(deepcopy=False)
            if "repeat_of" not in t.user_attrs and "reused_from" not in t.user_attrs]


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


class HostLock:
    """One tuner per set of usable CPUs: overlapping trials would poison both measurements.
    A lock held by a killed process is released by the kernel (flock), so it is never stale.
    While it waits it says once who holds the lock and how long it will wait (``on_wait``,
    default: a line on stderr)."""

    def __init__(self, topology: Topology, wait_s: float = 3600.0, on_wait: Callable[[str], None] | None = None):
        key = hashlib.sha256(format_cpulist(topology.usable_cpus).encode()).hexdigest()[:12]
        self.key = f"{socket.gethostname()}:{key}"
        self.path = Path(tempfile.gettempdir()) / f"placetune-{key}.lock"
        self.wait_s = wait_s
        self.on_wait = on_wait or _say_on_stderr
        self._fd: int | None = None

    def holder(self) -> str:
        """``pid N (command line)`` of the process that wrote the lock file, as far as it can be read."""
        try:
            pid = Path(self.path).read_text().strip() or "?"
        except OSError:
            return "pid ?"
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            command = ""
        return f"pid {pid}" + (f": {command[:200]}" if command else "")

    def __enter__(self) -> HostLock:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + self.wait_s
        said = False
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.ftruncate(self._fd, 0)
                os.write(self._fd, f"{os.getpid()}\n".encode())
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = self.holder()
                    os.close(self._fd)
                    raise PlacetuneError(f"another placetune ({holder}) is measuring these CPUs "
                                         f"(lock {self.path}); overlapping trials would poison both "
                                         "measurements: wait for it (--lock-wait) or stop it") from None
                if not said:
                    self.on_wait(f"another placetune ({self.holder()}) is measuring these CPUs; waiting for it "
                                 f"to finish, at most {_duration_text(self.wait_s)} (--lock-wait)")
                    said = True
                time.sleep(0.5)

    def __exit__(self, *exc) -> bool:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        return False


def _say_on_stderr(message: str) -> None:
    import sys

    print(f"placetune: {message}", file=sys.stderr, flush=True)


def _duration_text(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g}h"
    if seconds >= 60:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


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
        try:
            result = measure_fn(the_plan, cfg.model, cfg.settings, progress=on_progress)
        except TRIAL_FAULTS as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            requeue_once(study, trial)
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


def requeue_once(study: optuna.Study, trial: optuna.Trial) -> bool:
    """A trial that failed for a transient reason (a worker crashed, hung, ran out of memory, or its
    placement was not verified) is queued once more with the same config; a retry that fails again
    is the verdict. Returns whether it was queued."""
    if "retry_of" in trial.user_attrs:
        return False
    attrs = {k: v for k, v in trial.user_attrs.items() if k in ("baseline", "params", "exploration")}
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
    study.enqueue_trial(proposal.values, user_attrs={"proposed_by": proposal.source,
                                                     "label": proposal.params.label()})


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
        if cfg.n_trials is not None and len(measured_trials(study)) >= cfg.n_trials:
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
    """The strategy for this study's space and budget (tuner/strategy.py ``choose_strategy``)."""
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
              stop_flag: Callable[[], bool] | None = None, measure_fn: MeasureFn = measure) -> optuna.Study:
    """Run (or resume) the study until ``n_trials`` configs are measured, the timeout, or the space
    is exhausted. ``measure_fn`` stands in for ``measure`` (tests, replays)."""
    study = open_study(cfg)
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
