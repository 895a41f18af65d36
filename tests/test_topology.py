from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import TOPOLOGIES, fixture_dirs, fixture_topology
from tests.sysfs import FakeCpu, FakeMachine, smt_machine
from tuner.errors import TopologyError
from tuner.machine.cpulist import parse_cpulist
from tuner.machine.sysfs import read_topology
from tuner.machine.topology import Topology, load_topology_file

MACHINES = [
    "128ia64-17n4s2c", "16amd64-8n2c", "16em64t-4s2c2t", "16em64t-4s2c2t-offlines",
    "16em64t-4s2ca2c-cpusetreorder", "16ia64-8n2s", "256ia64-64n2s2c", "2arm-2c", "32intel64-2p8co2t+8ve",
    "64amd64-4s2n4ca2co", "64fake-4n2s2ca2c2t", "8em64t-2s2ca2c", "8em64t-2s4c-asymcaches", "8ia64-2n2s2c",
    "8ia64-2s2c2t",
    # each shows a case placetune once read differently from hwloc (issue 12)
    "32amd64-4s2n4c-cgroup2", "4fake-4gr1nu1pu", "8em64t-2s2ca2c-buggynuma", "40intel64-4n10c+pci-conflicts",
    "offline-cpu0-node0",
]


def machine(name: str) -> Topology:
    return fixture_topology(next(p for p in fixture_dirs() if p.name == name))


def test_the_in_repo_machine_fixtures_are_all_present():
    """The dumps travel with the repository (tests/topologies); a lost one fails here, not silently."""
    assert sorted(p.name for p in fixture_dirs()) == sorted(MACHINES), f"fixtures in {TOPOLOGIES}"
    for root in fixture_dirs():
        assert (root / "sys/devices/system/cpu").is_dir() and (root / "expected.json").is_file()
    assert (TOPOLOGIES / "LICENSE-hwloc.txt").is_file() and (TOPOLOGIES / "README.md").is_file()


def test_reader_reproduces_hwloc_counts_on_real_machines(machine_dir: Path):
    expected = json.loads((machine_dir / "expected.json").read_text())
    topo = fixture_topology(machine_dir)
    # hwloc removes the NUMA nodes whose memory the cpuset forbids; placetune lists them, memory_allowed=False
    nodes = [n for n in topo.nodes if n.memory_allowed]
    assert len(topo.packages) == expected["packages"]
    assert len(nodes) == expected["numa_nodes"]
    assert len(topo.cores()) == expected["cores"]
    assert len(topo.usable_cpus) == expected["pus"]
    assert set(topo.usable_cpus) == parse_cpulist(expected["pu_os_indexes"])
    assert list(topo.threads_per_core) == expected["threads_per_core"]
    assert len(topo.l3_groups) == expected["l3_caches"]
    got_nodes = {n.id: set(topo.node_usable_cpus(n.id)) for n in nodes}
    want_nodes = {n["os_index"]: set(parse_cpulist(n["cpus"])) for n in expected["numa_nodes_detail"]}
    assert got_nodes == want_nodes


def test_every_cpu_names_a_node_that_exists(machine_dir: Path):
    topo = fixture_topology(machine_dir)
    ids = {n.id for n in topo.nodes}
    assert {c.node for c in topo.cpus} <= ids | {None}
    for node in topo.nodes:
        assert all(topo.cpu(c).node == node.id for c in node.cpus)


def test_no_cache_group_spans_two_packages(machine_dir: Path):
    topo = fixture_topology(machine_dir)
    for level in ("l2_group", "l3_group"):
        packages: dict[int, set[int]] = {}
        for cpu in topo.cpus:
            if cpu.usable and getattr(cpu, level) is not None:
                packages.setdefault(getattr(cpu, level), set()).add(cpu.package)
        assert all(len(p) == 1 for p in packages.values()), (level, packages)


def test_cgroup_v2_named_only_by_proc_self_cpuset_restricts_usable_cpus():
    """32amd64-4s2n4c-cgroup2: a cgroup2 mount, proc/self/cpuset, no proc/self/cgroup (hwloc: 0-5)."""
    topo = machine("32amd64-4s2n4c-cgroup2")
    assert topo.usable_cpus == (0, 1, 2, 3, 4, 5)
    assert "cgroup/unified/uid_2008/job_15389/step_0" in topo.restriction
    assert [n.id for n in topo.nodes if n.memory_allowed] == [0, 1, 2, 3, 4, 5]


def test_cpus_without_core_id_or_sibling_masks_are_cores_of_their_own():
    """4fake-4gr1nu1pu: only physical_package_id and core_siblings; hwloc invents no SMT."""
    topo = machine("4fake-4gr1nu1pu")
    assert [core.cpus for core in topo.cores()] == [(0,), (1,)]
    assert not topo.smt


def test_overlapping_node_cpumaps_keep_the_first_node_only():
    """8em64t-2s2ca2c-buggynuma: 8 nodes each claiming CPUs 0-7, cpuN/nodeN links; hwloc keeps node 0."""
    topo = machine("8em64t-2s2ca2c-buggynuma")
    assert [n.id for n in topo.nodes] == [0]
    assert topo.node_usable_cpus(0) == tuple(range(8))
    assert any("buggy firmware" in note and "1-7" in note for note in topo.notes)


def test_a_list_contradicting_its_mask_never_joins_two_packages():
    """40intel64-4n10c+pci-conflicts: cpu3's core_siblings mask and cpu2's L3 shared_cpu_map say 0-3,
    their lists and physical_package_id say otherwise: the consistent lists win, with a note."""
    topo = machine("40intel64-4n10c+pci-conflicts")
    assert len(topo.packages) == 4 and len(topo.l3_groups) == 4
    assert topo.cpu(3).package == topo.cpu(7).package != topo.cpu(0).package
    assert topo.cpu(2).l3_group == topo.cpu(6).l3_group != topo.cpu(0).l3_group
    conflicts = [note for note in topo.notes if "disagree" in note]
    assert any("cpu3/topology/core_siblings_list" in n for n in conflicts)
    assert any("cpu2/cache/index3/shared_cpu_list" in n for n in conflicts)


def test_cpu_node_links_place_offline_cpus_and_never_name_a_missing_node():
    """offline-cpu0-node0: node0 is offline, yet package 0's CPUs link to it; node1's cpumap holds only its
    online CPUs, its offline ones are placed by their cpuN/node1 links."""
    topo = machine("offline-cpu0-node0")
    assert [n.id for n in topo.nodes] == [1]
    assert all(topo.cpu(c).node is None for c in range(0, 24, 2))
    assert topo.nodes[0].cpus == tuple(range(1, 24, 2))
    assert not topo.cpu(1).online and topo.cpu(1).node == 1


def test_json_round_trip_on_real_machines(machine_dir: Path):
    topo = fixture_topology(machine_dir)
    assert Topology.from_json(topo.to_json()) == topo


def test_live_machine_reads_and_round_trips():
    topo = read_topology("/")
    assert set(topo.usable_cpus) <= os.sched_getaffinity(0)
    assert len(topo.usable_cpus) == len(os.sched_getaffinity(0))
    assert Topology.from_json(topo.to_json()) == topo


def test_offline_cpus_are_listed_but_not_usable(tmp_path):
    m = smt_machine(1, 4, 1)
    m.cpus[2].online = False
    topo = read_topology(m.write(tmp_path))
    assert topo.usable_cpus == (0, 1, 3)
    assert not topo.cpu(2).online
    assert len(topo.cores()) == 3


def test_per_cpu_online_files_when_there_is_no_global_list(tmp_path):
    m = smt_machine(1, 4, 1)
    m.write_online_file = False
    m.cpus[3].online = False
    topo = read_topology(m.write(tmp_path))
    assert topo.usable_cpus == (0, 1, 2)


def test_old_kernel_with_only_thread_siblings_and_no_node_dir(tmp_path):
    m = smt_machine(2, 2, 2)
    m.nodes = None
    for c in m.cpus:
        c.use_core_cpus = False
    topo = read_topology(m.write(tmp_path))
    assert len(topo.nodes) == 1 and set(topo.nodes[0].cpus) == set(range(8))
    assert topo.threads_per_core == (2,)
    assert len(topo.cores()) == 4 and len(topo.packages) == 2


def test_no_core_id_and_no_sibling_masks_makes_each_cpu_a_core(tmp_path):
    cpus = [FakeCpu(i, core_id=None, package_cpus=(0, 1, 2, 3)) for i in range(4)]
    topo = read_topology(FakeMachine(cpus=cpus, nodes={0: (0, 1, 2, 3)}).write(tmp_path))
    assert len(topo.cores()) == 4 and topo.threads_per_core == (1,) and len(topo.packages) == 1


def test_no_sibling_masks_at_all_uses_ids(tmp_path):
    m = smt_machine(1, 2, 2)
    for c in m.cpus:
        c.siblings = None
        c.package_cpus = None
    topo = read_topology(m.write(tmp_path))
    assert topo.threads_per_core == (2,)
    assert [core.cpus for core in topo.cores()] == [(0, 2), (1, 3)]


def test_smt4_cores(tmp_path):
    topo = read_topology(smt_machine(1, 2, 4).write(tmp_path))
    assert topo.threads_per_core == (4,)
    assert [core.cpus for core in topo.cores()] == [(0, 2, 4, 6), (1, 3, 5, 7)]


def test_hybrid_p_and_e_cores(tmp_path):
    # 2 P-cores with 2 threads (cpus 0-3), 4 E-cores with 1 thread (cpus 4-7)
    cpus = [FakeCpu(i, core_id=i // 2, siblings=(i - i % 2, i - i % 2 + 1)) for i in range(4)]
    cpus += [FakeCpu(i, core_id=4 + i, siblings=(i,)) for i in range(4, 8)]
    m = FakeMachine(cpus=cpus, nodes={0: tuple(range(8))},
                    extra={"sys/devices/cpu_core/cpus": "0-3\n", "sys/devices/cpu_atom/cpus": "4-7\n"})
    topo = read_topology(m.write(tmp_path))
    assert topo.threads_per_core == (1, 2)
    assert len(topo.cores()) == 6
    assert topo.cpu(0).core_type == "P" and topo.cpu(5).core_type == "E"


def test_siblings_with_different_core_ids_are_separate_cores(tmp_path):
    # AMD Bulldozer compute units: thread_siblings pairs cpus, core_id differs
    cpus = [FakeCpu(i, core_id=i, siblings=(i - i % 2, i - i % 2 + 1)) for i in range(4)]
    topo = read_topology(FakeMachine(cpus=cpus, nodes={0: (0, 1, 2, 3)}).write(tmp_path))
    assert len(topo.cores()) == 4 and topo.threads_per_core == (1,)


def test_repeated_core_ids_in_different_dies_are_different_cores(tmp_path):
    cpus = [FakeCpu(i, core_id=i % 2, siblings=(i,), die=i // 2) for i in range(4)]
    topo = read_topology(FakeMachine(cpus=cpus, nodes={0: (0, 1), 1: (2, 3)}).write(tmp_path))
    assert len(topo.cores()) == 4


def test_sparse_node_numbering_and_distance_matrix(tmp_path):
    m = smt_machine(2, 2, 1)
    m.nodes = {0: (0, 1), 4: (2, 3)}
    topo = read_topology(m.write(tmp_path))
    assert [n.id for n in topo.nodes] == [0, 4]
    assert topo.node_usable_cpus(4) == (2, 3)
    assert topo.distance(0, 4) == 21 and topo.distance(4, 4) == 10


def test_nodes_that_all_claim_the_same_cpus_give_each_cpu_one_node(tmp_path):
    m = smt_machine(1, 4, 1)
    m.nodes = {0: (0, 1, 2, 3), 1: (0, 1, 2, 3), 2: (2, 3)}
    m.links = {f"sys/devices/system/cpu/cpu{c}/node{c % 3}": f"../../node/node{c % 3}" for c in range(4)}
    topo = read_topology(m.write(tmp_path))
    assert [n.id for n in topo.nodes] == [0]
    assert topo.node_usable_cpus(0) == (0, 1, 2, 3)
    assert any("buggy firmware" in note for note in topo.notes)


def test_partly_overlapping_node_is_dropped_and_its_own_cpus_have_no_node(tmp_path):
    m = smt_machine(1, 4, 1)
    m.nodes = {0: (0, 1), 1: (1, 2, 3)}
    topo = read_topology(m.write(tmp_path))
    assert [n.id for n in topo.nodes] == [0]
    assert topo.cpu(2).node is None and topo.cpu(1).node == 0


def test_cache_list_and_mask_disagreeing_never_span_packages(tmp_path):
    m = smt_machine(2, 2, 1)  # cpus 0,1 in package 0; 2,3 in package 1
    l3 = tmp_path / "sys/devices/system/cpu/cpu2/cache/index3"
    m.write(tmp_path)
    (l3 / "shared_cpu_map").write_text("f\n")  # says 0-3 while the list says 2-3
    topo = read_topology(tmp_path)
    assert topo.cpu(2).l3_group == topo.cpu(3).l3_group == 2
    assert any("shared_cpu_list and its mask disagree; used the list" in n for n in topo.notes)
    (l3 / "shared_cpu_list").write_text("0-3\n")  # both sources wrong: kept inside the package
    topo = read_topology(tmp_path)
    assert topo.cpu(2).l3_group == 2
    assert any("span other packages" in n for n in topo.notes)


def test_cpus_outside_any_node_have_no_node(tmp_path):
    m = smt_machine(1, 4, 1)
    m.nodes = {0: (0, 1)}
    topo = read_topology(m.write(tmp_path))
    assert topo.cpu(3).node is None and topo.cpu(3).usable
    assert topo.node_usable_cpus(0) == (0, 1)


def test_cgroup_v1_cpuset_below_root_restricts_usable_cpus(tmp_path):
    m = smt_machine(2, 4, 1)
    m.extra = {
        "proc/self/cpuset": "/job\n",
        "proc/mounts": "cgroup /sys/fs/cgroup/cpuset cgroup rw,cpuset 0 0\n",
        "sys/fs/cgroup/cpuset/job/cpuset.cpus": "2-5\n",
        "sys/fs/cgroup/cpuset/job/cpuset.mems": "0\n",
    }
    topo = read_topology(m.write(tmp_path))
    assert topo.usable_cpus == (2, 3, 4, 5)
    assert [n.memory_allowed for n in topo.nodes] == [True, False]


def test_cgroup_v2_effective_cpuset_below_root_restricts_usable_cpus(tmp_path):
    m = smt_machine(2, 4, 1)
    m.extra = {
        "proc/self/cgroup": "0::/kubepods/pod1\n",
        "proc/self/mounts": "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n",
        "sys/fs/cgroup/kubepods/pod1/cpuset.cpus.effective": "4-7\n",
    }
    topo = read_topology(m.write(tmp_path))
    assert topo.usable_cpus == (4, 5, 6, 7)
    assert "cgroup" in topo.restriction


def test_cgroup_v2_named_by_proc_self_cpuset_alone(tmp_path):
    m = smt_machine(2, 4, 1)
    m.extra = {
        "proc/self/cpuset": "/job\n",
        "proc/mounts": "none /cgroup/unified cgroup2 rw 0 0\n",
        "cgroup/unified/cgroup.controllers": "cpuset memory\n",
        "cgroup/unified/job/cpuset.cpus.effective": "1-2\n",
        "cgroup/unified/job/cpuset.mems.effective": "1\n",
    }
    topo = read_topology(m.write(tmp_path))
    assert topo.usable_cpus == (1, 2)
    assert [n.memory_allowed for n in topo.nodes] == [False, True]


def test_a_dump_without_cpu_information_is_a_clear_error(tmp_path):
    with pytest.raises(TopologyError, match="sys/devices/system/cpu"):
        read_topology(tmp_path)


def test_corrupt_topology_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text("{not json")
    with pytest.raises(TopologyError, match="not valid JSON"):
        load_topology_file(bad)
    bad.write_text('{"format": "something-else"}')
    with pytest.raises(TopologyError, match="placetune-topology"):
        load_topology_file(bad)
    with pytest.raises(TopologyError, match="does not exist"):
        load_topology_file(tmp_path / "missing.json")


def test_fingerprint_changes_with_the_usable_set(machine_dir: Path):
    topo = fixture_topology(machine_dir)
    assert topo.fingerprint() == Topology.from_json(topo.to_json()).fingerprint()
    if len(topo.usable_cpus) > 1:
        assert topo.restrict(topo.usable_cpus[:-1]).fingerprint() != topo.fingerprint()


def test_fingerprint_is_the_shape_not_the_numbers(machine_dir: Path):
    """Two disjoint single-CPU cpusets look like two identical 1-CPU hosts; one and two CPUs do not."""
    topo = fixture_topology(machine_dir)
    cpus = topo.usable_cpus
    if len(cpus) < 3:
        pytest.skip("needs 3 usable CPUs")
    assert topo.restrict([cpus[0]]).fingerprint() == topo.restrict([cpus[-1]]).fingerprint()
    assert topo.restrict([cpus[0]]).fingerprint() != topo.restrict(list(cpus[:2])).fingerprint()
