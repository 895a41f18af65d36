"""experiments/calm_odds.py: the share of waits that find calm CPUs (simulated time only)."""

from experiments.calm_odds import odds


def test_every_baseline_gets_a_share_per_wait_and_a_longer_wait_finds_calm_no_less_often():
    out = odds("16", "vm", draws=6, waits=[1.0, 30.0])
    assert len(out) == 4
    for row in out.values():
        assert 0.0 <= row["1 s"] <= row["30 s"] <= 1.0
