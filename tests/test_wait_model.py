"""experiments/wait_model.py: a model of the simulated neighbour and of a measurement's wait."""

from experiments.wait_model import model


def test_a_longer_wait_gets_the_replay_no_less_often_and_every_policy_is_reported():
    out = model("vm", draws=200, waits=[5.0, 60.0], windows_s=12.0, need=2)
    assert set(out) == {"late 5 s", "late 60 s", "early 5 s", "early 60 s"}
    for policy in ("late", "early"):
        assert 0.0 <= out[f"{policy} 5 s"]["replayed"] <= out[f"{policy} 60 s"]["replayed"] <= 1.0
        assert out[f"{policy} 5 s"]["mean_s"] > 0
