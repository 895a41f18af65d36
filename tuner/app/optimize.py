"""What ``placetune optimize`` shows while it runs and at the end (rendering and re-validation)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from tuner.bench import stats
from tuner.outputs import write_atomic
from tuner.results.trials import (
    TrialSummary,
    baseline_results,
    best_config_document,
    best_trial,
    measured_trials,
    pareto_front,
    result_of,
)
from tuner.search.locks import StudyMutex
from tuner.search.study import StudyConfig, open_study, run_study


def run(cfg: StudyConfig, console: Console, revalidate: int, out: Path, tracker=None) -> int:
    """Run the study with a progress bar; print the Pareto table, ratios, re-validation; log to
    MLflow through ``tracker`` when given. Returns the exit code (3 when nothing met the bound)."""
    study = open_study(cfg)
    if tracker is not None:
        with StudyMutex(cfg.storage, cfg.study_name):  # one parent run per study, even for a fleet
            tracker.start(study)
        if tracker.enabled:
            console.print(f"MLflow: {tracker.uri} (experiment {tracker.experiment_name})")
    already = len(measured_trials(study))
    console.print(f"study [bold]{cfg.study_name}[/] in {cfg.storage} ({already} config(s) already measured)")
    fixed = ", ".join(f"{k}={v}" for k, v in cfg.space.fixed.items())
    console.print(f"space {cfg.space.name}: {cfg.space.size()} plannable configs; fixed on this machine: {fixed}")
    best_so_far = {"throughput": 0.0}
    total = cfg.n_trials or max(already + 1, 1)
    with Progress(TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                  console=console, transient=False) as progress:
        task = progress.add_task("trials", total=total, completed=min(already, total), status="")

        def on_progress(message: str) -> None:
            progress.update(task, status=message)

        def on_trial(trial, info: TrialSummary) -> None:
            if info.feasible and info.throughput > best_so_far["throughput"]:
                best_so_far["throughput"] = info.throughput
                save_best_config(trial_study[0], out)  # a Ctrl-C later must not lose the best so far
            tag = f" [cyan]baseline {info.baseline}[/]" if info.baseline else ""
            verdict = "[green]feasible[/]" if info.feasible else f"[red]{info.reason}[/]"
            p99 = f"{info.p99_ms:.2f} ms" if math.isfinite(info.p99_ms) else "-"
            progress.console.print(
                f"#{info.number:>3} {info.label or '-':<28}{tag} {info.throughput:8.1f} req/s  P99 {p99:>10}"
                f"  {verdict}  best {best_so_far['throughput']:.1f} req/s", highlight=False)
            progress.update(task, completed=min(len(measured_trials(trial_study[0])), total), status="")
            if tracker is not None and tracker.enabled:
                with StudyMutex(cfg.storage, cfg.study_name):  # another host's finish() may be logging too
                    tracker.log_trial(trial_study[0], trial)

        trial_study = [study]
        try:
            study = run_study(cfg, on_trial, on_progress)
        except BaseException:
            if tracker is not None:
                with StudyMutex(cfg.storage, cfg.study_name):
                    tracker.finish(study, "KILLED")
            raise
        trial_study[0] = study
    if study.user_attrs.get("space_exhausted") and len(measured_trials(study)) < total:
        console.print(f"[yellow]every config of the space is measured ({len(measured_trials(study))} configs, "
                      "baselines included): the study stops here[/]")
    mlflow_uri = tracker.uri if tracker is not None and tracker.enabled else None
    code = _report(cfg, study, console, revalidate, out, mlflow_uri)
    if tracker is not None:
        with StudyMutex(cfg.storage, cfg.study_name):
            tracker.finish(study)
    return code


def _report(cfg: StudyConfig, study, console: Console, revalidate: int, out: Path,
            mlflow_uri: str | None = None) -> int:
    best = best_trial(study)
    bound = cfg.settings.p99_bound_s
    if best is None:
        measured = [(r, t) for t in study.get_trials(deepcopy=False) if (r := result_of(t)) is not None]
        lowest = min(measured, key=lambda rt: rt[0].unloaded_p99_ms, default=None)
        msg = "no config met the bound"
        if bound:
            msg = f"no config met P99 <= {bound * 1000:g} ms"
        if lowest is not None:
            r, t = lowest
            msg += (f"; the lowest P99 seen was {r.unloaded_p99_ms:.2f} ms (unloaded) with "
                    f"{t.user_attrs.get('label')}: relax --p99 or try --space latency")
        console.print(f"[red]{msg}[/]")
        return 3
    table = Table(title="Pareto front (feasible trials: throughput vs P99)")
    for col in ("trial", "config", "throughput req/s", "P50 ms", "P99 ms", "baseline"):
        table.add_column(col)
    for t in pareto_front(study):
        r = result_of(t)
        table.add_row(str(t.number), t.user_attrs.get("label", ""), f"{r.throughput:.1f}", f"{r.p50_ms:.2f}",
                      f"{r.p99_ms:.2f}", t.user_attrs.get("baseline", ""))
    console.print(table)
    result = result_of(best)
    console.print(f"best: [bold]{best.user_attrs.get('label')}[/] (trial {best.number}) "
                  f"{result.throughput:.1f} req/s, P99 {result.p99_ms:.2f} ms")
    ratios = Table(title="best vs baselines at the same bound")
    ratios.add_column("baseline")
    ratios.add_column("throughput req/s")
    ratios.add_column("best / baseline")
    for name, row in sorted(baseline_results(study).items()):
        if row.feasible and row.throughput > 0:
            ratios.add_row(name, f"{row.throughput:.1f}", f"{result.throughput / row.throughput:.2f}x")
        else:
            ratios.add_row(name, "failed" if row.failed else "infeasible", f"({row.reason})")
    console.print(ratios)
    save_best_config(study, out)  # before the re-measurement, which Ctrl-C may cut short
    if revalidate > 0:
        save_best_config(study, out, race=_final_race(cfg, study, console, revalidate))
    console.print(_next_steps(out, mlflow_uri), highlight=False)
    return 0


def _next_steps(out: Path, mlflow_uri: str | None) -> str:
    """The final message: where the config is and what to do with it."""
    steps = [f"best config written to {out}; next:",
             f"  deploy it:     placetune export --config {out} --format numactl|systemd|docker|k8s --out FILE",
             "  compare all:   placetune report (--html report.html for plots)"]
    if mlflow_uri and not mlflow_uri.startswith("http"):
        steps.append(f"  browse runs:   mlflow ui --backend-store-uri {mlflow_uri}")
    elif mlflow_uri:
        steps.append(f"  browse runs:   open {mlflow_uri}")
    steps.append(f"  re-measure it: placetune measure --model ... --config {out}")
    return "\n".join(steps)


def save_best_config(study, out: Path, race: dict | None = None) -> bool:
    """Write the study's best feasible config to ``out`` atomically (a temporary file renamed over
    it), with the final race when given; False when there is no feasible trial yet."""
    best = best_trial(study)
    if best is None:
        return False
    document = best_config_document(study, best)
    if race is not None:
        document["race"] = race
    write_atomic(out, json.dumps(document, indent=1) + "\n")
    return True


def _final_race(cfg: StudyConfig, study, console: Console, k: int) -> dict:
    """The best K configs and every baseline re-measured in interleaved rounds (tuner.search.race)."""
    from tuner.search.race import race_study

    with console.status("final race") as status:
        result = race_study(study, cfg.topology, cfg.model, cfg.settings, k, say=status.update)
    table = Table(title=f"final race ({len(result.throughputs[result.winner])} interleaved rounds)")
    for col in ("config", "baseline", "mean req/s", "CV", "runs req/s"):
        table.add_column(col)
    for e in result.entrants:
        runs = result.throughputs[e.label]
        cv = stats.cv(runs)
        table.add_row(e.label, e.baseline, f"{statistics.mean(runs):.1f}", f"{cv:.1%}" if cv == cv else "-",
                      " ".join(f"{v:.0f}" for v in runs))
    console.print(table)
    console.print(("[green]" if result.significant else "[yellow]") + result.summary + "[/]")
    return result.to_dict()
