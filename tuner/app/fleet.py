"""The state of a study shared by many hosts (``placetune fleet status``): trials per host, running
trials and their age, the best so far. Built from Optuna's public API (``Study.get_trials`` and the
``FrozenTrial`` fields); repeats (a fleet race, ``user_attrs["repeat_of"]``) are not trials anyone
ran, so they are left out like in every other view. A deployment study reads the same, its best
(``tuner.app.kinds``) being the largest passing load factor.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, replace

import optuna

from tuner.app.kinds import BestSoFar as BestSoFar
from tuner.app.kinds import kind_of
from tuner.results.trials import measured_trials, shown_trials

NOT_STARTED = "(not started)"  # the host of a trial no tuner has picked up yet (queued)


@dataclass(frozen=True)
class HostStatus:
    """One tuner host of the fleet (``name:cpuset``: one host may run tuners on disjoint CPUs)."""

    host: str
    hostname: str
    fingerprints: tuple[str, ...]  # topology fingerprints its trials recorded (more than one: mixed)
    measured: int  # configs it measured (what --n-trials counts)
    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int
    last_activity_age_s: float | None  # since its last trial started or ended; None: never


@dataclass(frozen=True)
class RunningTrial:
    number: int
    label: str
    hostname: str
    age_s: float | None  # since the trial started
    heartbeat_age_s: float | None  # since its tuner's last heartbeat; None: none recorded


@dataclass(frozen=True)
class FleetStatus:
    study_name: str
    trials: int  # every trial but repeats
    measured: int
    hosts: tuple[HostStatus, ...]  # sorted by host
    running: tuple[RunningTrial, ...]
    waiting: int  # queued trials (baselines, proposals, retries after a host died)
    best: BestSoFar | None  # None: nothing feasible yet
    heartbeat_error: str | None = None  # why the heartbeats could not be read (None: they were)


def fleet_status(study: optuna.Study, now_s: float,
                 heartbeat_ages_s: Mapping[int, float] | None = None) -> FleetStatus:
    """Summarize ``study`` at ``now_s`` (seconds since the epoch, ``time.time()``); ``heartbeat_ages_s``
    maps a running trial's number to the seconds since its last heartbeat, where known."""
    trials = shown_trials(study)
    measured = measured_trials(study)
    measured_by_host: dict[str, int] = {}
    for t in measured:
        host = t.user_attrs.get("host") or NOT_STARTED
        measured_by_host[host] = measured_by_host.get(host, 0) + 1
    by_host: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for t in trials:
        by_host.setdefault(t.user_attrs.get("host") or NOT_STARTED, []).append(t)
    hosts = tuple(_host_status(host, mine, measured_by_host.get(host, 0), now_s)
                  for host, mine in sorted(by_host.items()))
    ages = heartbeat_ages_s or {}
    running = tuple(RunningTrial(t.number, t.user_attrs.get("label", "-"), t.user_attrs.get("hostname", "-"),
                                 _age_s(t.datetime_start, now_s), ages.get(t.number))
                    for t in trials if t.state == optuna.trial.TrialState.RUNNING)
    waiting = sum(1 for t in trials if t.state == optuna.trial.TrialState.WAITING)
    return FleetStatus(study.study_name, len(trials), len(measured), hosts, running, waiting,
                       kind_of(study).best_so_far(study))


def _host_status(host: str, trials: list[optuna.trial.FrozenTrial], measured: int, now_s: float) -> HostStatus:
    def count(state: optuna.trial.TrialState) -> int:
        return sum(1 for t in trials if t.state == state)

    stamps = [t.datetime_complete or t.datetime_start for t in trials]
    last = max((s for s in stamps if s is not None), default=None)
    fingerprints = sorted({t.user_attrs["topology_fingerprint"] for t in trials
                           if t.user_attrs.get("topology_fingerprint")})
    hostname = trials[0].user_attrs.get("hostname", "")
    states = optuna.trial.TrialState
    return HostStatus(host, hostname, tuple(fingerprints), measured, count(states.COMPLETE), count(states.PRUNED),
                      count(states.FAIL), count(states.RUNNING), count(states.WAITING), _age_s(last, now_s))


def _age_s(stamp, now_s: float) -> float | None:
    """Seconds from ``stamp`` (Optuna's naive local datetimes) to ``now_s``."""
    return now_s - stamp.timestamp() if stamp is not None else None


def read_fleet_status(study: optuna.Study, storage_url: str, now_s: float) -> FleetStatus:
    """``fleet_status`` with the running trials' heartbeats read from the study's storage; a storage
    whose heartbeats cannot be read gives a status whose ``heartbeat_error`` names why."""
    if not any(t.state == optuna.trial.TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
        return fleet_status(study, now_s)
    try:
        ages = heartbeat_ages_s(storage_url, study.study_name)
    except Exception as exc:  # a change of Optuna's tables must not break the status view
        return replace(fleet_status(study, now_s), heartbeat_error=type(exc).__name__)
    return fleet_status(study, now_s, ages)


HEARTBEATS_SQL = """
SELECT trials.number, trial_heartbeats.heartbeat, CURRENT_TIMESTAMP
FROM trial_heartbeats
JOIN trials ON trials.trial_id = trial_heartbeats.trial_id
JOIN studies ON studies.study_id = trials.study_id
WHERE studies.study_name = :study_name
"""


def heartbeat_ages_s(storage_url: str, study_name: str) -> dict[int, float]:
    """Seconds since each trial's tuner last sent a heartbeat, by trial number, on the database's clock.

    Optuna records heartbeats in its RDB storage (table ``trial_heartbeats``) but has no public API that
    reads them back, so this reads the table with SQL, by study name and trial number: no private
    attribute of Optuna's Python objects, only its (migration-versioned) schema."""
    import sqlalchemy

    from tuner.search.storage import engine_kwargs

    engine = sqlalchemy.create_engine(storage_url, poolclass=sqlalchemy.pool.NullPool, **engine_kwargs(storage_url))
    try:
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text(HEARTBEATS_SQL), {"study_name": study_name}).all()
    finally:
        engine.dispose()
    return {int(number): (_naive(now) - _naive(beat)).total_seconds() for number, beat, now in rows}


def _naive(stamp) -> datetime.datetime:
    """A database timestamp as a naive datetime in the session's time zone: SQLite returns text, and
    PostgreSQL's CURRENT_TIMESTAMP carries the zone that its heartbeat column (without one) drops."""
    if isinstance(stamp, str):
        stamp = datetime.datetime.fromisoformat(stamp)
    return stamp.replace(tzinfo=None)
