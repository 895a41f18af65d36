"""Exports parse, the numactl script really places workers, deploy.apply pins and configures, and
the envelope picks the best config for another bound."""

from __future__ import annotations

import configparser
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import psutil
import pytest
import yaml

from tests.models import conv_net
from tuner.errors import UsageError
from tuner.machine.cpulist import parse_cpulist
from tuner.machine.placement import Params, plan
from tuner.machine.sysfs import read_topology
from tuner.results import export
from tuner.results.envelope import best_for_bound, envelope, envelope_points
from tuner.results.records import TrialResult, WindowResult

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "tuner.cli"]
EVENT_TIMEOUT_S = 120.0  # the most any awaited event (a line, an answer, an exit) may take on a loaded machine


def config_document(params: Params, topology=None) -> dict:
    """A best-config document for a plan on this machine, as 'placetune optimize' writes it."""
    the_plan = plan(topology or read_topology("/"), params)
    return {"format": "placetune-config/1", "study": "test", "trial": 0, "label": params.label(),
            "params": params.to_dict(), "plan": the_plan.to_dict(), "scenario": "server", "p99_bound_ms": 20.0,
            "throughput": 100.0, "p50_ms": 1.0, "p99_ms": 5.0,
            "model": {"name": "conv", "path": "conv.onnx", "sha256": "0" * 64},
            "topology_fingerprint": the_plan.topology_fingerprint, "machine": {}}


def two_workers() -> Params:
    n = len(read_topology("/").cores())
    return Params(workers=min(2, n), cores_per_worker=1, intra_op_threads=1)


def _thread_cpus(pid: int) -> set[str]:
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                out.add(line.split(":", 1)[1].strip())
    return out


@pytest.fixture
def multi_node_document(machine_dir) -> dict:
    from tests.conftest import fixture_topology

    topo = fixture_topology(machine_dir)
    nodes = topo.usable_nodes
    if len(nodes) < 2:
        pytest.skip("single-node fixture")
    cores = len(topo.cores())
    return config_document(Params(workers=len(nodes), cores_per_worker=max(1, cores // len(nodes) // 2),
                                  intra_op_threads=2, numa_policy="bind"), topo)


def test_json_and_yaml_round_trip_the_document():
    doc = config_document(two_workers())
    assert json.loads(export.render(doc, "json")) == doc
    assert yaml.safe_load(export.render(doc, "yaml")) == doc


def test_shell_exports_pass_bash_n(tmp_path, multi_node_document):
    for fmt in ("numactl", "docker"):
        script = tmp_path / f"{fmt}.sh"
        script.write_text(export.render(multi_node_document, fmt))
        check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
    text = export.render(multi_node_document, "numactl")
    for w in multi_node_document["plan"]["workers"]:
        assert f"PLACETUNE_WORKER_INDEX={w['index']} " in text
    assert text.count("--membind=") == len(multi_node_document["plan"]["workers"])
    docker = export.render(multi_node_document, "docker")
    assert docker.count("--cpuset-mems=") == len(multi_node_document["plan"]["workers"])


def test_systemd_template_and_drop_ins_have_the_placement_keys(multi_node_document):
    files = export.split_files(export.render(multi_node_document, "systemd"))
    text = files.pop("placetune@.service")
    template = configparser.ConfigParser(strict=False, interpolation=None)
    template.read_string(text)
    assert template["Service"]["ExecStart"] and template["Install"]["WantedBy"]
    environment = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("Environment=")]
    assert "PLACETUNE_WORKER_INDEX=%i" in environment
    assert any(e.startswith("PLACETUNE_CONFIG=") for e in environment)
    workers = multi_node_document["plan"]["workers"]
    assert len(files) == len(workers)
    for w in workers:
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.read_string(files[f"placetune@{w['index']}.service.d/placement.conf"])
        assert [int(c) for c in unit["Service"]["CPUAffinity"].split()] == w["cpus"]
        assert unit["Service"]["NUMAPolicy"] == "bind"
        assert [int(n) for n in unit["Service"]["NUMAMask"].split()] == w["mem_nodes"]


def test_k8s_fragment_is_yaml_with_integer_cpus_requests_equal_limits(multi_node_document):
    text = export.render(multi_node_document, "k8s")
    assert "cannot express" in text
    for needed in ("cpuManagerPolicy: static", "topologyManagerPolicy: single-numa-node", "memoryManagerPolicy: Static",
                   "Guaranteed QoS", "shared CPUs"):  # the kubelet settings, and what a pod gets without them
        assert needed in text, needed
    spec = yaml.safe_load(text)["spec"]
    workers = multi_node_document["plan"]["workers"]
    assert len(spec["containers"]) == len(workers)
    for container, w in zip(spec["containers"], workers, strict=True):
        res = container["resources"]
        assert res["requests"] == res["limits"]
        assert int(res["requests"]["cpu"]) == len(w["cpus"])
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["PLACETUNE_WORKER_INDEX"] == str(w["index"])


def test_k8s_asks_for_restricted_where_a_worker_spans_nodes(machine_dir):
    from tests.conftest import fixture_topology

    topo = fixture_topology(machine_dir)
    if len(topo.usable_nodes) < 2:
        pytest.skip("single-node fixture")
    text = export.render(config_document(Params(workers=1, cores_per_worker=len(topo.cores())), topo), "k8s")
    assert "topologyManagerPolicy: restricted" in text


def _ort_variables(text: str, fmt: str) -> dict[str, str]:
    """The ORT_*_NUM_THREADS an export sets (comments aside), with their values."""
    if fmt == "k8s":
        return {e["name"]: e["value"] for c in yaml.safe_load(text)["spec"]["containers"] for e in c["env"]
                if e["name"].startswith("ORT_")}
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    return dict(re.findall(r"\b(ORT_\w+_NUM_THREADS)=(\w+)", code))


@pytest.mark.parametrize("version, reads", [("1.32.0", True), ("1.33.1", True), ("1.31.2", False), ("1.20.0", False)])
def test_ort_thread_variables_are_set_only_for_an_onnxruntime_that_reads_them(version, reads):
    parallel = Params(workers=1, cores_per_worker=1, intra_op_threads=2, inter_op_threads=3, execution_mode="parallel")
    for params, expected in ((parallel, {"ORT_INTRA_OP_NUM_THREADS": "2", "ORT_INTER_OP_NUM_THREADS": "3"}),
                             (dataclasses.replace(parallel, execution_mode="sequential"),  # no inter-op pool
                              {"ORT_INTRA_OP_NUM_THREADS": "2"}),
                             (Params(workers=1, intra_op_threads=0, pin=False), {})):  # ORT's default count
        doc = config_document(params)
        doc["machine"] = {"onnxruntime": version}
        for fmt in ("env", "systemd", "docker", "k8s", "numactl"):
            text = export.render(doc, fmt)
            assert _ort_variables(text, fmt) == (expected if reads else {}), fmt
            assert ("No ORT_INTRA_OP_NUM_THREADS" in text) != reads and "does not read OMP_NUM_THREADS" in text


def test_no_known_onnxruntime_version_means_no_ort_variables(monkeypatch):
    import importlib.metadata

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    doc = config_document(two_workers())
    assert doc["machine"] == {} and not export.ort_reads_thread_env(doc)
    text = export.render(doc, "env")
    assert _ort_variables(text, "env") == {} and "records no onnxruntime version" in text


def test_the_installed_onnxruntime_reads_the_thread_variables_as_the_export_assumes(tmp_path):
    """A session whose options leave intra_op_num_threads unset: does ORT_INTRA_OP_NUM_THREADS size its pool?"""
    model = conv_net(tmp_path / "conv.onnx")
    code = ("import os, onnxruntime as ort\n"
            "before = len(os.listdir('/proc/self/task'))\n"
            f"kept = ort.InferenceSession({str(model)!r}, ort.SessionOptions(), providers=['CPUExecutionProvider'])\n"
            "print(len(os.listdir('/proc/self/task')) - before)\n")  # kept: a freed session's pool is gone
    started = {}
    for n in (3, 6):
        env = {**os.environ, "ORT_INTRA_OP_NUM_THREADS": str(n)}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        started[n] = int(done.stdout.split()[-1])
    assert (started[6] - started[3] == 3) == export.ort_reads_thread_env({"machine": {}}), started


def test_env_file_lines_are_key_value(multi_node_document):
    lines = [line for line in export.render(multi_node_document, "env").splitlines() if not line.startswith("#")]
    keys = dict(line.split("=", 1) for line in lines)
    assert keys["PLACETUNE_WORKERS"] == str(len(multi_node_document["plan"]["workers"]))
    assert "PLACETUNE_CPUS_0" in keys and "PLACETUNE_NUMACTL_0" in keys


def test_unknown_format_is_refused():
    with pytest.raises(UsageError, match="not one of"):
        export.render(config_document(two_workers()), "helm")


@pytest.mark.skipif(shutil.which("numactl") is None, reason="numactl missing: run .ci/system-deps")
def test_numactl_script_starts_each_worker_on_its_planned_cpus(tmp_path):
    doc = config_document(two_workers())
    model = conv_net(tmp_path / "conv.onnx")
    doc["model"]["path"] = str(model)
    (tmp_path / "best_config.json").write_text(json.dumps(doc))
    script = tmp_path / "launch.sh"
    done = subprocess.run([*CLI, "export", "--config", str(tmp_path / "best_config.json"), "--format", "numactl",
                           "--config-path", str(tmp_path / "best_config.json"), "--out", str(script)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    port = 18500 + os.getpid() % 1000
    launcher = subprocess.Popen(["bash", str(script), sys.executable, str(REPO / "examples" / "serve.py"),
                                 "--model", str(model), "--port", str(port)],
                                cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    workers = doc["plan"]["workers"]
    seen = {}
    try:
        for _ in workers:  # each worker prints its "serving on" line once it listens: wait for those lines
            line = _read_line(launcher, timeout_s=EVENT_TIMEOUT_S)
            assert "serving on" in line, line
        for w in workers:  # it listened before it said so: its port answers now
            seen[w["index"]] = _answer(f"http://127.0.0.1:{port + w['index']}/health")
        for w in workers:
            health = seen[w["index"]]
            assert set().union(*(parse_cpulist(c) for c in _thread_cpus(health["pid"]))) == set(w["cpus"])
            assert health["intra_op_num_threads"] == doc["params"]["intra_op_threads"]
            assert _answer(f"http://127.0.0.1:{port + w['index']}/infer", b"")["shapes"] == [[1, 10]]
        children = psutil.Process(launcher.pid).children(recursive=True)
        assert len(children) >= len(workers)
    finally:
        children = psutil.Process(launcher.pid).children(recursive=True)
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=EVENT_TIMEOUT_S)  # the script exits once every worker has exited
        _, alive = psutil.wait_procs(children, timeout=EVENT_TIMEOUT_S)
    assert not alive, alive


def _answer(url: str, body: bytes | None = None) -> dict:
    """The JSON a served worker answers (a POST when ``body`` is given), waited for at most EVENT_TIMEOUT_S."""
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=EVENT_TIMEOUT_S) as r:
        return json.loads(r.read())


def _read_line(proc: subprocess.Popen, timeout_s: float) -> str:
    """The next line of a child's stdout ("" at its end), or a failed test after ``timeout_s``."""
    import queue
    import threading

    lines = getattr(proc, "_lines", None)
    if lines is None:  # one reader thread per child: a blocking readline must not hang the test
        lines = proc._lines = queue.Queue()

        def pump() -> None:
            for line in iter(proc.stdout.readline, ""):
                lines.put(line)
            lines.put("")

        threading.Thread(target=pump, daemon=True).start()
    try:
        return lines.get(timeout=timeout_s)
    except queue.Empty:
        raise AssertionError(f"no line from {proc.args} within {timeout_s:.0f}s") from None


def test_serve_example_answers_400_to_a_garbage_body_and_keeps_serving(tmp_path):
    doc = config_document(Params(workers=1, cores_per_worker=1, intra_op_threads=1))
    model = conv_net(tmp_path / "conv.onnx")
    (tmp_path / "cfg.json").write_text(json.dumps(doc))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PLACETUNE_CONFIG": str(tmp_path / "cfg.json"),
           "PLACETUNE_WORKER_INDEX": "0"}
    server = subprocess.Popen([sys.executable, str(REPO / "examples" / "serve.py"), "--model", str(model),
                               "--port", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              bufsize=1)
    try:
        line = _read_line(server, timeout_s=EVENT_TIMEOUT_S)
        assert "serving on" in line, line + server.stdout.read() if server.poll() is not None else line
        url = f"http://127.0.0.1:{int(line.rsplit(':', 1)[1])}/infer"
        with pytest.raises(urllib.error.HTTPError) as bad:
            _answer(url, b"garbage")
        assert bad.value.code == 400 and "not an .npz" in json.loads(bad.value.read())["error"]
        assert _answer(url, b"")["shapes"] == [[1, 10]]
    finally:
        server.terminate()
        server.wait(timeout=EVENT_TIMEOUT_S)  # gone: no child outlives the test


def test_serve_example_without_the_launcher_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLACETUNE_")}
    done = subprocess.run([sys.executable, str(REPO / "examples" / "serve.py"), "--model", "m.onnx"],
                          env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "PLACETUNE_CONFIG" in done.stderr, done.stderr


def test_systemd_workers_listen_on_base_port_plus_index():
    import shlex

    text = export.split_files(export.render(config_document(two_workers()), "systemd"))["placetune@.service"]
    exec_start = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ExecStart="))
    for index in (0, 1, 12):  # what systemd runs for instance %i ($$ is a literal $), with echo as the server
        argv = shlex.split(exec_start.replace("%i", str(index)).replace("$$", "$")
                           .replace("/usr/local/bin/your-server", "echo"))
        done = subprocess.run(argv, capture_output=True, text=True)
        assert done.stdout.split() == ["--port", str(export.BASE_PORT + index)]


@pytest.mark.parametrize("config_path", ["best_config.json", "/srv/app/cfg.json"])
def test_docker_mount_and_placetune_config_agree(config_path):
    import re

    text = export.render(config_document(two_workers()), "docker", config_path)
    mounted = re.search(r"-v \$PWD/best_config\.json:([^:]+):ro", text).group(1)
    set_to = set(re.findall(r"-e PLACETUNE_CONFIG=(\S+)", text))
    assert set_to == {mounted} and mounted.startswith("/")


def test_random_inputs_are_allocated_in_their_own_dtype():
    import tracemalloc

    from tuner.bench.model import InputSpec, ModelInfo, make_inputs

    shape = (4, 1024, 1024)  # 16 MiB as float32, 32 MiB as float64
    for dtype, size in (("float32", 4), ("float16", 2), ("int64", 8), ("bool", 1)):
        info = ModelInfo(path="m.onnx", name="m", sha256="0", inputs=(InputSpec("x", shape, dtype),))
        tracemalloc.start()
        feeds = make_inputs(info)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        nbytes = 4 * 1024 * 1024 * size
        assert feeds["x"].dtype == dtype and feeds["x"].nbytes == nbytes
        assert peak < nbytes + 8 * 2**20, (dtype, peak)  # the array, plus at most a bounded scratch buffer


def test_deploy_apply_pins_the_process_and_returns_the_measured_options(tmp_path):
    n = len(read_topology("/").cores())
    params = Params(workers=1, cores_per_worker=n, intra_op_threads=n, spinning=False, graph_optimization="basic")
    doc = config_document(params)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(doc))
    code = (
        "import json, os\n"
        "from tuner import deploy\n"
        f"o = deploy.apply({str(path)!r}, 0)\n"
        "import onnxruntime as ort, numpy\n"
        "cpus = set()\n"
        "for t in os.listdir('/proc/self/task'):\n"
        "    cpus |= os.sched_getaffinity(int(t))\n"
        "print(json.dumps({'cpus': sorted(cpus), 'intra': o.intra_op_num_threads,\n"
        "    'spin': o.get_session_config_entry('session.intra_op.allow_spinning'),\n"
        "    'opt': str(o.graph_optimization_level)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["cpus"] == doc["plan"]["workers"][0]["cpus"]
    assert seen["intra"] == n and seen["spin"] == "0" and seen["opt"].endswith("ENABLE_BASIC")


def test_deploy_apply_reads_the_environment_and_refuses_a_bad_index(tmp_path):
    doc = config_document(two_workers())
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(doc))
    code = "from tuner import deploy\ndeploy.apply()\nimport os\nprint(sorted(os.sched_getaffinity(0)))"
    env = {**os.environ, "PLACETUNE_CONFIG": str(path), "PLACETUNE_WORKER_INDEX": "0"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == doc["plan"]["workers"][0]["cpus"]
    env["PLACETUNE_WORKER_INDEX"] = "7"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
    assert done.returncode != 0 and "out of range" in done.stderr


_STORED = REPO / "tests" / "data" / "results" / "format2.json"


def _window(p99: float, rate: float, kept_up: bool = True, scenario: str = "server") -> WindowResult:
    base = TrialResult.from_json(_STORED.read_text()).windows[0]
    return dataclasses.replace(base, scenario=scenario, offered_rate=rate, achieved_rate=rate, requests=100,
                               completed=100, p50_ms=p99 / 3, p90_ms=p99 / 2, p99_ms=p99, p999_ms=p99,
                               kept_up=kept_up)


def _synthetic_study(windows_by_label: dict[str, list[WindowResult]], bound: float = 20.0) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("scenario", "server")
    study.set_user_attr("p99_bound_ms", bound)
    base = TrialResult.from_json(_STORED.read_text())
    for label, windows in windows_by_label.items():
        result = dataclasses.replace(base, windows=tuple(windows))
        trial = optuna.trial.create_trial(values=[1.0, 1.0], user_attrs={"label": label,
                                                                         "result": result.to_dict()})
        study.add_trial(trial)
    return study


def test_envelope_picks_the_best_config_for_each_bound():
    study = _synthetic_study({
        "latency": [_window(2.0, 100), _window(4.0, 150), _window(30.0, 400, kept_up=False)],
        "throughput": [_window(8.0, 200), _window(18.0, 300), _window(25.0, 350, scenario="offline")],
    })
    assert len(envelope_points(study)) == 4  # not kept up and the offline probe do not count
    assert [p.label for p in envelope(envelope_points(study))] == ["latency", "latency", "throughput", "throughput"]
    assert best_for_bound(study, 5.0).point.label == "latency"
    assert best_for_bound(study, 5.0).note == ""
    choice = best_for_bound(study, 10.0)
    assert (choice.point.label, choice.point.throughput, choice.note) == ("throughput", 200, "")
    assert "above what was measured" in best_for_bound(study, 19.0).note
    looser = best_for_bound(study, 50.0)
    assert looser.point.throughput == 300 and "lower bound" in looser.note
    with pytest.raises(UsageError, match="below what was measured"):
        best_for_bound(study, 1.0)


def test_a_deployment_gets_every_export_format():
    models = {}
    for name in ("ranker", "embedder"):
        models[name] = config_document(Params(workers=1, cores_per_worker=1, intra_op_threads=1))
        models[name]["model"]["name"] = name
    for fmt in export.FORMATS:
        files = export.deployment_files(models, fmt, "/etc/placetune")
        for name, document in models.items():
            assert files[f"{name}.json"][0] == json.dumps(document, indent=1) + "\n"
            assert files[f"{name}{export.format_of(fmt).suffix}"] == (export.render(
                document, fmt, f"/etc/placetune/{name}.json"), export.format_of(fmt).executable)
