"""What a study found, as tables, plots and a self-contained HTML page (``placetune report``),
and the artifacts the MLflow parent run carries."""

from __future__ import annotations

import base64
import html
import io
import math
import warnings

import optuna
import pandas as pd

from tuner.bench import stats
from tuner.machine.placement import PARAM_NAMES, Params
from tuner.results.envelope import envelope, envelope_points
from tuner.results.records import TrialResult
from tuner.results.trials import (
    baseline_results,
    best_config_document,
    best_trial,
    measured_trials,
    pareto_front,
    result_of,
    shown_trials,
)
from tuner.units import format_rate, format_ratio


def trial_params(t: optuna.trial.FrozenTrial) -> Params:
    """A trial's config: the measured one, else the one it was given, else its sampled values over
    the defaults (a trial of an older study that stopped before it stored its config)."""
    result = result_of(t)
    if result is not None:
        return result.params
    if "params" in t.user_attrs:
        return Params.from_dict(t.user_attrs["params"])
    return Params.from_dict({**Params().to_dict(), **{k: v for k, v in t.params.items() if k in PARAM_NAMES}})


def _reason(t: optuna.trial.FrozenTrial, result: TrialResult | None) -> str:
    if t.state == optuna.trial.TrialState.PRUNED:
        return f"not measured: {t.user_attrs.get('plan_infeasible', 'pruned')}"
    if t.state == optuna.trial.TrialState.FAIL:
        return t.user_attrs.get("fail_reason", "failed")
    return result.reason if result is not None else ""


def _measured_columns(r: TrialResult | None) -> dict:
    """The result's columns of a trial's row (None where the trial has no result)."""
    if r is None:
        return {"feasible": False, "throughput": 0.0, "verdict": "", "throughput_ci": None, "estimator": "",
                **dict.fromkeys(("p50_ms", "p90_ms", "p99_ms", "p999_ms", "capacity", "unloaded_p99_ms", "cpu_util",
                                 "steal_pct", "foreign_cpu", "disturbed_windows", "duration_s"))}
    return {"feasible": r.feasible, "throughput": r.throughput, "p50_ms": r.p50_ms, "p90_ms": r.p90_ms,
            "p99_ms": r.p99_ms, "p999_ms": r.p999_ms, "capacity": r.capacity, "unloaded_p99_ms": r.unloaded_p99_ms,
            "cpu_util": r.cpu_util, "verdict": r.verdict, "throughput_ci": list(r.throughput_ci),
            "estimator": r.estimator,
            "steal_pct": r.interference.steal_pct, "foreign_cpu": r.interference.foreign_cpu,
            "disturbed_windows": r.interference.disturbed_windows, "duration_s": r.duration_s}


_COLUMNS = ("trial", "state", "label", "baseline", "host", "fingerprint", "feasible", "pareto", "throughput",
            "p50_ms", "p90_ms", "p99_ms", "p999_ms", "capacity", "unloaded_p99_ms", "cpu_util", "reused_from",
            "reason", "verdict", "throughput_ci", "estimator", "steal_pct", "foreign_cpu", "disturbed_windows")


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, config, result, why infeasible."""
    front = {t.number for t in pareto_front(study)}
    rows = []
    for t in shown_trials(study):
        r = result_of(t)
        row = {"trial": t.number, "state": t.state.name, "label": t.user_attrs.get("label", ""),
               "baseline": t.user_attrs.get("baseline", ""), "host": t.user_attrs.get("host", ""),
               "fingerprint": t.user_attrs.get("topology_fingerprint", ""), "pareto": t.number in front,
               "reused_from": t.user_attrs.get("reused_from", ""), "reason": _reason(t, r), **_measured_columns(r)}
        params = trial_params(t).to_dict()
        rows.append({**{k: row[k] for k in _COLUMNS}, **{f"param_{k}": params[k] for k in PARAM_NAMES},
                     "started": t.datetime_start, "duration_s": row["duration_s"]})
    return pd.DataFrame(rows)


def by_fingerprint(frame: pd.DataFrame) -> pd.DataFrame | None:
    """Per topology fingerprint (a heterogeneous fleet): hosts, configs measured, best throughput."""
    measured = frame[(frame.state == "COMPLETE") & (frame.fingerprint != "")]
    if measured.fingerprint.nunique() < 2:
        return None
    rows = []
    for fp, group in measured.groupby("fingerprint"):
        feasible = group[group.feasible]
        best = feasible.loc[feasible.throughput.idxmax()] if len(feasible) else None
        rows.append({"fingerprint": fp, "hosts": ", ".join(sorted(set(group.host))), "trials": len(group),
                     "best config": best.label if best is not None else "-",
                     "best throughput": float(best.throughput) if best is not None else 0.0})
    return pd.DataFrame(rows)


def importances(study: optuna.Study, trials: list[optuna.trial.FrozenTrial] | None = None) -> dict[str, float] | str:
    """optuna.importance on the first objective (throughput; a deployment's load factor) over the
    measured trials (no repeats; ``trials`` when given), for the parameters every one of them
    suggested (the space is conditional), or why not."""
    complete = [t for t in (measured_trials(study) if trials is None else trials) if t.params]
    common = set.intersection(*(set(t.params) for t in complete)) if complete else set()
    varying = {k for k in common if len({str(o.params.get(k)) for o in complete}) > 1}
    if len(complete) < 4 or not varying:
        return f"not enough sampled trials to estimate importances ({len(complete)} with varying params)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            measured = optuna.create_study(directions=study.directions)
            measured.add_trials(complete)
            return dict(optuna.importance.get_param_importances(measured, target=lambda t: t.values[0],
                                                                params=sorted(varying)))
    except Exception as exc:  # fANOVA refuses some degenerate studies
        return f"importances unavailable ({type(exc).__name__}: {str(exc)[:120]})"


def _bound(study: optuna.Study) -> float | None:
    return study.user_attrs.get("p99_bound_ms")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish_png(plt, fig, ax, xlabel: str, ylabel: str, title: str) -> bytes:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    return out.getvalue()


def pareto_png(study: optuna.Study) -> bytes:
    """Throughput vs P99 of every feasible trial; the front joined; baselines named."""
    plt = _pyplot()
    frame = trials_frame(study)
    feasible = frame[frame.feasible]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(feasible.p99_ms, feasible.throughput, color="#999", label="feasible trial")
    front = feasible[feasible.pareto].sort_values("p99_ms")
    ax.plot(front.p99_ms, front.throughput, "o-", color="#c22", label="Pareto front")
    for _, row in front.iterrows():
        ax.annotate(row.label, (row.p99_ms, row.throughput), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for _, row in feasible[feasible.baseline != ""].iterrows():
        ax.annotate(f"[{row.baseline}]", (row.p99_ms, row.throughput), textcoords="offset points",
                    xytext=(4, -10), fontsize=7, color="#26a")
    if _bound(study):
        ax.axvline(_bound(study), color="#555", linestyle=":", label=f"bound {_bound(study):g} ms")
    return _finish_png(plt, fig, ax, "P99 latency (ms)", "throughput at the bound (req/s)",
                       f"{study.study_name}: throughput vs P99")


def envelope_png(study: optuna.Study) -> bytes:
    """Best throughput for any P99 bound, from every counted window of every trial."""
    plt = _pyplot()
    points = envelope_points(study)
    stairs = envelope(points)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if points:
        ax.scatter([p.p99_ms for p in points], [p.throughput for p in points], s=10, color="#bbb",
                   label="measured window")
        right = max(_bound(study) or 0.0, max(p.p99_ms for p in points))
        ax.step([p.p99_ms for p in stairs] + [right], [p.throughput for p in stairs] + [stairs[-1].throughput],
                where="post", color="#c22", label="envelope (best config for a bound)")
        for p in stairs:
            ax.annotate(p.label, (p.p99_ms, p.throughput), textcoords="offset points", xytext=(3, 3), fontsize=7)
    if _bound(study):
        ax.axvline(_bound(study), color="#555", linestyle=":", label=f"study bound {_bound(study):g} ms")
    ax.set_xscale("log")
    return _finish_png(plt, fig, ax, "P99 bound (ms)", "best throughput (req/s)",
                       f"{study.study_name}: throughput-vs-latency envelope")


def pareto_html(study: optuna.Study, include_plotlyjs: bool | str = True) -> str:
    """An interactive (plotly) throughput-vs-P99 chart; hover shows each trial's config."""
    import plotly.graph_objects as go

    frame = trials_frame(study)
    feasible = frame[frame.feasible]
    front = feasible[feasible.pareto].sort_values("p99_ms")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=feasible.p99_ms, y=feasible.throughput, mode="markers", name="feasible trials",
                             text=[f"#{n} {label} {b}" for n, label, b in
                                   zip(feasible.trial, feasible.label, feasible.baseline, strict=True)],
                             hovertemplate="%{text}<br>P99 %{x:.2f} ms<br>%{y:.1f} req/s<extra></extra>"))
    fig.add_trace(go.Scatter(x=front.p99_ms, y=front.throughput, mode="lines+markers", name="Pareto front",
                             text=list(front.label),
                             hovertemplate="%{text}<br>P99 %{x:.2f} ms<br>%{y:.1f} req/s<extra></extra>"))
    if _bound(study):
        fig.add_vline(x=_bound(study), line_dash="dot", annotation_text=f"bound {_bound(study):g} ms")
    fig.update_layout(title=f"{study.study_name}: throughput vs P99", xaxis_title="P99 (ms)",
                      yaxis_title="throughput (req/s)")
    return fig.to_html(include_plotlyjs=include_plotlyjs, full_html=True)


def summary(study: optuna.Study) -> dict:
    """The facts a person wants first: model, bound, best, ratios to the baselines."""
    best = best_trial(study)
    model = study.user_attrs.get("model", {})
    out = {"study": study.study_name, "model": model.get("name"), "model_sha256": model.get("sha256"),
           "p99_bound_ms": _bound(study), "scenario": study.user_attrs.get("scenario"),
           "trials": len(shown_trials(study)), "best": None, "baselines": {}}
    r = result_of(best) if best is not None else None
    if best is not None and r is not None:
        out["best"] = {"trial": best.number, "label": best.user_attrs.get("label"), "throughput": r.throughput,
                       "throughput_ci": list(r.throughput_ci), "estimator": r.estimator,
                       "p50_ms": r.p50_ms, "p99_ms": r.p99_ms}
    for name, row in sorted(baseline_results(study).items()):
        ratio, ratio_ci = None, None
        if r is not None and row.feasible and row.throughput > 0:
            ratio, lo, hi = stats.estimate_ratio(r.throughput, r.throughput_ci, row.throughput,
                                                 row.result.throughput_ci)
            ratio_ci = [lo, hi]
        out["baselines"][name] = {"throughput": row.throughput if row.feasible else None,
                                  "throughput_ci": list(row.result.throughput_ci) if row.feasible else None,
                                  "feasible": row.feasible, "failed": row.failed, "reason": row.reason,
                                  "best_ratio": ratio, "best_ratio_ci": ratio_ci}
    return out


def summary_text(study: optuna.Study) -> str:
    """``summary`` as a few sentences (the report's head, summary.md)."""
    s = summary(study)
    bound = f"P99 <= {s['p99_bound_ms']:g} ms" if s["p99_bound_ms"] else "no P99 bound"
    lines = [f"placetune study {s['study']}: model {s['model']} (sha256 {str(s['model_sha256'])[:12]}), {bound}, "
             f"scenario {s['scenario']}, {s['trials']} trials."]
    if s["best"]:
        b = s["best"]
        rate = format_rate(b["throughput"], tuple(b["throughput_ci"]), b["estimator"])
        lines.append(f"Best: {b['label']} (trial {b['trial']}) {rate} req/s, P50 {b['p50_ms']:.2f} ms, "
                     f"P99 {b['p99_ms']:.2f} ms.")
    else:
        lines.append("No config met the bound.")
    for name, r in s["baselines"].items():
        if r["best_ratio"] is not None:  # one measurement each: the race (best_config.json) decides
            ratio = format_ratio(r["best_ratio"], *r["best_ratio_ci"])
            lines.append(f"vs {name}: {r['throughput']:.1f} req/s -> {ratio} provisional")
        elif r["failed"]:  # never measured: a failed trial is not an infeasible config
            lines.append(f"vs {name}: failed: {r['reason'].removeprefix('trial failed: ')}")
        else:
            lines.append(f"vs {name}: infeasible ({r['reason']})")
    return "\n".join(lines)


def html_report(study: optuna.Study) -> str:
    """A self-contained page: summary, Pareto table, baselines, importances, the three plots."""
    frame = trials_frame(study)
    imp = importances(study)
    front = frame[frame.pareto].sort_values("throughput", ascending=False)
    cols = ["trial", "label", "baseline", "throughput", "p50_ms", "p99_ms", "cpu_util"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>placetune report: {html.escape(study.study_name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}</style></head><body>",
        f"<h1>placetune report: {html.escape(study.study_name)}</h1>",
        "<pre>" + html.escape(summary_text(study)) + "</pre>",
        "<h2>Pareto front</h2>", front[cols].to_html(index=False, float_format=lambda v: f"{v:.2f}"),
        "<h2>Parameter importances (throughput)</h2>",
    ]
    if isinstance(imp, dict):
        parts.append(pd.DataFrame({"param": list(imp), "importance": list(imp.values())})
                     .to_html(index=False, float_format=lambda v: f"{v:.3f}"))
    else:
        parts.append(f"<p>{html.escape(imp)}</p>")
    for title, png in (("Throughput vs P99", pareto_png(study)), ("Envelope", envelope_png(study))):
        parts.append(f"<h2>{title}</h2><img alt='{title}' src='data:image/png;base64,"
                     f"{base64.b64encode(png).decode()}'>")
    interactive = pareto_html(study, include_plotlyjs=True)
    body = interactive[interactive.index("<body>") + 6:interactive.rindex("</body>")]
    parts += ["<h2>Interactive</h2>", body, "<h2>All trials</h2>",
              frame.drop(columns=["started"]).to_html(index=False, na_rep="",
                                                      float_format=lambda v: f"{v:.2f}" if math.isfinite(v)
                                                      else str(v)),
              "</body></html>"]
    return "\n".join(parts)


def best_config_or_none(study: optuna.Study) -> dict | None:
    """The best config's document, or None when no trial is feasible yet."""
    best = best_trial(study)
    return best_config_document(study, best) if best is not None else None
