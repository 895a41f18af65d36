"""Interference, measured from /proc and /sys rather than guessed.

Per window: CPU steal on the trial's CPUs (/proc/stat), foreign CPU load on them (their busy
time minus our workers' own CPU time: other processes), and per worker the involuntary context
switches (/proc/PID/task/*/status) and CPU migrations (/proc/PID/task/*/sched, where the kernel
exposes se.nr_migrations) of its threads; NUMA local vs remote allocations from the nodes'
numastat (system-wide counters, where exposed). The parsing functions are pure (text in,
numbers out); ``snapshot`` reads the files; ``window_interference`` turns two snapshots into the
window's figures and says whether the window was disturbed.
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass, field

STEAL_PCT_DISTURBED = 5.0  # percent of the trial CPUs' time stolen by the hypervisor
FOREIGN_CPU_DISTURBED = 0.25  # cores of other processes' work on the trial's CPUs
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuTimes:
    busy: int  # jiffies running anything (user, nice, system, irq, softirq)
    steal: int
    total: int  # every state, idle and steal included


def parse_proc_stat(text: str) -> dict[int, CpuTimes]:
    """Per-CPU times from /proc/stat (the aggregate "cpu" line is skipped)."""
    cpus = {}
    for line in text.splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        v = [int(x) for x in values[:8]] + [0] * (8 - len(values[:8]))
        user, nice, system, idle, iowait, irq, softirq, steal = v
        cpus[int(name[3:])] = CpuTimes(user + nice + system + irq + softirq, steal, sum(v))
    return cpus


def parse_status_switches(text: str) -> int:
    """nonvoluntary_ctxt_switches from a /proc/PID/task/TID/status text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("nonvoluntary_ctxt_switches:"):
            return int(line.split(":", 1)[1])
    return 0


def parse_sched_migrations(text: str) -> int | None:
    """se.nr_migrations from a /proc/PID/task/TID/sched text; None when the kernel does not show it."""
    for line in text.splitlines():
        if line.strip().startswith("se.nr_migrations"):
            return int(float(line.split(":", 1)[1]))
    return None


def parse_numastat(text: str) -> tuple[int, int]:
    """(local_node, other_node) page allocations from /sys/devices/system/node/nodeN/numastat."""
    values = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
    return int(values.get("local_node", 0)), int(values.get("other_node", 0))


@dataclass(frozen=True)
class Snapshot:
    cpu: dict[int, CpuTimes]
    switches: int  # involuntary context switches over every thread of every worker
    migrations: int | None
    numa: tuple[int, int] | None  # (local, remote) allocations, summed over nodes
    tasks: dict = field(default_factory=dict)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def snapshot(pids: list[int], root: str = "/") -> Snapshot:
    """Read the counters now (missing files count as absent, never as an error)."""
    cpu = parse_proc_stat(_read(os.path.join(root, "proc/stat")))
    switches, migrations, seen_sched = 0, 0, False
    for pid in pids:
        for task in glob.glob(os.path.join(root, f"proc/{pid}/task/*")):
            switches += parse_status_switches(_read(os.path.join(task, "status")))
            m = parse_sched_migrations(_read(os.path.join(task, "sched")))
            if m is not None:
                migrations, seen_sched = migrations + m, True
    nodes = glob.glob(os.path.join(root, "sys/devices/system/node/node*/numastat"))
    numa = None
    if nodes:
        pairs = [parse_numastat(_read(n)) for n in nodes]
        numa = (sum(p[0] for p in pairs), sum(p[1] for p in pairs))
    return Snapshot(cpu, switches, migrations if seen_sched else None, numa)


def window_interference(before: Snapshot, after: Snapshot, cpus: list[int], wall_s: float,
                        workers_cpu_s: float, clock_ticks: int = CLOCK_TICKS) -> dict:
    """The window's interference on ``cpus`` (the trial's CPUs): steal_pct, foreign_cpu (cores),
    involuntary_ctx_switches, migrations, numa_local / numa_remote, and ``disturbed``."""
    d_busy = d_steal = d_total = 0
    for c in cpus:
        if c in before.cpu and c in after.cpu:
            d_busy += after.cpu[c].busy - before.cpu[c].busy
            d_steal += after.cpu[c].steal - before.cpu[c].steal
            d_total += after.cpu[c].total - before.cpu[c].total
    steal_pct = 100.0 * d_steal / d_total if d_total > 0 else math.nan
    foreign = max(0.0, d_busy / clock_ticks - workers_cpu_s) / wall_s if wall_s > 0 and d_total > 0 else math.nan
    out = {
        "steal_pct": steal_pct,
        "foreign_cpu": foreign,
        "involuntary_ctx_switches": after.switches - before.switches,
        "migrations": (after.migrations - before.migrations
                       if after.migrations is not None and before.migrations is not None else None),
    }
    if before.numa and after.numa:
        out["numa_local"] = after.numa[0] - before.numa[0]
        out["numa_remote"] = after.numa[1] - before.numa[1]
    out["disturbed"] = is_disturbed(out)
    return out


def worker_calm(before: Snapshot, after: Snapshot, cpus: list[int], wall_s: float, own_cpu_s: float,
                clock_ticks: int = CLOCK_TICKS) -> bool:
    """Whether one worker's CPUs were calm over a segment: ``window_interference`` on its CPUs alone
    (``own_cpu_s``: the CPU time of the workers that run there) found no disturbance."""
    return not window_interference(before, after, cpus, wall_s, own_cpu_s, clock_ticks)["disturbed"]


def is_disturbed(figures: dict) -> bool:
    """Steal or foreign load over the thresholds (unknown figures never disturb)."""
    steal, foreign = figures.get("steal_pct", math.nan), figures.get("foreign_cpu", math.nan)
    return bool((steal == steal and steal > STEAL_PCT_DISTURBED)
                or (foreign == foreign and foreign > FOREIGN_CPU_DISTURBED))


def summarise(windows: list[dict], result_window: dict) -> dict:
    """A result's ``interference``: the result window's figures, its service-time CV, and how many
    of the measurement's windows were disturbed."""
    figures = dict(result_window.get("interference") or {})
    return {
        "steal_pct": figures.get("steal_pct", math.nan),
        "foreign_cpu": figures.get("foreign_cpu", math.nan),
        "involuntary_ctx_switches": figures.get("involuntary_ctx_switches"),
        "migrations": figures.get("migrations"),
        "service_cv": result_window.get("service_cv", math.nan),
        "disturbed_windows": sum(bool((w.get("interference") or {}).get("disturbed")) for w in windows),
        **{k: figures[k] for k in ("numa_local", "numa_remote") if k in figures},
    }


def describe(interference: dict) -> str:
    """One line of a result's interference diagnostics (tuner.bench.interference)."""
    parts = []
    for key, fmt in (("steal_pct", "steal {:.1f}%"), ("foreign_cpu", "foreign load {:.2f} cores"),
                     ("involuntary_ctx_switches", "{:.0f} involuntary switches"),
                     ("migrations", "{:.0f} migrations"), ("service_cv", "service CV {:.2f}"),
                     ("disturbed_windows", "{} disturbed windows")):
        value = interference.get(key)
        if value is not None and value == value:
            parts.append(fmt.format(value))
    return ", ".join(parts) or "not measured"
