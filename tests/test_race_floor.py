"""experiments/race_floor.py: a simulated run's race intervals scored again under a floor."""

from experiments.race_floor import rescore


def test_a_floor_covers_a_narrow_miss_and_can_take_a_faster_claim_back():
    race = {"claims": [{"label": "s", "other": "b", "ratio": 1.02, "ci": [1.015, 1.025], "true": 0.99}],
            "recommended": "s", "recommended_truth": 99.0, "searched": {"outcome": "faster"}}
    run = {"true_best": 100.0, "per_seed": [{"race": race}, {"race": None}]}
    before, after = rescore(run, 0.0), rescore(run, 0.03)
    assert before["ci_coverage"] == 0.0 and before["wrong_faster_rate"] == 1.0
    assert after["ci_coverage"] == 1.0 and after["wrong_faster_rate"] == 0.0
    assert after["median_regret"] == 0.0 and before["median_regret"] == 1 - 99.0 / 100.0  # the baseline: 100
