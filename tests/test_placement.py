from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.conftest import fixture_dirs, fixture_topology
from tuner.errors import Infeasible, UsageError
from tuner.machine.placement import Params, Plan, plan
from tuner.machine.topology import Topology

FIXTURES = fixture_dirs()


@st.composite
def topology_and_params(draw, restrict: bool = False):
    topo: Topology = fixture_topology(draw(st.sampled_from(FIXTURES)))
    if restrict:
        usable = list(topo.usable_cpus)
        start = draw(st.integers(0, len(usable) - 1))
        length = draw(st.integers(1, len(usable) - start))
        topo = topo.restrict(usable[start:start + length], "test cpuset")
    cores = len(topo.cores())
    cores_per_worker = draw(st.integers(1, max(1, min(cores, 16))))
    workers = draw(st.integers(1, max(1, cores // cores_per_worker)))
    params = Params(
        workers=workers,
        cores_per_worker=cores_per_worker,
        smt=draw(st.booleans()),
        numa_policy=draw(st.sampled_from(["none", "bind", "interleave", "preferred"])),
        io_cores=draw(st.integers(0, 2)),
    )
    return topo, params


def _plan_or_skip(topo: Topology, params: Params) -> Plan:
    try:
        return plan(topo, params)
    except Infeasible:
        assume(False)
        raise


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])


@PROPERTY
@given(topology_and_params(restrict=True))
def test_no_cpu_in_two_workers_and_only_usable_cpus(case):
    topo, params = case
    p = _plan_or_skip(topo, params)
    all_cpus = [cpu for w in p.workers for cpu in w.cpus] + list(p.io_cpus)
    assert len(all_cpus) == len(set(all_cpus))
    assert set(all_cpus) <= set(topo.usable_cpus)
    assert len(p.workers) == params.workers


@PROPERTY
@given(topology_and_params())
def test_smt_off_uses_one_pu_per_core_and_smt_on_uses_whole_cores(case):
    topo, params = case
    p = _plan_or_skip(topo, params)
    core_of = {cpu: core for core in topo.cores() for cpu in core.cpus}
    for w in p.workers:
        per_core = Counter(core_of[cpu].index for cpu in w.cpus)
        assert len(per_core) == params.cores_per_worker
        if params.smt:
            assert all(n == len(core_of[cpu].cpus) for cpu in w.cpus for n in [per_core[core_of[cpu].index]])
        else:
            assert max(per_core.values()) == 1


@PROPERTY
@given(topology_and_params())
def test_bind_keeps_each_worker_inside_one_node_when_it_fits(case):
    topo, params = case
    p = _plan_or_skip(topo, params)
    node_sizes = Counter(core.node for core in topo.cores())
    fits = params.cores_per_worker <= max(node_sizes.values())
    for w in p.workers:
        nodes = {topo.cpu(cpu).node for cpu in w.cpus}
        if params.numa_policy == "bind" and fits:
            assert len(nodes) == 1
            node = next(iter(nodes))
            if node is not None:  # CPUs of no NUMA node (offline-cpu0-node0) have no memory to bind to
                assert w.mem_policy == "bind"
                assert w.mem_nodes == (node,)


@PROPERTY
@given(topology_and_params())
def test_workers_spread_evenly_over_nodes_that_have_room(case):
    topo, params = case
    p = _plan_or_skip(topo, params)
    if any(len(w.nodes) != 1 for w in p.workers):
        return  # workers spanning nodes: spreading is not defined
    counts = Counter(w.nodes[0] for w in p.workers)
    used = {cpu for w in p.workers for cpu in w.cpus} | set(p.io_cpus)
    free_cores = Counter(
        core.node for core in topo.cores() if not set(core.cpus) & used
    )
    for node in {c.node for c in topo.cores()}:
        if free_cores[node] >= params.cores_per_worker:  # node still has room for one more
            assert counts[node] >= max(counts.values(), default=0) - 1, (node, counts)


@PROPERTY
@given(topology_and_params())
def test_a_worker_that_fits_in_one_l3_group_is_not_split(case):
    topo, params = case
    p = _plan_or_skip(topo, params)
    core_of = {cpu: core for core in topo.cores() for cpu in core.cpus}
    io_cores = {core_of[c].index for c in p.io_cpus}
    for node in {w.nodes[0] for w in p.workers if len(w.nodes) == 1}:
        groups = Counter(
            core.l3_group for core in topo.cores() if core.node == node and core.index not in io_cores
        )
        room = sum(n // params.cores_per_worker for n in groups.values())
        in_node = [w for w in p.workers if w.nodes == (node,)]
        unsplit = sum(1 for w in in_node if len({core_of[c].l3_group for c in w.cpus}) == 1)
        assert unsplit >= min(len(in_node), room)


@PROPERTY
@given(topology_and_params(restrict=True))
def test_same_input_gives_the_same_plan(case):
    topo, params = case
    try:
        first = plan(topo, params)
    except Infeasible as exc:
        with pytest.raises(Infeasible, match=str(exc)[:30].replace("(", r"\(").replace(")", r"\)")):
            plan(Topology.from_json(topo.to_json()), params)
        return
    assert plan(Topology.from_json(topo.to_json()), params) == first
    assert Plan.from_dict(first.to_dict()) == first


def test_a_container_cpuset_plans_only_inside_it():
    box = next(p for p in FIXTURES if p.name.startswith("32intel64"))
    topo = fixture_topology(box).restrict(range(4, 12), "container cpuset 4-11")
    p = plan(topo, Params(workers=4, cores_per_worker=2, numa_policy="bind"))
    assert {cpu for w in p.workers for cpu in w.cpus} == set(range(4, 12))
    assert sorted(w.nodes for w in p.workers) == [(0,), (0,), (1,), (1,)]
    with pytest.raises(Infeasible, match="need 10 cores"):
        plan(topo, Params(workers=5, cores_per_worker=2))


def test_io_cores_are_kept_out_of_the_workers():
    box = next(p for p in FIXTURES if p.name.startswith("32intel64"))
    p = plan(fixture_topology(box), Params(workers=2, cores_per_worker=4, io_cores=1, smt=True))
    assert p.io_cpus == (15, 31)
    assert all(not set(w.cpus) & set(p.io_cpus) for w in p.workers)


def test_bind_that_cannot_stay_node_local_is_infeasible_with_a_reason():
    box = next(p for p in FIXTURES if p.name.startswith("8ia64-2n2s2c"))  # 2 nodes x 4 cores
    with pytest.raises(Infeasible, match="cannot each stay inside one NUMA node"):
        plan(fixture_topology(box), Params(workers=2, cores_per_worker=3, numa_policy="bind", io_cores=2))
    # without binding, the second worker takes what is left across nodes
    p = plan(fixture_topology(box), Params(workers=2, cores_per_worker=3, numa_policy="none", io_cores=2))
    assert sorted(len(w.nodes) for w in p.workers) == [1, 2]


def test_interleave_and_preferred_memory_nodes():
    box = next(p for p in FIXTURES if p.name.startswith("16amd64-8n2c"))
    topo = fixture_topology(box)
    inter = plan(topo, Params(workers=2, cores_per_worker=2, numa_policy="interleave"))
    assert inter.workers[0].mem_nodes == tuple(range(8))
    pref = plan(topo, Params(workers=2, cores_per_worker=2, numa_policy="preferred"))
    assert [w.mem_nodes for w in pref.workers] == [w.nodes for w in pref.workers]


def test_memoryless_node_binds_to_the_nearest_node_with_memory():
    box = next(p for p in FIXTURES if p.name.startswith("128ia64"))
    topo = fixture_topology(box)
    p = plan(topo, Params(workers=1, cores_per_worker=2, numa_policy="bind"))
    assert p.workers[0].mem_nodes == p.workers[0].nodes


def test_bad_params_are_usage_errors():
    with pytest.raises(UsageError, match="numa_policy"):
        Params(numa_policy="local")
    with pytest.raises(UsageError, match="workers"):
        Params(workers=0)
    with pytest.raises(UsageError, match="unknown config key"):
        Params.from_dict({"workerz": 2})


def test_too_many_workers_is_infeasible_with_counts():
    box = next(p for p in FIXTURES if p.name.startswith("2arm"))
    with pytest.raises(Infeasible, match=r"need 4 cores; 2 usable"):
        plan(fixture_topology(box), Params(workers=2, cores_per_worker=2))
    with pytest.raises(Infeasible, match="leaves no core"):
        plan(fixture_topology(box), Params(io_cores=2))
