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

from tuner.errors import PlacetuneError, UsageError
from tuner.placement import Params, plan
from tuner.render import plan_table, topology_tree
from tuner.topology import Topology, load_topology_file, read_topology

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find the best placement of ONNX Runtime inference workers on this CPU server, by measurement.",
    pretty_exceptions_enable=False,
)
console = Console()
_state = {"debug": False}

FsRoot = Annotated[
    Path | None,
    typer.Option("--fsroot", help="Read the topology below this root (a machine dump) instead of /."),
]
TopologyFile = Annotated[
    Path | None,
    typer.Option("--topology", help="Use a topology saved with 'placetune topology --json'."),
]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
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


def _resolve_bound(p99: str | None) -> float | None:
    from tuner.measure import parse_duration

    return parse_duration(p99, "--p99") if p99 is not None else None


ModelOpt = Annotated[str, typer.Option("--model", help="An .onnx file, or onnx:NAME for a model the onnx "
                                       "package ships (onnx:squeezenet, onnx:resnet50, ...).")]
ShapeOpt = Annotated[list[str] | None, typer.Option("--shape", help="Fix a dynamic input: NAME=1x3x224x224 "
                                                    "(repeatable).")]
BatchOpt = Annotated[int | None, typer.Option("--batch", help="Value for a dynamic first (batch) dimension.")]
InputsOpt = Annotated[Path | None, typer.Option("--inputs", help="Real inputs: an .npz with one array per "
                                                "model input.")]
ScenarioOpt = Annotated[str, typer.Option("--scenario", help="server (open-loop Poisson, rate search) or "
                                          "offline (closed loop at saturation).")]
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
    shape: ShapeOpt = None,
    batch: BatchOpt = None,
    inputs: InputsOpt = None,
    fsroot: FsRoot = None,
    topology_file: TopologyFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
) -> None:
    """Measure one config: start pinned workers, verify their placement, find the throughput at the bound."""
    from tuner.measure import MeasureSettings, params_from_config_file, parse_duration
    from tuner.measure import measure as run_measure
    from tuner.model import inspect_model, parse_shapes
    from tuner.render import result_table

    bound = _resolve_bound(p99)
    settings = MeasureSettings(scenario=scenario, p99_bound_s=bound, window_s=parse_duration(window, "--window"))
    if config is not None:
        params = params_from_config_file(str(config))
    else:
        params = Params(workers=workers, cores_per_worker=cores_per_worker, smt=_on_off(smt, "--smt"),
                        intra_op_threads=intra_op, inter_op_threads=inter_op, execution_mode=execution_mode,
                        numa_policy=numa_policy, spinning=_on_off(spinning, "--spinning"), io_cores=io_cores)
    topo = get_topology(fsroot, topology_file)
    the_plan = plan(topo, params)
    info = inspect_model(model, parse_shapes(shape or []), batch, str(inputs) if inputs else None)
    err = Console(stderr=True)
    with err.status("starting workers") as status:
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
    model: ModelOpt,
    p99: Annotated[str | None, typer.Option("--p99", help="P99 latency bound, e.g. 20ms.")] = None,
    n_trials: Annotated[int | None, typer.Option("--n-trials", help="Total trials in the study (baselines "
                                                 "included); a resumed study runs only the rest.")] = 20,
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
    revalidate: Annotated[int, typer.Option("--revalidate", help="Re-measure the best K configs at the end.")] = 3,
    out: Annotated[Path, typer.Option("--out", help="Where to write the best config.")] = Path("best_config.json"),
    shape: ShapeOpt = None,
    batch: BatchOpt = None,
    inputs: InputsOpt = None,
    fsroot: FsRoot = None,
    topology_file: TopologyFile = None,
) -> None:
    """Run (or resume) an Optuna study over placements; write the best feasible config.

    Exit codes: 0 found a feasible config, 1 runtime error, 2 usage error, 3 no config met the bound.
    """
    from tuner import optimize_view
    from tuner.measure import MeasureSettings, parse_duration
    from tuner.model import inspect_model, parse_shapes
    from tuner.space import load_space
    from tuner.study import SAMPLERS, StudyConfig, default_study_name

    if sampler not in SAMPLERS:
        raise UsageError(f"--sampler {sampler!r} is not one of {', '.join(SAMPLERS)}")
    if n_trials is not None and n_trials < 1:
        raise UsageError("--n-trials must be at least 1")
    timeout_s = parse_duration(timeout, "--timeout") if timeout is not None else None
    bound = _resolve_bound(p99)
    settings = MeasureSettings(scenario=scenario, p99_bound_s=bound, window_s=parse_duration(window, "--window"),
                               seed=seed or 0)
    topo = get_topology(fsroot, topology_file)
    resolved = load_space(space, topo)
    info = inspect_model(model, parse_shapes(shape or []), batch, str(inputs) if inputs else None)
    storage_url = storage or f"sqlite:///{Path('placetune.db').resolve()}"
    name = study_name or default_study_name(info, bound * 1000 if bound else None, scenario)
    cfg = StudyConfig(model=info, topology=topo, space=resolved, settings=settings, storage=storage_url,
                      study_name=name, sampler=sampler, seed=seed, n_trials=n_trials, timeout_s=timeout_s,
                      force=force)
    code = optimize_view.run(cfg, console, revalidate=revalidate, out=out)
    if code:
        raise typer.Exit(code)


def _on_off(value: str, flag: str) -> bool:
    if value not in ("on", "off"):
        raise UsageError(f"{flag} takes on or off, got {value!r}")
    return value == "on"


def main() -> None:
    """Console-script entry point with the one-line error policy."""
    import click

    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except PlacetuneError as exc:
        if _state["debug"]:
            raise
        Console(stderr=True).print(f"[red]placetune: error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        Console(stderr=True).print("placetune: interrupted; every worker was stopped "
                                   "(an optimize study resumes when you re-run the same command)")
        sys.exit(130)
    except Exception as exc:  # click usage errors and the unexpected
        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if _state["debug"]:
            raise
        Console(stderr=True).print(
            f"[red]placetune: internal error:[/] {type(exc).__name__}: {exc} (rerun with --debug "
            "for the traceback)", highlight=False, soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
