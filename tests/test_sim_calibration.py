"""The vm preset against the figures measured on the lent 16-core VM (experiments/sim/presets.py).

Tolerances, stated: one worker on one core, service P50 within 10% of 5.9 ms and P99 within 25%
of 25 ms; 16 workers x 1 core at P99 <= 50 ms with 3 s windows, repeated from random moments:
median within 25% of the measured median 1320 req/s, and the runs spread (90th / 10th percentile
>= 1.8; the five real runs spread 2.9x from min to max), at most one run in ten finding no rate
(the five real runs all found one; the model's worst moments, a neighbour on most cores during
a whole measurement, can miss the bound at any rate)."""

from __future__ import annotations

import numpy as np

from experiments.sim.calibration import repeated, single_worker_service
from experiments.sim.presets import MEASURED_16X1, MEASURED_SERVICE_MS, QUIET, VM
from tuner.machine.placement import Params


def test_one_worker_on_one_core_has_the_measured_service_percentiles():
    p50, p99 = single_worker_service(VM, runs=6, seconds=5.0, seed=3)
    assert abs(p50 / MEASURED_SERVICE_MS[0] - 1) <= 0.10
    assert abs(p99 / MEASURED_SERVICE_MS[1] - 1) <= 0.25


def test_repeated_16x1_runs_spread_like_the_real_ones():
    runs = repeated(Params(workers=16), VM, runs=20, seed=11)
    values = np.asarray(runs.throughputs)
    assert abs(runs.median / float(np.median(MEASURED_16X1)) - 1) <= 0.25
    assert np.percentile(values, 90) / np.percentile(values, 10) >= 1.8
    assert np.count_nonzero(values == 0) <= len(values) // 10
    assert runs.disturbed_windows > 0, "the disturbance checks see the episodes"


def test_the_quiet_machine_repeats_itself():
    values = np.asarray(repeated(Params(workers=16), QUIET, runs=4, seed=11).throughputs)
    assert values.max() / values.min() < 1.1
