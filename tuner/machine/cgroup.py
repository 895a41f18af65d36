"""The cgroup cpuset of the process a filesystem root describes: which CPUs and memory nodes it may use.

The cgroup is named by ``proc/self/cpuset``, else by ``proc/self/cgroup`` (as hwloc reads them); its
folder is found below the cgroup (v1 ``cpuset``) or cgroup2 mount that ``proc/self/mounts`` lists.
Every path is relative to the root and read through ``read``, so a captured dump reads like the
live machine.
"""

from __future__ import annotations

from collections.abc import Callable

from tuner.machine.cpulist import parse_cpulist

ReadText = Callable[[str], str | None]  # a root-relative path -> its text, None when unreadable

_V1_CPU_FILES = ("cpuset.effective_cpus", "cpuset.cpus", "effective_cpus", "cpus")
_V1_MEM_FILES = ("cpuset.effective_mems", "cpuset.mems", "effective_mems", "mems")
_V2_CPU_FILES = ("cpuset.cpus.effective", "cpuset.cpus")
_V2_MEM_FILES = ("cpuset.mems.effective", "cpuset.mems")


def _mounts(read: ReadText) -> list[tuple[str, str, set[str]]]:
    """(mount point, filesystem type, options) of every mount the process sees."""
    text = read("proc/self/mounts") or read("proc/mounts") or ""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            mounts.append((parts[1], parts[2], set(parts[3].split(","))))
    return mounts


def _cgroup_paths(read: ReadText) -> tuple[str | None, str | None]:
    """(cgroup v1 cpuset path, cgroup v2 path) of the process the root describes."""
    v1 = v2 = None
    for line in (read("proc/self/cgroup") or "").splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            v2 = path
        elif "cpuset" in controllers.split(","):
            v1 = path
    cpuset = (read("proc/self/cpuset") or "").strip()
    if cpuset:  # hwloc reads this name first: the process's cpuset in whichever hierarchy holds it
        v1 = v2 = cpuset
    return v1, v2


def _candidate_folders(read: ReadText) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """(cgroup folder, its CPU files, its memory-node files), in mount order, each file list best first."""
    v1_path, v2_path = _cgroup_paths(read)
    candidates = []
    for mountpoint, fstype, options in _mounts(read):
        if v1_path is not None and (fstype == "cpuset" or (fstype == "cgroup" and "cpuset" in options)):
            candidates.append((f"{mountpoint.rstrip('/')}/{v1_path.lstrip('/')}", _V1_CPU_FILES, _V1_MEM_FILES))
        if v2_path is not None and fstype == "cgroup2":
            candidates.append((f"{mountpoint.rstrip('/')}/{v2_path.lstrip('/')}", _V2_CPU_FILES, _V2_MEM_FILES))
    return candidates


def _first_list(read: ReadText, directory: str, names: tuple[str, ...]) -> frozenset[int] | None:
    """The set in the first of ``directory/NAME`` that exists, is not empty and parses."""
    for name in names:
        text = read(f"{directory}/{name}")
        if text is not None and text.strip():
            try:
                return parse_cpulist(text)
            except ValueError:  # a garbled file reads as absent, like every other file the reader reads
                continue
    return None


def cgroup_cpuset(read: ReadText) -> tuple[frozenset[int] | None, frozenset[int] | None, str]:
    """Allowed (cpus, mems) from the cgroup cpuset below the root, and where they came from in words;
    ``(None, None, "")`` when no cpuset is found (the process is not restricted by one)."""
    for directory, cpu_files, mem_files in _candidate_folders(read):
        cpus = _first_list(read, directory, cpu_files)
        mems = _first_list(read, directory, mem_files)
        if cpus is not None or mems is not None:
            return cpus, mems, f"cgroup cpuset {directory}"
    return None, None, ""
