"""What the commands share: the console, warnings, the options several commands take, and turning
those options into library values (a topology, measurement settings, durations)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tuner.errors import UsageError
from tuner.machine.sysfs import read_topology
from tuner.machine.topology import Topology, load_topology_file

WIDE_COLUMNS = 1000  # not a terminal (a log, a pipe): never cut a line (a config's label) at 80 columns


def make_console(**kwargs) -> Console:
    """A rich Console for stdout: the terminal's width on a TTY, wide (no truncation) otherwise,
    unless COLUMNS says how wide."""
    console = Console(**kwargs)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=WIDE_COLUMNS, **kwargs)
    return console


console = make_console()


def warn(message: str) -> None:
    """One warning line on stderr."""
    Console(stderr=True).print(f"[yellow]placetune: warning:[/] {message}", highlight=False, soft_wrap=True)


FsRoot = Annotated[
    Path | None,
    typer.Option("--fsroot", help="Read the topology below this root (a machine dump) instead of /."),
]
TopologyFile = Annotated[
    Path | None,
    typer.Option("--topology", help="Use a topology saved with 'placetune topology --json'."),
]
LockWaitOpt = Annotated[str, typer.Option("--lock-wait", help="How long to wait for another tuner measuring "
                                          "these CPUs before giving up.")]
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
EstimatorOpt = Annotated[str, typer.Option("--estimator", help="replay (default): the windows' figure replaced by a "
                                           "replay of the service times the workers served on calm CPUs, "
                                           "through the harness's queue, where there are enough "
                                           "(docs/measurement.md) | estimate: the highest rate at the bound "
                                           "fitted to the windows' over-bound shares, with its bracket | bound: "
                                           "the highest rate proven to pass (bisection on verdicts, the rule "
                                           "before 2026-12-05).")]
StudyOpt = Annotated[str | None, typer.Option("--study", help="Study name (default: the only study in the "
                                              "storage).")]
StorageOpt = Annotated[str | None, typer.Option("--storage", help="Optuna RDB URL (default: sqlite file "
                                                "placetune.db in the working directory).")]


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


def measure_settings(scenario: str, bound: float | None, window: str, memory_limit: str | None,
                     hang_timeout: str, seed: int = 0, confidence: float = 0.95, estimator: str = "estimate"):
    """MeasureSettings from the flags 'measure' and 'optimize' share."""
    from tuner.bench.measure import MeasureSettings
    from tuner.units import parse_duration, parse_size

    if estimator not in ("estimate", "replay", "bound"):
        raise UsageError(f"--estimator {estimator!r} is not one of estimate, replay, bound")
    replay = estimator == "replay"  # an estimate whose figure comes from the replay (tuner.bench.replay)
    return MeasureSettings(scenario=scenario, p99_bound_s=bound, window_s=parse_duration(window, "--window"),
                           seed=seed, hang_grace_s=parse_duration(hang_timeout, "--hang-timeout"),
                           confidence=confidence, estimator="estimate" if replay else estimator, replay=replay,
                           worker_memory_limit=parse_size(memory_limit, "--worker-memory-limit") if memory_limit else 0)


def resolve_bound(p99: str | None) -> float | None:
    """The P99 bound to measure against (refused below what the harness can measure)."""
    from tuner.units import parse_bound

    return parse_bound(p99, "--p99") if p99 is not None else None


def lock_wait_s(lock_wait: str) -> float:
    """--lock-wait in seconds (0 or 0s: do not wait)."""
    from tuner.units import parse_duration

    return parse_duration(lock_wait, "--lock-wait") if lock_wait not in ("0", "0s") else 0.0
