"""Trim a captured Linux filesystem root to what CPU/NUMA discovery reads, and pack it as a fixture.

    python tests/topologies/make_fixture.py DUMP_ROOT NAME

DUMP_ROOT is a machine's root (e.g. one of hwloc's tests/hwloc/linux/*.tar.bz2, extracted); the
result is tests/topologies/NAME.tar.bz2 holding NAME/sys/..., NAME/proc/... (files and the
cpuN/nodeM symlinks, byte for byte). Write NAME.expected.json beside it by hand, from hwloc's
expected output for the dump (see README.md). The archive is reproducible: sorted entries, no
timestamps, no owners.
"""

from __future__ import annotations

import io
import re
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

KEEP = re.compile(
    r"^(sys/devices/system/cpu/(online|possible|present|offline|kernel_max"
    r"|cpu\d+/(online|cpu_capacity|topology/[^/]+|node\d+"
    r"|cache/index\d+/(level|type|size|shared_cpu_list|shared_cpu_map)))"
    r"|sys/devices/system/node/(online|possible|has_cpu|has_memory|has_normal_memory"
    r"|node\d+/(cpulist|cpumap|distance|meminfo))"
    r"|sys/devices/cpu_(core|atom)/cpus"
    r"|proc/(cpuinfo|meminfo|mounts|self/(cpuset|cgroup|mounts|status)))$"
)
CGROUP_FILE = re.compile(r"^(cgroup\.controllers|cpuset\.[a-z_.]+|cpus|mems|effective_cpus|effective_mems)$")


def _cgroup_dirs(root: Path) -> list[str]:
    """Mount points of cpuset-capable cgroup hierarchies the dump names, plus the standard ones."""
    dirs = {"sys/fs/cgroup", "dev/cpuset"}
    for name in ("proc/mounts", "proc/self/mounts"):
        path = root / name
        for line in path.read_text(errors="replace").splitlines() if path.is_file() else []:
            parts = line.split()
            if len(parts) >= 3 and parts[2] in ("cgroup", "cgroup2", "cpuset"):
                dirs.add(parts[1].strip("/"))
    return sorted(dirs)


def kept_paths(root: Path) -> list[str]:
    """Relative paths (files and symlinks) of ``root`` that the topology reader may read."""
    kept = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if (path.is_file() or path.is_symlink()) and KEEP.match(rel):
            kept.add(rel)
    for directory in _cgroup_dirs(root):
        base = root / directory
        if base.is_dir() and not base.is_symlink():
            for path in base.rglob("*"):
                if path.is_file() and not path.is_symlink() and CGROUP_FILE.match(path.name):
                    kept.add(path.relative_to(root).as_posix())
    return sorted(kept)


def pack(root: Path, name: str, out_dir: Path = HERE) -> Path:
    """Write ``out_dir/name.tar.bz2`` from the trimmed ``root``."""
    out = out_dir / f"{name}.tar.bz2"
    with tarfile.open(out, "w:bz2", compresslevel=9) as tar:
        for rel in kept_paths(root):
            path = root / rel
            info = tarfile.TarInfo(f"{name}/{rel}")
            info.mtime = 0
            info.uname = info.gname = ""
            if path.is_symlink():
                info.type = tarfile.SYMTYPE
                info.linkname = str(path.readlink())
                info.mode = 0o777
                tar.addfile(info)
            else:
                data = path.read_bytes()
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[2])
    print(pack(Path(sys.argv[1]), sys.argv[2]))
