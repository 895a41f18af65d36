"""``report`` of a deployment study (``optimize --deployment``): the report view of the deployment
kind (tuner.app.kinds; cli/commands_study.py picks the view by the study's kind). Only rendering:
the figures come from tuner.results.mixreport."""

from __future__ import annotations

from pathlib import Path

import optuna
from rich.table import Table

from tuner.cli.common import console


def report(study: optuna.Study, html_out: Path | None) -> int:
    """Print the deployment report (and write its HTML page); the exit code (3: no config passed)."""
    from tuner.cli.render_study import importances_table
    from tuner.outputs import write_atomic
    from tuner.results import mixreport as reporting

    s = reporting.summary(study)
    frame = reporting.trials_frame(study)
    console.print(reporting.summary_text(study), highlight=False)
    console.print(pareto_table(frame[frame.pareto]))
    if s["recommended"] is not None:
        console.print(models_table(s["recommended"]))
    if s["race"] is not None:
        console.print(race_table(s["race"]))
    imp = reporting.importances(study)
    if isinstance(imp, dict):
        table = importances_table(imp)
        table.title = "parameter importances (load factor, optuna.importance)"
        console.print(table)
    else:
        console.print(f"importances: {imp}", highlight=False)
    states = frame.state.value_counts().to_dict() if len(frame) else {}
    console.print("trials: " + ", ".join(f"{n} {st.lower()}" for st, n in states.items()), highlight=False)
    if html_out is not None:
        write_atomic(html_out, reporting.html_report(study))
        console.print(f"HTML report written to {html_out}", highlight=False)
    return 0 if s["best"] is not None else 3


def pareto_table(front) -> Table:
    """The Pareto view: passing configs no other beats on both the load factor and P99 headroom."""
    table = Table(title="Pareto front (passing configs: load factor vs the tightest model's P99 / bound)")
    for col in ("trial", "config", "load factor", "interval", "worst P99 / bound", "baseline"):
        table.add_column(col)
    for _, row in front.sort_values("load_factor", ascending=False).iterrows():
        table.add_row(str(row.trial), row.label, f"{row.load_factor:.3g}", f"{row.lf_low:.3g}-{row.lf_high:.3g}",
                      f"{row.worst_p99_ratio:.2f}", row.baseline)
    return table


def models_table(config: dict) -> Table:
    """Each model of the recommended config at its best load factor."""
    tag = f", baseline {config['baseline']}" if config["baseline"] else ""
    table = Table(title=f"recommended config (trial {config['trial']}{tag}), per model")
    for col in ("model", "workers", "req/s", "P50 ms", "P99 ms (interval)", "bound ms"):
        table.add_column(col)
    for name, m in config["models"].items():
        lo, hi = m.p99_ci_ms
        table.add_row(name, str(len(m.plan.workers)), f"{m.throughput:.1f}", f"{m.p50_ms:.2f}",
                      f"{m.p99_ms:.2f} ({lo:.2f}-{hi:.2f})", f"{m.p99_bound_ms:g}")
    return table


def race_table(race: dict) -> Table:
    """Each entrant of the final race: its mean load factor and every round's."""
    table = Table(title=f"final race ({race['rounds']} interleaved rounds): {race['summary']}")
    for col in ("config", "baseline", "mean load factor", "rounds", "recommended"):
        table.add_column(col)
    for e in race["entrants"]:
        table.add_row(e["label"], e["baseline"], f"{race['mean'][e['label']]:.3g}",
                      " ".join(f"{v:.3g}" for v in race["load_factors"][e["label"]]),
                      "yes" if e["label"] == race["recommended"] else "")
    return table
