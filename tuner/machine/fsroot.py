"""Tolerant reads below a Linux filesystem root (``/`` or a captured dump): a missing or garbled file
reads as ``None``, never as an error, so the topology reader can degrade file by file.

A CPU set the kernel gives twice (hex mask and ``_list``) is read by ``pick_cpuset``: from the mask, as
hwloc does, unless the two disagree about online CPUs; each such contradiction is recorded as a
conflict and the reader reports them, grouped, in ``Topology.notes``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from tuner.machine.cpulist import format_cpulist, parse_cpulist, parse_cpumask

CPU_DIR = "sys/devices/system/cpu"
NODE_DIR = "sys/devices/system/node"

Conflicts = list[tuple[str, str]]  # (what a dump contradicts, one example): grouped into notes at the end


class FsRoot:
    """A filesystem root whose files are read relative to it (a leading ``/`` is ignored)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, rel: str) -> Path:
        """The path of ``rel`` below the root."""
        return self.root / rel.lstrip("/")

    def read(self, rel: str) -> str | None:
        """The text of ``rel`` without NUL bytes; None when it cannot be read."""
        try:
            return self.path(rel).read_text(errors="replace").replace("\x00", "")
        except (OSError, UnicodeDecodeError):
            return None

    def read_int(self, rel: str) -> int | None:
        """The integer ``rel`` holds; None when unreadable or not an integer."""
        text = self.read(rel)
        if text is None:
            return None
        try:
            return int(text.strip())
        except ValueError:
            return None

    def read_set(self, rel_list: str, rel_mask: str | None = None) -> frozenset[int] | None:
        """The cpulist in ``rel_list``, else the hex mask in ``rel_mask``; None when neither parses."""
        text = self.read(rel_list)
        if text is not None:
            try:
                return parse_cpulist(text)
            except ValueError:
                pass
        if rel_mask is not None:
            text = self.read(rel_mask)
            if text is not None:
                try:
                    return parse_cpumask(text)
                except ValueError:
                    return None
        return None

    def listdir(self, rel: str) -> list[str]:
        """The names in folder ``rel``; empty when it cannot be listed."""
        try:
            return os.listdir(self.path(rel))
        except OSError:
            return []


def numbered(names: Iterable[str], prefix: str) -> list[int]:
    """The numbers N of the names ``PREFIXN`` among ``names``, sorted (``cpu3`` -> 3)."""
    pattern = re.compile(rf"^{prefix}(\d+)$")
    return sorted(int(m.group(1)) for n in names if (m := pattern.match(n)))


def pick_cpuset(fs: FsRoot, rel_mask: str, rel_list: str, online: set[int], conflicts: Conflicts,
                fits: Callable[[frozenset[int]], bool] = lambda cpus: True,
                why: str = "") -> frozenset[int] | None:
    """A CPU set the kernel gives twice, as a hex mask and as a ``_list``: the mask, as hwloc reads it,
    unless the two disagree about online CPUs (a corrupted dump); then the first that ``fits`` (is
    consistent with the rest of the topology, ``why`` says with what), and a conflict recorded."""
    texts = fs.read(rel_mask), fs.read(rel_list)
    parsed: list[frozenset[int] | None] = []
    for text, parse in zip(texts, (parse_cpumask, parse_cpulist), strict=True):
        try:
            parsed.append(parse(text) if text is not None else None)
        except ValueError:
            parsed.append(None)
    mask, listed = parsed
    if mask is None or listed is None or mask & online == listed & online:
        return mask if mask is not None else listed
    chosen = listed if not fits(mask) and fits(listed) else mask
    other = mask if chosen is listed else listed
    reason = f"the one consistent with {why}" if why and fits(chosen) and not fits(other) else "as hwloc does"
    conflicts.append((f"{re.sub(r'[0-9]+', 'N', rel_list)} and its mask disagree; "
                      f"used the {'list' if chosen is listed else 'mask'}, {reason}",
                      f"{rel_list}: {format_cpulist(listed)}, mask: {format_cpulist(mask)}"))
    return chosen


def conflict_notes(conflicts: Conflicts) -> list[str]:
    """One note per kind of conflict, with its first example and a count."""
    grouped: dict[str, list[str]] = {}
    for what, example in conflicts:
        grouped.setdefault(what, []).append(example)
    return [f"{what} ({examples[0]})" if len(examples) == 1 else f"{what} ({len(examples)} times; e.g. {examples[0]})"
            for what, examples in grouped.items()]

