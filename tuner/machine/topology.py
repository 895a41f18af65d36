"""The machine's CPU and NUMA topology as data: logical CPUs, NUMA nodes, physical cores.

A ``Topology`` is what a reader saw (``tuner.machine.sysfs.read_topology`` reads one from a Linux
filesystem root); it lists every CPU, usable or not, and answers the questions planning asks
(usable cores in planning order, nodes, L3 groups, a shape fingerprint). It round-trips through
JSON (``placetune topology --json``, ``load_topology_file``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tuner.errors import TopologyError

UNKNOWN = -1


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
