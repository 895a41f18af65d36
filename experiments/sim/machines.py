"""Which machine a simulation runs on: ``16`` (the lent VM's shape), ``64``, ``128`` (hwloc dumps
of tests/topologies), a sysfs root or a topology JSON file."""

from __future__ import annotations

from pathlib import Path

from tuner.errors import TopologyError
from tuner.machine.topology import Cpu, NumaNode, Topology

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "topologies"
NAMED = {"64": "64amd64-4s2n4ca2co.tar.bz2", "128": "128ia64-17n4s2c.tar.bz2"}


def vm16() -> Topology:
    """The lent 16-core VM: 1 socket, 1 NUMA node, 16 cores, no SMT, one L3."""
    cpus = tuple(Cpu(id=i, online=True, allowed=True, package=0, package_id=0, core_id=i, core=i, node=0,
                     l2_group=i, l3_group=0) for i in range(16))
    node = NumaNode(0, tuple(range(16)), 64 * 2**30, (10,))
    return Topology(cpus, (node,), source="simulated 16-core VM (1 socket, 1 NUMA node, no SMT)")


def load(spec: str) -> Topology:
    """The machine ``spec`` names (see the module docstring)."""
    from experiments.replay import load_machine

    if spec == "16":
        return vm16()
    if spec in NAMED:
        return load_machine(str(FIXTURES / NAMED[spec]))
    if not Path(spec).exists():
        raise TopologyError(f"--machine {spec}: no such file or folder; give 16, 64, 128, a sysfs root "
                            "(a machine dump) or a topology JSON file (placetune topology --json)")
    return load_machine(spec)
