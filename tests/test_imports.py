"""What reads results stands on the results alone: importing a results module loads neither the
process launcher, nor the worker, nor ONNX Runtime (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("tuner.bench.launcher", "tuner.bench.worker", "onnxruntime")
RESULTS_MODULES = ("records", "trials", "envelope", "report", "tracking", "export", "run_content")


@pytest.mark.parametrize("name", RESULTS_MODULES)
def test_a_results_module_imports_without_the_launcher_the_worker_or_onnxruntime(name):
    code = (f"import json, sys\nimport tuner.results.{name}\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_the_check_sees_a_module_that_does_load_the_launcher():
    code = (f"import json, sys\nimport tuner.bench.measure\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "tuner.bench.launcher" in json.loads(done.stdout)
