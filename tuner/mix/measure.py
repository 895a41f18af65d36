"""One mix config in, one honest result out: the largest load factor every model serves.

1. plan each model inside its part of the machine and start every model's workers at once
   (tuner.mix.bench.MixFleet); verify every pinned worker's placement from /proc;
2. warm-up, all models closed-loop at once;
3. capacity probe, all models closed-loop at once: each model's capacity C_i under co-load
   (a bound no config can meet is caught before the study, each model alone:
   tuner.mix.study.check_bounds_alone);
4. the load-factor estimate (tuner.mix.loadfactor) from 0.8 min_i C_i / share_i, every model on
   its own Poisson stream at L x share_i, all at once (each run starting on a settled queue);
5. the result: L with its interval and, per model, its rate at L and, from the run nearest L,
   P50/P99 with the P99 interval, interference and placement.
"""

from __future__ import annotations

import time

import numpy as np

from tuner.bench.measure import MeasureSettings, machine_metadata
from tuner.bench.model import ModelInfo
from tuner.machine.topology import Topology
from tuner.mix.bench import FleetFactory, MixFleet, launch, mix_settings, service_times_s
from tuner.mix.division import plans
from tuner.mix.loadfactor import LoadFactorOutcome, estimate_load_factor
from tuner.results.mixrecords import Deployment, MixConfig, MixResult, ModelFigures
from tuner.results.records import Interference, WindowResult


def measure_mix(topology: Topology, config: MixConfig, deployment: Deployment, models: dict[str, ModelInfo],
                settings: MeasureSettings, say=lambda _m: None, fleet_factory: FleetFactory = launch) -> MixResult:
    """Measure one mix config (each model's workers from ``fleet_factory``: tuner.mix.bench); every
    worker of every model is stopped when this returns."""
    began = time.monotonic()
    settings = mix_settings(settings)
    bounds = {m.name: m.p99_bound_s for m in deployment.models}
    shares = {m.name: m.share for m in deployment.models}
    rngs = {n: np.random.default_rng([settings.seed, i]) for i, n in enumerate(deployment.names)}
    the_plans = plans(topology, config)
    with MixFleet(the_plans, models, settings, fleet_factory) as mix:
        seen = mix.placements()
        say("warm-up (all models at once)")
        mix.offline(settings.warmup_s)
        say("capacity probe (all models at once)")
        # a race's measurement knows where its answer is (start_rate): a short probe bounds its steps
        probe = mix.offline(settings.window_s if settings.start_rate is None else min(settings.window_s, 0.5),
                            bounds)
        # every model saturated at once is not an unloaded latency when models share cores: the probe
        # gives capacities only, and no config is called infeasible from it (the estimate steps L down instead)
        capacity = {n: probe[n].achieved_rate for n in deployment.names}
        capacity_lf = min(capacity[n] / shares[n] for n in deployment.names)
        service = service_times_s(probe)
        outcome = estimate_load_factor(lambda lf: mix.server(lf, shares, bounds, service, rngs, capacity),
                                       capacity_lf, settings.search_steps + 1, say, settings.start_rate,
                                       settings.rel_tol)
        mix.check_alive()
    per_model = _per_model(probe, outcome, seen, the_plans, bounds, shares)
    reason = "" if outcome.best else _why_none(outcome)
    return MixResult(config, config.label(), outcome.load_factor, outcome.interval, outcome.verdict,
                     reason, per_model, tuple(outcome.runs), machine_metadata(),
                     time.monotonic() - began)


def _why_none(outcome: LoadFactorOutcome) -> str:
    lowest = min((r for r in outcome.runs if r.failing()), key=lambda r: r.load_factor, default=None)
    if lowest is None:
        return "no load factor was estimated to hold every bound"
    why = "; ".join(lowest.failing())
    return f"no load factor was estimated to hold every bound (lowest tried, {lowest.load_factor:.3g}: {why})"


def _per_model(probe: dict[str, WindowResult], outcome: LoadFactorOutcome, seen: dict, the_plans: dict,
               bounds: dict[str, float], shares: dict[str, float]) -> dict[str, ModelFigures]:
    """Each model's estimated rate (L x its share) and the latencies of the run nearest L."""
    out = {}
    for name, p in probe.items():
        w = outcome.best.windows[name] if outcome.best else p
        out[name] = ModelFigures(
            throughput=outcome.load_factor * shares[name], offered_rate=w.offered_rate, p50_ms=w.p50_ms,
            p90_ms=w.p90_ms, p99_ms=w.p99_ms, p99_ci_ms=w.p99_ci_ms, p99_bound_ms=bounds[name] * 1000,
            verdict=w.verdict, capacity=p.achieved_rate, unloaded_p99_ms=p.p99_ms, cpu_util=float(sum(w.worker_cpu)),
            interference=Interference.of_windows([w], w), placement=tuple(seen[name]), plan=the_plans[name])
    return out
