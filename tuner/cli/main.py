"""The ``placetune`` command line: parse, call the library, render.

Every PlacetuneError becomes one line on stderr and an exit code (2 for usage errors,
1 for runtime errors); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tuner.cli.render import plan_table, topology_tree
from tuner.errors import PlacetuneError, UsageError
from tuner.machine.placement import Params, plan
from tuner.machine.topology import Topology, load_topology_file, read_topology

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find the best placement of ONNX Runtime inference workers on this CPU server, by measurement.",
    pretty_exceptions_enable=False,
)
WIDE_COLUMNS = 1000  # not a terminal (a log, a pipe): never cut a line (a config's label) at 80 columns


def make_console(**kwargs) -> Console:
    """A rich Console for stdout: the terminal's width on a TTY, wide (no truncation) otherwise,
    unless COLUMNS says how wide."""
    import os

    console = Console(**kwargs)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=WIDE_COLUMNS, **kwargs)
    return console


console = make_console()
_state = {"debug": False}

FsRoot = Annotated[
    Path | None,
    typer.Option("--fsroot", help="Read the topology below this root (a machine dump) instead of /."),
]
TopologyFile = Annotated[
    Path | None,
    typer.Option("--topology", help="Use a topology saved with 'placetune topology --json'."),
]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"placetune {version('placetune')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            print("placetune (not installed: no version metadata)")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    _show_version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False,
) -> None:
    _state["debug"] = debug


def get_topology(fsroot: Path | None, topology_file: Path | None) -> Topology:
    """The topology from --topology, --fsroot, or the live machine."""
    if fsroot is not None and topology_file is not None:
        raise UsageError("give either --fsroot or --topology, not both")
    if topology_file is not None:
        return load_topology_file(topology_file)
    if fsroot is not None:
        if not fsroot.is_dir():
            raise UsageError(f"--fsroot {fsroot} is not a directory")
        return read_topology(fsroot)
    return read_topology("/")


@app.command()
def topology(
    fsroot: FsRoot = None,
    topology_file: TopologyFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show the CPU/NUMA topology: packages, NUMA nodes, L3 groups, cores, PUs, usable or not."""
    topo = get_topology(fsroot, topology_file)
    if as_json:
        sys.stdout.write(topo.to_json() + "\n")
        return
    console.print(topology_tree(topo))


@app.command("plan")
def plan_command(
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    cores_per_worker: Annotated[int, typer.Option(help="Physical cores per worker.")] = 1,
    smt: Annotated[bool, typer.Option("--smt/--no-smt", help="Use every SMT sibling of a core.")] = False,
    numa_policy: Annotated[str, typer.Option(help="none | bind | interleave | preferred")] = "none",
    io_cores: Annotated[int, typer.Option(help="Cores kept for the load generator.")] = 0,
    fsroot: FsRoot = None,
    topology_file: TopologyFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show the placement a config gets on a topology, without running anything."""
    topo = get_topology(fsroot, topology_file)
    params = Params(workers=workers, cores_per_worker=cores_per_worker, smt=smt,
                    numa_policy=numa_policy, io_cores=io_cores)
    result = plan(topo, params)
    if as_json:
        sys.stdout.write(result.to_json() + "\n")
        return
    console.print(plan_table(result))


def _measure_settings(scenario: str, bound: float | None, window: str, memory_limit: str | None,
                      hang_timeout: str, seed: int = 0, confidence: float = 0.95):
    """MeasureSettings from the flags 'measure' and 'optimize' share."""
    from tuner.bench.measure import MeasureSettings
    from tuner.units import parse_duration, parse_size

    return MeasureSettings(scenario=scenario, p99_bound_s=bound, window_s=parse_duration(window, "--window"),
                           seed=seed, hang_grace_s=parse_duration(hang_timeout, "--hang-timeout"),
                           confidence=confidence,
                           worker_memory_limit=parse_size(memory_limit, "--worker-memory-limit") if memory_limit else 0)


def _resolve_bound(p99: str | None) -> float | None:
    """The P99 bound to measure against (refused below what the harness can measure)."""
    from tuner.units import parse_bound

    return parse_bound(p99, "--p99") if p99 is not None else None


def _check_thread_counts(params: Params, topo: Topology) -> None:
    """ORT threads beyond every usable CPU of the machine cannot be what the user meant (and ORT
    refuses huge counts with a message about its config length)."""
    cpus = len(topo.usable_cpus)
    for flag, value in (("--intra-op", params.intra_op_threads), ("--inter-op", params.inter_op_threads)):
        if value > cpus:
            raise UsageError(f"{flag} {value} is more threads than the {cpus} usable CPU(s) of this machine; "
                             f"give 1..{cpus} (0 = ONNX Runtime's default)")


LockWaitOpt = Annotated[str, typer.Option("--lock-wait", help="How long to wait for another tuner measuring "
                                          "these CPUs before giving up.")]


def _lock_wait_s(lock_wait: str) -> float:
    from tuner.units import parse_duration

    return parse_duration(lock_wait, "--lock-wait") if lock_wait not in ("0", "0s") else 0.0


ModelOpt = Annotated[str, typer.Option("--model", help="An .onnx file, or onnx:NAME for a model the onnx "
                                       "package ships (onnx:squeezenet, onnx:resnet50, ...).")]
ShapeOpt = Annotated[list[str] | None, typer.Option("--shape", help="Fix a dynamic input: NAME=1x3x224x224 "
                                                    "(repeatable).")]
BatchOpt = Annotated[int | None, typer.Option("--batch", help="Value for a dynamic first (batch) dimension.")]
InputsOpt = Annotated[Path | None, typer.Option("--inputs", help="Real inputs: an .npz with one array per "
                                                "model input.")]
ScenarioOpt = Annotated[str, typer.Option("--scenario", help="server (open-loop Poisson, rate search) or "
                                          "offline (closed loop at saturation).")]
MlflowUriOpt = Annotated[str | None, typer.Option("--mlflow-uri", help="MLflow tracking URI (default: "
                                                 "sqlite mlflow.db beside the study's storage).")]
ExperimentOpt = Annotated[str, typer.Option("--mlflow-experiment", help="MLflow experiment name.")]
MemLimitOpt = Annotated[str | None, typer.Option("--worker-memory-limit", help="Address-space limit per worker "
                                                "(RLIMIT_AS), e.g. 4G; a worker over it fails its trial.")]
HangOpt = Annotated[str, typer.Option("--hang-timeout", help="A worker that has not finished this long after a "
                                      "window's end is hung: its trial fails.")]
ConfidenceOpt = Annotated[float, typer.Option("--confidence", help="Confidence of each window's P99 verdict "
                                              "(pass / fail / undecided), between 0.5 and 1.")]
WindowOpt = Annotated[str, typer.Option("--window", help="Minimum duration of a measurement window.")]


@app.command()
def measure(
    model: ModelOpt,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    cores_per_worker: Annotated[int, typer.Option(help="Physical cores per worker.")] = 1,
    smt: Annotated[str, typer.Option(help="on | off: use every SMT sibling of a core.")] = "off",
    intra_op: Annotated[int, typer.Option("--intra-op", help="ORT intra-op threads (0 = ORT default).")] = 1,
    inter_op: Annotated[int, typer.Option("--inter-op", help="ORT inter-op threads (parallel mode).")] = 1,
    execution_mode: Annotated[str, typer.Option(help="sequential | parallel")] = "sequential",
    numa_policy: Annotated[str, typer.Option(help="none | bind | interleave | preferred")] = "none",
    spinning: Annotated[str, typer.Option(help="on | off: ORT thread-pool spinning.")] = "on",
    io_cores: Annotated[int, typer.Option(help="Cores kept for the load generator.")] = 0,
    config: Annotated[Path | None, typer.Option("--config", help="Read the config from a best_config.json "
                                                "or YAML instead of the flags above.")] = None,
    scenario: ScenarioOpt = "server",
    p99: Annotated[str | None, typer.Option("--p99", help="P99 latency bound, e.g. 20ms, 0.02s, 20000us.")] = None,
    window: WindowOpt = "2s",
    worker_memory_limit: MemLimitOpt = None,
    hang_timeout: HangOpt = "30s",
    confidence: ConfidenceOpt = 0.95,
    shape: ShapeOpt = None,
    batch: BatchOpt = None,
    inputs: InputsOpt = None,
    lock_wait: LockWaitOpt = "1h",
    fsroot: FsRoot = None,
    topology_file: TopologyFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
) -> None:
    """Measure one config: start pinned workers, verify their placement, find the throughput at the bound."""
    from tuner.bench.measure import measure as run_measure
    from tuner.bench.model import inspect_model, parse_shapes
    from tuner.cli.render import result_table
    from tuner.deploy import config_params, load_config
    from tuner.search.locks import HostLock

    bound = _resolve_bound(p99)
    settings = _measure_settings(scenario, bound, window, worker_memory_limit, hang_timeout, confidence=confidence)
    lock_wait_s = _lock_wait_s(lock_wait)
    if config is not None:
        params = config_params(load_config(config), f"--config {config}")
    else:
        params = Params(workers=workers, cores_per_worker=cores_per_worker, smt=_on_off(smt, "--smt"),
                        intra_op_threads=intra_op, inter_op_threads=inter_op, execution_mode=execution_mode,
                        numa_policy=numa_policy, spinning=_on_off(spinning, "--spinning"), io_cores=io_cores)
    topo = get_topology(fsroot, topology_file)
    _check_thread_counts(params, topo)
    the_plan = plan(topo, params)
    info = inspect_model(model, parse_shapes(shape or []), batch, str(inputs) if inputs else None)
    err = Console(stderr=True)
    with HostLock(topo, wait_s=lock_wait_s, on_wait=_warn), err.status("starting workers") as status:
        result = run_measure(the_plan, info, settings, progress=lambda msg: status.update(msg))
    if as_json:
        import json

        sys.stdout.write(json.dumps(result.to_dict(), indent=1) + "\n")
    else:
        console.print(result_table(result))
    if not result.feasible:
        raise typer.Exit(3)


@app.command()
def optimize(
    model: Annotated[str | None, typer.Option("--model", help="An .onnx file, or onnx:NAME for a model the onnx "
                                              "package ships (onnx:squeezenet, onnx:resnet50, ...).")] = None,
    p99: Annotated[str | None, typer.Option("--p99", help="P99 latency bound, e.g. 20ms.")] = None,
    n_trials: Annotated[int | None, typer.Option("--n-trials", help="Configs to measure in all (baselines "
                                                 "included; planner-rejected and repeated configs are free); "
                                                 "a resumed study measures only the rest.")] = 20,
    timeout: Annotated[str | None, typer.Option("--timeout", help="Stop starting trials after this long, "
                                                "e.g. 10m.")] = None,
    space: Annotated[str, typer.Option("--space", help="default | latency | throughput | a YAML path.")] = "default",
    sampler: Annotated[str, typer.Option("--sampler", help="tpe | nsga2 | random | grid")] = "tpe",
    seed: Annotated[int | None, typer.Option("--seed", help="Sampler seed.")] = None,
    scenario: ScenarioOpt = "server",
    window: WindowOpt = "2s",
    storage: Annotated[str | None, typer.Option("--storage", help="Optuna RDB URL (default: sqlite file "
                                                "placetune.db in the working directory).")] = None,
    study_name: Annotated[str | None, typer.Option("--study-name", help="Default: from model, bound, "
                                                   "scenario.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Resume even if model/topology/bound differ.")] = False,
    revalidate: Annotated[int, typer.Option("--revalidate", help="Final race: the best K configs and "
                                         "every baseline re-measured in interleaved rounds.")] = 3,
    out: Annotated[Path, typer.Option("--out", help="Where to write the best config.")] = Path("best_config.json"),
    mlflow_uri: MlflowUriOpt = None,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Do not log to MLflow.")] = False,
    experiment: ExperimentOpt = "placetune",
    allow_heterogeneous: Annotated[bool, typer.Option("--allow-heterogeneous", help="Join a shared study from "
                                                      "a host whose topology differs; the fingerprint is recorded "
                                                      "per trial and the report groups by it.")] = False,
    heartbeat: Annotated[str, typer.Option("--heartbeat", help="Trial heartbeat interval; a trial whose tuner "
                                           "is silent for 3 intervals is failed and re-queued.")] = "10s",
    lock_wait: LockWaitOpt = "1h",
    worker_memory_limit: MemLimitOpt = None,
    hang_timeout: HangOpt = "30s",
    confidence: ConfidenceOpt = 0.95,
    shape: ShapeOpt = None,
    batch: BatchOpt = None,
    inputs: InputsOpt = None,
    fsroot: FsRoot = None,
    topology_file: TopologyFile = None,
    deployment: Annotated[Path | None, typer.Option("--deployment", help="Tune several models sharing this "
                                                    "server: a YAML file of {name, model, p99, share} entries "
                                                    "(instead of --model).")] = None,
) -> None:
    """Run (or resume) an Optuna study over placements; write the best feasible config.

    Exit codes: 0 found a feasible config, 1 runtime error, 2 usage error, 3 no config met the bound.
    """
    # ---- several models sharing the server (issue 16): tuner/cli/mix.py
    from tuner.cli import mix as mix_cli

    if mix_cli.check_model_or_deployment(model, deployment):
        code = mix_cli.optimize_deployment(
            deployment, console=console, warn=_warn, p99=p99, n_trials=n_trials, timeout=timeout, space=space,
            seed=seed, scenario=scenario, window=window, storage=storage, study_name=study_name,
            revalidate=revalidate, out=out, mlflow_uri=mlflow_uri, no_mlflow=no_mlflow, experiment=experiment,
            lock_wait_s=_lock_wait_s(lock_wait), topology=get_topology(fsroot, topology_file),
            settings=_measure_settings("server", None, window, worker_memory_limit, hang_timeout, seed or 0,
                                       confidence))
        if code:
            raise typer.Exit(code)
        return
    # ---- end of issue 16
    from tuner.app import optimize as optimize_view
    from tuner.bench.model import inspect_model, parse_shapes
    from tuner.outputs import check_writable
    from tuner.search.space import load_space
    from tuner.search.storage import storage_url as study_storage_url
    from tuner.search.study import SAMPLERS, StudyConfig, default_study_name
    from tuner.units import parse_duration

    if sampler not in SAMPLERS:
        raise UsageError(f"--sampler {sampler!r} is not one of {', '.join(SAMPLERS)}")
    if n_trials is not None and n_trials < 1:
        raise UsageError("--n-trials must be at least 1")
    timeout_s = parse_duration(timeout, "--timeout") if timeout is not None else None
    bound = _resolve_bound(p99)
    settings = _measure_settings(scenario, bound, window, worker_memory_limit, hang_timeout, seed or 0,
                                 confidence)
    lock_wait_s = _lock_wait_s(lock_wait)
    check_writable(out, "--out")
    topo = get_topology(fsroot, topology_file)
    resolved = load_space(space, topo)
    info = inspect_model(model, parse_shapes(shape or []), batch, str(inputs) if inputs else None)
    storage_url = study_storage_url(storage)
    name = study_name or default_study_name(info, bound * 1000 if bound else None, scenario)
    cfg = StudyConfig(model=info, topology=topo, space=resolved, settings=settings, storage=storage_url,
                      study_name=name, sampler=sampler, seed=seed, n_trials=n_trials, timeout_s=timeout_s,
                      force=force, lock_wait_s=lock_wait_s, allow_heterogeneous=allow_heterogeneous,
                      heartbeat_s=parse_duration(heartbeat, "--heartbeat"))
    tracker = None
    if not no_mlflow:
        from tuner.results.tracking import Tracker, default_uri

        uri = mlflow_uri or default_uri(storage_url)
        hint = f"placetune log --study {name} --storage {storage_url} --mlflow-uri {uri}"
        tracker = Tracker(uri, experiment, warn=_warn, retry_hint=hint)
    code = optimize_view.run(cfg, console, revalidate=revalidate, out=out, tracker=tracker)
    if code:
        raise typer.Exit(code)


StudyOpt = Annotated[str | None, typer.Option("--study", help="Study name (default: the only study in the "
                                              "storage).")]
StorageOpt = Annotated[str | None, typer.Option("--storage", help="Optuna RDB URL (default: sqlite file "
                                                "placetune.db in the working directory).")]


def _warn(message: str) -> None:
    Console(stderr=True).print(f"[yellow]placetune: warning:[/] {message}", highlight=False, soft_wrap=True)


@app.command()
def export(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    config: Annotated[Path | None, typer.Option("--config", help="Export this best_config.json instead of a "
                                                "study's best.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="json | yaml | numactl | env | systemd | docker | k8s")] = "json",
    p99: Annotated[str | None, typer.Option("--p99", help="Pick the best config for another P99 bound from "
                                            "every window the study measured (no re-run).")] = None,
    config_path: Annotated[str, typer.Option("--config-path", help="Where deployed workers will find the JSON "
                                             "config (PLACETUNE_CONFIG).")] = "best_config.json",
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file (default: stdout).")] = None,
) -> None:
    """Export a study's best config for deployment: JSON/YAML, a numactl launch script, an env file,
    systemd units, docker run lines, or a Kubernetes pod spec fragment."""
    from tuner.deploy import load_config
    from tuner.outputs import check_writable, write_atomic
    from tuner.results import export as exporter
    from tuner.results.trials import best_config_document, best_trial
    from tuner.search.storage import load_study
    from tuner.units import parse_duration

    if fmt not in exporter.FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(exporter.FORMATS)}")
    # ---- a deployment's best config (issue 16): one file per model, tuner/cli/mix.py
    from tuner.cli import mix as mix_cli

    if config is not None and mix_cli.is_deployment_file(config):
        return mix_cli.export_deployment(config, fmt, out, config_path if config_path != "best_config.json" else None)
    # ---- end of issue 16
    if out is not None:
        check_writable(out, "--out")
    if config is not None:
        if study is not None or p99 is not None:
            raise UsageError("--config exports a file as it is; it does not take --study or --p99")
        document = load_config(config)
    else:
        the_study = load_study(storage, study)
        if p99 is not None:
            from tuner.results.envelope import best_for_bound

            choice = best_for_bound(the_study, parse_duration(p99, "--p99") * 1000)
            trial = the_study.trials[choice.point.trial]
            document = best_config_document(the_study, trial)
            document.update(p99_bound_ms=choice.bound_ms, throughput=choice.point.throughput,
                            p50_ms=choice.point.p50_ms, p99_ms=choice.point.p99_ms,
                            selected_from="envelope", envelope_note=choice.note)
            if choice.note:
                _warn(choice.note)
        else:
            trial = best_trial(the_study)
            if trial is None:
                raise UsageError(f"study {the_study.study_name!r} has no feasible trial to export; relax --p99 "
                                 "and run 'placetune optimize', or export another bound with --p99")
            document = best_config_document(the_study, trial)
    text = exporter.render(document, fmt, config_path)
    if out is None:
        sys.stdout.write(text)
    else:
        write_atomic(out, text, mode=0o755 if fmt in ("numactl", "docker") else None)
        Console(stderr=True).print(f"{fmt} export of {document.get('label')} written to {out}", highlight=False)


@app.command()
def report(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report.")] = None,
) -> None:
    """A study's Pareto table, best vs baselines, parameter importances and plots.
    Exit code 3 when no trial met the bound."""
    from rich.table import Table

    from tuner.outputs import check_writable, write_atomic
    from tuner.results import report as reporting
    from tuner.search.storage import load_study

    if html_out is not None:
        check_writable(html_out, "--html")
    the_study = load_study(storage, study)
    frame = reporting.trials_frame(the_study)
    console.print(reporting.summary_text(the_study), highlight=False)
    table = Table(title="Pareto front (feasible trials: throughput vs P99)")
    for col in ("trial", "config", "throughput req/s", "P50 ms", "P99 ms", "baseline"):
        table.add_column(col)
    for _, row in frame[frame.pareto].sort_values("throughput", ascending=False).iterrows():
        table.add_row(str(row.trial), row.label, f"{row.throughput:.1f}", f"{row.p50_ms:.2f}", f"{row.p99_ms:.2f}",
                      row.baseline)
    console.print(table)
    groups = reporting.by_fingerprint(frame)
    if groups is not None:
        gtable = Table(title="by topology fingerprint (heterogeneous fleet: compare within a row only)")
        for col in groups.columns:
            gtable.add_column(col)
        for _, row in groups.iterrows():
            gtable.add_row(*(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row))
        console.print(gtable)
    imp = reporting.importances(the_study)
    if isinstance(imp, dict):
        itable = Table(title="parameter importances (throughput, optuna.importance)")
        itable.add_column("param")
        itable.add_column("importance")
        for k, v in imp.items():
            itable.add_row(k, f"{v:.3f}")
        console.print(itable)
    else:
        console.print(f"importances: {imp}", highlight=False)
    states = frame.state.value_counts().to_dict()
    console.print("trials: " + ", ".join(f"{n} {s.lower()}" for s, n in states.items()), highlight=False)
    if html_out is not None:
        write_atomic(html_out, reporting.html_report(the_study))
        console.print(f"HTML report written to {html_out}", highlight=False)
    if reporting.summary(the_study)["best"] is None:
        raise typer.Exit(3)


@app.command("log")
def log_command(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    mlflow_uri: MlflowUriOpt = None,
    experiment: ExperimentOpt = "placetune",
) -> None:
    """Log a study to MLflow from its Optuna storage (after an outage, or a --no-mlflow run).
    Idempotent: runs already there are not duplicated."""
    from tuner.results.tracking import Tracker, default_uri
    from tuner.search.storage import ensure_study_uuid, load_study, storage_url

    the_study = load_study(storage, study)
    ensure_study_uuid(the_study)
    uri = mlflow_uri or default_uri(storage_url(storage))
    tracker = Tracker(uri, experiment)
    added = tracker.sync(the_study)
    console.print(f"study {the_study.study_name}: {added} trial run(s) added to MLflow at {uri} "
                  f"(experiment {experiment}); {len(tracker._children)} in all", highlight=False)


fleet_app = typer.Typer(help="One study shared by many hosts (PostgreSQL storage).", no_args_is_help=True)
app.add_typer(fleet_app, name="fleet")


@fleet_app.command("status")
def fleet_status(
    study: StudyOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Hosts in a shared study: trials per host, running trials and their age, best so far."""
    import time as _time

    from rich.table import Table

    from tuner.results.trials import best_trial, measured_trials
    from tuner.search.storage import load_study

    the_study = load_study(storage, study)
    trials = the_study.get_trials(deepcopy=False)
    hosts: dict[str, dict] = {}
    for t in trials:
        host = t.user_attrs.get("host") or "(not started)"
        h = hosts.setdefault(host, {"hostname": t.user_attrs.get("hostname", ""), "fingerprint": set(),
                                    "COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0,
                                    "measured": 0, "last": None})
        h[t.state.name] = h.get(t.state.name, 0) + 1
        if t.user_attrs.get("topology_fingerprint"):
            h["fingerprint"].add(t.user_attrs["topology_fingerprint"])
        stamp = t.datetime_complete or t.datetime_start
        if stamp is not None and (h["last"] is None or stamp > h["last"]):
            h["last"] = stamp
    for t in measured_trials(the_study):
        hosts[t.user_attrs.get("host") or "(not started)"]["measured"] += 1
    table = Table(title=f"study {the_study.study_name}: {len(trials)} trials, "
                        f"{len(measured_trials(the_study))} configs measured")
    for col in ("host (name:cpuset)", "fingerprint", "measured", "complete", "pruned", "failed", "running",
                "last activity"):
        table.add_column(col)
    now = _time.time()
    for host, h in sorted(hosts.items()):
        last = f"{now - h['last'].timestamp():.0f}s ago" if h["last"] else "-"
        table.add_row(host, ",".join(sorted(h["fingerprint"])) or "-", str(h["measured"]), str(h["COMPLETE"]),
                      str(h["PRUNED"]), str(h["FAIL"]), str(h["RUNNING"]), last)
    console.print(table)
    running = [t for t in trials if t.state.name == "RUNNING"]
    if running:
        rt = Table(title="running trials")
        for col in ("trial", "config", "host", "age", "last heartbeat"):
            rt.add_column(col)
        for t in running:
            heartbeat = _heartbeat_age(the_study, t)
            rt.add_row(str(t.number), t.user_attrs.get("label", "-"), t.user_attrs.get("hostname", "-"),
                       f"{now - t.datetime_start.timestamp():.0f}s" if t.datetime_start else "-", heartbeat)
        console.print(rt)
    waiting = sum(1 for t in trials if t.state.name == "WAITING")
    if waiting:
        console.print(f"{waiting} trial(s) queued (baselines or re-queued after a host died)", highlight=False)
    best = best_trial(the_study)
    if best is not None:
        r = best.user_attrs["result"]
        console.print(f"best so far: {best.user_attrs.get('label')} (trial {best.number}, "
                      f"{best.user_attrs.get('hostname', '?')}) {r['throughput']:.1f} req/s, P99 {r['p99_ms']:.2f} ms",
                      highlight=False)
    else:
        console.print("best so far: none feasible yet", highlight=False)


def _heartbeat_age(study, trial) -> str:
    """How long ago the trial's tuner last sent a heartbeat (Optuna's trial_heartbeats table)."""
    try:
        import sqlalchemy
        from optuna.storages._rdb import models

        storage = getattr(study._storage, "_backend", study._storage)
        with storage.scoped_session() as session:
            beat = session.query(models.TrialHeartbeatModel).filter_by(trial_id=trial._trial_id).one_or_none()
            if beat is None:
                return "-"
            now = session.execute(sqlalchemy.select(sqlalchemy.func.current_timestamp())).scalar()
            if isinstance(now, str):
                import datetime

                now = datetime.datetime.fromisoformat(now)
            return f"{(now - beat.heartbeat).total_seconds():.0f}s ago"
    except Exception as exc:  # an Optuna internals change must not break the status view
        return f"? ({type(exc).__name__})"


def _on_off(value: str, flag: str) -> bool:
    if value not in ("on", "off"):
        raise UsageError(f"{flag} takes on or off, got {value!r}")
    return value == "on"


def _interrupted() -> None:
    import signal

    term = _state.get("signal") == signal.SIGTERM
    how = "terminated (SIGTERM)" if term else "interrupted"
    Console(stderr=True).print(f"placetune: {how}; every worker was stopped; the trial in progress was "
                               "abandoned (an optimize study resumes when you re-run the same command)")
    sys.exit(143 if term else 130)


def _parse_errors() -> tuple[type[BaseException], ...]:
    """The exceptions click (and typer >= 0.29, which vendors click) raise for bad command lines."""
    import click

    return (click.exceptions.ClickException, getattr(typer, "TyperException", click.exceptions.ClickException))


def _exits() -> tuple[type[BaseException], ...]:
    import click

    return (click.exceptions.Exit, typer.Exit)


def _aborts() -> tuple[type[BaseException], ...]:
    import click

    return (KeyboardInterrupt, click.exceptions.Abort, typer.Abort)


def main() -> None:
    """Console-script entry point with the one-line error policy: bad command lines exit 2 with
    click's usage message (no arguments at all: the help, exit 2), a PlacetuneError is one line."""
    import signal

    def _terminate(signum, frame):
        _state["signal"] = signum
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C (and our SIGTERM) into exit code 130
            _interrupted()
        if isinstance(code, int) and code:
            sys.exit(code)
    except PlacetuneError as exc:
        if _state["debug"]:
            raise
        Console(stderr=True).print(f"[red]placetune: error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except _aborts():
        _interrupted()
    except _exits() as exc:
        sys.exit(exc.exit_code)
    except _parse_errors() as exc:  # click's usage errors: its usual message, its exit code (2)
        if hasattr(exc, "show"):
            exc.show()
        else:
            print(f"Error: {exc.format_message()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:  # the unexpected
        if _state["debug"]:
            raise
        if type(exc).__module__.startswith("sqlalchemy"):
            text = str(exc).splitlines()[0][:300]
            hint = ("another process holds the SQLite file locked; retry when it is done, or use a server "
                    "database (--storage postgresql://...)") if "locked" in text else "check --storage"
            Console(stderr=True).print(f"[red]placetune: error:[/] storage: {text}: {hint}", highlight=False,
                                       soft_wrap=True)
            sys.exit(1)
        Console(stderr=True).print(
            f"[red]placetune: internal error:[/] {type(exc).__name__}: {exc} (rerun with --debug "
            "for the traceback)", highlight=False, soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
