from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.conftest import fixture_dirs, fixture_topology
from tests.sysfs import FakeCpu, FakeMachine
from tuner.errors import Infeasible, UsageError
from tuner.machine.cpulist import format_cpulist
from tuner.machine.placement import Params, Plan, plan
from tuner.machine.sysfs import read_topology
from tuner.machine.topology import Topology

FIXTURES = fixture_dirs()


def machine(name: str) -> Topology:
    return fixture_topology(next(p for p in FIXTURES if p.name == name))


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
            if node is not None:
                assert w.mem_policy == "bind"
                own = next(n for n in topo.nodes if n.id == node)
                if own.memory_allowed and (own.memory_bytes or 0) > 0:
                    assert w.mem_nodes == (node,)
                elif any(n.memory_allowed and (n.memory_bytes or 0) > 0 for n in topo.nodes):
                    # no memory there, or the cpuset forbids it (4fake-4gr1nu1pu): the nearest node that has it
                    assert len(w.mem_nodes) == 1 and w.mem_nodes != (node,)
                    target = next(n for n in topo.nodes if n.id == w.mem_nodes[0])
                    assert target.memory_allowed and (target.memory_bytes or 0) > 0
            else:  # CPUs of no NUMA node (offline-cpu0-node0) have no memory to bind to: the plan says so
                assert any(note.startswith(f"worker {w.index}: ") and "no NUMA node" in note for note in p.notes)


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
        if node is None and params.numa_policy == "bind":
            continue  # CPUs of no NUMA node are bind's last resort, not a node to spread over
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
    # 128ia64-17n4s2c: 16 nodes of 8 cores and a 17th, node 16, with memory and no CPU; node 0 sees
    # node 16 at distance 14, every other node at 17 or 20. With node 0's memory gone (a memoryless
    # node, as on machines whose DIMMs sit on other sockets), its worker binds to node 16.
    topo = machine("128ia64-17n4s2c")
    assert all((n.memory_bytes or 0) > 0 for n in topo.nodes)
    memoryless = replace(topo, nodes=tuple(replace(n, memory_bytes=0) if n.id == 0 else n for n in topo.nodes))
    for policy, expected in (("bind", (16,)), ("preferred", (16,))):
        p = plan(memoryless, Params(workers=1, cores_per_worker=2, numa_policy=policy))
        assert p.workers[0].nodes == (0,)
        assert (p.workers[0].mem_policy, p.workers[0].mem_nodes) == (policy, expected)
    # interleave leaves the memoryless node out; the machine as read binds node-locally
    inter = plan(memoryless, Params(workers=1, cores_per_worker=2, numa_policy="interleave"))
    assert inter.workers[0].mem_nodes == tuple(range(1, 17))
    assert plan(topo, Params(workers=1, cores_per_worker=2, numa_policy="bind")).workers[0].mem_nodes == (0,)


def test_a_node_whose_memory_the_cpuset_forbids_binds_to_an_allowed_node():
    # 4fake-4gr1nu1pu: the cpuset allows CPUs of nodes 0 and 1 but the memory of nodes 0 and 2 only
    topo = machine("4fake-4gr1nu1pu")
    assert [n.id for n in topo.nodes if not n.memory_allowed] == [1, 3]
    p = plan(topo, Params(workers=2, cores_per_worker=1, numa_policy="bind"))
    assert [(w.nodes, w.mem_nodes) for w in p.workers] == [((0,), (0,)), ((1,), (0,))]
    inter = plan(topo, Params(workers=2, cores_per_worker=1, numa_policy="interleave"))
    assert {w.mem_nodes for w in inter.workers} == {(0, 2)}


def test_bind_judges_fit_on_whole_nodes_not_on_what_the_io_cores_left():
    """Regression: offline-cpu0-node0 has 8 usable cores in node 1 and 9 whose CPUs have no node,
    last in planning order. io_cores=1 took one of the 9, the planner then saw no group of 9 and
    treated a 9-core worker as larger than any node: under bind it spanned node 1 and the
    nodeless CPUs. A worker that fits a node must stay in one, so under bind this is infeasible."""
    topo = machine("offline-cpu0-node0")
    assert Counter(core.node for core in topo.cores()) == {1: 8, None: 9}
    with pytest.raises(Infeasible, match=r"cannot each stay inside one NUMA node \(free cores left: "
                                         r"node 1: 8, no node: 8\).*fewer io_cores"):
        plan(topo, Params(workers=1, cores_per_worker=9, numa_policy="bind", io_cores=1))
    spread = plan(topo, Params(workers=1, cores_per_worker=9, numa_policy="none", io_cores=1))
    assert spread.notes == ("worker 0 spans nodes (no single node had room)",)
    assert {topo.cpu(cpu).node for cpu in spread.workers[0].cpus} == {1, None}


def test_bind_judges_fit_on_whole_nodes_on_a_machine_whose_last_node_is_largest(tmp_path):
    """The same rule on real NUMA nodes: node 0 holds 2 cores, node 1 holds 4; two io cores leave
    node 1 with 2, yet a 3-core worker fits node 1, so bind cannot spread it over both nodes."""
    cpus = [FakeCpu(i, core_id=i, package=0 if i < 2 else 1) for i in range(6)]
    topo = read_topology(FakeMachine(cpus=cpus, nodes={0: (0, 1), 1: (2, 3, 4, 5)}).write(tmp_path))
    with pytest.raises(Infeasible, match="cannot each stay inside one NUMA node"):
        plan(topo, Params(workers=1, cores_per_worker=3, numa_policy="bind", io_cores=2))
    assert plan(topo, Params(workers=1, cores_per_worker=3, numa_policy="bind")).workers[0].cpus == (2, 3, 4)
    # a worker larger than every node still spans nodes, as before
    assert plan(topo, Params(workers=1, cores_per_worker=5, numa_policy="bind")).workers[0].nodes == (0, 1)


def test_bind_keeps_workers_off_cpus_of_no_numa_node_while_a_node_has_room():
    # offline-cpu0-node0: node 1's 8 cores come first for bind; the 9 nodeless cores (no memory to
    # bind to) are a last resort, and the plan says what binding is lost there
    topo = machine("offline-cpu0-node0")
    node1 = set(topo.node_usable_cpus(1))
    two = plan(topo, Params(workers=2, cores_per_worker=4, numa_policy="bind"))
    assert all(set(w.cpus) <= node1 and w.mem_nodes == (1,) for w in two.workers)
    assert two.notes == ()
    three = plan(topo, Params(workers=3, cores_per_worker=4, numa_policy="bind"))
    last = three.workers[2]
    assert {topo.cpu(cpu).node for cpu in last.cpus} == {None} and last.mem_policy == "none"
    assert three.notes == (f"worker 2: CPU(s) {format_cpulist(last.cpus)} belong to no NUMA node; "
                           "numa_policy bind is dropped: its memory policy is none",)
    # other policies spread over both groups as before; preferred says what it loses
    pref = plan(topo, Params(workers=2, cores_per_worker=4, numa_policy="preferred"))
    assert sorted(w.mem_policy for w in pref.workers) == ["none", "preferred"]
    assert len(pref.notes) == 1 and "no NUMA node" in pref.notes[0]
    # a worker spanning node 1 and nodeless CPUs binds to node 1 only, and the plan says so
    wide = plan(topo, Params(workers=1, cores_per_worker=12, numa_policy="bind"))
    assert wide.workers[0].mem_nodes == (1,)
    assert "its memory policy is bind 1 (its other CPUs' nodes) only" in wide.notes[-1]


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
