from __future__ import annotations

import os
from pathlib import Path

import pytest

from tuner.topology import Topology, read_topology

REPO = Path(__file__).resolve().parent.parent
TOPOLOGIES = Path(os.environ.get("PLACETUNE_TOPOLOGIES", REPO.parent / "shared" / "topologies"))


def fixture_dirs() -> list[Path]:
    """Every captured machine root (a folder with expected.json) in ../shared/topologies."""
    if not TOPOLOGIES.is_dir():
        return []
    return sorted(p for p in TOPOLOGIES.iterdir() if (p / "expected.json").is_file())


_cache: dict[Path, Topology] = {}


def fixture_topology(path: Path) -> Topology:
    if path not in _cache:
        _cache[path] = read_topology(path)
    return _cache[path]


@pytest.fixture(params=fixture_dirs(), ids=lambda p: p.name)
def machine_dir(request) -> Path:
    return request.param
