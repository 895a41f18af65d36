"""Two synthetic "machines + models" for experiments/replay.py: throughput at a P99 bound as a
function of a config, so search strategies can be compared in seconds on topologies we do not have.

Both take the params dict (workers, cores_per_worker, smt, intra_op_threads, inter_op_threads,
execution_mode, numa_policy, spinning, io_cores, pin) and optionally ``topology=``; they return
req/s at the bound, 0.0 when the bound is missed. Noise is a fixed multiplicative error per config
(the same config always "measures" the same), like one measurement per config in a study; a
screening measurement (short windows) adds ``screening_error`` on top.

- ``amdahl_bandwidth``: each worker is an M/M/1-like server whose service time follows Amdahl's law
  over its effective cores (an SMT sibling is worth 0.25 core, threads beyond the worker's PUs
  cost), spinning helps a worker that owns its cores; the whole machine is capped by memory
  bandwidth per NUMA node in use (bind uses it best, interleave pays remote accesses).
- ``cache_numa``: a model whose weights (24 MB per worker) must share each L3 group; a worker that
  spans L3 groups or NUMA nodes pays for synchronising its threads across them; memory not bound
  to the worker's node pays the node distance. It plans the config with tuner.machine.placement to see
  which groups and nodes each worker really gets.
"""

from __future__ import annotations

import hashlib
import math

from tuner.machine.placement import Params, plan
from tuner.machine.topology import Topology

BOUND_MS = 50.0


def _noise(params: dict, sigma: float = 0.03, salt: str = "") -> float:
    digest = hashlib.sha256((Params(**params).label() + salt).encode()).digest()
    u1 = (int.from_bytes(digest[:8], "big") + 1) / 2**64
    u2 = int.from_bytes(digest[8:16], "big") / 2**64
    return math.exp(sigma * math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2))


def _at_bound(workers: int, service_ms: float, bound_ms: float = BOUND_MS) -> float:
    """Req/s of ``workers`` servers of ``service_ms`` each whose P99 (about 4.6 mean sojourn
    times for M/M/1) stays under the bound; 0 when even an idle worker misses it."""
    utilisation = 1.0 - 4.6 * service_ms / bound_ms
    return workers * 1000.0 / service_ms * utilisation if utilisation > 0 else 0.0


def _effective_cores(p: dict, pus_per_core: int) -> float:
    cores, intra = p["cores_per_worker"], max(1, p["intra_op_threads"])
    pus = cores * (pus_per_core if p["smt"] else 1)
    on_cores = min(intra, cores)
    on_siblings = max(0, min(intra, pus) - cores)
    oversubscribed = max(0, intra - pus)
    return max(0.2, on_cores + 0.25 * on_siblings - 0.5 * oversubscribed)


def amdahl_bandwidth(params: dict, topology: Topology | None = None) -> float:
    """Amdahl's law per worker, memory bandwidth per NUMA node for the machine."""
    p = dict(params)
    pus_per_core = max((len(c.cpus) for c in topology.cores()), default=1) if topology else 2
    nodes = max(1, len(topology.usable_nodes)) if topology else 1
    cores_total = len(topology.cores()) if topology else 16
    serial = 0.2
    effective = _effective_cores(p, pus_per_core)
    service_ms = 6.0 * (serial + (1 - serial) / effective)
    if p["spinning"] and p["intra_op_threads"] > 1:
        service_ms *= 0.93
    if p["execution_mode"] == "parallel":
        service_ms *= 0.97 if p["inter_op_threads"] <= 2 else 1.05
    throughput = _at_bound(p["workers"], service_ms)
    used = p["workers"] * p["cores_per_worker"]
    nodes_used = max(1, min(nodes, math.ceil(used / max(1, cores_total / nodes))))
    efficiency = {"bind": 1.0, "preferred": 0.95, "interleave": 0.85, "none": 0.8}[p["numa_policy"]] if nodes > 1 else 1
    cap = 140.0 * (cores_total / nodes) * nodes_used * efficiency  # req/s one node's memory can feed
    return min(throughput, cap) * _noise(p)


def cache_numa(params: dict, topology: Topology | None = None) -> float:
    """L3 capacity per group shared by the workers in it; penalties for spanning groups/nodes."""
    if topology is None:
        raise ValueError("cache_numa needs the topology (the replay passes it)")
    p = dict(params)
    if not p["pin"]:  # ORT defaults: one process, a thread per core of the machine, placed by the OS
        n = len(topology.cores())
        p.update(workers=1, cores_per_worker=n, intra_op_threads=n, numa_policy="none", pin=True, io_cores=0)
        return 0.7 * cache_numa(p, topology)
    placed = plan(topology, Params(**p))
    cores = {cpu: c for c in topology.cores() for cpu in c.cpus}
    groups: dict[object, int] = {}
    worker_groups = []
    for w in placed.workers:
        mine = {(cores[cpu].node, cores[cpu].l3_group) for cpu in w.cpus}
        worker_groups.append(mine)
        for g in mine:
            groups[g] = groups.get(g, 0) + 1
    l3_mb, weights_mb = 32.0, 12.0
    total = 0.0
    for w, mine in zip(placed.workers, worker_groups, strict=True):
        sharers = max(groups[g] for g in mine)
        spill = max(0.0, sharers * weights_mb - l3_mb) / (sharers * weights_mb)
        effective = _effective_cores(p, max(len(c.cpus) for c in topology.cores()))
        service_ms = 6.0 * (0.08 + 0.92 / effective) * (1 + 0.9 * spill)
        spans_nodes = len({n for n, _ in mine}) > 1
        service_ms *= 1 + 0.15 * (len(mine) - 1) ** 0.5 + (0.3 if spans_nodes else 0)
        if len(topology.usable_nodes) > 1:
            local = w.mem_policy in ("bind", "preferred") and set(w.mem_nodes) <= set(w.nodes)
            service_ms *= 1.0 if local else (1.12 if w.mem_policy == "interleave" else 1.2)
        if p["spinning"] and p["intra_op_threads"] > 1:
            service_ms *= 0.95
        total += _at_bound(1, service_ms)
    return total * _noise(p, 0.04)


def screening_error(params: dict, seed: int, sigma: float = 0.10) -> float:
    """The extra multiplicative error of a screening (short) measurement of ``params``: lognormal
    with ``sigma``, independent of the config's full-fidelity error, different in each replayed
    study (``seed``), the same for one config within a study."""
    if sigma <= 0:
        return 1.0
    return _noise(params, sigma, salt=f"screen-{seed}")
