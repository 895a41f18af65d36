"""Multi-fidelity screening: which screened config is promoted, what a screening trial measures and
costs, when screening runs, and a replay in which only promotion can find the best config."""

from __future__ import annotations

from dataclasses import replace

import optuna
import pytest

from tests.conftest import fixture_dirs, fixture_topology
from tuner.bench.measure import MeasureSettings
from tuner.machine.placement import Params
from tuner.results.trials import best_trial, measured_trials
from tuner.search import screening
from tuner.search.screening import FULL, SCREEN, budget_spent, promotion, screen_settings, settings_for
from tuner.search.space import load_space
from tuner.search.strategy import Exhaustive, Sampled, Screening, choose_strategy, taken_labels

FIXTURES = fixture_dirs()


def _machine(prefix: str):
    return fixture_topology(next(p for p in FIXTURES if p.name.startswith(prefix)))


def _rung(*values: float) -> list[tuple[str, float]]:
    return [(f"c{i}", v) for i, v in enumerate(values)]


# ---- promotion (pure) ----------------------------------------------------------------------------
def test_nothing_is_promoted_before_eta_configs_are_screened():
    assert promotion(_rung(100.0, 90.0), set(), best_full=50.0, eta=3) is None
    assert promotion(_rung(100.0, 90.0, 80.0), set(), best_full=50.0, eta=3) == "c0"


def test_the_top_third_is_promoted_best_first_and_once():
    rung = _rung(10.0, 90.0, 20.0, 80.0, 30.0, 70.0, 40.0, 60.0, 50.0)  # top third: c1 (90), c3 (80), c5 (70)
    assert promotion(rung, set(), best_full=50.0) == "c1"
    assert promotion(rung, {"c1"}, best_full=50.0) == "c3"
    assert promotion(rung, {"c1", "c3"}, best_full=50.0) == "c5"
    assert promotion(rung, {"c1", "c3", "c5"}, best_full=50.0) is None  # 60 is not in the top third


def test_a_screen_that_cannot_beat_the_best_full_result_or_missed_the_bound_is_not_promoted():
    assert promotion(_rung(84.0, 10.0, 5.0), set(), best_full=100.0, margin=0.15) is None
    assert promotion(_rung(85.0, 10.0, 5.0), set(), best_full=100.0, margin=0.15) == "c0"
    assert promotion(_rung(0.0, 0.0, 0.0), set(), best_full=0.0) is None


def test_ties_are_broken_by_label_so_a_resumed_study_promotes_the_same_config():
    assert promotion([("b", 50.0), ("a", 50.0), ("c", 1.0)], set(), best_full=0.0) == "a"


# ---- a screening trial: its settings and its cost ------------------------------------------------
def test_screen_settings_are_shorter_and_still_valid():
    full = MeasureSettings(p99_bound_s=0.05, window_s=2.0, warmup_s=0.5, search_steps=5)
    short = screen_settings(full)
    assert short.window_s == 0.5 and short.warmup_s == 0.25 and short.search_steps == 2
    assert short.confidence == 0.8 < full.confidence
    assert short.max_extensions <= full.max_extensions and short.disturbed_reruns <= full.disturbed_reruns
    assert (short.p99_bound_s, short.scenario, short.seed) == (full.p99_bound_s, full.scenario, full.seed)
    tiny = MeasureSettings(window_s=0.1, search_steps=1, confidence=0.7)
    assert screen_settings(tiny) == MeasureSettings(window_s=0.1, warmup_s=0.25, search_steps=1, confidence=0.7,
                                                    max_extensions=1, disturbed_reruns=1, replay_wait_s=0.0,
                                                    narrow_top_up_s=0.0)
    assert settings_for(full, None) is full and settings_for(full, FULL) is full
    assert settings_for(full, SCREEN) == short


def _trial(label: str, fidelity: str | None, throughput: float, number: int) -> optuna.trial.FrozenTrial:
    result = {"throughput": throughput, "feasible": throughput > 0, "params": Params().to_dict()}
    attrs = {"label": label, **({"fidelity": fidelity} if fidelity else {})}
    if fidelity == SCREEN:
        trial = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED,
                                          user_attrs={**attrs, "screen_result": result})
    else:
        trial = optuna.trial.create_trial(values=[throughput, 10.0], user_attrs={**attrs, "result": result})
    trial.number = number
    return trial


def test_the_budget_counts_a_screening_measurement_as_a_fraction_of_a_full_one():
    trials = [_trial("base", None, 10.0, 0), _trial("a", SCREEN, 20.0, 1), _trial("b", SCREEN, 0.0, 2),
              _trial("a", FULL, 21.0, 3)]
    assert budget_spent(trials) == pytest.approx(2 + 2 * screening.SCREEN_COST)
    assert budget_spent(trials, Screening(Sampled(load_space("default", _machine("2arm"))), screen_cost=0.5)) == 3.0


def test_a_screened_config_is_taken_and_the_rung_knows_what_was_promoted():
    space = load_space("default", _machine("2arm"))
    trials = [_trial("base", None, 10.0, 0), _trial("a", SCREEN, 20.0, 1), _trial("b", SCREEN, 5.0, 2),
              _trial("a", FULL, 21.0, 3)]
    assert {"a", "b", "base"} <= taken_labels(trials, space)
    screened, promoted, best_full = screening.rung(trials)
    assert set(screened) == {"a", "b"} and promoted == {"base", "a"} and best_full == 21.0


# ---- when screening runs -------------------------------------------------------------------------
def test_screening_runs_only_when_the_space_is_larger_than_a_big_enough_budget():
    small = load_space("default", _machine("2arm"))
    big = load_space("default", _machine("16amd64"))
    unbatched = small.without_batching("a model that cannot batch")
    assert isinstance(choose_strategy(unbatched, "tpe", 0, 50), Exhaustive)  # 5 configs: measure them all
    assert isinstance(choose_strategy(small, "tpe", 0, 50), Screening)  # x 26 batch settings: 130
    assert isinstance(choose_strategy(big, "grid", 0, 30), Exhaustive)
    assert isinstance(choose_strategy(big, "tpe", 0, 30), Screening)
    assert isinstance(choose_strategy(big, "tpe", 0, None), Screening)
    assert isinstance(choose_strategy(big, "tpe", 0, screening.SCREENING_MIN_TRIALS - 1), Sampled)
    assert isinstance(choose_strategy(big, "tpe", 0, 30, screen=False), Sampled)


# ---- a study with screening ----------------------------------------------------------------------
def test_a_screening_study_measures_short_first_and_only_promoted_configs_in_full(tmp_path):
    from experiments.oracles import amdahl_bandwidth
    from experiments.replay import ORACLE_MODEL, oracle_measure
    from tuner.search.objective import BASELINE_REPLAY_WAIT_S
    from tuner.search.study import StudyConfig, baselines, run_study

    topo = _machine("8em64t-2s2ca2c")
    full = MeasureSettings(p99_bound_s=0.05)
    cfg = StudyConfig(model=ORACLE_MODEL, topology=topo, space=load_space("default", topo), settings=full,
                      storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="screening", seed=0, n_trials=15,
                      lock_wait_s=60)
    calls: list[tuple[str, MeasureSettings]] = []
    inner = oracle_measure(amdahl_bandwidth, full=full, screen_noise=0.1)

    def measure_fn(the_plan, model, settings, progress=None):
        calls.append((the_plan.params.label(), settings))
        return inner(the_plan, model, settings, progress)

    study = run_study(cfg, lambda t, info: None, lambda _m: None, measure_fn=measure_fn)
    trials = study.get_trials(deepcopy=False)
    screens = [t for t in trials if t.user_attrs.get("fidelity") == SCREEN]
    promoted = [t for t in trials if t.user_attrs.get("proposed_by") == "promotion"]
    assert screens and promoted and all(t.state.name == "PRUNED" and "result" not in t.user_attrs for t in screens)
    assert 14 <= budget_spent(trials) < 16
    screened_labels = [t.user_attrs["label"] for t in screens]
    assert len(screened_labels) == len(set(screened_labels))  # a config is screened once
    for t in promoted:  # promoted after its screen, measured in full, once
        screen = next(s for s in screens if s.user_attrs["label"] == t.user_attrs["label"])
        assert screen.number < t.number and t.state.name == "COMPLETE"
    # a full measurement of a searched config carries the study's incumbent rate (compare first); a
    # baseline's waits longer for calm CPUs (its figure is what every speedup is over)
    assert {label for label, s in calls if replace(s, incumbent_rate=None) == full} == (
        {t.user_attrs["label"] for t in promoted})
    assert {label for label, s in calls if s == replace(full, replay_wait_s=BASELINE_REPLAY_WAIT_S)} == (
        {p.label() for _, p in baselines(topo)})
    assert all(s == screen_settings(full) for label, s in calls if label in screened_labels
               and label not in {t.user_attrs["label"] for t in promoted})
    assert {t.number for t in measured_trials(study)}.isdisjoint(t.number for t in screens)
    assert best_trial(study).user_attrs.get("fidelity") != SCREEN


# ---- replay: only promotion can reach the best ---------------------------------------------------
def test_replayed_screening_reaches_95_percent_of_the_best_through_promotion():
    """On this 16-core SMT fixture the best baseline is 0.71 of the oracle's best: a study whose
    promotions were missing or promoted the wrong configs could not end within 5% of it."""
    from experiments.oracles import amdahl_bandwidth
    from experiments.replay import Fidelity, replay_placetune, true_best

    topo = _machine("32intel64")
    space = load_space("default", topo)

    def oracle(params: dict) -> float:
        return amdahl_bandwidth(params, topology=topo)

    best = true_best(space, topo, oracle)
    run = replay_placetune(space, topo, oracle, budget=20, seed=0, fidelity=Fidelity(screen_noise=0.1))
    events = run["events"]  # (throughput, cost, full, label, promoted)
    full = [e for e in events if e[2]]
    baselines = [e for e in full if not e[4]]
    assert max(e[0] for e in baselines) < 0.8 * best
    winner = next(e for e in full if e[0] >= 0.95 * best)
    assert winner[4], "the config within 5% of the best was not a promotion"
    screened = [e for e in events if not e[2]]
    assert len(screened) >= 2 * len(full)  # screening covered more configs than it measured in full
    assert sum(e[1] for e in events) <= 20 + 1
