"""Typed results: one strict JSON form, the stored keys of every earlier format kept, older formats
read by version (frozen samples of each in tests/data/results), and the queries over a study's
trials built on them. Pure: no process, no ONNX Runtime."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from tuner.machine.placement import Params
from tuner.results.records import (
    FORMAT,
    Interference,
    PlacementSeen,
    ResultFormatError,
    TrialResult,
    WindowInterference,
    WindowResult,
    format_version,
)
from tuner.results.trials import baseline_results, best_config_document, result_of, summarize_trial

DATA = Path(__file__).resolve().parent / "data" / "results"


def stored(name: str) -> dict:
    """A frozen sample of a stored format: format1 (a study of 2026-11-22, before verdicts),
    format2 (a repeatability run of 2026-11-23, with verdicts and interference)."""
    return json.loads((DATA / f"{name}.json").read_text())


def same(a: TrialResult, b: TrialResult) -> bool:
    """Equal results (NaN figures compare equal through their JSON text)."""
    return a.to_json() == b.to_json()


def test_a_result_survives_its_json_and_says_its_format():
    result = TrialResult.from_dict(stored("format2"))
    text = result.to_json()
    assert json.loads(text)["format"] == FORMAT
    again = TrialResult.from_json(text)
    assert same(again, result)
    assert isinstance(again.params, Params) and isinstance(again.windows[0], WindowResult)
    assert isinstance(again.placement[0], PlacementSeen) and again.placement[0].planned_cpus == (0,)
    assert again.model.name == "squeezenet" and again.machine.affinity == 2


def test_the_stored_keys_are_those_of_the_previous_format_plus_format():
    sample = stored("format2")
    out = TrialResult.from_dict(sample).to_dict()
    assert set(out) == set(sample) | {"format", "estimator", "replay_id"}  # estimator: format 4; replay_id: 5
    assert set(out["interference"]) == set(sample["interference"])
    assert {"steal_pct", "foreign_cpu", "involuntary_ctx_switches", "migrations", "service_cv",
            "disturbed_windows"} <= set(out["interference"])
    for mine, theirs in zip(out["windows"], sample["windows"], strict=True):
        assert set(mine) == set(theirs) | {"inflation", "stopped_early"}
        assert set(mine["interference"]) == set(theirs["interference"])
    assert out["placement"] == sample["placement"]
    # the plan's params gained the batch settings (issue 24); a result written before them ran unbatched
    unbatched = {"max_batch": 1, "batch_timeout_ms": 0.0}
    assert out["plan"] == {**sample["plan"], "params": {**sample["plan"]["params"], **unbatched}}
    assert out["throughput_ci"] == sample["throughput_ci"] and out["verdict"] == sample["verdict"]


def test_an_unknown_key_is_refused_with_its_name():
    data = {**TrialResult.from_dict(stored("format2")).to_dict(), "throughputt": 1.0}
    with pytest.raises(ResultFormatError, match="unknown key.*throughputt.*known: params, plan"):
        TrialResult.from_dict(data)


def test_an_unknown_key_deep_inside_is_refused_too():
    data = TrialResult.from_dict(stored("format2")).to_dict()
    data["windows"][1]["p99.9_ms"] = 1.0
    with pytest.raises(ResultFormatError, match=r"a window has unknown key\(s\) p99.9_ms"):
        TrialResult.from_dict(data)
    data = TrialResult.from_dict(stored("format2")).to_dict()
    data["interference"]["steal"] = 1.0
    with pytest.raises(ResultFormatError, match="interference has unknown key"):
        TrialResult.from_dict(data)
    data = TrialResult.from_dict(stored("format2")).to_dict()
    data["params"]["workerz"] = 2
    with pytest.raises(Exception, match="workerz"):
        TrialResult.from_dict(data)


def test_a_current_result_missing_a_key_is_refused():
    data = TrialResult.from_dict(stored("format2")).to_dict()
    del data["confidence"]
    with pytest.raises(ResultFormatError, match="lacks key.*confidence"):
        TrialResult.from_dict(data)


def test_the_trial_number_stored_beside_a_result_is_accepted_and_dropped():
    data = {**TrialResult.from_dict(stored("format2")).to_dict(), "_trial": 7}
    assert "_trial" not in TrialResult.from_dict(data).to_dict()
    assert "_trial" in stored("format1")  # as the study stored it
    TrialResult.from_dict(stored("format1"))


def test_a_format_from_a_newer_placetune_is_refused():
    data = {**TrialResult.from_dict(stored("format2")).to_dict(), "format": FORMAT + 1}
    with pytest.raises(ResultFormatError, match="newer placetune"):
        TrialResult.from_dict(data)


def test_format_1_results_from_before_verdicts_read_with_verdicts_from_feasible_and_passed():
    sample = stored("format1")
    assert format_version(sample) == 1 and "verdict" not in sample
    result = TrialResult.from_dict(sample)
    assert result.verdict == ("pass" if sample["feasible"] else "fail")
    assert all(math.isnan(v) for v in (*result.throughput_ci, *result.p99_ci_ms, result.confidence))
    assert result.interference.disturbed_windows == 0 and math.isnan(result.interference.steal_pct)
    for window, raw in zip(result.windows, sample["windows"], strict=True):
        assert window.verdict == ("pass" if raw["passed"] else "fail")
        assert window.interference == WindowInterference()
    assert TrialResult.from_dict(json.loads(result.to_json())).verdict == result.verdict


def test_the_oldest_windows_without_service_percentiles_read_as_not_measured():
    sample = stored("format1")
    for w in sample["windows"]:
        del w["service_p50_ms"], w["service_p99_ms"]
    window = TrialResult.from_dict(sample).windows[0]
    assert math.isnan(window.service_p50_ms) and math.isnan(window.service_p99_ms)


def test_format_1_still_refuses_keys_it_never_had():
    with pytest.raises(ResultFormatError, match="unknown key.*verdictt"):
        TrialResult.from_dict({**stored("format1"), "verdictt": "pass"})


def test_format_2_results_read_their_interference_and_the_first_ones_an_empty_one():
    sample = stored("format2")
    assert format_version(sample) == 2
    result = TrialResult.from_dict(sample)
    assert result.interference.involuntary_ctx_switches == sample["interference"]["involuntary_ctx_switches"]
    assert result.windows[1].interference.disturbed is sample["windows"][1]["interference"]["disturbed"]
    early = copy.deepcopy(sample)  # c508556 stored {} before interference was measured (88ee81d)
    early["interference"] = {}
    for w in early["windows"]:
        w["interference"] = {}
    assert TrialResult.from_dict(early).interference == Interference()


def test_a_window_interference_lacking_a_key_is_refused_in_the_current_format():
    with pytest.raises(ResultFormatError, match="lacks key.*disturbed"):
        WindowInterference.from_dict({"steal_pct": 0.0, "foreign_cpu": 0.0, "involuntary_ctx_switches": 1,
                                      "migrations": 0})
    assert WindowInterference.from_dict({}, version=2) == WindowInterference()


def test_a_result_interference_is_the_result_window_figures_and_the_disturbed_count():
    quiet = WindowInterference(steal_pct=0.5, foreign_cpu=0.1, involuntary_ctx_switches=3, migrations=1)
    base = TrialResult.from_dict(stored("format2")).windows[0]
    best = replace(base, interference=quiet, service_cv=0.2)
    noisy = replace(base, interference=replace(quiet, disturbed=True, numa_local=5, numa_remote=1))
    figures = Interference.of_windows([noisy, best, noisy], best)
    assert (figures.steal_pct, figures.foreign_cpu, figures.service_cv) == (0.5, 0.1, 0.2)
    assert figures.disturbed_windows == 2 and figures.numa_local is None
    assert "numa_local" not in figures.to_dict() and "numa_local" in noisy.interference.to_dict()


# -- queries over a study ------------------------------------------------------------------------

def _study_with(results: dict[str, tuple[TrialResult, dict]]) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("topology_fingerprint", "fp")
    for label, (result, attrs) in results.items():
        study.add_trial(optuna.trial.create_trial(
            values=[result.throughput, result.p99_ms],
            user_attrs={"label": label, "result": {**result.to_dict(), "_trial": 0}, **attrs}))
    return study


def test_summaries_baselines_and_the_config_document_read_typed_results():
    measured = TrialResult.from_dict(stored("format2"))
    old = TrialResult.from_dict(stored("format1"))
    study = _study_with({"tuned": (measured, {}), "default": (old, {"baseline": "ort_default"})})
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={
        "baseline": "intel", "fail_reason": "WorkerError: worker 0 died"}))
    tuned, default, failed = study.trials
    summary = summarize_trial(tuned)
    assert (summary.label, summary.throughput, summary.params) == ("tuned", measured.throughput, measured.params)
    assert summarize_trial(failed).reason == "trial failed: WorkerError: worker 0 died"
    assert summarize_trial(failed).to_dict()["params"] is None
    rows = baseline_results(study)
    assert rows["ort_default"].result is not None and rows["ort_default"].throughput == old.throughput
    assert rows["intel"].failed and not rows["intel"].feasible and "worker 0 died" in rows["intel"].reason
    document = best_config_document(study, tuned)
    assert set(document) == {"format", "study", "trial", "label", "params", "plan", "scenario", "p99_bound_ms",
                             "throughput", "p50_ms", "p99_ms", "model", "topology_fingerprint", "machine"}
    assert document["params"] == measured.params.to_dict() and document["machine"]["hostname"] == "vm"
    assert set(document["model"]) == {"name", "path", "sha256"}
    assert result_of(failed) is None


def test_the_trials_table_shows_every_parameter_of_each_trial_config():
    from tuner.results.report import trials_frame

    measured = TrialResult.from_dict(stored("format2"))
    other = replace(measured, params=replace(measured.params, workers=1, spinning=False, numa_policy="bind"))
    frame = trials_frame(_study_with({"a": (measured, {}), "b": (other, {})})).set_index("label")
    for label, result in (("a", measured), ("b", other)):
        shown = {c[len("param_"):]: v for c, v in frame.loc[label].items() if c.startswith("param_")}
        assert shown == result.params.to_dict()
    assert frame.loc["b", "verdict"] == other.verdict and frame.loc["a", "steal_pct"] == measured.interference.steal_pct


def test_format_3_results_read_as_proven_bounds_with_unextended_window_defaults():
    sample = stored("format3")
    assert format_version(sample) == 3
    result = TrialResult.from_dict(sample)
    assert result.estimator == "bound"  # format 3's throughput is the highest rate proven to pass
    assert all(w.inflation == 1.0 and not w.stopped_early for w in result.windows)
    assert TrialResult.from_dict(result.to_dict()).estimator == "bound"
    data = result.to_dict()
    del data["estimator"]  # a format-4 result must carry it
    with pytest.raises(ResultFormatError, match="lacks key.*estimator"):
        TrialResult.from_dict(data)
