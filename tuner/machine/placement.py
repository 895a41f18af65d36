"""Placement planning: which CPUs and memory nodes each worker gets.

``plan(topology, params)`` is pure and deterministic. The rules, in order:

1. Cores are the unit. ``smt=True`` gives a worker every usable PU of each of its cores;
   ``smt=False`` gives it the lowest-numbered usable PU of each core and leaves the
   siblings idle. No CPU is ever given to two workers.
2. ``io_cores`` whole cores are kept for the load generator, taken from the end of the
   planning order (last node, last cores), so workers keep the low, contiguous cores.
3. A worker that fits in one NUMA node stays in one node. Whether it fits is judged on the
   nodes' usable cores, io cores included (a node the io cores shrank still "fits" it).
   Workers are spread over the usable nodes by water-filling: each next worker goes to the
   node with the fewest workers among those with room (ties: most free cores, then lowest
   id). With ``numa_policy="bind"`` a worker that fits in a node but finds no node with room
   is infeasible; with the other policies it takes free cores across nodes. Under ``bind``,
   CPUs of no NUMA node (an offline node's) are used only when no node has room.
4. Inside a node a worker takes cores from one L3 group whenever one has room
   (best fit: the group with the fewest free cores that still fits), else it spans
   groups, fullest first.
5. A worker larger than any node spans nodes, in planning order.
6. Memory: ``bind`` and ``preferred`` use the nodes of the worker's CPUs (a node without
   memory, or not allowed by the cpuset, is replaced by the nearest one that is; CPUs of no
   node add none, and the plan's notes say when that weakens or drops the policy);
   ``interleave`` uses every allowed node with memory; ``none`` sets nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field, fields

from tuner.errors import Infeasible, UsageError
from tuner.machine.cpulist import format_cpulist
from tuner.machine.topology import Core, Topology

NUMA_POLICIES = ("none", "bind", "interleave", "preferred")
EXECUTION_MODES = ("sequential", "parallel")


def _searched(order: int, neighbour: int) -> dict:
    return {"searched": order, "neighbour": neighbour}


@dataclass(frozen=True)
class Params:
    """What one trial picks: the placement and the ONNX Runtime session settings.

    ``intra_op_threads=0`` means ONNX Runtime's own default (one thread per physical core of
    the whole machine, auto-pinned); ``pin=False`` starts workers without CPU affinity. Both
    exist for the "ORT defaults" baseline; tuned configs always pin and set counts.
    """

    # A searched dimension carries ``_searched(k, j)``: a search space may vary it (``search_spaces/*.yaml``),
    # k is its place in the order a trial decides them (each one's choices depend on the ones before:
    # ``SEARCH_ORDER``) and j in the order a config's neighbours change them (how the CPUs are used
    # first, then how requests are batched: ``NEIGHBOUR_ORDER``, tuner.search.strategy.neighbours).
    # A new dimension is one field here plus its use.
    workers: int = field(default=1, metadata=_searched(2, 3))
    cores_per_worker: int = field(default=1, metadata=_searched(3, 2))
    smt: bool = field(default=False, metadata=_searched(4, 0))
    numa_policy: str = field(default="none", metadata=_searched(1, 4))
    io_cores: int = field(default=0, metadata=_searched(0, 8))
    intra_op_threads: int = field(default=1, metadata=_searched(5, 1))
    inter_op_threads: int = field(default=1, metadata=_searched(7, 7))
    execution_mode: str = field(default="sequential", metadata=_searched(6, 6))
    spinning: bool = field(default=True, metadata=_searched(8, 5))
    graph_optimization: str = "all"
    pin: bool = True
    # requests a worker runs in one session.run (1: one at a time, no batching)
    max_batch: int = field(default=1, metadata=_searched(9, 9))
    # how long a worker holding fewer than max_batch requests waits for more
    batch_timeout_ms: float = field(default=0.0, metadata=_searched(10, 10))

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UsageError(f"workers must be >= 1, got {self.workers}")
        if self.cores_per_worker < 1:
            raise UsageError(f"cores_per_worker must be >= 1, got {self.cores_per_worker}")
        if self.io_cores < 0:
            raise UsageError(f"io_cores must be >= 0, got {self.io_cores}")
        if self.numa_policy not in NUMA_POLICIES:
            raise UsageError(
                f"numa_policy {self.numa_policy!r} is not one of {', '.join(NUMA_POLICIES)}"
            )
        if self.execution_mode not in EXECUTION_MODES:
            raise UsageError(
                f"execution_mode {self.execution_mode!r} is not one of {', '.join(EXECUTION_MODES)}"
            )
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise UsageError("thread counts must be >= 0 (0 = ONNX Runtime's default)")
        if self.graph_optimization not in ("disable", "basic", "extended", "all"):
            raise UsageError(
                f"graph_optimization {self.graph_optimization!r} is not one of "
                "disable, basic, extended, all"
            )
        self._check_batching()

    def _check_batching(self) -> None:
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise UsageError(f"max_batch must be an integer >= 1, got {self.max_batch!r}")
        if (isinstance(self.batch_timeout_ms, bool) or not isinstance(self.batch_timeout_ms, int | float)
                or not 0 <= self.batch_timeout_ms < float("inf")):
            raise UsageError(f"batch_timeout_ms must be a number of milliseconds >= 0, got {self.batch_timeout_ms!r}")
        if self.max_batch == 1 and self.batch_timeout_ms:
            raise UsageError(f"batch_timeout_ms={self.batch_timeout_ms:g} needs max_batch > 1 (a worker that runs one "
                             "request at a time never waits for more); set max_batch or batch_timeout_ms 0")

    @property
    def batch_timeout_s(self) -> float:
        return self.batch_timeout_ms / 1000.0

    def label(self) -> str:
        """A short readable name, e.g. ``w2xc1-intra1-bind`` (``-batch8-wait1ms`` with batching; a config
        without batching keeps the label it had before batching existed)."""
        batching = f"-batch{self.max_batch}-wait{self.batch_timeout_ms:g}ms" if self.max_batch > 1 else ""
        if not self.pin:
            return f"w{self.workers}-unpinned-intra{self.intra_op_threads or 'default'}{batching}"
        parts = [f"w{self.workers}xc{self.cores_per_worker}", f"intra{self.intra_op_threads}"]
        if self.execution_mode == "parallel":
            parts.append(f"inter{self.inter_op_threads}")
        if self.smt:
            parts.append("smt")
        if self.numa_policy != "none":
            parts.append(self.numa_policy)
        if not self.spinning:
            parts.append("nospin")
        if self.io_cores:
            parts.append(f"io{self.io_cores}")
        return "-".join(parts) + batching

    def to_dict(self) -> dict:
        # every field is a scalar: no deep copy (dataclasses.asdict was a study's hot spot)
        return {name: getattr(self, name) for name in PARAM_NAMES}

    @classmethod
    def from_dict(cls, data: dict) -> Params:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UsageError(
                f"unknown config key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)


PARAM_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Params))  # the one list of parameters
# the dimensions a search space may vary, in Params' order; in the order a trial decides them; the integer ones
SEARCHED: tuple[str, ...] = tuple(f.name for f in fields(Params) if "searched" in f.metadata)
_ORDER_OF = {f.name: f.metadata["searched"] for f in fields(Params) if "searched" in f.metadata}
SEARCH_ORDER: tuple[str, ...] = tuple(sorted(SEARCHED, key=_ORDER_OF.__getitem__))
_NEIGHBOUR_OF = {f.name: f.metadata["neighbour"] for f in fields(Params) if "searched" in f.metadata}
NEIGHBOUR_ORDER: tuple[str, ...] = tuple(sorted(SEARCHED, key=_NEIGHBOUR_OF.__getitem__))
INT_SEARCHED: frozenset[str] = frozenset(f.name for f in fields(Params) if "searched" in f.metadata and f.type == "int")


@dataclass(frozen=True)
class WorkerSpec:
    """One worker's placement: its CPUs (empty = not pinned) and memory policy."""

    index: int
    cpus: tuple[int, ...]
    nodes: tuple[int, ...]
    mem_policy: str
    mem_nodes: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    """Every worker's CPUs and memory nodes, and the CPUs kept for the load generator."""

    params: Params
    workers: tuple[WorkerSpec, ...]
    io_cpus: tuple[int, ...]
    topology_fingerprint: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> list[str]:
        lines = []
        for w in self.workers:
            cpus = format_cpulist(w.cpus) if w.cpus else "any (not pinned)"
            mem = (
                f"{w.mem_policy} {format_cpulist(w.mem_nodes)}" if w.mem_policy != "none" else "none"
            )
            lines.append(f"worker {w.index}: cpus {cpus}; memory {mem}")
        lines.append(f"load generator: cpus {format_cpulist(self.io_cpus) or 'shared with workers'}")
        return lines

    def to_dict(self) -> dict:
        return {
            "params": self.params.to_dict(),
            "workers": [
                {**asdict(w), "cpus": list(w.cpus), "nodes": list(w.nodes), "mem_nodes": list(w.mem_nodes)}
                for w in self.workers
            ],
            "io_cpus": list(self.io_cpus),
            "topology_fingerprint": self.topology_fingerprint,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        return cls(
            params=Params.from_dict(data["params"]),
            workers=tuple(
                WorkerSpec(w["index"], tuple(w["cpus"]), tuple(w["nodes"]), w["mem_policy"],
                           tuple(w["mem_nodes"]))
                for w in data["workers"]
            ),
            io_cpus=tuple(data["io_cpus"]),
            topology_fingerprint=data.get("topology_fingerprint", ""),
            notes=tuple(data.get("notes", ())),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


_NO_NODE = -1  # the key of cores whose CPUs belong to no NUMA node (an offline node's CPUs)


def _node_key(node: int | None) -> int:
    return _NO_NODE if node is None else node


def _node_name(key: int) -> str:
    return "no node" if key == _NO_NODE else f"node {key}"


def plan(topology: Topology, params: Params) -> Plan:
    """Plan ``params`` on ``topology``; raises Infeasible with the reason when it cannot."""
    cores = list(topology.cores())
    if not cores:
        raise Infeasible("the topology has no usable CPU")
    if not params.pin:
        return _unpinned_plan(topology, params, cores)
    io, free = _split_io_cores(cores, params)
    notes: list[str] = []
    # whether a worker fits in a node is a question about the nodes, asked before the io cores take
    # their share: a worker that fits a node stays in one (or, under bind, is infeasible), rule 3
    largest_node = max(Counter(_node_key(core.node) for core in cores).values())
    if params.cores_per_worker > largest_node:
        notes.append(
            f"a worker needs {params.cores_per_worker} cores, more than any node's "
            f"{largest_node}: workers span nodes"
        )
        cpw = params.cores_per_worker
        assignments = [free[w * cpw:(w + 1) * cpw] for w in range(params.workers)]
    else:
        assignments = _node_local_assignments(free, params, notes)
    specs = tuple(_worker_spec(topology, params, index, chunk, notes) for index, chunk in enumerate(assignments))
    io_cpus = tuple(sorted(cpu for core in io for cpu in core.cpus))
    return Plan(params, specs, io_cpus, topology.fingerprint(), tuple(notes))


def _split_io_cores(cores: list[Core], params: Params) -> tuple[list[Core], list[Core]]:
    """(the io cores: the last ``io_cores`` in planning order, the cores left for workers)."""
    if params.io_cores >= len(cores):
        raise Infeasible(
            f"io_cores={params.io_cores} leaves no core for workers ({len(cores)} usable cores)"
        )
    io = cores[len(cores) - params.io_cores:] if params.io_cores else []
    free = cores[: len(cores) - params.io_cores]
    needed = params.workers * params.cores_per_worker
    if needed > len(free):
        raise Infeasible(
            f"{params.workers} worker(s) x {params.cores_per_worker} core(s) need {needed} cores; "
            f"{len(free)} usable core(s) remain after {params.io_cores} io core(s)"
        )
    return io, free


def _node_local_assignments(free: list[Core], params: Params, notes: list[str]) -> list[list[Core]]:
    """Each worker's cores, inside one node where one has room, spread over the nodes by water-filling.

    Under ``bind``, cores of no NUMA node are a last resort: their memory cannot be bound."""
    by_node: dict[int, list[Core]] = {}
    for core in free:
        by_node.setdefault(_node_key(core.node), []).append(core)
    counts = dict.fromkeys(by_node, 0)
    assignments: list[list[Core]] = []
    for _ in range(params.workers):
        roomy = [n for n, avail in by_node.items() if len(avail) >= params.cores_per_worker]
        if params.numa_policy == "bind":
            roomy = [n for n in roomy if n != _NO_NODE] or roomy
        if roomy:
            node = min(roomy, key=lambda n: (counts[n], -len(by_node[n]), n))
            assignments.append(_take_from_node(by_node[node], params.cores_per_worker))
            counts[node] += 1
            continue
        if params.numa_policy == "bind":
            ordered = sorted(by_node, key=lambda n: (n == _NO_NODE, n))
            sizes = ", ".join(f"{_node_name(n)}: {len(by_node[n])}" for n in ordered)
            raise Infeasible(
                f"{params.workers} workers of {params.cores_per_worker} cores cannot each stay "
                f"inside one NUMA node (free cores left: {sizes}); use fewer workers, a "
                "cores_per_worker that divides the node size, "
                + ("fewer io_cores, " if params.io_cores else "") + "or numa_policy none/interleave"
            )
        chunk: list[Core] = []
        for n in sorted(by_node, key=lambda n: (-len(by_node[n]), n)):
            while by_node[n] and len(chunk) < params.cores_per_worker:
                chunk.append(by_node[n].pop(0))
        notes.append(f"worker {len(assignments)} spans nodes (no single node had room)")
        assignments.append(chunk)
    return assignments


def _worker_spec(topology: Topology, params: Params, index: int, chunk: list[Core], notes: list[str]) -> WorkerSpec:
    """Worker ``index`` on the cores ``chunk``: its CPUs, nodes and memory policy. A memory policy that
    CPUs of no NUMA node weaken (or drop) is said in ``notes``."""
    chunk = sorted(chunk, key=lambda c: c.cpus[0])
    cpus = tuple(sorted(cpu for core in chunk for cpu in (core.cpus if params.smt else core.cpus[:1])))
    nodes = tuple(sorted({c.node for c in chunk if c.node is not None}))
    policy, mem_nodes = _memory(topology, params.numa_policy, nodes)
    nodeless = [cpu for core in chunk if core.node is None for cpu in core.cpus if cpu in cpus]
    if nodeless and params.numa_policy in ("bind", "preferred"):
        effect = (f"its memory policy is {policy} {format_cpulist(mem_nodes)} (its other CPUs' nodes) only"
                  if mem_nodes else f"numa_policy {params.numa_policy} is dropped: its memory policy is none")
        notes.append(f"worker {index}: CPU(s) {format_cpulist(nodeless)} belong to no NUMA node; {effect}")
    return WorkerSpec(index, cpus, nodes, policy, mem_nodes)


def _take_from_node(avail: list[Core], count: int) -> list[Core]:
    """Remove and return ``count`` cores of one node, inside one L3 group when any has room."""
    groups: dict[int, list[Core]] = {}
    for core in avail:
        key = core.l3_group if core.l3_group is not None else -1
        groups.setdefault(key, []).append(core)
    fitting = [g for g, members in groups.items() if len(members) >= count]
    if fitting:
        best = min(fitting, key=lambda g: (len(groups[g]), groups[g][0].cpus[0]))
        chosen = groups[best][:count]
    else:
        chosen = []
        for g in sorted(groups, key=lambda g: (-len(groups[g]), groups[g][0].cpus[0])):
            chosen.extend(groups[g][: count - len(chosen)])
            if len(chosen) == count:
                break
    for core in chosen:
        avail.remove(core)
    return chosen


def _memory(topology: Topology, policy: str, nodes: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    with_memory = [
        n.id for n in topology.nodes if n.memory_allowed and (n.memory_bytes or 0) > 0
    ] or [n.id for n in topology.nodes]
    if policy == "none":
        return "none", ()
    if policy == "interleave":
        return "interleave", tuple(sorted(with_memory))
    chosen = set()
    for node in nodes:
        if node in with_memory:
            chosen.add(node)
            continue
        nearest = min(
            with_memory, key=lambda m: (topology.distance(node, m) or 10**9, m)
        )
        chosen.add(nearest)
    if not chosen:
        return "none", ()
    if policy == "preferred":
        # MPOL_PREFERRED takes one node: the first of the worker's own.
        return "preferred", (min(chosen),)
    return "bind", tuple(sorted(chosen))


def _unpinned_plan(topology: Topology, params: Params, cores: list[Core]) -> Plan:
    if params.numa_policy != "none":
        raise Infeasible("an unpinned worker cannot have a NUMA memory policy; use numa_policy none")
    specs = tuple(WorkerSpec(i, (), (), "none", ()) for i in range(params.workers))
    return Plan(params, specs, (), topology.fingerprint(),
                ("workers are not pinned: the OS scheduler places them",))
