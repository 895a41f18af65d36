"""The simulated machine's model: how long a request takes on a worker, and the noise around it.

Service (``ServiceModel``, per worker of a planned config; start: ``experiments/oracles.py``):

- a worker's median service time is ``single_core_ms`` times Amdahl's law over its effective
  cores (``serial`` fraction; an SMT sibling is worth ``smt_sibling`` core; threads beyond its
  PUs cost ``oversubscribed`` core each), times factors for spinning (multi-threaded), the
  parallel executor, the graph optimisation level, a worker unpinned (``pin=False``), a worker
  spanning L3 groups or NUMA nodes, memory not local to its node, and L3 spill when the weights
  of the workers sharing an L3 group do not fit in it;
- memory bandwidth: the workers of one NUMA node together serve at most
  ``bandwidth_rps_per_core`` x its cores requests per second; beyond it their service times
  stretch in proportion;
- per-request jitter: a lognormal body (``body_sigma``) and the VM's own hiccups (``Noise``):
  a hiccup (Poisson, ``hiccup_rate`` per core-second) stalls a request for an exponential
  ``hiccup_ms``. A one-core worker's P99/P50 comes from them; a worker of k threads is exposed
  to 1 + ``straggle`` x (k - 1) threads' hiccups (a parallel operator waits for its slowest
  thread, work stealing hides part of it), which is why ORT's default (one process, a thread
  per core) loses more at a latency bound than in a closed loop.

Unknown ``Params`` fields (added later, e.g. batching) are ignored: the model reads the fields
it knows by attribute.

Interference (``Noise``): episodes in simulated time, two kinds, each a Poisson process of
starts with exponential durations:

- a neighbour: a process of another tenant of the VM takes 1..``neighbour_cores`` x the cores
  (chosen at random) for ``neighbour_share`` of their time (CFS: a worker on such a core runs
  at 1 - share; a multi-core worker runs at its slowest core's speed); /proc/stat shows it as
  busy time that is not the workers': ``foreign_cpu``;
- steal: the hypervisor takes ``steal_fraction`` of every vCPU; /proc/stat shows it as steal.

Presets: ``quiet`` (hiccups only, rare and short), ``vm`` (calibrated to the 16-core VM, see
``experiments/sim/calibration.py``), ``heavy`` (the vm's episodes twice as often and larger).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tuner.machine.placement import Plan, WorkerSpec
from tuner.machine.topology import Topology

GRAPH_FACTORS = {"disable": 1.6, "basic": 1.15, "extended": 1.02, "all": 1.0}


@dataclass(frozen=True)
class ServiceModel:
    """A SqueezeNet-like model (5 MB of weights) on a modern x86 core. Frozen with the calibration."""

    single_core_ms: float = 5.9  # median service of a one-core worker, hiccups aside (measured: 5.9)
    body_sigma: float = 0.10  # lognormal sigma of the per-request body
    serial: float = 0.20  # Amdahl's serial fraction of one request
    smt_sibling: float = 0.25  # an SMT sibling is worth this share of a core
    oversubscribed: float = 0.5  # a thread beyond the worker's PUs costs this share of a core
    spinning_gain: float = 0.93  # multi-threaded worker whose threads spin between operators
    parallel_mode: float = 0.97  # parallel executor with <= 2 inter-op threads (else 1.05)
    unpinned: float = 1.0  # threads the OS places and migrates
    spans_l3: float = 0.15  # x sqrt(extra L3 groups spanned)
    spans_node: float = 0.30
    remote_memory: float = 1.20  # memory not bound to the worker's node on a NUMA machine
    interleaved_memory: float = 1.12
    l3_mb: float = 32.0
    weights_mb: float = 5.0
    l3_spill: float = 0.3
    straggle: float = 0.05  # each thread beyond the first adds this share of a thread's hiccups
    bandwidth_rps_per_core: float = 260.0  # requests/s one node's memory feeds, per core of the node


@dataclass(frozen=True)
class Noise:
    """The VM's noise: per-request hiccups and interference episodes (see the module docstring)."""

    name: str
    hiccup_rate: float  # hiccups per core-second of service
    hiccup_ms: float  # mean hiccup length
    neighbour_rate: float = 0.0  # neighbour episodes starting per second
    neighbour_s: float = 0.0  # their mean duration
    neighbour_cores: float = 0.0  # at most this share of the machine's cores taken by one
    neighbour_share: float = 0.5  # share of a taken core's time the neighbour gets
    steal_rate: float = 0.0  # steal episodes starting per second
    steal_s: float = 0.0
    steal_fraction: float = 0.0  # share of every vCPU the hypervisor takes

    @property
    def episodes(self) -> bool:
        return self.neighbour_rate > 0 or self.steal_rate > 0

    def without_episodes(self) -> Noise:
        """The same machine with no interference episodes (what 'true' values are computed on)."""
        return Noise(f"{self.name}-undisturbed", self.hiccup_rate, self.hiccup_ms)


@dataclass(frozen=True)
class WorkerModel:
    """One worker's service: median body (s), its threads, how many threads' hiccups stall it
    (``exposure``), the CPUs it runs on."""

    base_s: float
    threads: int
    exposure: float
    cpus: tuple[int, ...]

    def mean_s(self, noise: Noise, body_sigma: float) -> float:
        body = self.base_s * math.exp(body_sigma ** 2 / 2)
        return body + noise.hiccup_rate * self.exposure * body * noise.hiccup_ms / 1000


def _effective_cores(cores: int, pus: int, intra: int, m: ServiceModel) -> float:
    on_cores = min(intra, cores)
    on_siblings = max(0, min(intra, pus) - cores)
    over = max(0, intra - pus)
    return max(0.2, on_cores + m.smt_sibling * on_siblings - m.oversubscribed * over)


def _worker_factor(spec: WorkerSpec, params, topology: Topology, sharers: dict, m: ServiceModel) -> float:
    """Multiplicative penalties of one pinned worker: spans, memory locality, L3 spill."""
    by_cpu = {c.id: c for c in topology.cpus}
    groups = {(by_cpu[c].node, by_cpu[c].l3_group) for c in spec.cpus}
    nodes = {by_cpu[c].node for c in spec.cpus}
    factor = 1 + m.spans_l3 * math.sqrt(max(0, len(groups) - 1)) + (m.spans_node if len(nodes) > 1 else 0.0)
    if len(topology.usable_nodes) > 1:
        local = spec.mem_policy in ("bind", "preferred") and set(spec.mem_nodes) <= set(spec.nodes)
        factor *= 1.0 if local else (m.interleaved_memory if spec.mem_policy == "interleave" else m.remote_memory)
    share = max((sharers[g] for g in groups), default=1)
    spill = max(0.0, share * m.weights_mb - m.l3_mb) / (share * m.weights_mb)
    return factor * (1 + m.l3_spill * spill)


def worker_models(plan: Plan, topology: Topology, noise: Noise, m: ServiceModel = ServiceModel()) -> list[WorkerModel]:
    """Each worker of ``plan`` as the simulator serves it (see the module docstring)."""
    p = plan.params
    by_cpu = {c.id: c for c in topology.cpus}
    sharers: dict = {}
    for w in plan.workers:
        for g in {(by_cpu[c].node, by_cpu[c].l3_group) for c in w.cpus}:
            sharers[g] = sharers.get(g, 0) + 1
    models = []
    for w in plan.workers:
        pinned = bool(p.pin and w.cpus)
        cpus = w.cpus if pinned else topology.usable_cpus
        n_cores = len({by_cpu[c].core for c in cpus})
        intra = p.intra_op_threads or n_cores  # 0: ORT's default, a thread per physical core
        effective = _effective_cores(n_cores, len(cpus), intra, m)
        base = m.single_core_ms / 1000 * (m.serial + (1 - m.serial) / effective)
        if p.spinning and intra > 1:
            base *= m.spinning_gain
        if p.execution_mode == "parallel":
            base *= m.parallel_mode if p.inter_op_threads <= 2 else 1.05
        base *= GRAPH_FACTORS.get(p.graph_optimization, 1.0)
        base *= _worker_factor(w, p, topology, sharers, m) if pinned else m.unpinned
        threads = max(1, min(intra, len(cpus)))
        models.append(WorkerModel(base, threads, 1 + m.straggle * (threads - 1), tuple(cpus)))
    return _bandwidth_capped(models, topology, noise, m)


def _bandwidth_capped(models: list[WorkerModel], topology: Topology, noise: Noise,
                      m: ServiceModel) -> list[WorkerModel]:
    """Stretch the service of the workers of a NUMA node whose demand exceeds its memory bandwidth."""
    by_cpu = {c.id: c for c in topology.cpus}
    node_cores: dict = {}
    for c in topology.cores():
        node_cores[c.node] = node_cores.get(c.node, 0) + 1
    demand: dict = {}
    home = []
    for w in models:
        node = by_cpu[w.cpus[0]].node if len({by_cpu[c].node for c in w.cpus}) == 1 else "spans"
        home.append(node)
        demand[node] = demand.get(node, 0.0) + 1.0 / w.mean_s(noise, m.body_sigma)
    cap = {n: m.bandwidth_rps_per_core * (node_cores.get(n) or len(topology.cores())) for n in demand}
    cap["spans"] = m.bandwidth_rps_per_core * len(topology.cores())
    return [WorkerModel(w.base_s * max(1.0, demand[n] / cap[n]), w.threads, w.exposure, w.cpus)
            for w, n in zip(models, home, strict=True)]


def capacity(models: list[WorkerModel], noise: Noise, m: ServiceModel = ServiceModel()) -> float:
    """Requests per second the workers serve back to back with no interference."""
    return sum(1.0 / w.mean_s(noise, m.body_sigma) for w in models)
