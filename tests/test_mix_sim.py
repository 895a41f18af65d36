"""The deployment logic on the simulated fleet (issue 31: deterministic where tests/test_mix.py's real
processes on a busy machine could only skip): one config's measurement, a whole study with its
baselines, sampled configs and race, the document it writes and its export, and a new export
format appearing for deployments once it is added to the one format table."""

from __future__ import annotations

import json

import optuna
import pytest

from experiments.sim.calibration import SIM_MODEL
from experiments.sim.machines import vm16
from tests.sim_mix import SETTINGS, SHARES, deployment, sim_fleets, sim_study
from tuner.app.deployment import DeploymentTuning
from tuner.bench import stats
from tuner.mix.division import division_choices, even_split, plans
from tuner.mix.measure import measure_mix
from tuner.results import export
from tuner.results.mixtrials import measured, mix_result, study_document

TOPOLOGY = vm16()


def _measured(seed: int = 0):
    spec = deployment()
    return measure_mix(TOPOLOGY, even_split(TOPOLOGY, spec), spec, {n: SIM_MODEL for n in spec.names}, SETTINGS,
                       fleet_factory=sim_fleets(TOPOLOGY, seed))


def test_a_mix_measurement_finds_a_load_factor_every_model_serves_within_its_bound():
    result = _measured()
    assert result.verdict == stats.PASS and result.load_factor > 0
    low, high = result.load_factor_ci
    assert low <= result.load_factor <= high < float("inf")  # the estimate inside its bracket
    assert result.runs and all(set(r.windows) == {"detector", "ranker"} for r in result.runs)
    assert all(r.verdict != stats.PASS for r in result.runs if r.load_factor > high)
    for name, bound_ms, share in (("detector", 50.0, 2), ("ranker", 100.0, 1)):
        m = result.models[name]  # its rate at L, the latencies of the run nearest under L
        assert m.p99_bound_ms == bound_ms and m.verdict != stats.FAIL and m.p99_ms <= bound_ms
        assert m.throughput == pytest.approx(share * result.load_factor)
        assert m.offered_rate <= result.load_factor * share * 1.001
        assert m.capacity > 0 and m.plan.workers and len(m.placement) == len(m.plan.workers)
    assert result.models["detector"].offered_rate == pytest.approx(2 * result.models["ranker"].offered_rate)
    assert result.worst_p99_ratio < 1.0


def test_the_same_seeds_give_the_same_mix_result():
    first, again = _measured(seed=3), _measured(seed=3)
    assert first.load_factor == again.load_factor and first.to_dict()["runs"] == again.to_dict()["runs"]


def test_a_deployment_study_measures_the_baselines_first_then_new_configs_then_races(tmp_path):
    cfg, document, storage = sim_study(tmp_path, n_trials=4, race_rounds=2)
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    trials = measured(study)
    assert [t.user_attrs.get("baseline") for t in trials[:2]] == ["ort_default", "even_split"]
    assert len(trials) == 4 and len({t.user_attrs["label"] for t in trials}) == 4  # nothing measured twice
    assert all(t.user_attrs["proposed_by"] == "tpe" for t in trials[2:])
    parts = division_choices(TOPOLOGY, cfg.deployment)
    for t in trials[2:]:  # every sampled config keeps each model inside its part of the machine
        config = mix_result(t).config
        assert config.division in parts
        for name, the_plan in plans(TOPOLOGY, config).items():
            assert {c for w in the_plan.workers for c in w.cpus} <= set(config.cpus[name])
    race = study.user_attrs["race"]
    assert document.race == race and document.label == race["recommended"]
    assert all(len(v) == 2 for v in race["load_factors"].values())
    assert set(document.baselines) == {"ort_default", "even_split"} and document.load_factor > 0
    assert json.loads((tmp_path / "best.json").read_text()) == study_document(study).to_dict() == document.to_dict()


def test_a_deployment_race_stops_at_its_time_limit_after_its_first_round(tmp_path):
    """--race-timeout limits a deployment's race as it does a model's (tuner.search.race_subject)."""
    cfg, _document, storage = sim_study(tmp_path, n_trials=3, race_rounds=0)
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert "race" not in study.user_attrs  # race_k 0: no race
    result = DeploymentTuning(cfg, fleet_factory=sim_fleets(TOPOLOGY)).race(study, 4, 0.0, lambda _m: None)
    assert all(len(v) == 1 for v in result.throughputs.values()) and len(result.throughputs) >= 2
    assert study.user_attrs["race"]["load_factors"] == result.throughputs


def test_a_deployment_document_exports_one_file_per_model_in_every_format(tmp_path):
    _, document, _ = sim_study(tmp_path, n_trials=2, race_rounds=0)
    models = {n: m.to_dict() for n, m in document.models.items()}
    assert set(models) == set(SHARES)
    for fmt in export.FORMATS:
        files = export.deployment_files(models, fmt, "/etc/placetune")
        the_format = export.format_of(fmt)
        for name, sub in models.items():
            assert files[f"{name}{the_format.suffix}"] == (export.render(sub, fmt, f"/etc/placetune/{name}.json"),
                                                           the_format.executable)
            assert json.loads(files[f"{name}.json"][0]) == sub


def test_a_new_export_format_added_to_the_one_table_appears_for_deployments_too(tmp_path, monkeypatch):
    """A format is one entry of tuner.results.export's table: once there, a deployment's export
    (tuner.results.export.deployment_files, what ``export --study`` and ``export --config`` write)
    has it for every model, with its suffix and mode, and nothing else changes."""
    _, document, storage = sim_study(tmp_path, n_trials=2, race_rounds=0)
    toy = export.Format(lambda doc, config_path: f"{doc['model']['name']} {len(doc['plan']['workers'])} "
                                                 f"worker(s) {config_path}\n", "-toy.txt", executable=True)
    monkeypatch.setitem(export._FORMATS, "toy", toy)
    monkeypatch.setattr(export, "FORMATS", tuple(export._FORMATS))  # as the module computes it at import
    files = export.deployment_files({n: m.to_dict() for n, m in document.models.items()}, "toy", "/srv")
    assert set(files) == {"detector.json", "detector-toy.txt", "ranker.json", "ranker-toy.txt"}
    for name, model in document.models.items():
        assert files[f"{name}-toy.txt"] == (f"{name} {len(model.plan.workers)} worker(s) /srv/{name}.json\n", True)
    from tuner.cli.main import app

    app(["export", "--storage", storage, "--format", "toy", "--out", str(tmp_path / "toy")], standalone_mode=False)
    written = {p.name: p for p in (tmp_path / "toy").iterdir()}
    assert set(written) == set(files) and written["ranker-toy.txt"].stat().st_mode & 0o111
    assert written["detector-toy.txt"].read_text().startswith("detector ")


def test_shared_cores_offer_the_shared_division_to_the_sampler(tmp_path):
    cfg, document, storage = sim_study(tmp_path, n_trials=3, race_rounds=0, shared_cores=True)
    assert "shared" in division_choices(TOPOLOGY, cfg.deployment) and document.deployment.shared_cores
