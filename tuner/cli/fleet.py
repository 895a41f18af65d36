"""``placetune fleet``: one study shared by many hosts. The status comes from tuner.app.fleet; this
module only renders it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.table import Table

from tuner.cli.common import StorageOpt, StudyOpt, console

if TYPE_CHECKING:
    from tuner.app.fleet import FleetStatus

fleet_app = typer.Typer(help="One study shared by many hosts (PostgreSQL storage).", no_args_is_help=True)


@fleet_app.command("status")
def fleet_status(
    study: StudyOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Hosts in a shared study: trials per host, running trials and their age, best so far.

    A deployment study's best: its load factor and each model's figures.

    Example: $ placetune fleet status --storage postgresql://tuner:secret@db-host/placetune --study m-20ms
    """
    import time

    from tuner.app.fleet import read_fleet_status
    from tuner.search.storage import load_study, storage_url

    the_study = load_study(storage, study)
    status = read_fleet_status(the_study, storage_url(storage), time.time())
    console.print(hosts_table(status))
    if status.running:
        console.print(running_table(status))
    if status.waiting:
        console.print(f"{status.waiting} trial(s) queued (baselines or re-queued after a host died)", highlight=False)
    best = status.best
    if best is not None and best.load_factor is not None:  # a deployment study
        models = "; ".join(f"{name} {thr:.1f} req/s, P99 {p99:.2f} ms" for name, thr, p99 in best.models)
        console.print(f"best so far: {best.label} (trial {best.number}, {best.hostname}) load factor "
                      f"{best.load_factor:.3g}: {models}", highlight=False)
    elif best is not None:
        console.print(f"best so far: {best.label} (trial {best.number}, {best.hostname}) {best.throughput:.1f} req/s, "
                      f"P99 {best.p99_ms:.2f} ms", highlight=False)
    else:
        console.print("best so far: none feasible yet", highlight=False)


def hosts_table(status: FleetStatus) -> Table:
    """One row per host: what it measured, its trials by state, when it was last active."""
    table = Table(title=f"study {status.study_name}: {status.trials} trials, {status.measured} configs measured")
    for col in ("host (name:cpuset)", "fingerprint", "measured", "complete", "pruned", "failed", "running",
                "last activity"):
        table.add_column(col)
    for h in status.hosts:
        table.add_row(h.host, ",".join(h.fingerprints) or "-", str(h.measured), str(h.complete), str(h.pruned),
                      str(h.failed), str(h.running), _ago(h.last_activity_age_s, " ago"))
    return table


def running_table(status: FleetStatus) -> Table:
    """The trials in progress, their age and their tuner's last heartbeat."""
    table = Table(title="running trials")
    for col in ("trial", "config", "host", "age", "last heartbeat"):
        table.add_column(col)
    for t in status.running:
        beat = f"? ({status.heartbeat_error})" if status.heartbeat_error else _ago(t.heartbeat_age_s, " ago")
        table.add_row(str(t.number), t.label, t.hostname, _ago(t.age_s, ""), beat)
    return table


def _ago(seconds: float | None, suffix: str) -> str:
    return f"{seconds:.0f}s{suffix}" if seconds is not None else "-"
