"""Dividing the machine between the models, then each model's config inside its part.

A division gives every model a contiguous range of physical cores in the planner's order (node,
package, L3 group, core), so a model's part fills NUMA nodes one after another and two models
share a node only at the boundary between their ranges. Candidate divisions are the core counts
around the share-proportional split; with ``shared_cores: true`` one more candidate,
``shared``, gives every model every core. Inside its part a model's workers, cores per worker,
threads, SMT and memory policy come from the search space (tuner/search/space.py) resolved
against a restricted Topology holding only that part's CPUs, so each model's plan
(tuner.machine.placement.plan) can only use its own cores.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from tuner.machine.placement import Params, Plan, plan
from tuner.machine.topology import Topology
from tuner.results.mixrecords import Deployment, MixConfig
from tuner.search.space import load_space

SHARED = "shared"
MAX_CANDIDATES = 24  # divisions offered to the sampler, nearest to the proportional split first


def proportional_sizes(n_cores: int, shares: tuple[float, ...]) -> tuple[int, ...]:
    """Cores per model in proportion to the shares (largest remainder), every model at least one."""
    m = len(shares)
    if m > n_cores:
        raise ValueError(f"{m} models cannot each get a core of {n_cores}")
    spare = n_cores - m  # one core each first, the rest by share
    exact = [spare * s / sum(shares) for s in shares]
    sizes = [int(x) for x in exact]
    for i in sorted(range(m), key=lambda i: (-(exact[i] - sizes[i]), i))[: spare - sum(sizes)]:
        sizes[i] += 1
    return tuple(1 + s for s in sizes)


def candidate_sizes(n_cores: int, shares: tuple[float, ...], limit: int = MAX_CANDIDATES) -> list[tuple[int, ...]]:
    """Splits of ``n_cores`` into one positive count per model: the proportional one first, then
    those one core moved away, two cores moved, ... (breadth first); at most ``limit``."""
    target = proportional_sizes(n_cores, shares)
    found = [target]
    seen = {target}
    frontier = [target]
    while frontier and len(found) < limit:
        following = []
        for sizes in frontier:
            for i, j in itertools.permutations(range(len(sizes)), 2):
                if sizes[i] > 1:
                    moved = tuple(k - (x == i) + (x == j) for x, k in enumerate(sizes))
                    if moved not in seen:
                        seen.add(moved)
                        following.append(moved)
        following.sort()
        found += following
        frontier = following
    return found[:limit]


def division_label(sizes: tuple[int, ...]) -> str:
    return "+".join(map(str, sizes))


def division_choices(topology: Topology, deployment: Deployment) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Candidate divisions: label -> each model's CPUs (in deployment order)."""
    cores = topology.cores()
    out: dict[str, tuple[tuple[int, ...], ...]] = {}
    for sizes in candidate_sizes(len(cores), deployment.shares):
        parts, start = [], 0
        for k in sizes:
            parts.append(tuple(sorted(cpu for core in cores[start:start + k] for cpu in core.cpus)))
            start += k
        out[division_label(sizes)] = tuple(parts)
    if deployment.shared_cores:
        out[SHARED] = tuple(tuple(topology.usable_cpus) for _ in deployment.models)
    return out


def model_topology(topology: Topology, cpus: tuple[int, ...], name: str) -> Topology:
    """The machine as one model sees it: only its part's CPUs usable."""
    return topology.restrict(cpus, f"model {name}'s part of a deployment") if cpus else topology


def plans(topology: Topology, config: MixConfig) -> dict[str, Plan]:
    """Each model's plan inside its part (raises Infeasible when a model's params do not fit)."""
    return {n: plan(model_topology(topology, config.cpus[n], n), p) for n, p in config.params.items()}


def suggest_config(trial, topology: Topology, deployment: Deployment, space_name: str) -> MixConfig:
    """Define-by-run: the division (``division``), then each model's config from ``space_name``
    restricted to its part (parameters ``NAME.workers``, ``NAME.cores_per_worker``, ...)."""
    choices = division_choices(topology, deployment)
    label = trial.suggest_categorical("division", list(choices))
    machine_policies = load_space(space_name, topology).choices["numa_policy"]
    params = {}
    for name, cpus in zip(deployment.names, choices[label], strict=True):
        space = load_space(space_name, model_topology(topology, cpus, name)).without_batching(
            "a deployment's models are searched unbatched (issue 24 covers single-model studies)")
        # a part inside one node of a multi-node machine still chooses its memory policy (bind keeps
        # its memory on its node): the restricted topology alone would collapse the choice to none
        space = replace(space, choices={**space.choices, "numa_policy": machine_policies})
        params[name] = space.suggest(trial, prefix=f"{name}.")
    return MixConfig(label, dict(zip(deployment.names, choices[label], strict=True)), params)


def even_split(topology: Topology, deployment: Deployment) -> MixConfig:
    """Baseline: cores divided by share, each model one worker on all of its cores (threads = cores)."""
    sizes = proportional_sizes(len(topology.cores()), deployment.shares)
    label = division_label(sizes)
    parts = division_choices(topology, deployment)[label]
    params = {n: Params(workers=1, cores_per_worker=k, intra_op_threads=k)
              for n, k in zip(deployment.names, sizes, strict=True)}
    return MixConfig(label, dict(zip(deployment.names, parts, strict=True)), params)


def ort_defaults(deployment: Deployment) -> MixConfig:
    """Baseline: every model one unpinned worker with ONNX Runtime's default threads, whole machine."""
    return MixConfig("unpinned", {n: () for n in deployment.names},
                     {n: Params(workers=1, pin=False, intra_op_threads=0) for n in deployment.names})
