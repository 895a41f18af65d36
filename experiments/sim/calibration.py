"""The ``vm`` preset's calibration: what it was fitted to, how, and how close it came.

Fitted (by hand, a few rounds of ``python -m experiments.sim.calibration``) to the lent 16-core
VM's figures (``experiments/sim/presets.py``):

- one SqueezeNet worker alone on one core, a long closed loop: service P50 and P99 (5.9 / 25 ms):
  the hiccups (``hiccup_rate``, ``hiccup_ms``) and the body's sigma;
- 16 workers x 1 core at P99 <= 50 ms, the real ``measure()`` with 3 s windows, repeated from
  random moments of the noise process: median and spread of the throughputs (664, 991, 1320,
  1380, 1955: median 1320, max/min 2.9): the episodes' rates, lengths, cores and shares;
- ORT's default (1 process, unpinned) at the bound (371, 373) and closed loop (673), and 4 x 4
  (848): the serial fraction and ``straggle`` of ``ServiceModel``.

The fit's residuals, with 40 repeated runs (seed 0) — the output of ``main()``, kept here when
the preset was frozen — are in ``FIT`` below; the tests (tests/test_sim_calibration.py) check the
stated tolerances with fewer runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import numpy as np

from experiments.sim.fleet import SimFleet
from experiments.sim.machine import SimMachine
from experiments.sim.machines import vm16
from experiments.sim.model import Noise
from experiments.sim.presets import VM
from tuner.bench.loadgen import run_offline_window
from tuner.bench.measure import MeasureSettings, measure
from tuner.bench.model import ModelInfo
from tuner.machine.placement import Params, plan

SIM_MODEL = ModelInfo("simulated", "squeezenet-sim", "5" * 64, ())
BOUND_S = 0.05
CALIBRATION_WINDOW_S = 3.0
PHASE_S = 3600.0  # each repeated run starts at a random moment of the first simulated hour


@dataclass(frozen=True)
class Repeated:
    """Throughputs of one config measured again and again from random moments."""

    label: str
    throughputs: tuple[float, ...]
    disturbed_windows: int
    windows: int

    @property
    def median(self) -> float:
        return float(np.median(self.throughputs))

    @property
    def spread(self) -> float:
        """max / min of the runs that met the bound (inf when one did not)."""
        low = min(self.throughputs)
        return max(self.throughputs) / low if low > 0 else float("inf")


def repeated(params: Params, noise: Noise = VM, runs: int = 20, seed: int = 0,
             window_s: float = CALIBRATION_WINDOW_S) -> Repeated:
    """``runs`` real measurements of ``params`` on the simulated 16-core VM at P99 <= 50 ms."""
    topology = vm16()
    the_plan = plan(topology, params)
    rng = np.random.default_rng(seed)
    values, disturbed, windows = [], 0, 0
    for run in range(runs):
        machine = SimMachine(topology, noise, seed=int(rng.integers(2**31)))
        machine.advance(float(rng.uniform(0, PHASE_S)))
        result = measure(the_plan, SIM_MODEL, MeasureSettings(p99_bound_s=BOUND_S, window_s=window_s, seed=run),
                         fleet_factory=lambda p, _m, s, machine=machine: SimFleet(machine, p, s.hang_grace_s))
        values.append(result.throughput)
        disturbed += result.interference.disturbed_windows
        windows += len(result.windows)
    return Repeated(params.label(), tuple(values), disturbed, windows)


def single_worker_service(noise: Noise = VM, runs: int = 10, seconds: float = 6.0, seed: int = 0
                          ) -> tuple[float, float]:
    """Service P50 and P99 (ms) of one worker on one core: ``runs`` closed loops of ``seconds``
    from random moments of the noise process, pooled."""
    rng = np.random.default_rng(seed)
    service = []
    for _ in range(runs):
        machine = SimMachine(vm16(), noise, seed=int(rng.integers(2**31)))
        machine.advance(float(rng.uniform(0, PHASE_S)))
        with SimFleet(machine, plan(machine.topology, Params(workers=1))) as fleet:
            run_offline_window(fleet, seconds)
            b = fleet.buffers
            served = ~np.isnan(b.completed[: b.claimed()])
            service.append((b.completed[: b.claimed()] - b.started[: b.claimed()])[served])
    p50, p99 = np.percentile(np.concatenate(service), [50, 99]) * 1000
    return float(p50), float(p99)


def fit_report(runs: int = 40, seed: int = 0) -> dict:
    """The calibration's figures next to the measured ones."""
    p50, p99 = single_worker_service(seed=seed)
    one_per_core = repeated(Params(workers=16), runs=runs, seed=seed)
    ort = repeated(Params(workers=1, pin=False, intra_op_threads=0), runs=max(4, runs // 4), seed=seed)
    four = repeated(Params(workers=4, cores_per_worker=4, intra_op_threads=4), runs=max(4, runs // 4), seed=seed)
    return {"service_p50_ms": p50, "service_p99_ms": p99, "measured_service_ms": [5.9, 25.0],
            "16x1_median": one_per_core.median, "16x1_spread": one_per_core.spread,
            "16x1_min": min(one_per_core.throughputs), "16x1_max": max(one_per_core.throughputs),
            "16x1_disturbed_windows": f"{one_per_core.disturbed_windows}/{one_per_core.windows}",
            "measured_16x1": [664, 991, 1320, 1380, 1955],
            "ort_default_median": ort.median, "measured_ort_default": [371, 373],
            "4x4_median": four.median, "measured_4x4": [848], "runs": runs}


# The frozen preset's fit: fit_report(40, 0) on 2026-12-03, next to the measured figures. Residuals:
# service P50 +2.4%, P99 -5.6%; 16x1 median +2.6%, max/min 2.68 (measured 2.94 over 5 runs);
# ORT default at the bound -38% (229 vs 371: the model's single server is more exposed to the
# neighbour than the real one), 4x4 -16% (711 vs 848, one measured run).
FIT = {"service_p50_ms": 6.04, "service_p99_ms": 23.59, "16x1_median": 1354.5, "16x1_spread": 2.68,
       "16x1_min": 758.1, "16x1_max": 2033.7, "16x1_disturbed_windows": "294/359", "ort_default_median": 229.4,
       "4x4_median": 710.9, "runs": 40}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.sim.calibration", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(fit_report(args.runs, args.seed), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
