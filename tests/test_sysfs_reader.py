"""How the sysfs reader degrades: missing, empty or garbled files read as absent, never as a crash.

The file primitives (``fsroot``), the cgroup cpuset lookup (``cgroup``) and the reader
(``sysfs.read_topology``) each on small synthetic roots written by ``tests/sysfs.py``."""

from __future__ import annotations

from pathlib import Path

from tests.sysfs import smt_machine
from tuner.machine.cgroup import cgroup_cpuset
from tuner.machine.fsroot import FsRoot, conflict_notes, numbered, pick_cpuset
from tuner.machine.sysfs import read_topology


def _root(tmp_path: Path, files: dict[str, str]) -> FsRoot:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return FsRoot(tmp_path)


# ---------------------------------------------------------------- file primitives


def test_missing_files_and_folders_read_as_none_or_empty(tmp_path):
    fs = FsRoot(tmp_path)
    assert fs.read("no/such/file") is None
    assert fs.read_int("no/such/file") is None
    assert fs.read_set("no/such/list", "no/such/mask") is None
    assert fs.listdir("no/such/folder") == []
    assert fs.read(".") is None  # a folder is not a file


def test_nul_bytes_are_dropped_and_garbled_numbers_read_as_none(tmp_path):
    fs = _root(tmp_path, {"a": "7\n\x00\x00", "b": "seven\n", "c": "\xff\xfe binary"})
    assert fs.read("/a") == "7\n" and fs.read_int("a") == 7  # a leading / is relative to the root
    assert fs.read_int("b") is None
    assert fs.read_int("c") is None


def test_a_set_is_read_from_its_list_else_from_its_mask(tmp_path):
    fs = _root(tmp_path, {"good_list": "0-2\n", "bad_list": "zero\n", "mask": "30\n", "bad_mask": "zz\n"})
    assert fs.read_set("good_list", "mask") == {0, 1, 2}
    assert fs.read_set("bad_list", "mask") == {4, 5}
    assert fs.read_set("bad_list", "bad_mask") is None
    assert fs.read_set("bad_list") is None


def test_numbered_names_keep_only_exact_matches_in_number_order():
    assert numbered(["cpu10", "cpu2", "cpufreq", "cpu", "cpuidle", "xcpu3", "cpu0"], "cpu") == [0, 2, 10]


def test_a_set_given_twice_is_the_mask_unless_they_disagree_about_online_cpus(tmp_path):
    fs = _root(tmp_path, {"agree_map": "0f\n", "agree_list": "0-3\n", "offline_map": "3f\n",
                          "bad_map": "garbage\n", "only_list": "1-2\n"})
    online = {0, 1, 2, 3}
    conflicts: list[tuple[str, str]] = []
    assert pick_cpuset(fs, "agree_map", "agree_list", online, conflicts) == {0, 1, 2, 3}
    assert pick_cpuset(fs, "offline_map", "agree_list", online, conflicts) == set(range(6))  # 4, 5 offline
    assert pick_cpuset(fs, "bad_map", "only_list", online, conflicts) == {1, 2}
    assert pick_cpuset(fs, "missing_map", "missing_list", online, conflicts) is None
    assert conflicts == []


def test_a_contradiction_is_settled_by_what_fits_and_recorded(tmp_path):
    fs = _root(tmp_path, {"cpu1/x_map": "0f\n", "cpu1/x_list": "0-1\n"})
    conflicts: list[tuple[str, str]] = []
    chosen = pick_cpuset(fs, "cpu1/x_map", "cpu1/x_list", {0, 1, 2, 3}, conflicts,
                         fits=lambda cpus: cpus <= {0, 1}, why="its package")
    assert chosen == {0, 1}
    assert conflicts == [("cpuN/x_list and its mask disagree; used the list, the one consistent with its package",
                          "cpu1/x_list: 0-1, mask: 0-3")]
    # nothing to tell them apart: the mask, as hwloc reads it
    assert pick_cpuset(fs, "cpu1/x_map", "cpu1/x_list", {0, 1, 2, 3}, conflicts) == {0, 1, 2, 3}
    assert conflicts[-1][0].endswith("used the mask, as hwloc does")


def test_conflicts_are_grouped_into_one_note_per_kind_with_a_count():
    notes = conflict_notes([("A", "first"), ("B", "only"), ("A", "second"), ("A", "third")])
    assert notes == ["A (3 times; e.g. first)", "B (only)"]
    assert conflict_notes([]) == []


# ---------------------------------------------------------------- cgroup cpuset


def _reader(files: dict[str, str]):
    """A root's files as ``cgroup_cpuset`` reads them: paths relative to the root, a leading / ignored."""
    return lambda rel: files.get(rel.lstrip("/"))


def test_no_cgroup_information_means_no_restriction():
    assert cgroup_cpuset(_reader({})) == (None, None, "")
    only_name = {"proc/self/cgroup": "garbage line\n0::/job\n"}  # named, but no cgroup2 mount listed
    assert cgroup_cpuset(_reader(only_name)) == (None, None, "")


def test_empty_and_garbled_cpuset_files_fall_through_to_the_next_name():
    files = {
        "proc/self/cgroup": "12:cpu,cpuacct:/x\n5:cpuset:/job\nnot a line\n",
        "proc/mounts": "cgroup /cg/cpuset cgroup rw,cpuset 0 0\nshort line\n",
        "cg/cpuset/job/cpuset.effective_cpus": "\n",  # empty: the next name is read
        "cg/cpuset/job/cpuset.cpus": "2-3\n",
        "cg/cpuset/job/cpuset.effective_mems": "not-a-list\n",  # garbled: the next name is read
        "cg/cpuset/job/cpuset.mems": "1\n",
    }
    assert cgroup_cpuset(_reader(files)) == ({2, 3}, {1}, "cgroup cpuset /cg/cpuset/job")


def test_proc_self_cpuset_names_the_cgroup_before_proc_self_cgroup():
    files = {
        "proc/self/cgroup": "0::/other\n",
        "proc/self/cpuset": "/job\n",
        "proc/self/mounts": "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n",
        "sys/fs/cgroup/job/cpuset.cpus": "0\n",
        "sys/fs/cgroup/other/cpuset.cpus": "1\n",
    }
    cpus, mems, where = cgroup_cpuset(_reader(files))
    assert (cpus, mems, where) == ({0}, None, "cgroup cpuset /sys/fs/cgroup/job")


# ---------------------------------------------------------------- the reader


def test_an_empty_global_online_list_falls_back_to_per_cpu_files(tmp_path):
    m = smt_machine(1, 4, 1)
    m.extra = {"sys/devices/system/cpu/cpu2/online": "0\n"}
    root = m.write(tmp_path)
    (root / "sys/devices/system/cpu/online").write_text("\n")
    assert read_topology(root).usable_cpus == (0, 1, 3)


def test_a_present_cpu_without_a_folder_is_listed_offline_as_a_core_of_its_own(tmp_path):
    m = smt_machine(1, 2, 1)
    m.extra = {"sys/devices/system/cpu/present": "0-2\n"}
    topo = read_topology(m.write(tmp_path))
    assert [c.id for c in topo.cpus] == [0, 1, 2]
    assert not topo.cpu(2).online and topo.cpu(2).core not in {topo.cpu(0).core, topo.cpu(1).core}
    assert topo.usable_cpus == (0, 1)


def test_garbled_ids_distances_and_meminfo_read_as_unknown(tmp_path):
    m = smt_machine(2, 2, 1)
    root = m.write(tmp_path)
    (root / "sys/devices/system/cpu/cpu3/topology/core_id").write_text("n/a\n")
    (root / "sys/devices/system/node/node0/distance").write_text("10 twenty\n")
    (root / "sys/devices/system/node/node1/distance").write_text("10\n")  # one value for two nodes
    (root / "sys/devices/system/node/node1/meminfo").write_text("garbage\n")
    topo = read_topology(root)
    assert topo.cpu(3).core_id == -1 and len(topo.cores()) == 4
    assert [n.distances for n in topo.nodes] == [None, None] and topo.distance(0, 1) is None
    assert [n.memory_bytes for n in topo.nodes] == [1024**3, None]


def test_a_machine_without_node_folder_takes_its_memory_from_proc_meminfo(tmp_path):
    m = smt_machine(1, 2, 1)
    m.nodes = None
    m.extra = {"proc/meminfo": "MemTotal:       2048 kB\nMemFree: 1 kB\n"}
    topo = read_topology(m.write(tmp_path))
    assert [(n.id, n.cpus, n.memory_bytes) for n in topo.nodes] == [(0, (0, 1), 2048 * 1024)]
    assert "no NUMA information: one node holds every CPU" in topo.notes


def test_a_garbled_cgroup_cpuset_leaves_the_cpus_unrestricted(tmp_path):
    m = smt_machine(1, 4, 1)
    m.extra = {
        "proc/self/cgroup": "0::/job\n",
        "proc/self/mounts": "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n",
        "sys/fs/cgroup/job/cpuset.cpus.effective": "\x00garbled\n",
    }
    topo = read_topology(m.write(tmp_path))
    assert topo.usable_cpus == (0, 1, 2, 3) and topo.restriction == "none"
