"""Rich renderings of a study's results for ``optimize`` and ``report`` (no logic lives here)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from tuner.bench import stats
from tuner.results.trials import result_of
from tuner.units import format_rate, format_ratio

if TYPE_CHECKING:  # the report command reads a study without importing the study runner
    from tuner.app.optimize import OptimizeOutcome, TrialEvent
    from tuner.search.race import RaceResult

PARETO_TITLE = "Pareto front (feasible trials: throughput vs P99)"


def pareto_table(rows: Iterable[tuple[int, str, str, float, float, str]]) -> Table:
    """Rows of (trial, config, throughput req/s as ``tuner.units.format_rate`` writes it, P50 ms,
    P99 ms, baseline name or "")."""
    table = Table(title=PARETO_TITLE)
    for col in ("trial", "config", "throughput req/s", "P50 ms", "P99 ms", "baseline"):
        table.add_column(col)
    for number, label, throughput, p50_ms, p99_ms, baseline in rows:
        table.add_row(str(number), label, throughput, f"{p50_ms:.2f}", f"{p99_ms:.2f}", baseline)
    return table


def front_rows(outcome: OptimizeOutcome) -> list[tuple[int, str, float, float, float, str]]:
    """The Pareto front of an optimize outcome as ``pareto_table`` rows."""
    rows = []
    for t in outcome.front:
        r = result_of(t)
        rows.append((t.number, t.user_attrs.get("label", ""), format_rate(r.throughput, r.throughput_ci, r.estimator),
                     r.p50_ms, r.p99_ms,
                     t.user_attrs.get("baseline", "")))
    return rows


def trial_line(event: TrialEvent) -> str:
    """'#  3 w2xc1-intra1  baseline one_per_core  412.0 req/s  P99  8.10 ms  feasible  best 412.0 req/s'."""
    info = event.info
    tag = f" [cyan]baseline {info.baseline}[/]" if info.baseline else ""
    verdict = "[green]feasible[/]" if info.feasible else f"[red]{info.reason}[/]"
    p99 = f"{info.p99_ms:.2f} ms" if math.isfinite(info.p99_ms) else "-"
    rate = format_rate(info.throughput, info.throughput_ci, info.estimator) if info.feasible else "0.0"
    return (f"#{info.number:>3} {info.label or '-':<28}{tag} {rate:>18} req/s  P99 {p99:>10}"
            f"  {verdict}  best {event.best_throughput:.1f} req/s")


def no_feasible_message(outcome: OptimizeOutcome) -> str:
    """Why there is no best config, and the closest miss."""
    msg = "no config met the bound"
    if outcome.p99_bound_s:
        msg = f"no config met P99 <= {outcome.p99_bound_s * 1000:g} ms"
    lowest = outcome.lowest_p99
    if lowest is not None:
        r = result_of(lowest)
        msg += (f"; the lowest P99 seen was {r.unloaded_p99_ms:.2f} ms (unloaded) with "
                f"{lowest.user_attrs.get('label')}: relax --p99 or try --space latency")
    return msg


def best_line(outcome: OptimizeOutcome) -> str:
    best = outcome.best
    result = result_of(best)
    rate = format_rate(result.throughput, result.throughput_ci, result.estimator)
    return (f"best: [bold]{best.user_attrs.get('label')}[/] (trial {best.number}) "
            f"{rate} req/s, P99 {result.p99_ms:.2f} ms")


def ratios_table(outcome: OptimizeOutcome) -> Table:
    """The best config's throughput over each baseline's, at the same bound: one measurement each,
    so provisional, with the interval of the two estimates (the final race decides)."""
    best = result_of(outcome.best)
    ratios = Table(title="best vs baselines at the same bound (provisional: one measurement each; "
                   "the final race decides)")
    ratios.add_column("baseline")
    ratios.add_column("throughput req/s")
    ratios.add_column("best / baseline")
    for name, r in sorted(outcome.baselines.items()):
        if r.feasible and r.throughput > 0:
            ratio = stats.estimate_ratio(best.throughput, best.throughput_ci, r.throughput, r.result.throughput_ci)
            ratios.add_row(name, format_rate(r.throughput, r.result.throughput_ci, r.result.estimator),
                           format_ratio(*ratio))
        else:
            ratios.add_row(name, "failed" if r.failed else "infeasible", f"({r.reason})")
    return ratios


def race_table(race: RaceResult) -> Table:
    """Each entrant of the final race: mean, CV and every round's throughput."""
    cut = ", stopped at --race-timeout" if race.stopped == "time_limit" else ""
    if race.dropped:
        cut += f"; {len(race.dropped)} of {len(race.entrants)} entrants raced one round to fit it"
    table = Table(title=f"final race ({len(race.throughputs[race.winner])} interleaved rounds in "
                  f"{race.seconds:.0f} s{cut})")
    for col in ("config", "baseline", "mean req/s", "CV", "runs req/s"):
        table.add_column(col)
    uncalm = False
    for e in race.entrants:
        runs = race.throughputs[e.label]
        calm = race.calm.get(e.label) or [True] * len(runs)
        uncalm = uncalm or not all(calm)
        cv = stats.cv(runs)
        table.add_row(e.label, e.baseline, f"{statistics.mean(runs):.1f}", f"{cv:.1%}" if cv == cv else "-",
                      " ".join(f"{v:.0f}" + ("" if ok else "*") for v, ok in zip(runs, calm, strict=False)))
    if uncalm:
        table.caption = ("* from disturbed windows alone (too few calm service times to replay): "
                         "shown, and left out of the intervals")
    return table


def race_summary(race: RaceResult) -> str:
    return ("[green]" if race.significant else "[yellow]") + race.summary + "[/]"


def next_steps(out: Path, mlflow_uri: str | None) -> str:
    """The final message: where the config is and what to do with it."""
    steps = [f"best config written to {out}; next:",
             f"  deploy it:     placetune export --config {out} --format numactl|systemd|docker|k8s|triton --out FILE",
             "  compare all:   placetune report (--html report.html for plots)"]
    if mlflow_uri and not mlflow_uri.startswith("http"):
        steps.append(f"  browse runs:   mlflow ui --backend-store-uri {mlflow_uri}")
    elif mlflow_uri:
        steps.append(f"  browse runs:   open {mlflow_uri}")
    steps.append(f"  re-measure it: placetune measure --model ... --config {out}")
    return "\n".join(steps)


def fingerprint_table(groups) -> Table:
    """``tuner.results.report.by_fingerprint``'s frame: one row per topology fingerprint."""
    table = Table(title="by topology fingerprint (heterogeneous fleet: compare within a row only)")
    for col in groups.columns:
        table.add_column(col)
    for _, row in groups.iterrows():
        table.add_row(*(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row))
    return table


def importances_table(importances: dict[str, float]) -> Table:
    table = Table(title="parameter importances (throughput, optuna.importance)")
    table.add_column("param")
    table.add_column("importance")
    for k, v in importances.items():
        table.add_row(k, f"{v:.3f}")
    return table
