"""Build small synthetic Linux filesystem roots for topology tests.

Each CPU is described by its kernel files; what is left out is simply not written, so
tests can model old kernels (no core_cpus_list, no node/ folder, no die_id ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tuner.machine.cpulist import format_cpulist


@dataclass
class FakeCpu:
    id: int
    package: int = 0
    core_id: int | None = 0  # None = do not write (some architectures have no core_id)
    siblings: tuple[int, ...] | None = None  # thread siblings; None = do not write
    package_cpus: tuple[int, ...] | None = None
    online: bool = True
    l3: tuple[int, ...] | None = None
    die: int | None = None
    cluster: int | None = None
    use_core_cpus: bool = True  # write core_cpus_list (new kernels) or only thread_siblings


@dataclass
class FakeMachine:
    cpus: list[FakeCpu]
    nodes: dict[int, tuple[int, ...]] | None = None  # None = no node/ folder
    node_memory_kb: int = 1024 * 1024
    write_online_file: bool = True
    extra: dict[str, str] = field(default_factory=dict)  # relative path -> content
    links: dict[str, str] = field(default_factory=dict)  # relative path -> symlink target (cpuN/nodeM)

    def write(self, root: Path) -> Path:
        cpu_dir = root / "sys/devices/system/cpu"
        cpu_dir.mkdir(parents=True, exist_ok=True)
        online = [c.id for c in self.cpus if c.online]
        if self.write_online_file:
            (cpu_dir / "online").write_text(format_cpulist(online) + "\n")
        (cpu_dir / "possible").write_text(format_cpulist(c.id for c in self.cpus) + "\n")
        for c in self.cpus:
            d = cpu_dir / f"cpu{c.id}"
            d.mkdir(parents=True, exist_ok=True)
            if not self.write_online_file:
                (d / "online").write_text("1\n" if c.online else "0\n")
            if not c.online:
                continue  # the kernel removes topology/ of an offline CPU
            t = d / "topology"
            t.mkdir(exist_ok=True)
            (t / "physical_package_id").write_text(f"{c.package}\n")
            if c.core_id is not None:
                (t / "core_id").write_text(f"{c.core_id}\n")
            if c.die is not None:
                (t / "die_id").write_text(f"{c.die}\n")
            if c.cluster is not None:
                (t / "cluster_id").write_text(f"{c.cluster}\n")
            if c.siblings is not None:
                name = "core_cpus_list" if c.use_core_cpus else "thread_siblings_list"
                (t / name).write_text(format_cpulist(c.siblings) + "\n")
            if c.package_cpus is not None:
                (t / "core_siblings_list").write_text(format_cpulist(c.package_cpus) + "\n")
            if c.l3 is not None:
                idx = d / "cache/index3"
                idx.mkdir(parents=True, exist_ok=True)
                (idx / "level").write_text("3\n")
                (idx / "type").write_text("Unified\n")
                (idx / "shared_cpu_list").write_text(format_cpulist(c.l3) + "\n")
        if self.nodes is not None:
            node_dir = root / "sys/devices/system/node"
            ids = sorted(self.nodes)
            for n in ids:
                nd = node_dir / f"node{n}"
                nd.mkdir(parents=True, exist_ok=True)
                (nd / "cpulist").write_text(format_cpulist(self.nodes[n]) + "\n")
                (nd / "meminfo").write_text(f"Node {n} MemTotal:  {self.node_memory_kb} kB\n")
                (nd / "distance").write_text(
                    " ".join("10" if m == n else "21" for m in ids) + "\n"
                )
        for rel, content in self.extra.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(content)
        for rel, target in self.links.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.symlink_to(target)
        return root


def smt_machine(packages: int, cores: int, threads: int, nodes_per_package: int = 1) -> FakeMachine:
    """Linux numbering: thread t of core c of package p is cpu t*P*C + p*C + c."""
    total_cores = packages * cores
    cpus = []
    for t in range(threads):
        for p in range(packages):
            for c in range(cores):
                cid = t * total_cores + p * cores + c
                sib = tuple(tt * total_cores + p * cores + c for tt in range(threads))
                pkg = tuple(tt * total_cores + p * cores + cc for tt in range(threads) for cc in range(cores))
                cpus.append(FakeCpu(cid, package=p, core_id=c, siblings=sib, package_cpus=pkg, l3=pkg))
    node_map: dict[int, tuple[int, ...]] = {}
    per_node = cores // nodes_per_package
    for p in range(packages):
        for k in range(nodes_per_package):
            node = p * nodes_per_package + k
            node_map[node] = tuple(
                tt * total_cores + p * cores + c
                for tt in range(threads)
                for c in range(k * per_node, (k + 1) * per_node)
            )
    return FakeMachine(cpus=cpus, nodes=node_map)
