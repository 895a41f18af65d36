"""The study commands: ``optimize`` (run one), ``export``, ``report`` and ``log`` (read one)."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tuner.cli.common import (
    BatchOpt,
    ConfidenceOpt,
    EstimatorOpt,
    ExperimentOpt,
    FsRoot,
    HangOpt,
    InputsOpt,
    LockWaitOpt,
    MemLimitOpt,
    MlflowUriOpt,
    ScenarioOpt,
    ShapeOpt,
    StorageOpt,
    StudyOpt,
    TopologyFile,
    WindowOpt,
    console,
    get_topology,
    lock_wait_s,
    measure_settings,
    resolve_bound,
    warn,
)
from tuner.errors import UsageError
from tuner.units import format_rate


def optimize(  # over 60 lines: typer reads its 31 options from the signature; the body is short
    model: Annotated[str | None, typer.Option("--model", help="An .onnx file, or onnx:NAME for a model the onnx "
                                              "package ships (onnx:squeezenet, onnx:resnet50, ...).")] = None,
    p99: Annotated[str | None, typer.Option("--p99", help="P99 latency bound, e.g. 20ms.")] = None,
    n_trials: Annotated[int | None, typer.Option("--n-trials", help="Configs to measure in all (baselines "
                                                 "included; planner-rejected and repeated configs are free); "
                                                 "a resumed study measures only the rest.")] = 20,
    timeout: Annotated[str | None, typer.Option("--timeout", help="Stop starting trials after this long, "
                                                "e.g. 10m.")] = None,
    space: Annotated[str, typer.Option("--space", help="default | placement (no batching) | latency | throughput "
                                                       "| a YAML path.")] = "default",
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
    race_timeout: Annotated[str | None, typer.Option("--race-timeout", help="A limit on the final race, e.g. 2m: no "
                                                     "measurement starts that would end after it (the first round "
                                                     "always runs; when 3 rounds of every entrant do not fit, only "
                                                     "the best searched config, the best baseline and what else "
                                                     "fits go on after it; default: 3 to 4 rounds, until the "
                                                     "ratio is settled).")] = None,
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
    estimator: EstimatorOpt = "replay",
    shape: ShapeOpt = None,
    batch: BatchOpt = None,
    inputs: InputsOpt = None,
    fsroot: FsRoot = None,
    topology_file: TopologyFile = None,
    no_screening: Annotated[bool, typer.Option("--no-screening", help="Measure every config in full: no short "
                                               "screening measurements, even when the space is far larger than "
                                               "--n-trials (a resumed study may switch it; configs it screened "
                                               "before stay screened).")] = False,
    deployment: Annotated[Path | None, typer.Option("--deployment", help="Tune several models sharing this "
                                                    "server: a YAML file of {name, model, p99, share} entries "
                                                    "(instead of --model).")] = None,
) -> None:
    """Run (or resume) an Optuna study over placements; write the best feasible config.

    Exit codes: 0 found a feasible config, 1 runtime error, 2 usage error, 3 no config met the bound
    (with --deployment: no config served a load factor within every model's bound).

    Example: $ placetune optimize --model onnx:squeezenet --p99 100ms --n-trials 8 --window 1s --race-timeout 2m

    Example: $ placetune optimize --deployment mix.yaml --n-trials 8 --out best_deployment.json
    """
    from tuner.app.optimize import run_optimize
    from tuner.cli import mix as mix_cli
    from tuner.cli.optimize_view import OptimizeView

    if mix_cli.check_model_or_deployment(model, deployment):  # what is tuned: its inputs differ, the service not
        mix_cli.refuse_single_model_options({
            "--sampler": sampler != "tpe", "--shape": bool(shape), "--batch": batch is not None,
            "--inputs": inputs is not None, "--force": force, "--allow-heterogeneous": allow_heterogeneous,
            "--heartbeat": heartbeat != "10s", "--no-screening": no_screening})
        view = mix_cli.DeploymentView(console, warn)
        request = mix_cli.deployment_request(
            deployment, say=view.say, p99=p99, n_trials=n_trials, timeout=timeout, space=space, seed=seed,
            scenario=scenario, window=window, storage=storage, study_name=study_name, revalidate=revalidate,
            race_timeout=race_timeout, out=out, mlflow_uri=mlflow_uri, no_mlflow=no_mlflow, experiment=experiment,
            lock_wait_s=lock_wait_s(lock_wait), topology=get_topology(fsroot, topology_file),
            settings=measure_settings("server", None, window, worker_memory_limit, hang_timeout, seed or 0,
                                      confidence))
    else:
        wanted = inspect.signature(_model_request).parameters  # its options, by name
        request = _model_request(**{k: v for k, v in locals().items() if k in wanted})
        view = OptimizeView(console)
    with view:
        outcome = run_optimize(request, view)
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)
    view.done(outcome, out)


def _model_request(*, model, p99, n_trials, timeout, space, sampler, seed, scenario, window, storage, study_name,
                   force, revalidate, race_timeout, out, mlflow_uri, no_mlflow, experiment, allow_heterogeneous,
                   heartbeat, lock_wait, worker_memory_limit, hang_timeout, confidence, estimator, shape, batch,
                   inputs, fsroot, topology_file, no_screening):
    """The optimize request of one model, once its options are checked and the model is read."""
    from tuner.app.optimize import OptimizeRequest, TrackingRequest
    from tuner.bench.model import inspect_model, parse_shapes
    from tuner.outputs import check_writable
    from tuner.search.batching import fit_to_model
    from tuner.search.space import load_space
    from tuner.search.storage import storage_url as study_storage_url
    from tuner.search.study import SAMPLERS, StudyConfig, default_study_name
    from tuner.units import parse_duration

    if sampler not in SAMPLERS:
        raise UsageError(f"--sampler {sampler!r} is not one of {', '.join(SAMPLERS)}")
    if n_trials is not None and n_trials < 1:
        raise UsageError("--n-trials must be at least 1")
    timeout_s = parse_duration(timeout, "--timeout") if timeout is not None else None
    race_time_limit_s = parse_duration(race_timeout, "--race-timeout") if race_timeout is not None else None
    bound = resolve_bound(p99)
    settings = measure_settings(scenario, bound, window, worker_memory_limit, hang_timeout, seed or 0, confidence,
                                estimator)
    wait_s = lock_wait_s(lock_wait)
    check_writable(out, "--out")
    topo = get_topology(fsroot, topology_file)
    resolved = load_space(space, topo)
    info = inspect_model(model, parse_shapes(shape or []), batch, str(inputs) if inputs else None)
    resolved, info = fit_to_model(resolved, info)
    for note in resolved.notes:
        warn(note)
    cfg = StudyConfig(model=info, topology=topo, space=resolved, settings=settings, storage=study_storage_url(storage),
                      study_name=study_name or default_study_name(info, bound * 1000 if bound else None, scenario),
                      sampler=sampler, seed=seed, n_trials=n_trials, timeout_s=timeout_s, force=force,
                      lock_wait_s=wait_s, allow_heterogeneous=allow_heterogeneous,
                      heartbeat_s=parse_duration(heartbeat, "--heartbeat"), screening=not no_screening)
    tracking = None if no_mlflow else TrackingRequest(mlflow_uri, experiment)
    return OptimizeRequest(cfg, out, race_k=revalidate, tracking=tracking, race_time_limit_s=race_time_limit_s)


def export(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    config: Annotated[Path | None, typer.Option("--config", help="Export this best_config.json instead of a "
                                                "study's best.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="json | yaml | numactl | env | systemd | docker | k8s | "
                                     "triton (docs/export.md)")] = "json",
    p99: Annotated[str | None, typer.Option("--p99", help="Pick the best config for another P99 bound from "
                                            "every window the study measured (no re-run).")] = None,
    config_path: Annotated[str, typer.Option("--config-path", help="Where deployed workers will find the JSON "
                                             "config (PLACETUNE_CONFIG).")] = "best_config.json",
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file (default: stdout); a deployment: "
                                                "this folder, one file per model.")] = None,
) -> None:
    """Export a study's best config for deployment: JSON/YAML, numactl, env, systemd, docker, k8s or triton.

    A numactl launch script, an env file, systemd units, docker run lines, a Kubernetes pod spec
    fragment (with the kubelet settings it needs), or a Triton config.pbtxt for the onnxruntime
    backend (with the tritonserver --host-policy flags in its opening comment). A deployment study
    (optimize --deployment) or file is exported as one file per model into the folder --out names,
    from the config its final race recommends. Each format: docs/export.md.

    Example: $ placetune export --format numactl --out launch.sh

    Example: $ placetune export --format triton --out config.pbtxt

    Example: $ placetune export --study mix --format systemd --out deploy/
    """
    from tuner.app.kinds import kind_of, kind_of_file
    from tuner.outputs import check_writable
    from tuner.results import export as exporter
    from tuner.search.storage import load_study

    if fmt not in exporter.FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(exporter.FORMATS)}")
    if config is not None:
        if study is not None or p99 is not None:
            raise UsageError("--config exports a file as it is; it does not take --study or --p99")
        kind = kind_of_file(config)
        document = kind.load(config)
        source = str(config)
    else:
        if out is not None:  # before the study is read: a file, or a folder for a deployment's files
            check_writable(out, "--out", folder_ok=True)
        the_study = load_study(storage, study)
        kind = kind_of(the_study)
        document = kind.document(the_study, p99)
        source = f"study {the_study.study_name!r}"
    models = kind.model_documents(document)  # several models: one file each, into the folder --out
    if models is not None:
        from tuner.cli import mix as mix_cli

        config_dir = config_path if config_path != "best_config.json" else None
        return mix_cli.export_deployment(models, source, fmt, out, config_dir)
    _write_export(document, fmt, out, config_path)


def _write_export(document: dict, fmt: str, out: Path | None, config_path: str) -> None:
    """Write one model's config document's export (to ``out`` or stdout)."""
    from tuner.outputs import check_writable, write_atomic
    from tuner.results import export as exporter

    if document.get("envelope_note"):
        warn(document["envelope_note"])
    if out is not None:
        check_writable(out, "--out")
    text = exporter.render(document, fmt, config_path)
    if out is None:
        sys.stdout.write(text)
    else:
        write_atomic(out, text, mode=0o755 if exporter.format_of(fmt).executable else None)
        Console(stderr=True).print(f"{fmt} export of {document.get('label')} written to {out}", highlight=False)


def report(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report.")] = None,
) -> None:
    """A study's Pareto table, best vs baselines, parameter importances and plots.

    A deployment study: its Pareto view (load factor vs P99 headroom), the recommended config per
    model, the load factor with its interval, and the final race. Exit code 3 when no trial met the
    bound.

    Example: $ placetune report --html report.html
    """
    from tuner.app.kinds import kind_of
    from tuner.cli.mix_results import report as report_deployment
    from tuner.outputs import check_writable
    from tuner.search.storage import load_study

    if html_out is not None:
        check_writable(html_out, "--html")
    the_study = load_study(storage, study)
    views = {"model": _report_model, "deployment": report_deployment}  # one report view per kind of study
    code = views[kind_of(the_study).name](the_study, html_out)
    if code:
        raise typer.Exit(code)


def _report_model(the_study, html_out: Path | None) -> int:
    """Print a single-model study's report (and write its HTML page); the exit code (3: nothing feasible)."""
    from tuner.cli import render_study
    from tuner.outputs import write_atomic
    from tuner.results import report as reporting

    frame = reporting.trials_frame(the_study)
    console.print(reporting.summary_text(the_study), highlight=False)
    front = frame[frame.pareto].sort_values("throughput", ascending=False)
    console.print(render_study.pareto_table(
        (row.trial, row.label, format_rate(row.throughput, tuple(row.throughput_ci), row.estimator), row.p50_ms,
         row.p99_ms, row.baseline) for _, row in front.iterrows()))
    groups = reporting.by_fingerprint(frame)
    if groups is not None:
        console.print(render_study.fingerprint_table(groups))
    imp = reporting.importances(the_study)
    if isinstance(imp, dict):
        console.print(render_study.importances_table(imp))
    else:
        console.print(f"importances: {imp}", highlight=False)
    states = frame.state.value_counts().to_dict()
    console.print("trials: " + ", ".join(f"{n} {s.lower()}" for s, n in states.items()), highlight=False)
    if html_out is not None:
        write_atomic(html_out, reporting.html_report(the_study))
        console.print(f"HTML report written to {html_out}", highlight=False)
    return 3 if reporting.summary(the_study)["best"] is None else 0


def log_command(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    mlflow_uri: MlflowUriOpt = None,
    experiment: ExperimentOpt = "placetune",
) -> None:
    """Log a study to MLflow from its Optuna storage (after an outage, or a --no-mlflow run).

    Idempotent: runs already there are not duplicated. A deployment study too.

    Example: $ placetune log --mlflow-uri sqlite:///mlflow.db
    """
    from tuner.app.kinds import kind_of
    from tuner.results.tracking import default_uri
    from tuner.search.storage import load_study, storage_url

    the_study = load_study(storage, study)
    uri = mlflow_uri or default_uri(storage_url(storage))
    kind = kind_of(the_study)
    added, total = kind.sync(the_study, uri, experiment)
    console.print(f"{kind.noun} {the_study.study_name}: {added} trial run(s) added to MLflow at {uri} "
                  f"(experiment {experiment}); {total} in all", highlight=False)
