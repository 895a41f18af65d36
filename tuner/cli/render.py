"""Rich renderings of topologies and plans for the terminal (no logic lives here)."""

from __future__ import annotations

import math

from rich.console import Group
from rich.table import Table
from rich.tree import Tree

from tuner.bench.estimate import SIDE_CONFIDENCE
from tuner.bench.interference import describe
from tuner.machine.cpulist import format_cpulist
from tuner.machine.placement import Plan
from tuner.machine.topology import UNKNOWN, Topology
from tuner.results.records import TrialResult


def _gib(num_bytes: int | None) -> str:
    return f"{num_bytes / 2**30:.1f} GiB" if num_bytes else "no memory info"


def topology_tree(topology: Topology) -> Group:
    """Machine > NUMA node > package > L3 group > core > PUs, with unusable PUs marked."""
    root = Tree(f"[bold]Machine[/] ({topology.source}): {topology.summary()}")
    if topology.restriction != "none":
        root.add(f"[yellow]usable CPUs restricted by {topology.restriction}[/]")
    for note in topology.notes:
        root.add(f"[dim]note: {note}[/]")
    cpus_by_node: dict[int | None, list] = {}
    unknown = [c.id for c in topology.cpus if not c.online and c.package_id == UNKNOWN]
    for cpu in topology.cpus:
        if cpu.id in unknown:
            continue
        cpus_by_node.setdefault(cpu.node, []).append(cpu)
    node_labels = {n.id: n for n in topology.nodes}
    for node_id in sorted(cpus_by_node, key=lambda n: (n is None, n or 0)):
        node = node_labels.get(node_id) if node_id is not None else None
        usable = [c.id for c in cpus_by_node[node_id] if c.usable]
        if node is not None:
            mem = _gib(node.memory_bytes) + ("" if node.memory_allowed else ", memory not allowed")
            branch = root.add(
                f"[bold cyan]NUMA node {node.id}[/] ({mem}; usable cpus {format_cpulist(usable) or '-'})"
            )
        else:
            branch = root.add(f"[bold cyan]CPUs in no NUMA node[/] (usable {format_cpulist(usable) or '-'})")
        packages: dict[int, dict[int | None, dict[int, list]]] = {}
        for cpu in cpus_by_node[node_id]:
            packages.setdefault(cpu.package, {}).setdefault(cpu.l3_group, {}).setdefault(
                cpu.core, []
            ).append(cpu)
        for package, groups in sorted(packages.items()):
            pkg_ids = {c.package_id for g in groups.values() for core in g.values() for c in core}
            pkg_branch = branch.add(f"Package {package} (physical id {', '.join(map(str, sorted(pkg_ids)))})")
            for l3, cores in sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
                members = [c.id for core in cores.values() for c in core]
                if l3 is None:
                    l3_branch = pkg_branch
                else:
                    l3_branch = pkg_branch.add(f"L3 group (cpus {format_cpulist(members)})")
                for core_index, core_cpus in sorted(cores.items(), key=lambda kv: kv[1][0].id):
                    pus = []
                    for c in sorted(core_cpus, key=lambda c: c.id):
                        if c.usable:
                            pus.append(f"[green]PU {c.id}[/]")
                        else:
                            why = "offline" if not c.online else "not allowed"
                            pus.append(f"[red]PU {c.id} ({why})[/]")
                    kind = f" {core_cpus[0].core_type}-core" if core_cpus[0].core_type else ""
                    l3_branch.add(f"Core {core_index}{kind}: " + "  ".join(pus))
    if unknown:
        root.add(f"[red]offline CPUs (topology unknown): {format_cpulist(unknown)}[/]")
    parts: list = [root]
    if len(topology.nodes) > 1 and all(n.distances for n in topology.nodes):
        table = Table(title="NUMA distances", show_edge=False)
        table.add_column("node")
        for n in topology.nodes:
            table.add_column(str(n.id), justify="right")
        for n in topology.nodes:
            table.add_row(str(n.id), *(str(d) for d in n.distances or ()))
        parts.append(table)
    return Group(*parts)


def plan_table(plan: Plan) -> Table:
    table = Table(title=f"Plan {plan.params.label()}")
    table.add_column("worker", justify="right")
    table.add_column("cpus")
    table.add_column("nodes")
    table.add_column("memory policy")
    for w in plan.workers:
        table.add_row(
            str(w.index),
            format_cpulist(w.cpus) or "any (not pinned)",
            format_cpulist(w.nodes) or "-",
            f"{w.mem_policy} {format_cpulist(w.mem_nodes)}".strip(),
        )
    table.caption = (
        f"load generator cpus: {format_cpulist(plan.io_cpus) or 'shared with workers'}"
        + "".join(f"\n{n}" for n in plan.notes)
    )
    return table


def result_table(result: TrialResult) -> Group:
    """A measured TrialResult: the headline numbers, the placement seen, every window."""
    head = Table(title=f"{result.model.name}: {result.params.label()} "
                 f"({result.scenario} scenario)", show_header=False)
    head.add_column("what")
    head.add_column("value")
    bound = f"{result.p99_bound_ms:g} ms" if result.p99_bound_ms is not None else "none"
    word = "[yellow]undecided[/]" if result.verdict == "undecided" else "[red]infeasible[/]"
    verdict = "[green]feasible[/]" if result.feasible else f"{word}: {result.reason}"
    head.add_row("P99 bound", bound)
    head.add_row("result", verdict)
    head.add_row("throughput", _throughput_text(result))
    head.add_row("latency P50/P90/P99/P99.9",
                 f"{result.p50_ms:.2f} / {result.p90_ms:.2f} / {result.p99_ms:.2f} / {result.p999_ms:.2f} ms"
                 + _interval(result.p99_ci_ms, result.confidence, "ms", "P99 "))
    head.add_row("interference", describe(result.interference.to_dict()))
    head.add_row("capacity (closed loop)", f"{result.capacity:.1f} req/s")
    head.add_row("unloaded P50/P99", f"{result.unloaded_p50_ms:.2f} / {result.unloaded_p99_ms:.2f} ms")
    head.add_row("CPU use", f"workers {result.cpu_util:.2f} cores "
                 f"({', '.join(f'{c:.2f}' for c in result.worker_cpu)}); harness {result.harness_cpu:.3f}")
    for seen in result.placement:
        head.add_row(f"worker {seen.index} seen", f"pid {seen.pid}, {seen.threads} threads on cpus "
                     f"{' | '.join(seen.thread_cpus)}, memory {seen.memory_policy}")
    for note in result.notes:
        head.add_row("note", note)
    windows = Table(title="windows")
    for col in ("scenario", "offered/s", "achieved/s", "requests", "P50 ms", "P99 ms", "verdict"):
        windows.add_column(col, justify="right" if col != "verdict" else "left")
    for w in result.windows:
        windows.add_row(w.scenario, f"{w.offered_rate:.1f}" if w.offered_rate else "-",
                        f"{w.achieved_rate:.1f}", str(w.requests), f"{w.p50_ms:.2f}",
                        f"{w.p99_ms:.2f}", "pass" if w.passed else f"{w.verdict}: {w.reason}")
    return Group(head, windows)


def _throughput_text(result: TrialResult) -> str:
    """'412.0 req/s (estimate; bracket 380.0-440.0 req/s, each end shown at 80%)', or for a proven
    lower bound (the bound rule, older results) its 95% bounds."""
    if result.estimator != "estimate":
        return f"{result.throughput:.1f} req/s (proven lower bound)" + _interval(
            result.throughput_ci, result.confidence, "req/s")
    lo, hi = result.throughput_ci
    high = f"{hi:.1f}" if math.isfinite(hi) else "?"
    return (f"{result.throughput:.1f} req/s (estimate; bracket {lo:.1f}-{high} req/s, each end shown at "
            f"{round(SIDE_CONFIDENCE * 100)}%)")


def _interval(bounds, confidence: float, unit: str, what: str = "") -> str:
    """ " (P99 95% bounds 3.10-4.20 ms)", or "" when the result has no interval (older results)."""
    lo, hi = (float(v) for v in bounds)
    if not (math.isfinite(lo) and math.isfinite(confidence)):
        return ""
    return f" ({what}{round(confidence * 100)}% bounds {lo:.1f}-{hi:.1f} {unit})"
