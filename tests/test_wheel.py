"""placetune installed as a package (a wheel, not the source tree) runs its main job: the search
spaces ship as package data. The wheel goes into a fresh venv; its dependencies come from the test
environment's site-packages through a .pth line (nothing is downloaded), and the run happens in a
folder outside the checkout, so nothing can be found relative to the source tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.models import conv_net


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout (setuptools writes build/ into the source folder)."""
    out, source = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source") / "placetune"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "experiments"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(out), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (path,) = out.glob("placetune-*.whl")
    return path


def test_the_wheel_carries_every_search_space(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.name for p in (REPO / "tuner" / "search_spaces").glob("*.yaml")}
    assert shipped and {f"tuner/search_spaces/{n}" for n in shipped} <= names


def test_an_installed_wheel_optimizes_from_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                                "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    # the dependencies (not placetune: a .pth line's folder is not scanned for further .pth files,
    # so the checkout's editable install stays out)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(python), "-c", "import tuner; print(tuner.__file__)"], cwd=work,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), f"tuner imported from {where}, not the installed wheel"
    model = conv_net(work / "m.onnx", channels=4, size=8)
    run = subprocess.run([str(venv / "bin" / "placetune"), "optimize", "--model", str(model), "--p99", "2s",
                          "--n-trials", "2", "--no-mlflow", "--window", "0.2s"], cwd=work,
                         capture_output=True, text=True, timeout=600)
    assert "search space" not in run.stderr, run.stderr
    assert run.returncode in (0, 3), run.stdout[-2000:] + run.stderr[-2000:]
    assert (work / "best_config.json").is_file() or run.returncode == 3
