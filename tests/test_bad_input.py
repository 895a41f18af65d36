"""Bad input through the real CLI: one line saying what is wrong and how to fix it, exit code 2
for usage errors and 1 for runtime errors, no traceback, no process left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.models import bad_op_model, conv_net

CLI = [sys.executable, "-m", "tuner.cli"]
ENV = {**os.environ, "COLUMNS": "300", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    out = {"dir": d, "conv": conv_net(d / "conv.onnx"), "dynamic": conv_net(d / "dyn.onnx", dynamic_batch=True),
           "badop": bad_op_model(d / "badop.onnx")}
    (d / "text.onnx").write_text("this is not a model\n")
    out["text"] = d / "text.onnx"
    out["truncated"] = d / "truncated.onnx"
    out["truncated"].write_bytes(out["conv"].read_bytes()[:200])
    (d / "model_dir").mkdir()
    out["model_dir"] = d / "model_dir"
    np.savez(d / "wrong.npz", y=np.zeros((1, 3), dtype=np.float32))
    out["wrong_npz"] = d / "wrong.npz"
    (d / "garbage.npz").write_bytes(b"PK\x03\x04 not really")
    out["garbage_npz"] = d / "garbage.npz"
    (d / "broken.yaml").write_text("dimensions: {workers: [1, 2]\n")
    (d / "unknown.yaml").write_text("dimensions:\n  workerz: [1, 2]\n")
    (d / "impossible.yaml").write_text("dimensions:\n  workers: [64]\n  cores_per_worker: [64]\n")
    (d / "topo.json").write_text("{not json")
    (d / "empty_root").mkdir()
    return out


def run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    done = subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV)
    after = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not after, f"processes left behind: {after}"
    return done


def assert_one_line(done: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    err = done.stderr.strip()
    assert done.returncode == code, (done.returncode, done.stderr, done.stdout[-2000:])
    assert "Traceback" not in done.stderr
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle.lower() in err.lower(), (needle, err)


P99_CASES = [
    ("20", "not a duration with a unit"), ("-5ms", "must be positive"), ("-1ms", "must be positive"),
    ("0ms", "greater than zero"), ("abc", "not a duration"), ("20 ms", "not a duration"),
    ("1e9s", "longer than a day"), ("100000s", "longer than a day"), ("0.0001ms", "below 10 us"),
]


@pytest.mark.parametrize("value,message", P99_CASES)
def test_bad_p99_values_are_refused(files, value, message):
    done = run(["optimize", "--model", str(files["conv"]), "--p99", value], files["dir"])
    assert_one_line(done, 2, "--p99", message, "20ms")


def test_good_p99_spellings_are_accepted():
    from tuner.units import parse_duration

    assert parse_duration("20ms") == parse_duration("0.02s") == parse_duration("20000us") == pytest.approx(0.02)
    assert parse_duration("1e3ms") == parse_duration("1E+3ms") == pytest.approx(1.0)


def assert_usage_error(done: subprocess.CompletedProcess, *needles: str) -> None:
    """click's usage error: exit 2, one line with 'Error: ...' and 'Usage:', no 'internal error'."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Usage:" in done.stderr and "Error:" in done.stderr, done.stderr
    for needle in needles:
        assert needle in done.stderr, (needle, done.stderr)


@pytest.mark.parametrize("args,message", [
    (["optimize"], "Missing option '--model'"), (["--bogus-flag"], "No such option: --bogus-flag"),
    (["optimize", "--model", "m.onnx", "--n-trials", "abc"], "'--n-trials'"),
    (["measure", "--model", "m.onnx", "--workers", "abc"], "'--workers'"),
    (["topology", "extra"], "unexpected extra argument"),
])
def test_command_line_mistakes_are_usage_errors(files, args, message):
    assert_usage_error(run(args, files["dir"]), message)


def test_no_arguments_prints_the_help_and_version_prints_the_version(files):
    done = run([], files["dir"])
    assert done.returncode == 2 and "internal error" not in done.stderr  # click's no_args_is_help exits 2
    shown = done.stdout + done.stderr
    assert "optimize" in shown and "Commands" in shown
    done = run(["--version"], files["dir"])
    assert done.returncode == 0 and done.stdout.startswith("placetune "), done.stderr


def test_an_unknown_estimator_is_a_one_line_usage_error(files):
    done = run(["measure", "--model", str(files["conv"]), "--p99", "20ms", "--estimator", "fitted"], files["dir"])
    assert_one_line(done, 2, "--estimator 'fitted' is not one of estimate, replay, bound")


@pytest.mark.parametrize("value", ["0s", "60"])
def test_a_sample_that_is_not_a_positive_duration_is_a_one_line_usage_error(files, value):
    done = run(["measure", "--model", str(files["conv"]), "--p99", "20ms", "--sample", value], files["dir"])
    assert_one_line(done, 2, "--sample")


@pytest.mark.parametrize("args", [
    ["export", "--out", "/nonexistent/x"], ["export", "--out", "/proc/version"],
    ["report", "--html", "/nonexistent/x"],
    ["optimize", "--model", "MODEL", "--p99", "20ms", "--out", "/nonexistent/x", "--no-mlflow"],
])
def test_unwritable_outputs_are_refused_before_any_work(files, tmp_path, args):
    args = [str(files["conv"]) if a == "MODEL" else a for a in args]
    done = run(args, tmp_path)  # no placetune.db here: the output check must come first
    assert_one_line(done, 2, args[args.index("--out" if "--out" in args else "--html")], args[-1]
                    if args[-1] != "--no-mlflow" else "/nonexistent/x")
    assert not list(tmp_path.iterdir()), "nothing may be created"


@pytest.mark.parametrize("command", [["report"], ["export"], ["log"], ["fleet", "status"]])
def test_a_mistyped_sqlite_storage_is_refused_and_not_created(tmp_path, command):
    done = run([*command, "--storage", "sqlite:///typo.db"], tmp_path)
    assert_one_line(done, 2, "typo.db")
    assert not (tmp_path / "typo.db").exists()


@pytest.mark.parametrize("document,message", [
    ({"format": "placetune-config/0", "params": {"workers": 1}}, "not a placetune config"),
    ({"workers": 1}, "not a placetune config"),
    ({"format": "placetune-config/1", "params": {"workerz": 1}, "plan": {"workers": []}}, "workerz"),
    ({"format": "placetune-config/1", "params": {"workers": "two"}, "plan": {"workers": []}}, "wrong type"),
])
def test_measure_and_export_validate_a_config_the_same_way(files, document, message):
    path = files["dir"] / "odd_config.json"
    path.write_text(json.dumps(document))
    for command in (["measure", "--model", str(files["conv"]), "--window", "0.1s"], ["export"]):
        done = run([*command, "--config", str(path)], files["dir"])
        assert_one_line(done, 2, message, "odd_config.json")


def test_thread_counts_beyond_the_machine_are_refused(files):
    done = run(["measure", "--model", str(files["conv"]), "--intra-op", "100000"], files["dir"])
    assert_one_line(done, 2, "--intra-op 100000", "usable CPU")


def test_measure_waits_for_the_host_lock_and_says_who_holds_it(files):
    from tests.conftest import fixture_dirs, fixture_topology
    from tuner.search.locks import HostLock

    if not fixture_dirs():
        pytest.skip("no topology fixtures")
    root = fixture_dirs()[0]  # a topology no other test measures on: its lock is this test's alone
    with HostLock(fixture_topology(root), wait_s=0):
        done = run(["measure", "--model", str(files["conv"]), "--fsroot", str(root), "--lock-wait", "1s",
                    "--window", "0.1s"], files["dir"])
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"pid {os.getpid()}" in lines[0] and "waiting" in lines[0] and "at most 1s" in lines[0]
    assert f"pid {os.getpid()}" in lines[1] and "is measuring these CPUs" in lines[1]


def test_output_is_not_cut_at_80_columns_when_stdout_is_not_a_terminal(tmp_path):
    code = ("from rich.table import Table\nfrom tuner.cli.main import console\nt = Table()\nt.add_column('config')\n"
            "t.add_row('w' * 150)\nconsole.print(t)\nconsole.print('x' * 150)\n")
    env = {k: v for k, v in ENV.items() if k != "COLUMNS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "w" * 150 in done.stdout and "x" * 150 in done.stdout, done.stdout


MODEL_CASES = [
    ("missing.onnx", 2, "does not exist"),
    ("model_dir", 2, "is a directory"),
    ("text", 2, "not an ONNX model"),
    ("truncated", 2, "not an ONNX model"),
    ("badop", 1, "ONNX Runtime cannot load"),
    ("onnx:nosuchmodel", 2, "unknown bundled model"),
]


@pytest.mark.parametrize("model,code,message", MODEL_CASES)
def test_bad_models_fail_fast_with_one_line(files, model, code, message):
    path = str(files[model]) if model in files else model
    for command in (["measure", "--window", "0.1s"], ["optimize", "--p99", "20ms", "--n-trials", "2"]):
        done = run([command[0], "--model", path, *command[1:]], files["dir"])
        assert_one_line(done, code, message)
    assert not (files["dir"] / "placetune.db").exists() or model != "badop"


def test_dynamic_dims_without_shape_say_how_to_fix(files):
    done = run(["measure", "--model", str(files["dynamic"])], files["dir"])
    assert_one_line(done, 2, "--shape", "--batch")


def test_shape_for_an_input_that_does_not_exist(files):
    done = run(["measure", "--model", str(files["conv"]), "--shape", "nope=1x3x32x32"], files["dir"])
    assert_one_line(done, 2, "nope")


def test_malformed_shape(files):
    done = run(["measure", "--model", str(files["dynamic"]), "--shape", "x=1xAx3"], files["dir"])
    assert_one_line(done, 2, "--shape")


@pytest.mark.parametrize("npz", ["wrong_npz", "garbage_npz", "missing.npz"])
def test_bad_npz_inputs(files, npz):
    path = str(files.get(npz, files["dir"] / npz))
    done = run(["measure", "--model", str(files["conv"]), "--inputs", path], files["dir"])
    assert_one_line(done, 2, "--inputs")


@pytest.mark.parametrize("space,message", [
    ("broken.yaml", "not valid YAML"), ("unknown.yaml", "unknown dimension"),
    ("impossible.yaml", "no combination"), ("nosuchspace", "not found"),
])
def test_bad_search_spaces(files, space, message):
    arg = str(files["dir"] / space) if space.endswith(".yaml") else space
    done = run(["optimize", "--model", str(files["conv"]), "--p99", "20ms", "--space", arg], files["dir"])
    assert_one_line(done, 2, message)


@pytest.mark.parametrize("args,message", [
    (["--n-trials", "0"], "--n-trials"), (["--timeout", "soon"], "--timeout"), (["--sampler", "cmaes"], "--sampler"),
    (["--window", "0s"], "--window"), (["--worker-memory-limit", "lots"], "--worker-memory-limit"),
    (["--lock-wait", "forever"], "--lock-wait"), (["--race-timeout", "0s"], "--race-timeout"),
])
def test_bad_optimize_flags(files, args, message):
    done = run(["optimize", "--model", str(files["conv"]), "--p99", "20ms", *args], files["dir"])
    assert_one_line(done, 2, message)


@pytest.mark.parametrize("storage,message", [
    ("notaurl", "--storage"), ("postgresql://nobody@127.0.0.1:1/none", "--storage"),
    ("sqlite:////nonexistent/dir/x.db", "--storage"),
])
def test_bad_storage(files, storage, message):
    done = run(["optimize", "--model", str(files["conv"]), "--p99", "20ms", "--storage", storage], files["dir"])
    assert_one_line(done, 2, message)


@pytest.mark.parametrize("args,message", [
    (["--fsroot", "/nonexistent/root"], "--fsroot"), (["--topology", "/nonexistent/topo.json"], "does not exist"),
    (["--topology", "{dir}/topo.json"], "topo.json"), (["--fsroot", "{dir}/empty_root"], "empty_root"),
])
def test_bad_topology_sources(files, args, message):
    args = [a.replace("{dir}", str(files["dir"])) for a in args]
    done = run(["topology", *args], files["dir"])
    assert_one_line(done, 2, message)


def test_study_commands_on_a_missing_study(files, tmp_path):
    for command in (["export"], ["report"], ["log"]):
        done = run(command, tmp_path)
        assert_one_line(done, 2, "placetune.db")
    run(["optimize", "--model", str(files["conv"]), "--p99", "10us", "--n-trials", "1", "--window", "0.1s",
         "--revalidate", "0", "--no-mlflow"], tmp_path)
    for command in (["export", "--study", "nope"], ["report", "--study", "nope"], ["log", "--study", "nope"]):
        done = run(command, tmp_path)
        assert_one_line(done, 2, "no study 'nope'")


def test_a_bound_below_every_unloaded_latency_says_what_was_seen(files, tmp_path):
    done = run(["optimize", "--model", str(files["conv"]), "--p99", "10us", "--n-trials", "2", "--window", "0.1s",
                "--revalidate", "0", "--no-mlflow"], tmp_path, timeout=300)
    assert done.returncode == 3, done.stderr
    assert "no config met P99 <= 0.01 ms" in done.stdout and "relax --p99" in done.stdout
    exported = run(["export"], tmp_path)
    assert_one_line(exported, 2, "no feasible trial")
    reported = run(["report"], tmp_path)
    assert reported.returncode == 3 and "No config met the bound" in reported.stdout
    logged = run(["log", "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"], tmp_path, timeout=300)
    assert logged.returncode == 0 and "trial run(s) added" in logged.stdout, logged.stderr


def test_export_of_a_config_that_is_not_one(files):
    (files["dir"] / "cfg.json").write_text(json.dumps({"params": {}}))
    done = run(["export", "--config", str(files["dir"] / "cfg.json"), "--format", "numactl"], files["dir"])
    assert_one_line(done, 2, "not a placetune config")
    done = run(["export", "--format", "helm", "--config", str(files["dir"] / "cfg.json")], files["dir"])
    assert_one_line(done, 2, "--format")


def test_plan_takes_smt_on_or_off_like_measure(files):
    from tests.conftest import fixture_dirs

    root = next(r for r in fixture_dirs() if r.name == "16em64t-4s2c2t")  # 2 PUs per core
    got = {}
    for value in ("on", "off"):
        done = run(["plan", "--workers", "2", "--cores-per-worker", "2", "--smt", value, "--fsroot", str(root),
                    "--json"], files["dir"])
        assert done.returncode == 0, done.stderr
        got[value] = [len(w["cpus"]) for w in json.loads(done.stdout)["workers"]]
    assert got == {"on": [4, 4], "off": [2, 2]}
    assert_one_line(run(["plan", "--smt", "yes", "--fsroot", str(root)], files["dir"]), 2, "--smt", "on or off")
