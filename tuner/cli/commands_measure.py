"""The machine commands: ``topology``, ``plan`` (nothing runs) and ``measure`` (one config)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tuner.cli.common import (
    BatchOpt,
    ConfidenceOpt,
    EstimatorOpt,
    FsRoot,
    HangOpt,
    InputsOpt,
    LockWaitOpt,
    MemLimitOpt,
    ModelOpt,
    ScenarioOpt,
    ShapeOpt,
    TopologyFile,
    WindowOpt,
    console,
    get_topology,
    lock_wait_s,
    measure_settings,
    resolve_bound,
    warn,
)
from tuner.cli.render import plan_table, topology_tree
from tuner.errors import UsageError
from tuner.machine.placement import Params, plan
from tuner.machine.topology import Topology
from tuner.units import parse_duration


def topology(
    fsroot: FsRoot = None,
    topology_file: TopologyFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show the CPU/NUMA topology: packages, NUMA nodes, L3 groups, cores, PUs, usable or not.

    Example: $ placetune topology --json
    """
    topo = get_topology(fsroot, topology_file)
    if as_json:
        sys.stdout.write(topo.to_json() + "\n")
        return
    console.print(topology_tree(topo))


def plan_command(
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    cores_per_worker: Annotated[int, typer.Option(help="Physical cores per worker.")] = 1,
    smt: Annotated[str, typer.Option(help="on | off: use every SMT sibling of a core (as in measure).")] = "off",
    numa_policy: Annotated[str, typer.Option(help="none | bind | interleave | preferred")] = "none",
    io_cores: Annotated[int, typer.Option(help="Cores kept for the load generator.")] = 0,
    fsroot: FsRoot = None,
    topology_file: TopologyFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show the placement a config gets on a topology, without running anything.

    Example: $ placetune plan --workers 2 --cores-per-worker 1 --numa-policy bind

    Example: $ placetune plan --workers 4 --cores-per-worker 2 --smt on --json
    """
    topo = get_topology(fsroot, topology_file)
    params = Params(workers=workers, cores_per_worker=cores_per_worker, smt=_on_off(smt, "--smt"),
                    numa_policy=numa_policy, io_cores=io_cores)
    result = plan(topo, params)
    if as_json:
        sys.stdout.write(result.to_json() + "\n")
        return
    console.print(plan_table(result))


def measure(  # over 60 lines: typer reads its 26 options from the signature
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
    max_batch: Annotated[int, typer.Option(help="Arrived requests a worker runs in one session.run "
                                           "(1 = no batching; a model fixed at batch 1 is made dynamic, "
                                           "or refused).")] = 1,
    batch_timeout: Annotated[float, typer.Option("--batch-timeout", help="Milliseconds a batch holding fewer "
                                                 "than --max-batch requests waits for more (needs "
                                                 "--max-batch > 1).")] = 0.0,
    config: Annotated[Path | None, typer.Option("--config", help="Read the config from a best_config.json "
                                                "or YAML instead of the flags above.")] = None,
    scenario: ScenarioOpt = "server",
    p99: Annotated[str | None, typer.Option("--p99", help="P99 latency bound, e.g. 20ms, 0.02s, 20000us.")] = None,
    window: WindowOpt = "2s",
    worker_memory_limit: MemLimitOpt = None,
    hang_timeout: HangOpt = "30s",
    confidence: ConfidenceOpt = 0.95,
    estimator: EstimatorOpt = "replay",
    sample: Annotated[str | None, typer.Option("--sample", help="Closed loop, at least, that the replay's "
                                               "figure rests on, e.g. 60s (default: as much as 1,500 calm "
                                               "service times need, about 10 s). A cloud VM's CPU speed steps "
                                               "for seconds: a longer sample covers more of them "
                                               "(docs/measurement.md).")] = None,
    shape: ShapeOpt = None,
    batch: BatchOpt = None,
    inputs: InputsOpt = None,
    lock_wait: LockWaitOpt = "1h",
    fsroot: FsRoot = None,
    topology_file: TopologyFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
) -> None:
    """Measure one config: start pinned workers, verify their placement, find the throughput at the bound.

    Exit codes: 0 measured, 1 runtime error, 2 usage error, 3 measured but the bound was not met.

    Example: $ placetune measure --model onnx:squeezenet --p99 100ms --workers 1 --cores-per-worker 1

    Example: $ placetune measure --model onnx:squeezenet --p99 100ms --config best_config.json
    """
    from tuner.bench.batchable import with_batching
    from tuner.bench.measure import measure as run_measure
    from tuner.bench.model import inspect_model, parse_shapes
    from tuner.cli.render import result_table
    from tuner.deploy import config_params, load_config
    from tuner.search.locks import HostLock

    settings = measure_settings(scenario, resolve_bound(p99), window, worker_memory_limit, hang_timeout,
                                confidence=confidence, estimator=estimator)
    if sample is not None:
        settings = replace(settings, min_sample_s=parse_duration(sample, "--sample"))
    wait_s = lock_wait_s(lock_wait)
    if config is not None:
        params = config_params(load_config(config), f"--config {config}")
    else:
        params = Params(workers=workers, cores_per_worker=cores_per_worker, smt=_on_off(smt, "--smt"),
                        intra_op_threads=intra_op, inter_op_threads=inter_op, execution_mode=execution_mode,
                        numa_policy=numa_policy, spinning=_on_off(spinning, "--spinning"), io_cores=io_cores,
                        max_batch=max_batch, batch_timeout_ms=batch_timeout)
    topo = get_topology(fsroot, topology_file)
    _check_thread_counts(params, topo)
    the_plan = plan(topo, params)
    info = inspect_model(model, parse_shapes(shape or []), batch, str(inputs) if inputs else None)
    info = with_batching(info, params.max_batch)  # a model fixed at batch 1 that cannot batch: one line, exit 2
    err = Console(stderr=True)
    with HostLock(topo, wait_s=wait_s, on_wait=warn), err.status("starting workers") as status:
        result = run_measure(the_plan, info, settings, progress=lambda msg: status.update(msg))
    if as_json:
        import json

        sys.stdout.write(json.dumps(result.to_dict(), indent=1) + "\n")
    else:
        console.print(result_table(result))
    if not result.feasible:
        raise typer.Exit(3)


def _check_thread_counts(params: Params, topo: Topology) -> None:
    """ORT threads beyond every usable CPU of the machine cannot be what the user meant (and ORT
    refuses huge counts with a message about its config length)."""
    cpus = len(topo.usable_cpus)
    for flag, value in (("--intra-op", params.intra_op_threads), ("--inter-op", params.inter_op_threads)):
        if value > cpus:
            raise UsageError(f"{flag} {value} is more threads than the {cpus} usable CPU(s) of this machine; "
                             f"give 1..{cpus} (0 = ONNX Runtime's default)")


def _on_off(value: str, flag: str) -> bool:
    if value not in ("on", "off"):
        raise UsageError(f"{flag} takes on or off, got {value!r}")
    return value == "on"
