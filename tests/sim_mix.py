"""Deployments on the simulated fleet (experiments/sim): every model's fleet a ``SimFleet`` on its
own ``SimMachine`` (its own clock and noise), so the real division, load-factor estimate, study loop,
race, document and export run in simulated time, deterministically, with no process. The models do
not slow each other down here (each has its own simulated machine): what is tested is the logic,
not the co-load (tests/test_mix.py runs real processes for that)."""

from __future__ import annotations

from pathlib import Path

from experiments.sim.calibration import SIM_MODEL
from experiments.sim.fleet import SimFleet
from experiments.sim.machine import SimMachine
from experiments.sim.machines import vm16
from experiments.sim.presets import QUIET
from tuner.app.deployment import DeploymentTuning
from tuner.app.optimize import OptimizeRequest, run_optimize
from tuner.bench.measure import MeasureSettings
from tuner.bench.model import ModelInfo
from tuner.machine.topology import Topology
from tuner.mix.bench import FleetFactory
from tuner.mix.deployment import parse_deployment
from tuner.mix.study import MixStudyConfig
from tuner.results.mixrecords import Deployment

SETTINGS = MeasureSettings(window_s=1.0, warmup_s=0.5, search_steps=4, seed=1)
SHARES = {"detector": 2, "ranker": 1}


def deployment(shared_cores: bool = False) -> Deployment:
    return parse_deployment({"shared_cores": shared_cores, "models": [
        {"name": "detector", "model": "detector.onnx", "p99": "50ms", "share": SHARES["detector"]},
        {"name": "ranker", "model": "ranker.onnx", "p99": "100ms", "share": SHARES["ranker"]}]}, "mix.yaml")


def sim_fleets(topology: Topology, seed: int = 0) -> FleetFactory:
    """Each model's fleet on a simulated machine of its own (seeded by the order they start in)."""
    started = iter(range(seed * 1000, seed * 1000 + 1_000_000))

    def make(the_plan, _model, settings):
        return SimFleet(SimMachine(topology, QUIET, seed=next(started)), the_plan, settings.hang_grace_s)

    return make


def sim_study(tmp_path: Path, topology: Topology | None = None, n_trials: int = 4, race_rounds: int = 2,
              name: str = "mix", models: dict[str, ModelInfo] | None = None, shared_cores: bool = False):
    """A whole deployment study (optimize's service, tuner.app.optimize.run_optimize) on the simulated fleet: the study
    config, its best-config document (also written to tmp_path/best.json) and the storage URL."""
    topology = topology or vm16()
    storage = f"sqlite:///{tmp_path / 'placetune.db'}"
    spec = deployment(shared_cores)
    cfg = MixStudyConfig(spec, models or {n: SIM_MODEL for n in spec.names}, topology, SETTINGS, storage, name,
                         seed=1, n_trials=n_trials, race_rounds=race_rounds)
    outcome = run_optimize(OptimizeRequest(cfg, tmp_path / "best.json", race_k=race_rounds,
                                           tuning=DeploymentTuning(cfg, fleet_factory=sim_fleets(topology))))
    return cfg, outcome.document, storage
