"""Deployment studies as first-class citizens (issue 23): the race's recommendation, the document it
writes, the Pareto view (on synthetic studies, no processes), then report, log, fleet status and
export --study (the commands, in processes of their own) on a deployment study made by
``optimize --deployment``'s service on the simulated fleet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import cycle
from pathlib import Path

import pytest

from tests.mix_studies import study_with_baselines
from tuner.app.deployment import race_trials
from tuner.results.mixtrials import best_and_baselines, is_deployment_study, pareto_front, race_of
from tuner.results.mixtrials import study_document as typed_document

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "tuner.cli"]


def study_document(study) -> dict | None:
    """The study's best-config document as best_config.json holds it."""
    document = typed_document(study)
    return document.to_dict() if document is not None else None


def _race(study, rounds: dict[str, list[float]], n: int = 4) -> dict:
    """The study's race with each entrant's load factor per round given by config label."""
    best, baselines = best_and_baselines(study)
    values = {label: cycle(lfs) for label, lfs in rounds.items()}
    race = race_trials(best, baselines, lambda config: next(values[config.label()]), rounds=n)
    study.set_user_attr("race", race)
    return race


# ---- the race and the document (synthetic studies) ------------------------------------------------
def test_the_mix_race_recommends_a_baseline_proven_faster_and_the_document_holds_it(tmp_path):
    study, t = study_with_baselines(f"sqlite:///{tmp_path / 's.db'}")
    best, even, ort = (t[k].user_attrs["label"] for k in ("best", "even_split", "ort_default"))
    race = _race(study, {best: [100, 102, 98, 101], even: [130, 133, 128, 131], ort: [50, 52, 49, 51]})
    assert race["recommended"] == even and race["searched"]["outcome"] == "slower"
    assert "even_split is faster than every searched config" in race["summary"]
    assert race["searched"]["ci"][1] < 1.0 and race["best_label"] == best
    document = study_document(study)
    assert document["label"] == even and document["baseline"] == "even_split"
    assert document["trial"] == t["even_split"].number and document["load_factor"] == 100.0
    assert {m: d["params"] for m, d in document["models"].items()} == {
        m: p for m, p in t["even_split"].user_attrs["result"]["config"]["params"].items()}
    assert document["race"]["recommended"] == even


def test_the_mix_race_keeps_a_searched_config_proven_faster(tmp_path):
    study, t = study_with_baselines(f"sqlite:///{tmp_path / 's.db'}")
    best, even, ort = (t[k].user_attrs["label"] for k in ("best", "even_split", "ort_default"))
    race = _race(study, {best: [150, 152, 149, 151], even: [100, 101, 99, 100], ort: [50, 51, 49, 50]})
    assert race["recommended"] == best and race["searched"]["outcome"] == "faster"
    assert race["vs_baselines"]["even_split"]["ci"][0] > 1.0 and race["vs_baselines"]["ort_default"]["ratio"] > 2.5
    document = study_document(study)
    assert document["label"] == best and document["baseline"] == "" and document["trial"] == t["best"].number


def test_no_significant_difference_recommends_the_simpler_baseline(tmp_path):
    study, t = study_with_baselines(f"sqlite:///{tmp_path / 's.db'}")
    best, even, ort = (t[k].user_attrs["label"] for k in ("best", "even_split", "ort_default"))
    race = _race(study, {best: [100, 140, 80, 120], even: [120, 100, 110, 105], ort: [50, 51, 49, 50]})
    assert race["searched"]["outcome"] == "no difference" and race["recommended"] == even
    assert "no significant difference" in race["summary"] and study_document(study)["baseline"] == "even_split"


def test_a_baseline_that_served_no_load_factor_is_not_raced(tmp_path):
    study, t = study_with_baselines(f"sqlite:///{tmp_path / 's.db'}", ort_lf=0.0)
    best, even = (t[k].user_attrs["label"] for k in ("best", "even_split"))
    race = _race(study, {best: [150, 152, 149, 151], even: [100, 101, 99, 100]})
    assert [e["baseline"] for e in race["entrants"]] == ["", "even_split"]
    assert set(race["vs_baselines"]) == {"even_split"}


def test_a_race_of_an_earlier_best_is_not_the_race_of_todays_best(tmp_path):
    from tests.mix_studies import add_trial, mix_result, searched_config, sixteen_cores

    study, t = study_with_baselines(f"sqlite:///{tmp_path / 's.db'}")
    best, even, ort = (t[k].user_attrs["label"] for k in ("best", "even_split", "ort_default"))
    _race(study, {best: [100, 102, 98, 101], even: [130, 133, 128, 131], ort: [50, 52, 49, 51]})
    newer = add_trial(study, mix_result(sixteen_cores(), searched_config(sixteen_cores(), "9+7", 1), 200.0))
    assert race_of(study, best_and_baselines(study)[0]) is None  # a resumed study found a better config
    document = study_document(study)
    assert document["trial"] == newer.number and document["race"] is None


def test_the_pareto_view_trades_load_factor_for_latency_headroom(tmp_path):
    study, t = study_with_baselines(f"sqlite:///{tmp_path / 's.db'}")
    # best: L 120 at 0.8 of the bounds; other: L 108 at 0.3; even split: L 100 at 0.5 (dominated by other)
    assert [x.number for x in pareto_front(study)] == [t["best"].number, t["other"].number]
    assert is_deployment_study(study)


def test_the_deployment_report_names_the_recommended_config(tmp_path):
    from tuner.results import mixreport as report

    study, t = study_with_baselines(f"sqlite:///{tmp_path / 's.db'}")
    best, even, ort = (t[k].user_attrs["label"] for k in ("best", "even_split", "ort_default"))
    _race(study, {best: [100, 102, 98, 101], even: [130, 133, 128, 131], ort: [50, 52, 49, 51]})
    text = report.summary_text(study)
    assert f"Best: {best} (trial {t['best'].number}) load factor 120" in text
    assert f"Recommended (what best_config.json and export --study hold): {even} (baseline even_split)" in text
    assert "vs ort_default: load factor 50 -> 2.40x" in text
    page = report.html_report(study)
    assert "placetune deployment report" in page and "Final race" in page and even in page


# ---- a real deployment study ------------------------------------------------------------------------
def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "250"})


@pytest.fixture(scope="module")
def real_study(tmp_path_factory) -> dict:
    """A deployment study as ``optimize --deployment`` makes it (its service, tuner.app.deployment),
    measured on the simulated fleet (tests/sim_mix.py: deterministic, no busy-machine skips), a
    2-round race; the commands below read it from its storage as they read any study."""
    from tests.sim_mix import sim_study
    from tuner.cli.mix import summary

    d = tmp_path_factory.mktemp("mixstudy")
    _, document, _ = sim_study(d, n_trials=3, race_rounds=2)
    return {"dir": d, "best": json.loads((d / "best.json").read_text()), "stdout": summary(document)}


def test_best_config_json_of_a_deployment_holds_what_the_race_recommends(real_study):
    best = real_study["best"]
    race = best["race"]
    assert race is not None and best["label"] == race["recommended"]
    assert set(race["load_factors"]) == {e["label"] for e in race["entrants"]}
    assert all(len(v) == 2 for v in race["load_factors"].values())
    assert f"race: {race['summary']}" in real_study["stdout"]


def test_report_reads_a_deployment_study(real_study):
    d = real_study["dir"]
    done = _cli(["report", "--html", "report.html"], d)
    assert done.returncode == 0, done.stderr
    for text in ("placetune deployment study", "Pareto front (passing configs", "final race",
                 f"Recommended (what best_config.json and export --study hold): {real_study['best']['label']}"):
        assert text in done.stdout, done.stdout
    assert "placetune deployment report" in (d / "report.html").read_text()


def test_export_study_of_a_deployment_writes_the_config_best_config_json_holds(real_study, tmp_path):
    d = real_study["dir"]
    done = _cli(["export", "--format", "json", "--out", str(tmp_path / "json")], d)
    assert done.returncode == 0, done.stderr
    for name, document in real_study["best"]["models"].items():
        assert json.loads((tmp_path / "json" / f"{name}.json").read_text()) == document
    done = _cli(["export", "--format", "numactl", "--out", str(tmp_path / "sh")], d)
    assert done.returncode == 0 and sorted(p.name for p in (tmp_path / "sh").glob("*.sh")) == [
        "detector-launch.sh", "ranker-launch.sh"], done.stderr
    for args, message in ((["--p99", "30ms", "--out", str(tmp_path / "x")], "--p99 does not apply"),
                          ([], "give --out FOLDER")):
        done = _cli(["export", "--format", "json", *args], d)
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, (
            done.stderr)


def test_log_puts_a_deployment_study_in_mlflow_once(real_study, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'other-mlflow.db'}"
    first = _cli(["log", "--mlflow-uri", uri], real_study["dir"])
    assert first.returncode == 0, first.stderr
    measured = int(first.stdout.split(": ")[1].split(" trial run(s)")[0])
    assert measured >= 2 and f"; {measured} in all" in first.stdout
    again = _cli(["log", "--mlflow-uri", uri], real_study["dir"])
    assert again.returncode == 0 and ": 0 trial run(s) added" in again.stdout, again.stdout
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("placetune").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 1 + measured
    assert parents[0].data.metrics["best_load_factor"] == pytest.approx(real_study["best"]["load_factor"])


def test_fleet_status_reads_a_deployment_study(real_study):
    done = _cli(["fleet", "status"], real_study["dir"])
    assert done.returncode == 0, done.stderr
    assert "best so far:" in done.stdout and "load factor" in done.stdout
    assert "(not started)" not in done.stdout  # every trial names the host that measured it
