from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tuner.machine.sysfs import read_topology
from tuner.machine.topology import Topology

REPO = Path(__file__).resolve().parent.parent
TOPOLOGIES = REPO / "tests" / "topologies"
_extracted_roots: list[tempfile.TemporaryDirectory] = []


@functools.cache
def fixture_dirs() -> list[Path]:
    """Every captured machine root, extracted once per test session from tests/topologies/NAME.tar.bz2
    into a temporary folder, with its NAME.expected.json copied in as expected.json. Raises when the
    fixtures are missing: no test may silently run without them."""
    archives = sorted(TOPOLOGIES.glob("*.tar.bz2"))
    if not archives:
        raise RuntimeError(f"no machine fixtures (*.tar.bz2) in {TOPOLOGIES}: the checkout is incomplete")
    tmp = tempfile.TemporaryDirectory(prefix="placetune-topologies-")
    _extracted_roots.append(tmp)  # removed when the test session's interpreter exits
    roots = []
    for archive in archives:
        name = archive.name.removesuffix(".tar.bz2")
        expected = TOPOLOGIES / f"{name}.expected.json"
        if not expected.is_file():
            raise RuntimeError(f"{archive} has no {expected.name} beside it")
        with tarfile.open(archive) as tar:
            if any(not m.name.startswith(f"{name}/") for m in tar.getmembers()):
                raise RuntimeError(f"{archive}: every entry must lie under {name}/")
            # the "data" filter refuses absolute paths and links out of the folder (Python >= 3.11.4)
            tar.extractall(tmp.name, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        root = Path(tmp.name) / name
        shutil.copyfile(expected, root / "expected.json")
        roots.append(root)
    return roots


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (the README's test command runs ``-n 2``) each worker gets a temporary
    folder of its own as TMPDIR, for itself and every tuner it starts: the host lock
    (``tuner.search.locks.HostLock``, in the temporary folder) then keeps one tuner per CPU set *per
    worker*. The lock tests (test_faults) still meet their own tuners' locks; tests in the other
    worker measure at the same time, which only makes their (never asserted) timings noisier."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started as a background job (``bash .ci/run &``, nohup), the suite inherits SIGINT ignored, and
        # so would every tuner it starts: the Ctrl-C tests would then see their SIGINT ignored. A
        # caught signal is reset to its default in an exec'd child, so the tuners get Python's own.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        own = tempfile.TemporaryDirectory(prefix=f"placetune-tests-{worker}-")
        _extracted_roots.append(own)  # removed when the worker's interpreter exits
        os.environ["TMPDIR"] = own.name
        tempfile.tempdir = None  # gettempdir() reads TMPDIR again


_cache: dict[Path, Topology] = {}


def fixture_topology(path: Path) -> Topology:
    if path not in _cache:
        _cache[path] = read_topology(path)
    return _cache[path]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``machine_dir``: one test per real-machine fixture (extracted only when a test asks for one)."""
    if "machine_dir" in metafunc.fixturenames:
        metafunc.parametrize("machine_dir", fixture_dirs(), ids=lambda p: p.name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on loopback (SQLite backend), per test module: it is a child of the
    test process, and other modules check that they leave no child behind."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(root / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail("mlflow server did not start: " + (root / "server.log").read_text()[-2000:])
            time.sleep(0.5)
    yield uri
    os.killpg(server.pid, 15)
    server.wait(timeout=30)


PG_DEFAULT = "postgresql://postgres@127.0.0.1:54329/postgres"


def _pg_up(url: str) -> bool:
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=3).close()
        return True
    except psycopg.OperationalError:
        return False


def _pg_started_mark() -> Path:
    """Set while a server this test run started is up: the run stops it when it ends."""
    return Path(os.environ.get("PLACETUNE_PG_DIR", "/tmp/placetune-pg") + ".started-by-pytest")


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The PostgreSQL server the test command started (.ci/with-postgres, or $PLACETUNE_TEST_POSTGRES);
    started here with .ci/postgres when it is not up, and then stopped when the test run ends
    (``pytest_sessionfinish``: a plain ``pytest`` leaves no server behind)."""
    url = os.environ.get("PLACETUNE_TEST_POSTGRES", PG_DEFAULT)
    if not _pg_up(url):
        done = subprocess.run(["bash", str(REPO / ".ci" / "postgres"), "start"], capture_output=True, text=True)
        if done.returncode == 0:
            _pg_started_mark().touch()
        else:  # another xdist worker may be starting it at the same moment: give it a while
            for _ in range(30):
                if _pg_up(url):
                    break
                time.sleep(1)
        assert _pg_up(url), f"cannot start PostgreSQL at {url}: {done.stderr.strip()} (run bash .ci/system-deps)"
    return url


def pytest_sessionfinish(session, exitstatus) -> None:
    """Stop the PostgreSQL server ``postgres_server`` started, once every test is done: in the main
    process (xdist's workers finish before it), never in a worker, whose siblings may still use it."""
    if hasattr(session.config, "workerinput"):
        return
    mark = _pg_started_mark()
    if mark.exists():
        subprocess.run(["bash", str(REPO / ".ci" / "postgres"), "stop"], capture_output=True, timeout=120)
        mark.unlink(missing_ok=True)


@pytest.fixture
def postgres_db(postgres_server, request) -> str:
    """A fresh database on the test server, dropped afterwards."""
    import uuid

    import psycopg

    name = f"placetune_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(postgres_server, autocommit=True)
    admin.execute(f"CREATE DATABASE {name}")
    yield postgres_server.rsplit("/", 1)[0] + f"/{name}"
    admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()
