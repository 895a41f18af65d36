"""Each CPU's package, physical core, cache groups and core type, read from ``cpuN/topology`` and
``cpuN/cache`` below a filesystem root (the rules are in ``tuner.machine.sysfs``'s docstring)."""

from __future__ import annotations

from tuner.machine.cpulist import format_cpulist
from tuner.machine.fsroot import CPU_DIR, Conflicts, FsRoot, pick_cpuset
from tuner.machine.topology import UNKNOWN, Cpu


def read_cpus(fs: FsRoot, all_ids: list[int], online: set[int], allowed: set[int], cpu_node: dict[int, int | None],
          conflicts: Conflicts) -> tuple[Cpu, ...]:
    """Every CPU of ``all_ids`` with its package, core, node (from ``cpu_node``) and cache groups."""
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
    return tuple(cpus)


def _cache_group(
    fs: FsRoot, cpu: int, level: int, online: set[int], core_cpus: set[int], package_cpus: set[int],
    conflicts: Conflicts,
) -> int | None:
    """The lowest online CPU sharing ``cpu``'s cache of ``level``; never one of another package."""
    base = f"{CPU_DIR}/cpu{cpu}/cache"
    for name in sorted(fs.listdir(base)):
        if not name.startswith("index"):
            continue
        if fs.read_int(f"{base}/{name}/level") != level:
            continue
        kind = (fs.read(f"{base}/{name}/type") or "").strip()
        if kind not in ("Unified", "Data"):
            continue
        rel = f"{base}/{name}/shared_cpu"
        shared = pick_cpuset(fs, f"{rel}_map", f"{rel}_list", online, conflicts,
                       lambda s: cpu in s and s & online <= package_cpus, "its package")
        if not shared:  # ia64 kernels give an empty map for a core-private cache
            shared = frozenset(core_cpus)
        if shared & online - package_cpus:
            conflicts.append(("a cache's shared CPUs span other packages; the cache group is kept inside its package",
                              f"{rel}_map: {format_cpulist(shared & online - package_cpus)}"))
        members = (set(shared) & online & package_cpus) | {cpu}
        return min(members)
    return None



def _hybrid_types(fs: FsRoot) -> dict[int, str]:
    types: dict[int, str] = {}
    for pmu, label in (("cpu_core", "P"), ("cpu_atom", "E")):
        cpus = fs.read_set(f"sys/devices/{pmu}/cpus")
        for cpu in cpus or ():
            types[cpu] = label
    return types



def _cpu_topology_files(fs: FsRoot, all_ids: list[int], online: set[int],
                        conflicts: Conflicts) -> dict[int, dict]:
    """Each CPU's ids and masks from ``cpuN/topology``. A package or sibling mask that its ``_list``
    contradicts is taken from the one whose CPUs share this CPU's physical_package_id."""
    raw: dict[int, dict] = {}
    for cpu in all_ids:
        top = f"{CPU_DIR}/cpu{cpu}/topology"
        raw[cpu] = {
            "package_id": fs.read_int(f"{top}/physical_package_id"),
            "die": fs.read_int(f"{top}/die_id"),
            "cluster": fs.read_int(f"{top}/cluster_id"),
            "core_id": fs.read_int(f"{top}/core_id"),
            "capacity": fs.read_int(f"{CPU_DIR}/cpu{cpu}/cpu_capacity"),
        }
    for cpu in all_ids:
        raw[cpu]["package_mask"] = _topology_mask(fs, cpu, ("package_cpus", "core_siblings"), raw, online, conflicts)
        raw[cpu]["siblings"] = _topology_mask(fs, cpu, ("core_cpus", "thread_siblings"), raw, online, conflicts)
    return raw


def _topology_mask(fs: FsRoot, cpu: int, names: tuple[str, ...], raw: dict[int, dict], online: set[int],
                   conflicts: Conflicts) -> frozenset[int] | None:
    """The first non-empty of ``cpuN/topology/NAME`` (mask or list, see pick_cpuset)."""
    package_id = raw[cpu]["package_id"]

    def same_package(cpus: frozenset[int]) -> bool:
        return cpu in cpus and all(raw.get(m, {}).get("package_id") in (None, package_id) for m in cpus)

    for name in names:
        rel = f"{CPU_DIR}/cpu{cpu}/topology/{name}"
        cpus = pick_cpuset(fs, rel, f"{rel}_list", online, conflicts, same_package, "physical_package_id")
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
