"""Readers of a scale run's raw artefacts: each step's status, a study's trial counts (from its Optuna
storage, public API only) and its final race (from best_config.json). Pure reads: nothing here runs
a measurement, and a missing or broken file is reported as such, never as a figure."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

ORT_DEFAULT = "ort_default"


@dataclass(frozen=True)
class StepStatus:
    """What run_step (lib.sh) recorded: ok, failed, timed_out or skipped, the exit code, seconds."""

    name: str
    state: str
    rc: int | None
    limit_s: float
    wall_s: float
    log_tail: str = ""  # the log's last lines, for a step that did not end ok

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def describe(self) -> str:
        if self.state == "ok":
            return f"ok, {self.wall_s:.0f} s"
        if self.state == "skipped":
            return "skipped: no time left"
        if self.state == "timed_out":
            return f"cut by the guard after {self.wall_s:.0f} s (limit {self.limit_s:.0f} s)"
        return f"failed (exit {self.rc}) after {self.wall_s:.0f} s"


def _log_tail(log: Path, lines: int = 3) -> str:
    try:
        text = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " / ".join(line.strip()[:200] for line in text[-lines:])


def read_steps(raw: Path) -> dict[str, StepStatus]:
    """Every step's status under ``raw/steps`` (a step without a status file never ended: the whole
    run was killed while it ran)."""
    steps: dict[str, StepStatus] = {}
    folder = raw / "steps"
    for cmd in sorted(folder.glob("*.cmd")):
        name = cmd.name[: -len(".cmd")]
        status_file = folder / f"{name}.status.json"
        try:
            s = json.loads(status_file.read_text())
            status = StepStatus(name, s["state"], s["rc"], float(s["limit_s"]), float(s["wall_s"]))
        except (OSError, ValueError, KeyError):
            status = StepStatus(name, "killed", None, math.nan, math.nan)
        if status.state != "ok":
            status = StepStatus(**{**asdict(status), "log_tail": _log_tail(folder / f"{name}.log")})
        steps[name] = status
    return steps


def study_counts(db: Path) -> dict:
    """What a study measured: full measurements (baselines and searched), those that met the bound,
    screening trials, planner-infeasible, repeats, failures, and the study's best before the race."""
    import optuna

    from tuner.results.trials import best_trial, measured_trials
    from tuner.search.screening import is_screened
    from tuner.search.storage import quiet_optuna

    if not db.is_file():
        return {"error": f"no study storage ({db.name} missing)"}
    storage = f"sqlite:///{db}"
    with quiet_optuna():
        names = optuna.get_all_study_names(storage)
        if not names:
            return {"error": f"{db.name} holds no study"}
        study = optuna.load_study(study_name=names[0], storage=storage)
        trials = study.get_trials(deepcopy=False)
        measured = measured_trials(study)
        best = best_trial(study)
    fail = optuna.trial.TrialState.FAIL
    feasible = [t for t in measured if t.user_attrs["result"]["feasible"]]
    return {
        "study": names[0],
        "measured": len(measured),
        "baselines": sum(1 for t in measured if "baseline" in t.user_attrs),
        "met_bound": len(feasible),
        "missed_bound": len(measured) - len(feasible),
        "screened": sum(1 for t in trials if is_screened(t)),
        "planner_infeasible": sum(1 for t in trials if "plan_infeasible" in t.user_attrs),
        "repeats": sum(1 for t in trials if "repeat_of" in t.user_attrs),
        "failed": sum(1 for t in trials if t.state == fail and "repeat_of" not in t.user_attrs),
        "best": best.user_attrs.get("label") if best is not None else None,
        "best_throughput": float(best.values[0]) if best is not None else None,
        "trial_seconds": sorted(round(float(t.user_attrs["result"]["duration_s"]), 1) for t in measured),
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def race_figures(best_config: Path) -> dict:
    """The final race as best_config.json records it: the winner (label, what it is, mean req/s), its
    ratio to the ORT default and the best searched config's ratio to the best baseline, each with
    the race's interval, rounds and why it stopped."""
    try:
        doc = json.loads(best_config.read_text())
    except OSError:
        return {"error": "no best_config.json (no config met the bound, or the study did not get that far)"}
    except ValueError as exc:
        return {"error": f"best_config.json is not JSON ({exc})"}
    race = doc.get("race")
    if not race:
        return {"error": "best_config.json has no race (the step ended before it)", "best": doc.get("label")}
    kinds = {e["label"]: e["baseline"] or "searched" for e in race["entrants"]}
    winner = race["winner"]
    th = race["throughputs"]
    ort_label = next((label for label, kind in kinds.items() if ORT_DEFAULT in kind.split("+")), None)
    if ort_label == winner:
        vs_ort = {"ratio": 1.0, "ci": [1.0, 1.0], "note": "the winner is the ORT default"}
    else:
        vs_ort = next(({"ratio": c["ratio"], "ci": c["ci"]} for c in race["comparisons"] if c["label"] == ort_label),
                      {"note": "the ORT default was not raced"})
    return {
        "winner": winner, "winner_is": kinds.get(winner, "?"), "recommended": race["recommended"],
        "winner_req_s": _mean(th.get(winner, [])), "rounds": race["rounds"], "stopped": race.get("stopped", ""),
        "vs_ort_default": vs_ort, "searched_vs_best_baseline": race.get("searched") or {},
        "entrants": {label: {"is": kinds[label], "req_s": th[label]} for label in th},
        "summary": race.get("summary", ""),
    }


def ci_text(figure: dict) -> str:
    """'3.05x (95% CI 2.71-3.40)' from a {ratio, ci} dict; its note when there is no ratio."""
    if "ratio" not in figure:
        return figure.get("note", "-")
    lo, hi = figure["ci"]
    interval = f"{lo:.2f}-{hi:.2f}" if math.isfinite(lo) and math.isfinite(hi) else "unknown"
    return f"{figure['ratio']:.2f}x (95% CI {interval})"
