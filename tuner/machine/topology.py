"""CPU and NUMA topology read from a Linux filesystem root (``/`` or a captured dump).

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
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tuner.errors import TopologyError

UNKNOWN = -1


# ---------------------------------------------------------------- cpu list / mask parsing


def parse_cpulist(text: str) -> frozenset[int]:
    """Parse a kernel cpulist such as ``"0-3,8,10-11"`` (stray NULs and blanks are ignored)."""
    text = text.replace("\x00", "").strip()
    cpus: set[int] = set()
    if not text:
        return frozenset()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            stride = 1
            if ":" in hi:  # "0-15:2/4" group syntax is kernel-boot only; keep the range
                hi = hi.split(":", 1)[0]
            cpus.update(range(int(lo), int(hi) + 1, stride))
        else:
            cpus.add(int(part))
    return frozenset(cpus)


def parse_cpumask(text: str) -> frozenset[int]:
    """Parse a kernel hex cpumask such as ``"00000000,0000ffff"`` (most significant word first)."""
    text = text.replace("\x00", "").strip().replace(",", "")
    if not text:
        return frozenset()
    value = int(text, 16)
    cpus = set()
    bit = 0
    while value:
        if value & 1:
            cpus.add(bit)
        value >>= 1
        bit += 1
    return frozenset(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """Format CPU ids as a compact kernel cpulist (``[0,1,2,5]`` -> ``"0-2,5"``)."""
    ids = sorted(set(cpus))
    if not ids:
        return ""
    parts = []
    start = prev = ids[0]
    for cpu in ids[1:]:
        if cpu == prev + 1:
            prev = cpu
            continue
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
        start = prev = cpu
    parts.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ",".join(parts)


# ---------------------------------------------------------------- data model


@dataclass(frozen=True)
class Cpu:
    """One logical CPU (a PU in hwloc's words)."""

    id: int
    online: bool
    allowed: bool
    package: int = UNKNOWN  # canonical package index, assigned by the reader
    package_id: int = UNKNOWN  # physical_package_id as the kernel gave it
    die: int = UNKNOWN
    cluster: int = UNKNOWN
    core_id: int = UNKNOWN
    core: int = UNKNOWN  # canonical physical core index, assigned by the reader
    node: int | None = None
    l2_group: int | None = None  # lowest CPU id sharing this CPU's L2
    l3_group: int | None = None  # lowest CPU id sharing this CPU's L3
    core_type: str | None = None  # "P" / "E" on hybrid machines, else None
    capacity: int | None = None  # cpu_capacity (arm big.LITTLE), if the kernel gives it

    @property
    def usable(self) -> bool:
        return self.online and self.allowed


@dataclass(frozen=True)
class NumaNode:
    """A NUMA node: the CPUs the kernel attaches to it (usable or not) and its memory."""

    id: int
    cpus: tuple[int, ...]
    memory_bytes: int | None
    distances: tuple[int, ...] | None  # to every node of the topology, in Topology.nodes order
    memory_allowed: bool = True


@dataclass(frozen=True)
class Core:
    """A physical core and its usable logical CPUs (SMT siblings), lowest id first."""

    index: int
    package: int
    node: int | None
    l3_group: int | None
    cpus: tuple[int, ...]


@dataclass(frozen=True)
class Topology:
    """The machine as the reader saw it; every CPU is listed, usable or not."""

    cpus: tuple[Cpu, ...]
    nodes: tuple[NumaNode, ...]
    source: str = "/"
    restriction: str = "none"  # where the allowed set came from, in words
    notes: tuple[str, ...] = field(default_factory=tuple)

    # ---- views
    def cpu(self, cpu_id: int) -> Cpu:
        for cpu in self.cpus:
            if cpu.id == cpu_id:
                return cpu
        raise KeyError(cpu_id)

    @property
    def usable_cpus(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.cpus if c.usable)

    def cores(self) -> tuple[Core, ...]:
        """Physical cores holding at least one usable CPU, in planning order
        (node, package, L3 group, core)."""
        by_core: dict[int, list[Cpu]] = {}
        for cpu in self.cpus:
            if cpu.usable:
                by_core.setdefault(cpu.core, []).append(cpu)
        cores = []
        for index, members in by_core.items():
            members.sort(key=lambda c: c.id)
            first = members[0]
            cores.append(
                Core(
                    index=index,
                    package=first.package,
                    node=first.node,
                    l3_group=first.l3_group,
                    cpus=tuple(c.id for c in members),
                )
            )

        def order(core: Core) -> tuple:
            return (
                core.node is None,
                core.node if core.node is not None else 0,
                core.package,
                core.l3_group if core.l3_group is not None else -1,
                core.cpus[0],
            )

        return tuple(sorted(cores, key=order))

    @property
    def packages(self) -> tuple[int, ...]:
        return tuple(sorted({c.package for c in self.cpus if c.usable}))

    @property
    def l3_groups(self) -> tuple[int, ...]:
        return tuple(sorted({c.l3_group for c in self.cpus if c.usable and c.l3_group is not None}))

    @property
    def threads_per_core(self) -> tuple[int, ...]:
        return tuple(sorted({len(core.cpus) for core in self.cores()}))

    @property
    def smt(self) -> bool:
        return any(len(core.cpus) > 1 for core in self.cores())

    def node_usable_cpus(self, node_id: int) -> tuple[int, ...]:
        return tuple(c.id for c in self.cpus if c.usable and c.node == node_id)

    @property
    def usable_nodes(self) -> tuple[int, ...]:
        """Nodes holding at least one usable CPU."""
        return tuple(sorted({c.node for c in self.cpus if c.usable and c.node is not None}))

    def distance(self, a: int, b: int) -> int | None:
        ids = [n.id for n in self.nodes]
        node = self.nodes[ids.index(a)]
        if node.distances is None or b not in ids:
            return None
        return node.distances[ids.index(b)]

    def restrict(self, allowed: Iterable[int], why: str = "restricted by caller") -> Topology:
        """The same machine with only ``allowed`` CPUs usable (e.g. a container's cpuset)."""
        allowed = frozenset(allowed)
        cpus = tuple(
            Cpu(**{**asdict(c), "allowed": c.allowed and c.id in allowed}) for c in self.cpus
        )
        return Topology(cpus, self.nodes, self.source, why, self.notes)

    def fingerprint(self) -> str:
        """A short canonical hash of the usable topology's SHAPE: packages, their NUMA nodes, the
        L3 groups in each node, and the PUs of each core (SMT). CPU and node numbers do not enter
        it, so two hosts (or two disjoint cpusets of one host) with the same shape compare equal,
        and their measurements are comparable."""
        tree: dict = {}
        for core in self.cores():
            node = tree.setdefault(core.package, {}).setdefault(core.node, {})
            node.setdefault(core.l3_group, []).append(len(core.cpus))
        shape = sorted(
            sorted(sorted(sorted(pus) for pus in groups.values()) for groups in nodes.values())
            for nodes in tree.values()
        )
        blob = json.dumps(shape).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def summary(self) -> str:
        cores = self.cores()
        return (
            f"{len(self.packages)} package(s), {len(self.usable_nodes) or 1} NUMA node(s), "
            f"{len(cores)} core(s), {len(self.usable_cpus)} usable PU(s)"
            f"{', SMT' if self.smt else ''}"
        )

    # ---- JSON
    def to_dict(self) -> dict:
        return {
            "format": "placetune-topology/1",
            "source": self.source,
            "restriction": self.restriction,
            "notes": list(self.notes),
            "cpus": [asdict(c) for c in self.cpus],
            "nodes": [
                {**asdict(n), "cpus": list(n.cpus),
                 "distances": list(n.distances) if n.distances is not None else None}
                for n in self.nodes
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict) -> Topology:
        if not isinstance(data, dict) or data.get("format") != "placetune-topology/1":
            raise TopologyError(
                "not a placetune topology file (expected format placetune-topology/1); "
                "write one with 'placetune topology --json > FILE.json'"
            )
        try:
            cpus = tuple(Cpu(**c) for c in data["cpus"])
            nodes = tuple(
                NumaNode(
                    id=n["id"],
                    cpus=tuple(n["cpus"]),
                    memory_bytes=n["memory_bytes"],
                    distances=tuple(n["distances"]) if n["distances"] is not None else None,
                    memory_allowed=n.get("memory_allowed", True),
                )
                for n in data["nodes"]
            )
        except (KeyError, TypeError) as exc:
            raise TopologyError(f"topology file is missing or has a bad field: {exc}") from None
        return cls(cpus, nodes, data.get("source", "?"), data.get("restriction", "none"),
                   tuple(data.get("notes", ())))

    @classmethod
    def from_json(cls, text: str) -> Topology:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TopologyError(f"topology file is not valid JSON ({exc})") from None
        return cls.from_dict(data)


def load_topology_file(path: str | os.PathLike) -> Topology:
    """Load a topology saved with ``placetune topology --json``."""
    p = Path(path)
    if not p.is_file():
        raise TopologyError(f"topology file {p} does not exist; "
                            "write one with 'placetune topology --json > FILE.json'")
    try:
        return Topology.from_json(p.read_text())
    except TopologyError as exc:
        raise TopologyError(f"{p}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TopologyError(f"cannot read topology file {p}: {exc}") from None


# ---------------------------------------------------------------- reading sysfs


class _Root:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    def read(self, rel: str) -> str | None:
        try:
            return self.path(rel).read_text(errors="replace").replace("\x00", "")
        except (OSError, UnicodeDecodeError):
            return None

    def read_int(self, rel: str) -> int | None:
        text = self.read(rel)
        if text is None:
            return None
        try:
            return int(text.strip())
        except ValueError:
            return None

    def read_set(self, rel_list: str, rel_mask: str | None = None) -> frozenset[int] | None:
        text = self.read(rel_list)
        if text is not None:
            try:
                return parse_cpulist(text)
            except ValueError:
                pass
        if rel_mask is not None:
            text = self.read(rel_mask)
            if text is not None:
                try:
                    return parse_cpumask(text)
                except ValueError:
                    return None
        return None

    def listdir(self, rel: str) -> list[str]:
        try:
            return os.listdir(self.path(rel))
        except OSError:
            return []


_CPU_DIR = "sys/devices/system/cpu"
_NODE_DIR = "sys/devices/system/node"


def _numbered(names: Iterable[str], prefix: str) -> list[int]:
    pattern = re.compile(rf"^{prefix}(\d+)$")
    return sorted(int(m.group(1)) for n in names if (m := pattern.match(n)))


def _online_cpus(fs: _Root, known: list[int]) -> set[int]:
    online = fs.read_set(f"{_CPU_DIR}/online")
    if online is not None and (online or not known):
        return set(online)
    result = set()
    for cpu in known:
        flag = fs.read_int(f"{_CPU_DIR}/cpu{cpu}/online")
        if flag is None or flag != 0:  # cpu0 often has no online file: it cannot go offline
            result.add(cpu)
    return result


def _cache_group(
    fs: _Root, cpu: int, level: int, online: set[int], core_cpus: set[int], package_cpus: set[int],
    conflicts: list[tuple[str, str]],
) -> int | None:
    """The lowest online CPU sharing ``cpu``'s cache of ``level``; never one of another package."""
    base = f"{_CPU_DIR}/cpu{cpu}/cache"
    for name in sorted(fs.listdir(base)):
        if not name.startswith("index"):
            continue
        if fs.read_int(f"{base}/{name}/level") != level:
            continue
        kind = (fs.read(f"{base}/{name}/type") or "").strip()
        if kind not in ("Unified", "Data"):
            continue
        rel = f"{base}/{name}/shared_cpu"
        shared = _pick(fs, f"{rel}_map", f"{rel}_list", online, conflicts,
                       lambda s: cpu in s and s & online <= package_cpus, "its package")
        if not shared:  # ia64 kernels give an empty map for a core-private cache
            shared = frozenset(core_cpus)
        if shared & online - package_cpus:
            conflicts.append(("a cache's shared CPUs span other packages; the cache group is kept inside its package",
                              f"{rel}_map: {format_cpulist(shared & online - package_cpus)}"))
        members = (set(shared) & online & package_cpus) | {cpu}
        return min(members)
    return None


def _pick(fs: _Root, rel_mask: str, rel_list: str, online: set[int], conflicts: list[tuple[str, str]],
          fits: Callable[[frozenset[int]], bool] = lambda cpus: True,
          why: str = "") -> frozenset[int] | None:
    """A CPU set the kernel gives twice, as a hex mask and as a ``_list``: the mask, as hwloc reads it,
    unless the two disagree about online CPUs (a corrupted dump); then the first that ``fits`` (is
    consistent with the rest of the topology, ``why`` says with what), and a conflict recorded."""
    texts = fs.read(rel_mask), fs.read(rel_list)
    parsed: list[frozenset[int] | None] = []
    for text, parse in zip(texts, (parse_cpumask, parse_cpulist), strict=True):
        try:
            parsed.append(parse(text) if text is not None else None)
        except ValueError:
            parsed.append(None)
    mask, listed = parsed
    if mask is None or listed is None or mask & online == listed & online:
        return mask if mask is not None else listed
    chosen = listed if not fits(mask) and fits(listed) else mask
    other = mask if chosen is listed else listed
    reason = f"the one consistent with {why}" if why and fits(chosen) and not fits(other) else "as hwloc does"
    conflicts.append((f"{re.sub(r'[0-9]+', 'N', rel_list)} and its mask disagree; "
                      f"used the {'list' if chosen is listed else 'mask'}, {reason}",
                      f"{rel_list}: {format_cpulist(listed)}, mask: {format_cpulist(mask)}"))
    return chosen


def _conflict_notes(conflicts: list[tuple[str, str]]) -> list[str]:
    """One note per kind of conflict, with its first example and a count."""
    grouped: dict[str, list[str]] = {}
    for what, example in conflicts:
        grouped.setdefault(what, []).append(example)
    return [f"{what} ({examples[0]})" if len(examples) == 1 else f"{what} ({len(examples)} times; e.g. {examples[0]})"
            for what, examples in grouped.items()]


def _hybrid_types(fs: _Root) -> dict[int, str]:
    types: dict[int, str] = {}
    for pmu, label in (("cpu_core", "P"), ("cpu_atom", "E")):
        cpus = fs.read_set(f"sys/devices/{pmu}/cpus")
        for cpu in cpus or ():
            types[cpu] = label
    return types


def _mounts(fs: _Root) -> list[tuple[str, str, set[str]]]:
    text = fs.read("proc/self/mounts") or fs.read("proc/mounts") or ""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            mounts.append((parts[1], parts[2], set(parts[3].split(","))))
    return mounts


def _cgroup_paths(fs: _Root) -> tuple[str | None, str | None]:
    """(cgroup v1 cpuset path, cgroup v2 path) of the process the root describes."""
    v1 = v2 = None
    for line in (fs.read("proc/self/cgroup") or "").splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            v2 = path
        elif "cpuset" in controllers.split(","):
            v1 = path
    cpuset = (fs.read("proc/self/cpuset") or "").strip()
    if cpuset:  # hwloc reads this name first: the process's cpuset in whichever hierarchy holds it
        v1 = v2 = cpuset
    return v1, v2


def _cgroup_cpuset(fs: _Root) -> tuple[frozenset[int] | None, frozenset[int] | None, str]:
    """Allowed (cpus, mems) from the cgroup cpuset below the root, and where they came from."""
    v1_path, v2_path = _cgroup_paths(fs)
    mounts = _mounts(fs)
    candidates: list[tuple[str, list[str], list[str]]] = []
    for mountpoint, fstype, options in mounts:
        if v1_path is not None and (fstype == "cpuset" or (fstype == "cgroup" and "cpuset" in options)):
            directory = f"{mountpoint.rstrip('/')}/{v1_path.lstrip('/')}"
            candidates.append((directory,
                               ["cpuset.effective_cpus", "cpuset.cpus", "effective_cpus", "cpus"],
                               ["cpuset.effective_mems", "cpuset.mems", "effective_mems", "mems"]))
        if v2_path is not None and fstype == "cgroup2":
            directory = f"{mountpoint.rstrip('/')}/{v2_path.lstrip('/')}"
            candidates.append((directory, ["cpuset.cpus.effective", "cpuset.cpus"],
                               ["cpuset.mems.effective", "cpuset.mems"]))
    for directory, cpu_files, mem_files in candidates:
        cpus = mems = None
        for name in cpu_files:
            text = fs.read(f"{directory}/{name}")
            if text is not None and text.strip():
                cpus = parse_cpulist(text)
                break
        for name in mem_files:
            text = fs.read(f"{directory}/{name}")
            if text is not None and text.strip():
                mems = parse_cpulist(text)
                break
        if cpus is not None or mems is not None:
            return cpus, mems, f"cgroup cpuset {directory}"
    return None, None, ""


def _node_memory(fs: _Root, node: int) -> int | None:
    text = fs.read(f"{_NODE_DIR}/node{node}/meminfo")
    if text is None:
        return None
    match = re.search(r"MemTotal:\s+(\d+)\s*kB", text)
    return int(match.group(1)) * 1024 if match else None


def _machine_memory(fs: _Root) -> int | None:
    match = re.search(r"MemTotal:\s+(\d+)\s*kB", fs.read("proc/meminfo") or "")
    return int(match.group(1)) * 1024 if match else None


def read_topology(root: str | os.PathLike = "/") -> Topology:
    """Read the topology below ``root``; ``"/"`` is the live machine.

    Raises TopologyError when the root holds no CPU information at all.
    """
    fs = _Root(root)
    live = Path(root).resolve() == Path("/")
    if not fs.path(_CPU_DIR).is_dir():
        raise TopologyError(
            f"{fs.path(_CPU_DIR)} does not exist: --fsroot must point at a directory holding "
            "sys/devices/system/cpu (a machine's root or a captured dump)"
        )
    notes: list[str] = []
    known = _numbered(fs.listdir(_CPU_DIR), "cpu")
    online = _online_cpus(fs, known)
    present = fs.read_set(f"{_CPU_DIR}/present")
    all_ids = sorted(set(known) | online | (set(present) if present else set()))
    if not all_ids:
        raise TopologyError(f"no CPU found below {fs.path(_CPU_DIR)}")

    # -- NUMA nodes
    node_dirs = _numbered(fs.listdir(_NODE_DIR), "node")
    conflicts: list[tuple[str, str]] = []  # a dump contradicting itself: grouped into notes at the end
    node_cpus = _numa_node_cpus(fs, node_dirs, online, notes, conflicts)
    node_ids = sorted(node_cpus)
    cpu_node: dict[int, int | None] = {}
    for cpu in all_ids:
        owner = next((n for n in node_ids if cpu in node_cpus[n]), None)
        if owner is None:  # not in any cpumap (offline): its cpuN/nodeM link, if that node exists
            owner = next((n for n in _numbered(fs.listdir(f"{_CPU_DIR}/cpu{cpu}"), "node") if n in node_cpus), None)
        cpu_node[cpu] = owner
    if not node_ids:
        node_ids = [0]
        cpu_node = dict.fromkeys(all_ids, 0)
        notes.append("no NUMA information: one node holds every CPU")

    # -- allowed set
    cg_cpus, cg_mems, restriction_source = _cgroup_cpuset(fs)
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
        mems_text = fs.read("proc/self/status") or ""
        match = re.search(r"Mems_allowed_list:\s*(\S+)", mems_text)
        if match and cg_mems is None:
            cg_mems = parse_cpulist(match.group(1))

    # -- per CPU topology
    hybrid = _hybrid_types(fs)
    raw = _cpu_topology_files(fs, all_ids, online, conflicts)
    package_index, core_index = _assign_packages_and_cores(raw, online)
    core_members: dict[int, set[int]] = {}
    package_members: dict[int, set[int]] = {}
    for cpu in all_ids:
        if cpu in online:
            core_members.setdefault(core_index[cpu], set()).add(cpu)
            package_members.setdefault(package_index[cpu], set()).add(cpu)

    cpus = []
    for cpu in all_ids:
        e = raw[cpu]
        is_online = cpu in online
        members = core_members.get(core_index[cpu], {cpu})
        package = package_members.get(package_index[cpu], {cpu})
        cpus.append(
            Cpu(
                id=cpu,
                online=is_online,
                allowed=cpu in allowed,
                package=package_index[cpu],
                package_id=e["package_id"] if e["package_id"] is not None else UNKNOWN,
                die=e["die"] if e["die"] is not None else UNKNOWN,
                cluster=e["cluster"] if e["cluster"] is not None else UNKNOWN,
                core_id=e["core_id"] if e["core_id"] is not None else UNKNOWN,
                core=core_index[cpu],
                node=cpu_node.get(cpu),
                l2_group=_cache_group(fs, cpu, 2, online, members, package, conflicts) if is_online else None,
                l3_group=_cache_group(fs, cpu, 3, online, members, package, conflicts) if is_online else None,
                core_type=hybrid.get(cpu),
                capacity=e["capacity"],
            )
        )

    nodes = []
    for node in node_ids:
        distances = None
        text = fs.read(f"{_NODE_DIR}/node{node}/distance")
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
        nodes.append(
            NumaNode(
                id=node,
                cpus=tuple(c for c in all_ids if cpu_node.get(c) == node),
                memory_bytes=memory,
                distances=distances,
                memory_allowed=cg_mems is None or node in cg_mems,
            )
        )
    return Topology(
        cpus=tuple(cpus),
        nodes=tuple(nodes),
        source="/" if live else str(Path(root)),
        restriction=" and ".join(restriction) if restriction else "none",
        notes=tuple(notes + _conflict_notes(conflicts)),
    )


def _numa_node_cpus(fs: _Root, node_dirs: list[int], online: set[int], notes: list[str],
                    conflicts: list[tuple[str, str]]) -> dict[int, frozenset[int]]:
    """Each node's CPUs (its cpumap). As hwloc does, a node whose CPUs overlap an earlier node's (a
    buggy BIOS: every node claiming every CPU) is dropped, memory and all."""
    kept: dict[int, frozenset[int]] = {}
    claimed: set[int] = set()
    overlapping = []
    for node in node_dirs:
        base = f"{_NODE_DIR}/node{node}"
        cpus = _pick(fs, f"{base}/cpumap", f"{base}/cpulist", online, conflicts) or frozenset()
        if cpus & claimed:
            overlapping.append(node)
            continue
        claimed |= cpus
        kept[node] = cpus
    if overlapping:
        notes.append(f"NUMA node(s) {format_cpulist(overlapping)} claim CPUs of an earlier node (buggy firmware): "
                     "ignored, as hwloc does")
    return kept


def _cpu_topology_files(fs: _Root, all_ids: list[int], online: set[int],
                        conflicts: list[tuple[str, str]]) -> dict[int, dict]:
    """Each CPU's ids and masks from ``cpuN/topology``. A package or sibling mask that its ``_list``
    contradicts is taken from the one whose CPUs share this CPU's physical_package_id."""
    raw: dict[int, dict] = {}
    for cpu in all_ids:
        top = f"{_CPU_DIR}/cpu{cpu}/topology"
        raw[cpu] = {
            "package_id": fs.read_int(f"{top}/physical_package_id"),
            "die": fs.read_int(f"{top}/die_id"),
            "cluster": fs.read_int(f"{top}/cluster_id"),
            "core_id": fs.read_int(f"{top}/core_id"),
            "capacity": fs.read_int(f"{_CPU_DIR}/cpu{cpu}/cpu_capacity"),
        }
    for cpu in all_ids:
        raw[cpu]["package_mask"] = _topology_mask(fs, cpu, ("package_cpus", "core_siblings"), raw, online, conflicts)
        raw[cpu]["siblings"] = _topology_mask(fs, cpu, ("core_cpus", "thread_siblings"), raw, online, conflicts)
    return raw


def _topology_mask(fs: _Root, cpu: int, names: tuple[str, ...], raw: dict[int, dict], online: set[int],
                   conflicts: list[tuple[str, str]]) -> frozenset[int] | None:
    """The first non-empty of ``cpuN/topology/NAME`` (mask or list, see _pick)."""
    package_id = raw[cpu]["package_id"]

    def same_package(cpus: frozenset[int]) -> bool:
        return cpu in cpus and all(raw.get(m, {}).get("package_id") in (None, package_id) for m in cpus)

    for name in names:
        rel = f"{_CPU_DIR}/cpu{cpu}/topology/{name}"
        cpus = _pick(fs, rel, f"{rel}_list", online, conflicts, same_package, "physical_package_id")
        if cpus:
            return cpus
    return None


def _assign_packages_and_cores(
    raw: dict[int, dict], online: set[int]
) -> tuple[dict[int, int], dict[int, int]]:
    """Give each CPU a canonical package index and physical core index.

    As hwloc does, the kernel's masks define the objects and the ids refine them:
    a package is the CPUs of one package mask (package_cpus / core_siblings) with one
    physical_package_id; a core is the CPUs of one sibling mask (core_cpus /
    thread_siblings) with one core_id. Siblings with different core_ids (AMD compute
    units) are separate cores. Without masks, ids alone decide:
    (package, die, cluster, core_id); without either, each CPU is its own core. Offline CPUs
    with no topology get their own core.
    """

    def lowest(mask: frozenset[int] | None, cpu: int) -> int | None:
        if not mask:
            return None
        return min((set(mask) & online) | {cpu})

    package_keys: dict[int, tuple] = {}
    core_keys: dict[int, tuple] = {}
    for cpu, e in sorted(raw.items()):
        known = e["core_id"] is not None or e["package_id"] is not None or e["siblings"]
        if not known:
            package_keys[cpu] = ("own", cpu)
            core_keys[cpu] = ("own", cpu)
            continue
        package_key = (lowest(e["package_mask"], cpu), e["package_id"])
        package_keys[cpu] = package_key
        sibling = lowest(e["siblings"], cpu)
        if sibling is not None:
            core_keys[cpu] = (package_key, sibling, e["core_id"])
        elif e["core_id"] is not None:
            core_keys[cpu] = (package_key, e["die"], e["cluster"], e["core_id"])
        else:  # neither core_id nor sibling mask: hwloc makes no core; the CPU is a core of its own
            core_keys[cpu] = (package_key, "cpu", cpu)

    def canonical(keys: dict[int, tuple]) -> dict[int, int]:
        index: dict[tuple, int] = {}
        result = {}
        # CPUs of known topology first, so their objects are numbered 0..n-1
        for cpu in sorted(keys, key=lambda c: (keys[c][0] == "own", c)):
            result[cpu] = index.setdefault(keys[cpu], len(index))
        return result

    return canonical(package_keys), canonical(core_keys)
