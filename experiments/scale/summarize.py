"""summary.md (and summary.json) of a scale run, computed from its raw artefacts only.

    python -m experiments.scale.summarize run1 RESULTS_DIR     # run.sh: the default studies
    python -m experiments.scale.summarize run2 RESULTS_DIR     # run2.sh: repeatability, screening, mix

Every figure comes from a file of the run (a step's status, a study's storage, best_config.json, a
part's JSON lines); a step that failed, was cut by the guard or was skipped is named with why, and
its figures are left out rather than guessed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from experiments.scale.artefacts import StepStatus, ci_text, race_figures, read_steps, study_counts


def _plan_lines(raw: Path) -> list[str]:
    try:
        return (raw / "plan.txt").read_text().splitlines()
    except OSError:
        return []


def _plan(raw: Path) -> list[str]:
    """The studies run.sh planned, in order (plan.txt: a 'study: NAME MODEL BOUND ...' line each)."""
    return [line.split()[1] for line in _plan_lines(raw) if line.startswith("study:") and len(line.split()) > 1]


def _profile(raw: Path) -> str:
    """quick or device (plan.txt's first line: 'profile: NAME; ...')."""
    for line in _plan_lines(raw):
        if line.startswith("profile:"):
            return line.split(":", 1)[1].split(";")[0].strip()
    return "unknown"


def _header(title: str, raw: Path, steps: dict[str, StepStatus]) -> list[str]:
    host = {}
    try:
        host = json.loads((raw / "machine" / "machine.json").read_text())
    except (OSError, ValueError):
        pass
    total = sum(s.wall_s for s in steps.values() if math.isfinite(s.wall_s))
    lines = [f"# {title}", "",
             f"Profile: {_profile(raw)}. Machine: {host.get('cpu_model', '?')}, {host.get('affinity', '?')} usable "
             f"CPUs, onnxruntime {host.get('onnxruntime', '?')}, Python {host.get('python', '?')}. "
             f"Steps' wall time: {total:.0f} s.", ""]
    if _profile(raw) == "quick":
        lines += ["**A quick run (small budgets, loose bounds): a test of the script, not a proof.**", ""]
    bad = [s for s in steps.values() if not s.ok]
    for s in bad:
        lines.append(f"- step `{s.name}`: {s.describe()}" + (f"; log ends: `{s.log_tail}`" if s.log_tail else ""))
    if bad:
        lines.append("")
    return lines


def study_row(raw: Path, name: str, step: StepStatus | None) -> dict:
    """One study's figures: its step, its trial counts, its race."""
    folder = raw / name
    return {"study": name, "step": step.describe() if step else "never started",
            "state": step.state if step else "missing", "wall_s": step.wall_s if step else math.nan,
            "counts": study_counts(folder / "placetune.db"), "race": race_figures(folder / "best_config.json")}


def render_run1(rows: list[dict]) -> list[str]:
    lines = ["| study | step | winner (what it is) | race req/s | vs ORT default | best searched vs best baseline "
             "| race rounds | full measurements (baselines) | met the bound | screened | planner-infeasible | repeats "
             "| failed |", "|" + "---|" * 13]
    notes = []
    for row in rows:
        c, r = row["counts"], row["race"]
        counts = (["-"] * 6 if "error" in c else
                  [f"{c['measured']} ({c['baselines']})", str(c["met_bound"]), str(c["screened"]),
                   str(c["planner_infeasible"]), str(c["repeats"]), str(c["failed"])])
        if "error" in r:
            race_cells = [f"- ({r['error']})", "-", "-", "-", "-"]
        else:
            s = r["searched_vs_best_baseline"]
            searched = (f"{s['label']} vs {s['baseline_label']}: {ci_text(s)}, {s['outcome']}" if s else "-")
            race_cells = [f"`{r['winner']}` ({r['winner_is']})", f"{r['winner_req_s']:.1f}",
                          ci_text(r["vs_ort_default"]), searched, f"{r['rounds']} ({r['stopped'] or '?'})"]
        lines.append(f"| {row['study']} | {row['step']} | " + " | ".join(race_cells + counts) + " |")
        if "error" in c:
            notes.append(f"- {row['study']}: {c['error']}")
        if "entrants" in r:
            each = ", ".join(f"`{label}` ({e['is']}) {', '.join(f'{v:.1f}' for v in e['req_s'])}"
                             for label, e in r["entrants"].items())
            notes.append(f"- {row['study']} race, req/s per round: {each}")
        if "error" not in c and c["trial_seconds"]:
            notes.append(f"- {row['study']}: seconds per full measurement {c['trial_seconds']}")
    return lines + [""] + notes


def summarize_run1(raw: Path) -> tuple[str, dict]:
    steps = read_steps(raw)
    names = _plan(raw) or sorted(p.name for p in raw.iterdir() if (p / "placetune.db").exists())
    rows = [study_row(raw, name, steps.get(name)) for name in names]
    lines = _header("Scale proof I: the default study", raw, steps) + render_run1(rows)
    return "\n".join(lines) + "\n", {"steps": {k: v.__dict__ for k, v in steps.items()}, "studies": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=("run1", "run2"))
    ap.add_argument("raw", type=Path, help="the run's raw results folder")
    args = ap.parse_args(argv)
    if not (args.raw / "steps").is_dir():
        print(f"summarize: {args.raw} has no steps/ folder: not a scale run's results", file=sys.stderr)
        return 2
    if args.kind == "run1":
        text, data = summarize_run1(args.raw)
    else:
        from experiments.scale.summarize2 import summarize_run2

        text, data = summarize_run2(args.raw)
    (args.raw / "summary.md").write_text(text)
    (args.raw / "summary.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
