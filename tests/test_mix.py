"""Several models sharing one server (issue 16): the deployment file, the division of the machine,
all models measured at once, the load-factor estimate, the CLI, export and deploy per model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.models import conv_net
from tuner.bench import stats
from tuner.bench.measure import MeasureSettings
from tuner.bench.model import inspect_model
from tuner.errors import UsageError
from tuner.machine.cpulist import parse_cpulist
from tuner.machine.placement import Params
from tuner.machine.sysfs import read_topology
from tuner.mix.bench import MixFleet, service_times_s
from tuner.mix.deployment import check_fits, parse_deployment, resolve_models
from tuner.mix.division import (
    candidate_sizes,
    division_choices,
    even_split,
    plans,
    proportional_sizes,
    suggest_config,
)
from tuner.mix.loadfactor import MixWindow, combined_verdict, estimate_load_factor, mix_point
from tuner.results.records import WindowResult

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "tuner.cli"]
QUICK = MeasureSettings(window_s=0.2, warmup_s=0.1, search_steps=2)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("mix")
    small, big = conv_net(d / "small.onnx", channels=8, size=16), conv_net(d / "big.onnx", channels=16, size=24)
    text = (f"models:\n  - {{name: small, model: {small}, p99: 50ms, share: 3}}\n"
            f"  - {{name: big, model: {big}, p99: 80ms, share: 1}}\n")
    (d / "mix.yaml").write_text(text)
    return {"dir": d, "yaml": d / "mix.yaml", "small": small, "big": big}


def _deployment(files: dict):
    import yaml

    return parse_deployment(yaml.safe_load(files["yaml"].read_text()), str(files["yaml"]))


# ---- the deployment file ---------------------------------------------------------------------------
@pytest.mark.parametrize("models,message", [
    ([{"name": "a", "model": "x.onnx", "p99": "20ms", "share": 1}] * 2, "duplicate model name 'a'"),
    ([{"name": "a", "model": "x.onnx", "p99": "20ms", "share": 0}], "share must be a positive number"),
    ([{"name": "a", "model": "x.onnx", "p99": "20ms", "share": -2}], "share must be a positive number"),
    ([{"name": "a", "model": "x.onnx", "share": 1}], "lacks p99"),
    ([{"name": "a", "model": "x.onnx", "p99": "20ms", "share": 1, "bogus": 1}], "unknown key(s) bogus"),
    ([], "non-empty 'models:' list"),
])
def test_bad_deployment_entries_are_usage_errors(models, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_deployment({"models": models}, "mix.yaml")


def test_a_missing_model_names_its_entry(tmp_path):
    deployment = parse_deployment({"models": [{"name": "ranker", "model": str(tmp_path / "no.onnx"), "p99": "1s",
                                               "share": 1}]}, "mix.yaml")
    with pytest.raises(UsageError, match="model ranker: model file .* does not exist"):
        resolve_models(deployment)


def test_more_models_than_cores_is_refused_unless_cores_are_shared():
    entries = [{"name": n, "model": "x.onnx", "p99": "20ms", "share": 1} for n in "abc"]
    with pytest.raises(UsageError, match="3 models but only 2 usable core"):
        check_fits(parse_deployment({"models": entries}), 2)
    check_fits(parse_deployment({"models": entries, "shared_cores": True}), 2)


# ---- the division ---------------------------------------------------------------------------------
def test_proportional_split_gives_every_model_a_core_and_uses_every_core():
    assert proportional_sizes(16, (4, 1)) == (12, 4)
    assert proportional_sizes(2, (100, 1)) == (1, 1)
    for sizes in candidate_sizes(16, (4, 1, 2)):
        assert sum(sizes) == 16 and min(sizes) >= 1
    assert candidate_sizes(16, (4, 1))[0] == (12, 4)


def _eight_node_machine(tmp_path: Path):
    """The 16-core, 8-node fixture machine (only its archive is extracted)."""
    import tarfile

    with tarfile.open(REPO / "tests" / "topologies" / "16amd64-8n2c.tar.bz2") as tar:
        tar.extractall(tmp_path, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return read_topology(tmp_path / "16amd64-8n2c")


def test_divisions_are_contiguous_core_ranges_in_node_order(tmp_path):
    topo = _eight_node_machine(tmp_path)
    assert len(topo.usable_nodes) == 8
    deployment = parse_deployment({"models": [{"name": "a", "model": "x", "p99": "1s", "share": 3},
                                              {"name": "b", "model": "x", "p99": "1s", "share": 1}]})
    order = [c.cpus for c in topo.cores()]
    for label, parts in division_choices(topo, deployment).items():
        a, b = (set(p) for p in parts)
        assert not a & b and a | b == set(topo.usable_cpus), label
        ranks = [order.index(c.cpus) for c in topo.cores() if set(c.cpus) <= a]
        assert ranks == list(range(len(ranks))), label  # model a holds the first cores, b the rest
    shared = parse_deployment({"models": [{"name": "a", "model": "x", "p99": "1s", "share": 3},
                                          {"name": "b", "model": "x", "p99": "1s", "share": 1}], "shared_cores": True})
    assert division_choices(topo, shared)["shared"] == (topo.usable_cpus, topo.usable_cpus)
    for name, p in plans(topo, even_split(topo, deployment)).items():
        part = set(dict(zip(deployment.names, division_choices(topo, deployment)["12+4"], strict=True))[name])
        assert all(set(w.cpus) <= part for w in p.workers)


def test_sampled_configs_keep_every_model_inside_its_part(tmp_path):
    import optuna

    topo = _eight_node_machine(tmp_path)
    deployment = parse_deployment({"models": [{"name": "a", "model": "x", "p99": "1s", "share": 1},
                                              {"name": "b", "model": "x", "p99": "1s", "share": 2}]})
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    policies = set()
    for _ in range(12):
        trial = study.ask()
        config = suggest_config(trial, topo, deployment, "default")
        policies |= {p.numa_policy for p in config.params.values()}
        for name, the_plan in plans(topo, config).items():
            assert {c for w in the_plan.workers for c in w.cpus} <= set(config.cpus[name]), config.label()
            assert all(set(w.mem_nodes) == set(w.nodes) for w in the_plan.workers if w.mem_policy == "bind")
        assert not set(config.cpus["a"]) & set(config.cpus["b"])
        study.tell(trial, 1.0)
    assert "bind" in policies  # a model's part chooses its memory policy on a multi-node machine


def test_deploy_apply_picks_one_model_of_a_deployment_document():
    from tuner import deploy

    one = {"format": "placetune-config/1", "params": Params(workers=1).to_dict(),
           "plan": {"workers": [{"index": 0, "cpus": [0], "mem_policy": "none", "mem_nodes": []}]}}
    document = {"format": "placetune-deployment/1", "models": {"ranker": one, "detector": one}}
    assert deploy.load_config(document, model="ranker") is one
    with pytest.raises(UsageError, match="choose one with model=NAME"):
        deploy.load_config(document)
    with pytest.raises(UsageError, match="no model 'nope'; its models: ranker, detector"):
        deploy.load_config(document, model="nope")


# ---- the load-factor estimate (pure) --------------------------------------------------------------
def _window(verdict: str, over: int = 0) -> WindowResult:
    """A judged window whose counts agree with its verdict (the search re-judges pooled counts):
    400 requests decide (0 over: pass, 50 over: fail), 100 with none over cannot."""
    requests = 100 if verdict == stats.UNDECIDED else 400
    return WindowResult("server", 1.0, 1.0, requests, requests, 1, 1, 1, 1, 1, 1, verdict != stats.FAIL,
                        verdict == stats.PASS, "", (1.0,), 0.0, verdict=verdict, over_bound=over)


def test_a_load_factor_passes_only_when_every_model_passes():
    assert combined_verdict([stats.PASS, stats.PASS]) == stats.PASS
    assert combined_verdict([stats.PASS, stats.UNDECIDED]) == stats.UNDECIDED
    assert combined_verdict([stats.UNDECIDED, stats.FAIL]) == stats.FAIL


@pytest.mark.parametrize("limits", [(70.0, 130.0), (130.0, 42.0)])
def test_the_load_factor_estimate_closes_in_below_the_first_model_to_fail(limits):
    def run(lf: float) -> MixWindow:  # model i holds its bound up to its limit, 50 of 400 over above it
        return MixWindow(lf, {f"m{i}": _window(stats.PASS) if lf <= limit else _window(stats.FAIL, over=50)
                              for i, limit in enumerate(limits)})

    outcome = estimate_load_factor(run, capacity_lf=150.0, max_runs=12)
    low, high = outcome.interval
    assert outcome.verdict == stats.PASS and low <= outcome.load_factor <= high
    assert low <= min(limits) < high and (high - low) / 2 <= 0.1 * outcome.load_factor
    assert outcome.best.load_factor <= outcome.load_factor and outcome.best.verdict == stats.PASS


def test_a_run_is_read_as_its_binding_model():
    both = MixWindow(10.0, {"a": _window(stats.PASS), "b": _window(stats.FAIL, over=50)})
    point = mix_point(both)
    assert (point.rate, point.n, point.over) == (10.0, 400, 50)
    assert not point.usable  # b's window did not keep up (_window): the run is over, whatever a's
    short = MixWindow(10.0, {"a": _window(stats.PASS), "b": _window(stats.UNDECIDED)})
    assert mix_point(short).n == 100  # none over either: the one with fewer requests binds


def test_no_run_holding_every_bound_is_undecided_not_an_extrapolated_load_factor():
    outcome = estimate_load_factor(lambda lf: MixWindow(lf, {"a": _window(stats.FAIL, over=50)}), 10.0, 4)
    assert outcome.best is None and outcome.verdict == stats.UNDECIDED and outcome.load_factor == 0.0


# ---- real processes ---------------------------------------------------------------------------------
def test_both_models_run_at_once_each_pinned_where_planned_with_its_own_record(two_models):
    topo = read_topology()
    deployment = _deployment(two_models)
    models = resolve_models(deployment)
    config = even_split(topo, deployment)
    the_plans = plans(topo, config)
    shares, bounds = {"small": 3.0, "big": 1.0}, {"small": 0.05, "big": 0.08}
    with MixFleet(the_plans, models, QUICK) as mix:
        for name, fleet in mix.fleets.items():  # from /proc: each worker's threads on its model's part only
            planned = {c for w in the_plans[name].workers for c in w.cpus}
            assert planned <= set(config.cpus[name])
            for pid in fleet.pids:
                for thread in psutil.Process(pid).threads():
                    cpus = Path(f"/proc/{pid}/task/{thread.id}/status").read_text().split("Cpus_allowed_list:")[1]
                    assert parse_cpulist(cpus.split()[0]) <= planned
        assert set(mix.placements()) == {"small", "big"}
        probe = mix.offline(0.2, bounds)
        rngs = {n: np.random.default_rng(i) for i, n in enumerate(shares)}
        window = mix.server(50.0, shares, bounds, service_times_s(probe), rngs)
        spans = {}
        for name, fleet in mix.fleets.items():
            n = window.windows[name].requests
            done = fleet.buffers.completed[:n]
            spans[name] = (float(fleet.buffers.scheduled[0]), float(np.nanmax(done)))
            assert np.all(fleet.buffers.worker[:n] >= 0)  # every request of this model served by its own workers
    assert max(s[0] for s in spans.values()) < min(s[1] for s in spans.values())  # the windows overlapped
    small, big = window.windows["small"], window.windows["big"]
    assert small.offered_rate == 150.0 and big.offered_rate == 50.0
    assert abs(small.requests - 3 * big.requests) <= 3  # each its own stream at its share, one duration


def _cli(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})


@pytest.mark.parametrize("args,message", [
    (["optimize"], "Missing option '--model'"),
    (["optimize", "--model", "m.onnx", "--deployment", "mix.yaml"], "exclude each other"),
    (["optimize", "--deployment", "mix.yaml", "--sampler", "random", "--batch", "4"],
     "--sampler, --batch do not apply to --deployment"),
    (["optimize", "--deployment", "mix.yaml", "--no-screening"],
     "--no-screening does not apply to --deployment (a deployment study does not screen)"),
])
def test_model_or_deployment_usage_errors(two_models, args, message):
    done = _cli(args, two_models["dir"])
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_bad_deployments_from_the_cli_are_one_line_usage_errors(two_models):
    d = two_models["dir"]
    cases = {
        "dup.yaml": ("models:\n" + f"  - {{name: a, model: {two_models['small']}, p99: 20ms, share: 1}}\n" * 2,
                     "duplicate model name 'a'"),
        "three.yaml": ("models:\n" + "".join(f"  - {{name: {n}, model: {two_models['small']}, p99: 20ms, share: 1}}\n"
                                             for n in "abc"), "3 models but only 2 usable core"),
        "missing.yaml": ("models:\n  - {name: ranker, model: nowhere.onnx, p99: 20ms, share: 1}\n", "model ranker"),
        "tight.yaml": (f"models:\n  - {{name: small, model: {two_models['small']}, p99: 20ms, share: 1}}\n"
                       f"  - {{name: big, model: {two_models['big']}, p99: 0.01ms, share: 1}}\n",
                       "model big's P99 bound 0.01 ms is unreachable"),
    }
    for file, (text, message) in cases.items():
        (d / file).write_text(text)
        done = _cli(["optimize", "--deployment", file, "--no-mlflow", "--window", "0.2s"], d)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and message in done.stderr and lines[-1].startswith("placetune: error:"), (
            file, done.stderr)
        assert not (d / "best_config.json").exists() and not (d / "placetune.db").exists()  # nothing stored


def test_optimize_a_deployment_with_real_processes_stores_and_tracks_it(two_models, tmp_path):
    """The real-process smoke test: only what does not depend on how fast this machine is (on a busy
    one every load factor may stay undecided, exit 3): no traceback, the study stored with both
    baselines measured, MLflow's parent run and a child run per measured trial with every model's
    metrics, and the best config when one passed (its load factors: tests/test_mix_sim.py)."""
    d = two_models["dir"]
    done = _cli(["optimize", "--deployment", str(two_models["yaml"]), "--n-trials", "2", "--window", "0.2s",
                 "--revalidate", "0", "--out", str(tmp_path / "best.json"), "--storage",
                 f"sqlite:///{tmp_path / 's.db'}"], d)
    assert done.returncode in (0, 3) and "Traceback" not in done.stderr, done.stderr
    import optuna

    from tuner.results.mixtrials import measured

    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{tmp_path / 's.db'}")
    assert study.user_attrs["kind"] == "deployment"
    assert {t.user_attrs.get("baseline") for t in measured(study)} >= {"ort_default", "even_split"}
    document = json.loads((tmp_path / "best.json").read_text()) if done.returncode == 0 else None
    if document is not None:
        assert set(document["models"]) == {"small", "big"} and document["load_factor"] > 0
        assert set(document["baselines"]) == {"ort_default", "even_split"}
    _check_mlflow(tmp_path / "mlflow.db", document, len(measured(study)))


def test_a_deployment_export_gives_one_launch_script_per_model_that_serves(two_models, tmp_path):
    """``export --config`` of a deployment's best config (made on the simulated fleet for this
    machine's topology: which config wins does not matter here) writes one launch script per
    model, and each starts its model's real worker on the CPUs its plan gives it."""
    from tests.sim_mix import sim_study

    d = two_models["dir"]
    models = {"detector": inspect_model(str(two_models["small"])), "ranker": inspect_model(str(two_models["big"]))}
    _, document, _ = sim_study(tmp_path, topology=read_topology(), n_trials=2, race_rounds=0, models=models)
    done = _cli(["export", "--config", str(tmp_path / "best.json"), "--format", "numactl", "--out",
                 str(tmp_path / "exp")], d)
    assert done.returncode == 0, done.stderr
    scripts = sorted((tmp_path / "exp").glob("*-launch.sh"))
    assert [s.name for s in scripts] == ["detector-launch.sh", "ranker-launch.sh"]
    for port, script in zip((18700 + os.getpid() % 500, 19300 + os.getpid() % 500), scripts, strict=True):
        name = script.name.removesuffix("-launch.sh")
        model = two_models["small" if name == "detector" else "big"]
        _serve_once(script, model, port, list(document.models[name].plan.workers[0].cpus), tmp_path)


def _check_mlflow(db: Path, document: dict | None, measured: int) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("placetune").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(children) == measured >= 2
    assert {"load_factor", "small.p99_ms", "big.p99_ms", "small.throughput"} <= set(children[0].data.metrics)
    if document is not None:
        assert parents[0].data.metrics["best_load_factor"] == pytest.approx(document["load_factor"])
    else:
        assert parents[0].info.status == "FAILED"


def _serve_once(script: Path, model: Path, port: int, cpus: list[int], tmp_path: Path) -> None:
    """Start the model's launch script with examples/serve.py; its worker answers on its planned CPUs."""
    import shutil
    import urllib.request

    from tests.test_export import _read_line

    numactl = shutil.which("numactl")
    if numactl is None:  # this VM has no numactl: a shim with its --physcpubind semantics, through taskset
        shim = tmp_path / "numactl"
        shim.write_text('#!/usr/bin/env bash\ncpus=${1#--physcpubind=}; shift; [ "$1" = -- ] && shift\n'
                        'exec taskset -c "$cpus" "$@"\n')
        shim.chmod(0o755)
        numactl = str(shim)
    launcher = subprocess.Popen(["bash", str(script), sys.executable, str(REPO / "examples" / "serve.py"),
                                 "--model", str(model), "--port", str(port)],
                                env={**os.environ, "PYTHONPATH": str(REPO), "NUMACTL": numactl},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = _read_line(launcher, timeout_s=120)
        assert "serving on" in line, line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            health = json.loads(r.read())
        # an unpinned worker (the ORT-default baseline can win on a busy machine) plans no CPUs: it
        # runs on every CPU this process may use
        assert health["cpus"] == (cpus or sorted(os.sched_getaffinity(0)))
    finally:
        children = psutil.Process(launcher.pid).children(recursive=True)
        launcher.terminate()
        launcher.wait(timeout=30)
        psutil.wait_procs(children, timeout=30)
