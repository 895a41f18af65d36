"""Read the CPU and NUMA topology from a Linux filesystem root (``/`` or a captured dump).

The reader follows the kernel's documentation of ``/sys/devices/system/cpu`` and
``/sys/devices/system/node`` (Documentation/ABI/stable/sysfs-devices-system-cpu,
Documentation/admin-guide/cputopology.rst) and degrades when files are missing:

- a physical core is identified by ``(package, die, cluster, core_id)``; sibling masks
  (``core_cpus_list`` / ``thread_siblings``) are used only where ``core_id`` is absent, and a CPU
  with neither is a core of its own (hwloc makes no core object there);
- a CPU is online when ``cpu/online`` lists it, else when its own ``cpuN/online`` is not ``0``;
- with no ``node/`` folder the machine has one NUMA node holding every CPU;
- a node's CPUs are its ``cpumap``; a node whose CPUs overlap an earlier node's (a buggy BIOS)
  is dropped, as hwloc drops it; a CPU no node claims (an offline one) belongs to the node its
  ``cpuN/nodeM`` link names if that node exists, else to none (``node=None``);
- a CPU set the kernel gives twice (hex mask and ``_list``) is read from the mask, as hwloc does;
  where the two disagree about online CPUs (a corrupted dump), the one consistent with the
  CPUs' ``physical_package_id`` wins and ``Topology.notes`` says so; a cache group never spans
  packages;
- usable CPUs are online AND allowed: the cgroup cpuset (v1 or v2; the cgroup is named by
  ``proc/self/cpuset``, else ``proc/self/cgroup``, as hwloc reads them) under the root, and,
  for the live root ``/`` only, this process's affinity mask.

The file reads are in ``fsroot``, each CPU's package/core/caches in ``sysfs_cpus``, the cgroup cpuset
in ``cgroup``; this module reads the CPUs, the nodes and the allowed sets and assembles the ``Topology``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tuner.errors import TopologyError
from tuner.machine.cgroup import cgroup_cpuset
from tuner.machine.cpulist import format_cpulist, parse_cpulist
from tuner.machine.fsroot import CPU_DIR, NODE_DIR, Conflicts, FsRoot, conflict_notes, numbered, pick_cpuset
from tuner.machine.sysfs_cpus import read_cpus
from tuner.machine.topology import NumaNode, Topology


def read_topology(root: str | os.PathLike = "/") -> Topology:
    """Read the topology below ``root``; ``"/"`` is the live machine.

    Raises TopologyError when the root holds no CPU information at all.
    """
    fs = FsRoot(root)
    live = Path(root).resolve() == Path("/")
    notes: list[str] = []
    conflicts: Conflicts = []
    online, all_ids = _cpu_ids(fs)
    node_dirs = numbered(fs.listdir(NODE_DIR), "node")
    node_ids, cpu_node = _cpu_nodes(fs, node_dirs, all_ids, online, notes, conflicts)
    allowed, mems, restriction = _allowed_cpus_and_mems(fs, all_ids, live)
    return Topology(
        cpus=read_cpus(fs, all_ids, online, allowed, cpu_node, conflicts),
        nodes=tuple(_node(fs, node, node_dirs, node_ids, all_ids, cpu_node, mems) for node in node_ids),
        source="/" if live else str(Path(root)),
        restriction=" and ".join(restriction) if restriction else "none",
        notes=tuple(notes + conflict_notes(conflicts)),
    )


def _cpu_ids(fs: FsRoot) -> tuple[set[int], list[int]]:
    """(online CPUs, every CPU the root knows of: a cpuN folder, online or present)."""
    if not fs.path(CPU_DIR).is_dir():
        raise TopologyError(
            f"{fs.path(CPU_DIR)} does not exist: --fsroot must point at a directory holding "
            "sys/devices/system/cpu (a machine's root or a captured dump)"
        )
    known = numbered(fs.listdir(CPU_DIR), "cpu")
    online = _online_cpus(fs, known)
    present = fs.read_set(f"{CPU_DIR}/present")
    all_ids = sorted(set(known) | online | (set(present) if present else set()))
    if not all_ids:
        raise TopologyError(f"no CPU found below {fs.path(CPU_DIR)}")
    return online, all_ids


def _cpu_nodes(fs: FsRoot, node_dirs: list[int], all_ids: list[int], online: set[int], notes: list[str],
               conflicts: Conflicts) -> tuple[list[int], dict[int, int | None]]:
    """(the NUMA nodes kept, each CPU's node or None); one node holding every CPU when sysfs has none."""
    node_cpus = _numa_node_cpus(fs, node_dirs, online, notes, conflicts)
    node_ids = sorted(node_cpus)
    if not node_ids:
        notes.append("no NUMA information: one node holds every CPU")
        return [0], dict.fromkeys(all_ids, 0)
    cpu_node: dict[int, int | None] = {}
    for cpu in all_ids:
        owner = next((n for n in node_ids if cpu in node_cpus[n]), None)
        if owner is None:  # not in any cpumap (offline): its cpuN/nodeM link, if that node exists
            owner = next((n for n in numbered(fs.listdir(f"{CPU_DIR}/cpu{cpu}"), "node") if n in node_cpus), None)
        cpu_node[cpu] = owner
    return node_ids, cpu_node


def _allowed_cpus_and_mems(fs: FsRoot, all_ids: list[int], live: bool
                           ) -> tuple[set[int], frozenset[int] | None, list[str]]:
    """(CPUs the process may run on, memory nodes it may use or None for all, where the limits came from)."""
    cg_cpus, cg_mems, restriction_source = cgroup_cpuset(fs.read)
    allowed = set(all_ids)
    restriction = []
    if cg_cpus is not None:
        allowed &= cg_cpus
        restriction.append(restriction_source)
    if live:
        try:
            affinity = os.sched_getaffinity(0)
        except OSError:
            affinity = set(all_ids)
        if set(all_ids) - affinity:
            restriction.append("process affinity mask")
        allowed &= affinity
        match = re.search(r"Mems_allowed_list:\s*(\S+)", fs.read("proc/self/status") or "")
        if match and cg_mems is None:
            cg_mems = parse_cpulist(match.group(1))
    return allowed, cg_mems, restriction




def _node(fs: FsRoot, node: int, node_dirs: list[int], node_ids: list[int], all_ids: list[int],
          cpu_node: dict[int, int | None], mems: frozenset[int] | None) -> NumaNode:
    """One kept NUMA node: its CPUs, memory and distances to the other kept nodes."""
    distances = None
    text = fs.read(f"{NODE_DIR}/node{node}/distance")
    if text is not None:
        try:
            values = tuple(int(v) for v in text.split())
        except ValueError:
            values = ()
        if len(values) == len(node_dirs):  # one per node folder, dropped nodes included
            distances = tuple(values[node_dirs.index(other)] for other in node_ids)
    memory = _node_memory(fs, node)
    if memory is None and len(node_ids) == 1:
        memory = _machine_memory(fs)
    return NumaNode(
        id=node,
        cpus=tuple(c for c in all_ids if cpu_node.get(c) == node),
        memory_bytes=memory,
        distances=distances,
        memory_allowed=mems is None or node in mems,
    )


def _online_cpus(fs: FsRoot, known: list[int]) -> set[int]:
    online = fs.read_set(f"{CPU_DIR}/online")
    if online is not None and (online or not known):
        return set(online)
    result = set()
    for cpu in known:
        flag = fs.read_int(f"{CPU_DIR}/cpu{cpu}/online")
        if flag is None or flag != 0:  # cpu0 often has no online file: it cannot go offline
            result.add(cpu)
    return result



def _node_memory(fs: FsRoot, node: int) -> int | None:
    text = fs.read(f"{NODE_DIR}/node{node}/meminfo")
    if text is None:
        return None
    match = re.search(r"MemTotal:\s+(\d+)\s*kB", text)
    return int(match.group(1)) * 1024 if match else None


def _machine_memory(fs: FsRoot) -> int | None:
    match = re.search(r"MemTotal:\s+(\d+)\s*kB", fs.read("proc/meminfo") or "")
    return int(match.group(1)) * 1024 if match else None



def _numa_node_cpus(fs: FsRoot, node_dirs: list[int], online: set[int], notes: list[str],
                    conflicts: Conflicts) -> dict[int, frozenset[int]]:
    """Each node's CPUs (its cpumap). As hwloc does, a node whose CPUs overlap an earlier node's (a
    buggy BIOS: every node claiming every CPU) is dropped, memory and all."""
    kept: dict[int, frozenset[int]] = {}
    claimed: set[int] = set()
    overlapping = []
    for node in node_dirs:
        base = f"{NODE_DIR}/node{node}"
        cpus = pick_cpuset(fs, f"{base}/cpumap", f"{base}/cpulist", online, conflicts) or frozenset()
        if cpus & claimed:
            overlapping.append(node)
            continue
        claimed |= cpus
        kept[node] = cpus
    if overlapping:
        notes.append(f"NUMA node(s) {format_cpulist(overlapping)} claim CPUs of an earlier node (buggy firmware): "
                     "ignored, as hwloc does")
    return kept

