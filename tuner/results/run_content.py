"""What a study's MLflow runs hold, apart from talking to MLflow: a child run's metrics and tags
from a trial's typed result, and the parent run's artifacts (tuner.results.tracking logs them)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna

from tuner.results.records import TrialResult

METRIC_KEYS = ("throughput", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "cpu_util")
WINDOW_METRICS = (("offered_rate", "window_offered"), ("achieved_rate", "window_achieved"),
                  ("p50_ms", "window_p50_ms"), ("p99_ms", "window_p99_ms"))


def write_artifacts(study: optuna.Study, out: Path, summary: dict, with_plots: bool) -> None:
    """The parent run's artifacts: trials table, summary, topology, plots, the best config."""
    import yaml

    from tuner.results import report

    report.trials_frame(study).to_csv(out / "trials.csv", index=False)
    (out / "summary.md").write_text(report.summary_text(study) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "topology.json").write_text(json.dumps(study.user_attrs.get("topology", {}), indent=1) + "\n")
    if with_plots:
        (out / "pareto.png").write_bytes(report.pareto_png(study))
        (out / "envelope.png").write_bytes(report.envelope_png(study))
        (out / "pareto.html").write_text(report.pareto_html(study))
    document = report.best_config_or_none(study)
    if document is not None:
        (out / "best_config.json").write_text(json.dumps(document, indent=1) + "\n")
        (out / "best_config.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def trial_metrics(result: TrialResult | None, now: int) -> list:
    """A child run's metrics: feasible, the headline figures, every window (one step each), the
    intervals and the interference figures, where the result has them (finite)."""
    from mlflow.entities import Metric

    metrics = [Metric("feasible", 1.0 if result is not None and result.feasible else 0.0, now, 0)]
    if result is None:
        return metrics
    values = {key: getattr(result, key) for key in METRIC_KEYS}
    for key in ("throughput_ci", "p99_ci_ms"):
        values[f"{key}_lo"], values[f"{key}_hi"] = getattr(result, key)
    values.update({f"interference_{k}": v for k, v in result.interference.to_dict().items()})
    metrics += [Metric(k, float(v), now, 0) for k, v in values.items() if _finite(v)]
    for step, w in enumerate(result.windows):
        metrics += [Metric(name, float(getattr(w, key)), now, step) for key, name in WINDOW_METRICS
                    if _finite(getattr(w, key))]
    return metrics


def trial_tags(trial: optuna.trial.FrozenTrial, result: TrialResult | None) -> dict[str, str]:
    """A child run's tags: state, verdict, baseline, why not feasible, host."""
    tags = {"state": trial.state.name}
    if result is not None:
        tags["verdict"] = result.verdict
    if "baseline" in trial.user_attrs:
        tags["baseline"] = trial.user_attrs["baseline"]
    reason = ((result.reason if result is not None else "") or trial.user_attrs.get("plan_infeasible")
              or trial.user_attrs.get("fail_reason", ""))
    if reason:
        tags["reason"] = str(reason)[:5000]
    if "host" in trial.user_attrs:
        tags["host"] = trial.user_attrs["host"]
    return tags
