"""What a deployment study found, for ``placetune report`` (tables and a self-contained HTML page):
the models and their bounds, the best config's load factor with its interval and each model's
figures, the baselines, the race and the config it recommends, the Pareto view (load factor vs the
tightest model's P99 headroom), parameter importances. tuner.results.report does the same for a
single-model study; this module reads only the study (no launcher, no worker, no ONNX Runtime)."""

from __future__ import annotations

import html
import math

import optuna
import pandas as pd

from tuner.results.mixrecords import Deployment, ModelFigures
from tuner.results.mixtrials import best_and_baselines, measured, mix_result, pareto_front, race_of, recommended_trial
from tuner.results.trials import shown_trials


def summary(study: optuna.Study) -> dict:
    """The facts a person wants first: the models, the best, the baselines, the race's verdict."""
    deployment = Deployment.from_dict(study.user_attrs["deployment"])
    best, baselines = best_and_baselines(study)
    race = race_of(study, best)
    out = {"study": study.study_name, "models": deployment.models, "shared_cores": deployment.shared_cores,
           "trials": len(shown_trials(study)),
           "best": None, "baselines": {}, "race": race, "recommended": None}
    if best is None:
        return out
    out["best"] = _config_facts(best)
    chosen = recommended_trial(study, best, race)
    out["recommended"] = {**_config_facts(chosen), "baseline": chosen.user_attrs.get("baseline", "")}
    for name, t in sorted(baselines.items()):
        lf = mix_result(t).load_factor
        out["baselines"][name] = {"label": t.user_attrs["label"], "load_factor": lf, "feasible": lf > 0,
                                  "reason": mix_result(t).reason, "best_ratio": best.value / lf if lf > 0 else None}
    return out


def _config_facts(t: optuna.trial.FrozenTrial) -> dict:
    r = mix_result(t)
    return {"trial": t.number, "label": t.user_attrs["label"], "load_factor": r.load_factor,
            "load_factor_ci": list(r.load_factor_ci), "models": r.models}


def summary_text(study: optuna.Study) -> str:
    """``summary`` as a few sentences (the report's head)."""
    s = summary(study)
    models = "; ".join(f"{m.name} P99 <= {m.p99_bound_s * 1000:g} ms, share {m.share:g}" for m in s["models"])
    lines = [f"placetune deployment study {s['study']}: {len(s['models'])} models ({models})"
             f"{', shared cores' if s['shared_cores'] else ''}, {s['trials']} trials."]
    if s["best"] is None:
        lines.append("No config served a load factor within every model's bound.")
        return "\n".join(lines)
    b = s["best"]
    low, high = b["load_factor_ci"]
    lines.append(f"Best: {b['label']} (trial {b['trial']}) load factor {b['load_factor']:.3g} "
                 f"(interval {low:.3g}-{high:.3g}).")
    for name, m in b["models"].items():
        lo, hi = m.p99_ci_ms
        lines.append(f"  {name}: {m.throughput:.1f} req/s, P50 {m.p50_ms:.2f} ms, P99 {m.p99_ms:.2f} ms "
                     f"({lo:.2f}-{hi:.2f}) <= {m.p99_bound_ms:g} ms")
    for name, r in s["baselines"].items():
        if r["best_ratio"] is not None:
            lines.append(f"vs {name}: load factor {r['load_factor']:.3g} -> {r['best_ratio']:.2f}x")
        else:
            lines.append(f"vs {name}: served no load factor ({r['reason']})")
    race = s["race"]
    if race is not None:
        lines.append(f"Race ({race['rounds']} interleaved rounds): {race['summary']}")
    else:
        lines.append("Race: none for this best config (optimize --revalidate 0, or the study found it after its race).")
    rec = s["recommended"]
    tag = f" (baseline {rec['baseline']})" if rec["baseline"] else ""
    lines.append(f"Recommended (what best_config.json and export --study hold): {rec['label']}{tag}, "
                 f"trial {rec['trial']}.")
    return "\n".join(lines)


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial (repeats left out): state, config, load factor with its interval, the
    tightest model's P99 over its bound, each model's throughput and P99, why it did not pass."""
    front = {t.number for t in pareto_front(study)}
    names = Deployment.from_dict(study.user_attrs["deployment"]).names
    rows = []
    for t in shown_trials(study):
        row = {"trial": t.number, "state": t.state.name, "label": t.user_attrs.get("label", ""),
               "baseline": t.user_attrs.get("baseline", ""), "host": t.user_attrs.get("host", ""),
               "pareto": t.number in front, "load_factor": math.nan, "lf_low": math.nan, "lf_high": math.nan,
               "verdict": "", "worst_p99_ratio": math.nan, "reason": t.user_attrs.get("fail_reason", "")}
        if "result" in t.user_attrs:
            r = mix_result(t)
            row.update(load_factor=r.load_factor, lf_low=r.load_factor_ci[0], lf_high=r.load_factor_ci[1],
                       verdict=r.verdict, reason=r.reason,
                       worst_p99_ratio=r.worst_p99_ratio if r.feasible else math.nan)
            for name in names:
                m = r.models.get(name)
                row[f"{name}.throughput"] = m.throughput if m is not None else math.nan
                row[f"{name}.p99_ms"] = m.p99_ms if m is not None else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def importances(study: optuna.Study) -> dict[str, float] | str:
    """optuna.importance on the load factor over the measured trials (tuner.results.report's rule)."""
    from tuner.results.report import importances as param_importances

    return param_importances(study, measured(study))


def html_report(study: optuna.Study) -> str:
    """A self-contained page: summary, Pareto view, the recommended config per model, the race,
    importances, every trial."""
    frame = trials_frame(study)
    s = summary(study)
    fmt = {"float_format": lambda v: f"{v:.3g}" if math.isfinite(v) else "", "index": False, "na_rep": ""}
    title = html.escape(study.study_name)
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>placetune report: {title}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}</style></head><body>",
             f"<h1>placetune deployment report: {title}</h1>", "<pre>" + html.escape(summary_text(study)) + "</pre>",
             "<h2>Pareto view (load factor vs the tightest model's P99 / bound)</h2>",
             frame[frame.pareto][["trial", "label", "baseline", "load_factor", "lf_low", "lf_high",
                                  "worst_p99_ratio"]].to_html(**fmt)]
    if s["recommended"] is not None:
        parts += ["<h2>Recommended config, per model</h2>", model_frame(s["recommended"]["models"]).to_html(**fmt)]
    if s["race"] is not None:
        parts += ["<h2>Final race</h2>", race_frame(s["race"]).to_html(**fmt)]
    imp = importances(study)
    parts.append("<h2>Parameter importances (load factor)</h2>")
    parts.append(pd.DataFrame({"param": list(imp), "importance": list(imp.values())}).to_html(**fmt)
                 if isinstance(imp, dict) else f"<p>{html.escape(imp)}</p>")
    parts += ["<h2>All trials</h2>", frame.to_html(**fmt), "</body></html>"]
    return "\n".join(parts)


def model_frame(models: dict[str, ModelFigures]) -> pd.DataFrame:
    """Each model of a config at its best load factor: plan, throughput, P50/P99 with the P99 interval."""
    return pd.DataFrame([{"model": name, "workers": len(m.plan.workers), "throughput": m.throughput,
                          "p50_ms": m.p50_ms, "p99_ms": m.p99_ms, "p99_low_ms": m.p99_ci_ms[0],
                          "p99_high_ms": m.p99_ci_ms[1], "p99_bound_ms": m.p99_bound_ms}
                         for name, m in models.items()])


def race_frame(race: dict) -> pd.DataFrame:
    """Each entrant of a deployment's race: its mean load factor and every round's."""
    return pd.DataFrame([{"config": e["label"], "baseline": e["baseline"], "mean": race["mean"][e["label"]],
                          "rounds": " ".join(f"{v:.3g}" for v in race["load_factors"][e["label"]]),
                          "recommended": e["label"] == race["recommended"]} for e in race["entrants"]])
