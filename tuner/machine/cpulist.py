"""Kernel CPU sets as text: cpulists (``"0-3,8"``) and hex cpumasks (``"0000ffff,00000001"``).

The formats are those of ``/sys/devices/system/cpu`` and ``/proc/<pid>/status``
(Documentation/admin-guide/cputopology.rst); NUMA node sets use the same list syntax.
"""

from __future__ import annotations

from collections.abc import Iterable


def parse_cpulist(text: str) -> frozenset[int]:
    """Parse a kernel cpulist such as ``"0-3,8,10-11"`` (stray NULs and blanks are ignored).

    Raises ValueError on text that is not a cpulist (the sysfs reader then treats the file as absent)."""
    text = text.replace("\x00", "").strip()
    cpus: set[int] = set()
    if not text:
        return frozenset()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            if ":" in hi:  # "0-15:2/4" group syntax is kernel-boot only; keep the range
                hi = hi.split(":", 1)[0]
            cpus.update(range(int(lo), int(hi) + 1))
        else:
            cpus.add(int(part))
    return frozenset(cpus)


def parse_cpumask(text: str) -> frozenset[int]:
    """Parse a kernel hex cpumask such as ``"00000000,0000ffff"`` (most significant word first).

    Raises ValueError on text that is not hexadecimal."""
    text = text.replace("\x00", "").strip().replace(",", "")
    if not text:
        return frozenset()
    value = int(text, 16)
    cpus = set()
    bit = 0
    while value:
        if value & 1:
            cpus.add(bit)
        value >>= 1
        bit += 1
    return frozenset(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """Format CPU ids as a compact kernel cpulist (``[0,1,2,5]`` -> ``"0-2,5"``)."""
    ids = sorted(set(cpus))
    if not ids:
        return ""
    parts = []
    start = prev = ids[0]
    for cpu in ids[1:]:
        if cpu == prev + 1:
            prev = cpu
            continue
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
        start = prev = cpu
    parts.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ",".join(parts)
