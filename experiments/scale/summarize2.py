"""summary.md of run2.sh (scale proof II) from its raw files: the repeatability rounds and every
window's disturbance figures, the screening calibration pairs, and the deployment study."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from experiments.scale.artefacts import StepStatus, ci_text, read_steps
from tuner.bench import interference, stats

STEAL_THRESHOLDS_PCT = (1.0, 2.0, interference.STEAL_PCT_DISTURBED, 10.0)
FOREIGN_THRESHOLDS = (0.1, interference.FOREIGN_CPU_DISTURBED, 0.5, 1.0)
REPLAY = ("python -m experiments.replay --topology tests/topologies/{fixture}.tar.bz2 --oracle "
          "experiments.oracles:{oracle} --budget 30 --seeds 20 --strategy placetune --json "
          "--screen-noise {sigma:.3f} --screen-cost {cost:.3f}")
REPLAY_ROWS = (("16amd64-8n2c", "amdahl_bandwidth"), ("32intel64-2p8co2t+8ve", "amdahl_bandwidth"),
               ("64amd64-4s2n4ca2co", "amdahl_bandwidth"))


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _quantiles(values: list[float]) -> str:
    if not values:
        return "not measured"
    q = np.quantile(values, [0.5, 0.9, 1.0])
    return f"median {q[0]:.2f}, P90 {q[1]:.2f}, max {q[2]:.2f} ({len(values)} windows)"


def repeat_figures(path: Path) -> dict:
    """Per run: req/s, its interval, verdict, P99 interval, interference; the CVs and the ratio; and
    every window's steal and foreign load against the disturbance thresholds (and alternatives)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {"error": f"no repeatability results ({exc.__class__.__name__}: {path.name})"}
    runs, windows = [], []
    for run in doc["runs"]:
        r = run["result"]
        runs.append({"tag": run["tag"], "req_s": r["throughput"], "throughput_ci": r["throughput_ci"],
                     "verdict": r["verdict"], "p99_ms": r["p99_ms"], "p99_ci_ms": r["p99_ci_ms"],
                     "interference": interference.describe(r["interference"]),
                     "disturbed_windows": r["interference"].get("disturbed_windows"), "windows": len(r["windows"])})
        windows += [w.get("interference") or {} for w in r["windows"]]
    config = [x["req_s"] for x in runs if not x["tag"].startswith("ORT default")]
    ort = [x["req_s"] for x in runs if x["tag"].startswith("ORT default")]
    steal = _finite(w.get("steal_pct") for w in windows)
    foreign = _finite(w.get("foreign_cpu") for w in windows)
    out = {"complete": doc.get("complete", True), "label": _label(doc["config"]), "runs": runs,
           "cv_config": stats.cv(config) if len(config) >= 2 else math.nan,
           "cv_ort_default": stats.cv(ort) if len(ort) >= 2 else math.nan,
           "range_config": [min(config), max(config)] if config else [],
           "steal_pct": _quantiles(steal), "foreign_cpu": _quantiles(foreign),
           "flagged_steal": {t: sum(v > t for v in steal) for t in STEAL_THRESHOLDS_PCT},
           "flagged_foreign": {t: sum(v > t for v in foreign) for t in FOREIGN_THRESHOLDS},
           "windows": len(windows), "disturbed": sum(bool(w.get("disturbed")) for w in windows)}
    if "interleaved" in doc:
        out["ratio"] = {"ratio": doc["interleaved"]["ratio"], "ci": doc["interleaved"]["ci"]}
    return out


def _label(config: dict) -> str:
    from tuner.machine.placement import Params

    return Params.from_dict(config).label()


def calibration_figures(path: Path, full_cv: float = math.nan) -> dict:
    """From the pairs (a config measured as a screening trial and in full): the cost ratio (screen wall
    time / full wall time, in all and per pair) and ln(screen / full) over the pairs where both met
    the bound: its mean (bias) and sigma; with the full measurement's own CV (the repeat part),
    the screening's own sigma, sqrt(sigma^2 - CV^2)."""
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        return {"error": f"no calibration results ({exc.__class__.__name__}: {path.name})"}
    pairs: dict[int, dict] = {}
    for rec in lines:
        pairs.setdefault(rec["index"], {"label": rec["label"], "baseline": rec["baseline"]})[rec["fidelity"]] = rec
    complete = [p for p in pairs.values() if "screen" in p and "full" in p]
    if not complete:
        return {"error": f"no config was measured at both fidelities ({len(lines)} measurements)"}
    screen_s = [p["screen"]["wall_s"] for p in complete]
    full_s = [p["full"]["wall_s"] for p in complete]
    both = [p for p in complete if p["screen"]["result"]["feasible"] and p["full"]["result"]["feasible"]
            and p["screen"]["result"]["throughput"] > 0 and p["full"]["result"]["throughput"] > 0]
    logs = [math.log(p["screen"]["result"]["throughput"] / p["full"]["result"]["throughput"]) for p in both]
    out = {"pairs": len(complete), "both_met_bound": len(both),
           "neither_met_bound": sum(1 for p in complete if not p["screen"]["result"]["feasible"]
                                    and not p["full"]["result"]["feasible"]),
           "cost_ratio": sum(screen_s) / sum(full_s), "cost_ratio_per_pair": sorted(s / f for s, f in
                                                                                 zip(screen_s, full_s, strict=True)),
           "screen_s": screen_s, "full_s": full_s,
           "rows": [_row(p) for p in complete]}
    if len(logs) >= 2:
        out["log_mean"], out["log_sigma"] = float(np.mean(logs)), float(np.std(logs, ddof=1))
        if math.isfinite(full_cv):
            out["screen_sigma"] = math.sqrt(max(0.0, out["log_sigma"] ** 2 - full_cv ** 2))
    return out


def _row(pair: dict) -> dict:
    return {"label": pair["label"], "baseline": pair["baseline"],
            "screen_req_s": pair["screen"]["result"]["throughput"], "full_req_s": pair["full"]["result"]["throughput"],
            "screen_s": pair["screen"]["wall_s"], "full_s": pair["full"]["wall_s"]}


def mix_figures(folder: Path) -> dict:
    """The deployment study: best config, load factors, the race's ratios (best_deployment.json); when
    the step ended before writing it, the load factors measured in the study (no race, no interval)."""
    try:
        doc = json.loads((folder / "best_deployment.json").read_text())
        race = doc.get("race") or {}
        return {"best": doc["label"], "load_factor": doc["load_factor"], "load_factor_ci": doc["load_factor_ci"],
                "baselines": {n: {"label": b["label"], "load_factor": b["load_factor"]}
                              for n, b in doc["baselines"].items()},
                "race": {n: {"ratio": r["ratio"], "ci": r["ci"], "rounds": r["rounds"]}
                         for n, r in race.get("vs_baselines", {}).items()},
                "race_load_factors": race.get("load_factors", {})}
    except (OSError, ValueError, KeyError):
        pass
    return {"error": "no best_deployment.json (the study or its race did not finish)", **_mix_trials(folder)}


def _mix_trials(folder: Path) -> dict:
    db = folder / "placetune.db"
    if not db.is_file():
        return {}
    import optuna

    from tuner.results.mixtrials import measured
    from tuner.search.storage import quiet_optuna

    storage = f"sqlite:///{db}"
    with quiet_optuna():
        names = optuna.get_all_study_names(storage)
        if not names:
            return {}
        trials = measured(optuna.load_study(study_name=names[0], storage=storage))
    return {"trials": [{"label": t.user_attrs["label"], "baseline": t.user_attrs.get("baseline", ""),
                        "load_factor": float(t.value), "verdict": t.user_attrs["result"]["verdict"]} for t in trials]}


def _repeat_lines(r: dict) -> list[str]:
    lines = ["## Repeatability", ""]
    if "error" in r:
        return lines + [f"- {r['error']}", ""]
    lines += ["| run | req/s | throughput_ci | verdict | P99 ms (95% CI) | interference |", "|---|---|---|---|---|---|"]
    for x in r["runs"]:
        lo, hi = x["throughput_ci"]
        plo, phi = x["p99_ci_ms"]
        lines.append(f"| {x['tag']} | {x['req_s']:.1f} | {lo:.1f}-{hi:.1f} | {x['verdict']} | {x['p99_ms']:.2f} "
                     f"({plo:.2f}-{phi:.2f}) | {x['interference']} |")
    rng = r["range_config"]
    lines += ["", f"- `{r['label']}`: CV {r['cv_config']:.1%} (target <= 10%)"
              + (f", range {rng[0]:.1f}-{rng[1]:.1f} req/s" if rng else "")
              + f"; ORT default CV {r['cv_ort_default']:.1%}; "
              + (f"ratio {ci_text(r['ratio'])}" if "ratio" in r else "ratio: fewer than 2 rounds"),
              f"- windows: {r['windows']}, disturbed {r['disturbed']}; steal % {r['steal_pct']}; "
              f"foreign load (cores) {r['foreign_cpu']}",
              "- windows over each steal threshold: " + ", ".join(f"{t:g}%: {n}" for t, n in r["flagged_steal"].items())
              + f" (today {interference.STEAL_PCT_DISTURBED:g}%)",
              "- windows over each foreign-load threshold: "
              + ", ".join(f"{t:g}: {n}" for t, n in r["flagged_foreign"].items())
              + f" (today {interference.FOREIGN_CPU_DISTURBED:g} cores)"]
    if not r["complete"]:
        lines.append("- cut short: fewer rounds than planned")
    return lines + [""]


def _calibration_lines(c: dict) -> list[str]:
    lines = ["## Screening calibration", ""]
    if "error" in c:
        return lines + [f"- {c['error']}", ""]
    lines += ["| config | screen req/s | full req/s | screen s | full s |", "|---|---|---|---|---|"]
    for x in c["rows"]:
        name = f"`{x['label']}`" + (f" ({x['baseline']})" if x["baseline"] else "")
        lines.append(f"| {name} | {x['screen_req_s']:.1f} | {x['full_req_s']:.1f} | {x['screen_s']:.1f} "
                     f"| {x['full_s']:.1f} |")
    per = c["cost_ratio_per_pair"]
    lines += ["", f"- {c['pairs']} pairs; cost ratio (screen / full wall time) {c['cost_ratio']:.3f} "
              f"(per pair {per[0]:.2f}-{per[-1]:.2f}; the study assumes 0.3)"]
    if "log_sigma" in c:
        lines.append(f"- ln(screen / full) over {c['both_met_bound']} pairs that both met the bound: mean "
                     f"{c['log_mean']:+.3f}, sigma {c['log_sigma']:.3f} (the replay assumes 0, 0.10)"
                     + (f"; without the full measurement's own CV: {c['screen_sigma']:.3f}" if "screen_sigma" in c
                        else ""))
        sigma = c.get("screen_sigma", c["log_sigma"])
        lines += ["- the replay figures with the measured values:", ""]
        lines += [f"      {REPLAY.format(fixture=f, oracle=o, sigma=sigma, cost=c['cost_ratio'])}"
                  for f, o in REPLAY_ROWS]
    else:
        lines.append(f"- only {c['both_met_bound']} pair(s) met the bound at both fidelities: no error estimate")
    return lines + [""]


def _mix_lines(m: dict) -> list[str]:
    lines = ["## Two models at once", ""]
    if "error" in m:
        lines.append(f"- {m['error']}")
        for t in m.get("trials", []):
            lines.append(f"- in the study: `{t['label']}`" + (f" ({t['baseline']})" if t["baseline"] else "")
                         + f": load factor {t['load_factor']:.3g} ({t['verdict']})")
        return lines + [""]
    lo, hi = m["load_factor_ci"]
    lines.append(f"- best `{m['best']}`: load factor {m['load_factor']:.3g} (interval {lo:.3g}-{hi:.3g})")
    for name, b in m["baselines"].items():
        race = m["race"].get(name)
        lines.append(f"- vs {name} (`{b['label']}`, L {b['load_factor']:.3g} in the study): "
                     + (f"{ci_text(race)} over {race['rounds']} race rounds" if race else "not raced"))
    for label, values in m["race_load_factors"].items():
        lines.append(f"- race, L per round, `{label}`: {', '.join(f'{v:.3g}' for v in values)}")
    return lines + [""]


def summarize_run2(raw: Path) -> tuple[str, dict]:
    from experiments.scale.summarize import _header

    steps: dict[str, StepStatus] = read_steps(raw)
    data: dict = {"steps": {k: v.__dict__ for k, v in steps.items()}}
    lines = _header("Scale proof II: repeatability, screening calibration, two models at once", raw, steps)
    if "repeat" in steps:
        data["repeat"] = repeat_figures(raw / "repeat" / "repeatability.json")
        lines += _repeat_lines(data["repeat"])
    if "calibrate" in steps:
        data["calibrate"] = calibration_figures(raw / "calibrate" / "calibration.jsonl",
                                                data.get("repeat", {}).get("cv_config", math.nan))
        lines += _calibration_lines(data["calibrate"])
    if "mix" in steps:
        data["mix"] = mix_figures(raw / "mix")
        lines += _mix_lines(data["mix"])
    return "\n".join(lines) + "\n", data
