"""Process placement primitives: memory policy through the set_mempolicy syscall (numactl's
semantics, no numactl binary needed), and placement seen from /proc."""

from __future__ import annotations

import ctypes
import os
import platform
import re
from collections import Counter
from pathlib import Path

from tuner.machine.cpulist import format_cpulist, parse_cpulist

_MPOL = {"none": 0, "preferred": 1, "bind": 2, "interleave": 3}
_SYSCALLS = {  # (set_mempolicy, get_mempolicy)
    "x86_64": (238, 239),
    "aarch64": (237, 236),
    "ppc64le": (261, 260),
    "s390x": (270, 269),
}
PR_SET_PDEATHSIG = 1
PR_SET_TIMERSLACK = 29


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def set_mempolicy(policy: str, nodes: tuple[int, ...]) -> None:
    """Set the calling process's memory policy (applies to memory it touches from now on)."""
    if policy == "none" or not nodes:
        return
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        raise OSError(f"set_mempolicy: unknown syscall number on {platform.machine()}")
    bits = ctypes.sizeof(ctypes.c_ulong) * 8
    words = max(nodes) // bits + 1
    mask = (ctypes.c_ulong * words)()
    for node in nodes:
        mask[node // bits] |= 1 << (node % bits)
    result = _libc().syscall(numbers[0], _MPOL[policy], mask, ctypes.c_ulong(words * bits + 1))
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"set_mempolicy({policy}, nodes {format_cpulist(nodes)}): {os.strerror(err)}")


def prctl(option: int, value: int) -> None:
    _libc().prctl(option, ctypes.c_ulong(value), 0, 0, 0)


def thread_affinities(pid: int) -> dict[int, frozenset[int]]:
    """Cpus_allowed_list of every thread of ``pid``, read from /proc."""
    result = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue  # thread exited while we looked
        match = re.search(r"^Cpus_allowed_list:\s*(\S*)", status, re.M)
        if match:
            result[int(task.name)] = parse_cpulist(match.group(1))
    return result


def memory_policy_seen(pid: int) -> str:
    """The process's memory policy as /proc/<pid>/numa_maps shows it on its mappings
    (``default``, ``bind:0``, ``interleave:0-1``, ``prefer:0``): the most common one."""
    try:
        text = Path(f"/proc/{pid}/numa_maps").read_text()
    except OSError:
        return "unknown"
    policies = Counter(line.split()[1] for line in text.splitlines() if len(line.split()) > 1)
    return policies.most_common(1)[0][0] if policies else "unknown"


def expected_policy_token(policy: str, nodes: tuple[int, ...]) -> str:
    """What numa_maps shows for a policy we set."""
    if policy == "none" or not nodes:
        return "default"
    word = {"bind": "bind", "interleave": "interleave", "preferred": "prefer"}[policy]
    return f"{word}:{format_cpulist(nodes)}"
