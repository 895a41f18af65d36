"""What the command line needs of a deployment (several models sharing one server, tuner.mix): its
optimize request (``deployment_request``: the optimize service is tuner.app.optimize's, as for one
model) and what is shown while it runs (``DeploymentView``), the options a deployment refuses, and
the folder of one file per model its export writes (``export_deployment``)."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import click

from tuner.errors import UsageError


def _click():
    """The click the running command line uses: typer >= 0.29 vendors its own (typer._click), whose
    context and exceptions are the ones that print the usage line; older typers use click."""
    try:
        from typer import _click as vendored

        return vendored.exceptions, vendored.globals.get_current_context
    except ImportError:
        return click.exceptions, click.get_current_context


def refuse_single_model_options(given: dict[str, bool]) -> None:
    """A deployment study has its own sampler (TPE), inputs (each model's own) and identity checks:
    a single-model option given with ``--deployment`` is refused rather than silently ignored.
    ``given`` maps each such flag to whether it was given (differs from its default)."""
    used = [flag for flag, is_given in given.items() if is_given]
    if used:
        why = {"--no-screening": "a deployment study does not screen"}
        reasons = [why[flag] for flag in used if flag in why]
        if any(flag not in why for flag in used):
            reasons.insert(0, "each model of a deployment is tuned with its own random inputs and the "
                              "deployment study's TPE sampler")
        verb = "does" if len(used) == 1 else "do"
        raise UsageError(f"{', '.join(used)} {verb} not apply to --deployment ({'; '.join(reasons)}); drop "
                         f"{'it' if len(used) == 1 else 'them'}")


def check_model_or_deployment(model: str | None, deployment: Path | None) -> bool:
    """True when the command is about a deployment; a usage error (exit 2, with the usage line) when
    both or neither is given."""
    exceptions, current = _click()
    ctx = current(silent=True)
    if model is not None and deployment is not None:
        raise exceptions.UsageError("--model and --deployment exclude each other: a deployment file names its "
                                    "models", ctx=ctx)
    if model is None and deployment is None:
        raise exceptions.MissingParameter(ctx=ctx, param_hint="'--model'", param_type="option")
    return deployment is not None


def deployment_request(deployment: Path, *, say: Callable[[str], None], p99: str | None, n_trials: int | None,
                       timeout: str | None, space: str, seed: int | None, scenario: str, window: str,
                       storage: str | None, study_name: str | None, revalidate: int, race_timeout: str | None,
                       out: Path, mlflow_uri: str | None, no_mlflow: bool, experiment: str, lock_wait_s: float,
                       settings, topology):
    """The optimize request of a deployment (tuner.app.optimize.run_optimize with
    tuner.app.deployment.DeploymentTuning), once the file, its models and the options are checked
    and no model's bound is out of reach alone (``check_bounds_alone`` measures each model)."""
    from tuner.app.deployment import DeploymentTuning, check_bounds_alone
    from tuner.app.optimize import OptimizeRequest, TrackingRequest
    from tuner.mix.deployment import check_fits, load_deployment, resolve_models
    from tuner.mix.study import MixStudyConfig, default_study_name
    from tuner.outputs import check_writable
    from tuner.search.space import load_space
    from tuner.search.storage import storage_url as study_storage_url
    from tuner.units import parse_duration

    if p99 is not None:
        raise UsageError("--p99 does not apply to --deployment: each model's bound is its p99 in the file")
    if scenario != "server":
        raise UsageError("--deployment tunes the server scenario only (each model on its own Poisson stream)")
    if n_trials is not None and n_trials < 1:
        raise UsageError("--n-trials must be at least 1")
    timeout_s = parse_duration(timeout, "--timeout") if timeout is not None else None
    race_time_limit_s = parse_duration(race_timeout, "--race-timeout") if race_timeout is not None else None
    check_writable(out, "--out")
    spec = load_deployment(deployment)
    check_fits(spec, len(topology.cores()))
    load_space(space, topology)  # a bad --space is a usage error before anything runs
    models = resolve_models(spec)
    check_bounds_alone(topology, spec, models, settings, say)
    url = study_storage_url(storage)
    name = study_name or default_study_name(spec, models)
    cfg = MixStudyConfig(spec, models, topology, settings, url, name, space, seed, n_trials, timeout_s, revalidate)
    return OptimizeRequest(cfg, out, race_k=revalidate, race_time_limit_s=race_time_limit_s,
                           tracking=None if no_mlflow else TrackingRequest(mlflow_uri, experiment),
                           tuning=DeploymentTuning(cfg, lock_wait_s))


class DeploymentView:
    """What ``placetune optimize --deployment`` shows while the optimize service runs (an
    ``OptimizeListener``): each step and trial as a line on stderr, then the recommended config's
    figures, the baselines and the race (``summary``)."""

    def __init__(self, console, warn: Callable[[str], None]):
        self.console, self.warn = console, warn
        self.say = _progress(console)

    def __enter__(self) -> DeploymentView:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def started(self, start) -> None:
        if start.mlflow_uri is not None:
            self.say(f"MLflow: {start.mlflow_uri} (experiment {start.mlflow_experiment})")
        self.say(f"deployment study {start.study_name} in {start.storage} "
                 f"({start.already_measured} config(s) already measured)")

    def progress(self, message: str) -> None:
        self.say(message)

    def trial_done(self, event) -> None:
        from tuner.app.deployment import trial_line

        if (line := trial_line(event.trial, event.info)) is not None:
            self.say(line)

    def search_done(self, outcome) -> None:
        if outcome.best is None:
            self.warn(f"no config of study {outcome.study.study_name!r} served any load factor within every "
                      "model's bound")

    def race_started(self, k: int) -> None:
        self.say(f"final race: {max(2, k)} rounds")

    def race_progress(self, message: str) -> None:
        self.say(message)

    def race_done(self, race) -> None:
        return None

    def warning(self, message: str) -> None:
        self.warn(message)

    def done(self, outcome, out: Path) -> None:
        """The closing lines of a run that found a config."""
        self.console.print(summary(outcome.document), highlight=False)
        self.console.print(f"best deployment config written to {out}", highlight=False)


def _progress(console) -> Callable[[str], None]:
    err = console.__class__(stderr=True)
    return lambda message: err.print(f"[dim]{message}[/]", highlight=False, soft_wrap=True)


def summary(document) -> str:
    """The recommended config's division and each model's figures at its best load factor, the
    baselines, the race's ratios and verdict (of a tuner.results.documents.DeploymentDocument)."""
    low, high = document.load_factor_ci
    lines = [f"best: {document.label}", f"load factor {document.load_factor:.3g} (interval {low:.3g}-{high:.3g})"]
    for name, m in document.models.items():
        lo, hi = m.p99_ci_ms
        lines.append(f"  {name}: {m.throughput:.1f} req/s, P50 {m.p50_ms:.2f} ms, P99 {m.p99_ms:.2f} ms "
                     f"({lo:.2f}-{hi:.2f}) <= {m.p99_bound_ms:g} ms; {_interference(m.interference.to_dict())}")
    for name, b in document.baselines.items():
        lines.append(f"  baseline {name}: load factor {b.load_factor:.3g} ({b.label})")
    race = document.race or {}
    for name, r in race.get("vs_baselines", {}).items():
        lo, hi = r["ci"]
        interval = f"{lo:.2f}-{hi:.2f}" if hi is not None and math.isfinite(hi) else "unknown"
        lines.append(f"  race: {race['best_label']} {r['ratio']:.2f}x {name} ({round(race['confidence'] * 100)}% CI "
                     f"{interval}, {r['rounds']} rounds)")
    if race:
        lines.append(f"race: {race['summary']}")
    if document.baseline:
        lines.append(f"recommended: baseline {document.baseline} ({document.label})")
    return "\n".join(lines)


def _interference(figures: dict) -> str:
    from tuner.bench.interference import describe

    return describe(figures)


def export_deployment(models: dict, source: str, fmt: str, out: Path | None, config_dir: str | None) -> None:
    """One artifact per model (and each model's JSON config) of a deployment (``models``: each one's
    config document, from the file or the study ``source`` names) into the folder ``out``."""
    from tuner.outputs import check_writable, write_atomic
    from tuner.results import export as exporter

    if fmt not in exporter.FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(exporter.FORMATS)}")
    if out is None:
        raise UsageError(f"{source} is a deployment of several models: give --out FOLDER for one file per model")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: a deployment's export is a folder (one file per model); "
                         "give a folder path")
    check_writable(out, "--out", folder_ok=True)
    out.mkdir(exist_ok=True)
    files = exporter.deployment_files(models, fmt, config_dir or str(out.resolve()))
    for name, (text, executable) in files.items():
        write_atomic(out / name, text, mode=0o755 if executable else None)
    sys.stderr.write(f"{fmt} export: {', '.join(sorted(files))} written to {out}\n")
