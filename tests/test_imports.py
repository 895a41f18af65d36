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
RESULTS_MODULES = ("records", "trials", "envelope", "report", "tracking", "export", "export_k8s", "export_triton",
                   "run_content")


@pytest.mark.parametrize("name", RESULTS_MODULES)
def test_a_results_module_imports_without_the_launcher_the_worker_or_onnxruntime(name):
    code = (f"import json, sys\nimport tuner.results.{name}\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


@pytest.mark.parametrize("name", ["records", "mixrecords", "documents"])
def test_the_records_import_nothing_from_bench(name):
    """The one arrow that ran back up (issue 31): records read the verdict words from
    tuner.verdicts and the model record from tuner.results.modelinfo, not from tuner.bench; a
    deployment's records and the best-config documents likewise."""
    code = f"import json, sys\nimport tuner.results.{name}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [m for m in json.loads(done.stdout) if m.startswith("tuner.bench")] == []


def test_the_check_sees_a_module_that_does_load_the_launcher():
    code = (f"import json, sys\nimport tuner.bench.measure\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "tuner.bench.launcher" in json.loads(done.stdout)


# ---- deployment studies (issue 23): reading one is as light as reading a single-model study -------
MIX_READING_MODULES = ("tuner.results.mixrecords", "tuner.results.documents", "tuner.results.mixtrials",
                       "tuner.results.mixreport", "tuner.results.mixtracking", "tuner.app.kinds",
                       "tuner.cli.mix_results", "tuner.cli.mix", "tuner.app.fleet", "tuner.cli.commands_study",
                       "tuner.cli.fleet")


def _heavy_after(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", f"import json, sys\n{code}\n"
                           f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", MIX_READING_MODULES)
def test_a_module_that_reads_deployment_studies_imports_without_the_process_stack(module):
    assert _heavy_after(f"import {module}") == []


def test_the_check_sees_that_measuring_a_mix_loads_the_launcher():
    assert "tuner.bench.launcher" in _heavy_after("import tuner.mix.measure")


def test_report_export_log_and_fleet_status_of_a_deployment_study_load_no_process_stack(tmp_path):
    from tests.mix_studies import study_with_baselines

    url = f"sqlite:///{tmp_path / 's.db'}"
    study_with_baselines(url)
    commands = [["report", "--storage", url, "--html", str(tmp_path / "r.html")],
                ["export", "--storage", url, "--format", "numactl", "--out", str(tmp_path / "exp")],
                ["fleet", "status", "--storage", url],
                ["log", "--storage", url, "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]]
    code = ("from tuner.cli.main import app\n"
            f"for args in {commands!r}:\n"
            "    app(args, standalone_mode=False)\n")
    assert _heavy_after(code) == []
    assert (tmp_path / "r.html").is_file() and (tmp_path / "exp" / "ranker-launch.sh").is_file()
