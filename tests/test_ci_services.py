"""The README's test command leaves no server behind that it started (.ci/with-postgres), and
leaves one that it found running alone. Each test uses a cluster of its own (port, folder)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.skipif(not list(Path("/usr/lib/postgresql").glob("*/bin/postgres")),
                                reason="PostgreSQL is not installed (bash .ci/system-deps installs it)")


@pytest.fixture
def env():
    """A cluster folder of its own under /tmp: the server runs as the postgres user, who cannot
    enter pytest's private temporary folders."""
    folder = Path(tempfile.mkdtemp(prefix="placetune-pg-test-", dir="/tmp"))
    folder.chmod(0o755)
    (folder / "pg").mkdir()
    yield {**os.environ, "PLACETUNE_PG_PORT": str(free_port()), "PLACETUNE_PG_DIR": str(folder / "pg")}
    shutil.rmtree(folder, ignore_errors=True)


def _up(env: dict[str, str]) -> bool:
    return subprocess.run(["bash", str(REPO / ".ci/postgres"), "status"], env=env).returncode == 0


def _with_postgres(env: dict[str, str], *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / ".ci/with-postgres"), *command], env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_server_the_test_command_started_is_stopped_even_when_the_tests_fail(env):
    assert not _up(env)
    inside = _with_postgres(env, "bash", "-c", f"bash {REPO}/.ci/postgres status && exit 7")
    assert inside.returncode == 7, inside.stderr  # the command ran with the server up; its status kept
    assert not _up(env)


def test_a_server_that_was_already_running_is_left_running(env):
    subprocess.run(["bash", str(REPO / ".ci/postgres"), "start"], env=env, check=True, timeout=120)
    try:
        assert _with_postgres(env, "true").returncode == 0
        assert _up(env)
    finally:
        subprocess.run(["bash", str(REPO / ".ci/postgres"), "stop"], env=env, timeout=120)
    assert not _up(env)
