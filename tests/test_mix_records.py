"""A deployment's typed records (issue 31): what earlier versions stored and wrote (frozen samples in
tests/data/mix/, see its README) is read by the strict readers and written back key for key; an
unknown or a missing key is refused with its name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest

from tuner.results.documents import DeploymentDocument
from tuner.results.mixrecords import Deployment, MixResult
from tuner.results.records import PlacementSeen, ResultFormatError

DATA = Path(__file__).resolve().parent / "data" / "mix"


def _sample(name: str) -> dict:
    return json.loads((DATA / name).read_text())


@pytest.mark.parametrize("name", ["result-pass.json", "result-undecided.json"])
def test_a_stored_mix_result_is_read_typed_and_written_back_as_it_was(name):
    stored = _sample(name)
    result = MixResult.from_dict(stored)
    assert json.loads(json.dumps(result.to_dict())) == stored
    assert set(result.models) == {"small", "big"} and result.runs
    assert all(set(run.windows) == {"small", "big"} for run in result.runs)
    for figures in result.models.values():
        assert figures.plan.workers and all(isinstance(p, PlacementSeen) for p in figures.placement)
    assert result.feasible == (result.verdict == "pass") and result.machine.hostname


def test_a_stored_deployment_document_is_read_typed_and_written_back_as_it_was():
    stored = _sample("document.json")
    document = DeploymentDocument.from_dict(stored)
    assert json.loads(json.dumps(document.to_dict())) == stored
    assert list(document.to_dict()) == list(stored)  # the keys in the order earlier versions wrote them
    for name, model in document.models.items():
        assert list(model.to_dict()) == list(stored["models"][name])
    assert document.baseline == "even_split" and document.deployment.names == ("small", "big")


def test_a_deployment_document_from_before_c9a1088_has_no_baseline_and_is_read():
    stored = _sample("document-c9a1088.json")
    document = DeploymentDocument.from_dict(stored)
    assert document.baseline == ""
    assert {k: v for k, v in document.to_dict().items() if k != "baseline"} == stored


def test_the_stored_deployment_reads_back():
    deployment = Deployment.from_dict(_sample("study-attrs.json")["deployment"])
    assert deployment.names == ("small", "big") and deployment.shares == (3.0, 1.0)
    assert [m.p99_bound_s for m in deployment.models] == [0.05, 0.08]


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(bogus=1), "unknown key(s) bogus"),
    (lambda d: d.pop("load_factor_ci"), "lacks key(s) load_factor_ci"),
    (lambda d: d["models"]["small"].pop("capacity"), "lacks key(s) capacity"),
    (lambda d: d["config"].update(extra=[]), "unknown key(s) extra"),
])
def test_a_mix_result_with_an_unknown_or_missing_key_is_refused_by_name(edit, message):
    stored = _sample("result-pass.json")
    edit(stored)
    with pytest.raises(ResultFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MixResult.from_dict(stored)


def test_a_deployment_document_with_an_unknown_key_is_refused_by_name():
    stored = _sample("document.json")
    stored["models"]["big"]["surprise"] = True
    with pytest.raises(ResultFormatError, match=r"unknown key\(s\) surprise"):
        DeploymentDocument.from_dict(stored)


def test_the_frozen_study_gives_the_document_its_run_wrote(tmp_path):
    from tuner.app.kinds import kind_of
    from tuner.results.mixtrials import study_document

    shutil.copy(DATA / "study.db", tmp_path / "study.db")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert kind_of(study).name == "deployment"
    assert study_document(study).to_dict() == _sample("document.json")
    best = kind_of(study).best_so_far(study)
    assert best.load_factor == _sample("document.json")["load_factor"] and {m[0] for m in best.models} == {
        "small", "big"}
