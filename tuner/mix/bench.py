"""Every model of a deployment running at once, each on its own Poisson stream through its own queue.

``MixFleet`` starts one fleet per model (``fleet_factory``: by default a
tuner.bench.launcher.Launcher, its pinned workers, its own shared-memory queue; a simulated one in
tests, experiments/sim) and runs the models' windows concurrently, one thread per model over the
single-model window functions of tuner.bench.loadgen. The threads only wait: the workers read the
arrival schedule from shared memory and keep their own time, and the harness thread blocks in
``multiprocessing.connection.wait`` (the GIL is released), so the models' windows overlap in time.

A load factor's windows are sized to one common duration (the longest any model needs for its
verdict at its rate), start at one common instant, and are never extended: an extension would
run one model alone after the others' windows ended, measured without the co-load it must
withstand. An undecided window therefore counts as not passing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import replace
from typing import TypeVar

import numpy as np

from tuner.bench import stats
from tuner.bench.fleet import Fleet
from tuner.bench.launcher import Launcher
from tuner.bench.loadgen import START_DELAY_S, VerdictSettings, run_offline_window, run_server_window, settle_s
from tuner.bench.measure import MeasureSettings
from tuner.bench.model import ModelInfo
from tuner.machine.placement import Plan
from tuner.mix.loadfactor import MixWindow
from tuner.results.records import PlacementSeen, WindowResult

T = TypeVar("T")
FleetFactory = Callable[[Plan, ModelInfo, MeasureSettings], Fleet]


def launch(the_plan: Plan, model: ModelInfo, settings: MeasureSettings) -> Fleet:
    """The real fleet of one model: its pinned worker processes."""
    return Launcher(the_plan, model, start_timeout_s=settings.start_timeout_s,
                    memory_limit=settings.worker_memory_limit, hang_grace_s=settings.hang_grace_s)


class MixFleet:
    """The workers of every model, started together. Use as ``with MixFleet(...) as mix:``."""

    def __init__(self, plans: dict[str, Plan], models: dict[str, ModelInfo], settings: MeasureSettings,
                 fleet_factory: FleetFactory = launch):
        self.plans, self.models, self.settings, self.fleet_factory = plans, models, settings, fleet_factory
        self.fleets: dict[str, Fleet] = {}
        self._stack = ExitStack()

    def __enter__(self) -> MixFleet:
        try:
            for name, the_plan in self.plans.items():
                fleet = self.fleet_factory(the_plan, self.models[name], self.settings)
                self.fleets[name] = self._stack.enter_context(fleet)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self._stack.close()
        return False

    def concurrently(self, fn: Callable[[str, Fleet], T]) -> dict[str, T]:
        """``fn(name, fleet)`` for every model at once, one thread each; the first error is raised
        once every thread has returned."""
        with ThreadPoolExecutor(max_workers=len(self.fleets), thread_name_prefix="placetune-mix") as pool:
            futures = {name: pool.submit(fn, name, fleet) for name, fleet in self.fleets.items()}
            return {name: f.result() for name, f in futures.items()}

    def placements(self) -> dict[str, list[PlacementSeen]]:
        """Each model's workers as read from /proc (a pinned model off its plan raises PlacementMismatch)."""
        return {name: fleet.placement_seen()
                for name, fleet in self.fleets.items()}

    def offline(self, duration_s: float, bounds_s: dict[str, float] | None = None) -> dict[str, WindowResult]:
        """Every model closed-loop at once (warm-up, or the capacity probe when ``bounds_s`` is given)."""
        vs = self.verdicts
        return self.concurrently(lambda n, f: run_offline_window(f, duration_s, (bounds_s or {}).get(n), vs))

    @property
    def verdicts(self) -> VerdictSettings:
        return VerdictSettings(confidence=self.settings.confidence, max_extensions=0)

    def server(self, load_factor: float, shares: dict[str, float], bounds_s: dict[str, float],
               service_s: dict[str, float], rngs: dict[str, np.random.Generator],
               capacity: dict[str, float] | None = None) -> MixWindow:
        """One window of every model at once: model i at ``load_factor x shares[i]`` req/s, after one
        common lead (the longest any model's queue needs to settle at its rate, given its
        ``capacity``: tuner.bench.loadgen.settle_s), left out of the windows."""
        rates = {n: load_factor * shares[n] for n in self.fleets}
        duration_s = common_duration(rates, self.settings.window_s, self.verdicts)
        lead_s = max((settle_s(rates[n], capacity[n], duration_s) for n in self.fleets if capacity), default=0.0)
        # one instant on every fleet's clock (the real fleets' is time.monotonic; a simulated one has its own)
        start = {n: f.clock() + START_DELAY_S * (1 + len(self.fleets)) for n, f in self.fleets.items()}

        def one(name: str, fleet: Fleet) -> WindowResult:
            return run_server_window(fleet, rates[name], duration_s, 0, bounds_s[name], service_s[name],
                                     rngs[name], start_time=start[name], verdicts=self.verdicts, lead_s=lead_s)

        return MixWindow(load_factor, self.concurrently(one))

    def check_alive(self) -> None:
        for fleet in self.fleets.values():
            fleet.check_alive()


def common_duration(rates: dict[str, float], min_duration_s: float, verdicts: VerdictSettings) -> float:
    """The window length every model runs for: at least ``min_duration_s``, and long enough that
    the slowest stream (the smallest rate) gets the samples its pass verdict needs."""
    need = stats.samples_needed(0.0, verdicts.quantile, verdicts.confidence, verdicts.looks)
    return max(min_duration_s, max(need / r for r in rates.values() if r > 0))


def mix_settings(settings: MeasureSettings) -> MeasureSettings:
    """The single-model settings a mix measurement uses (no bound of its own: each model has one)."""
    return replace(settings, p99_bound_s=None, scenario="server")


def service_times_s(probe: dict[str, WindowResult]) -> dict[str, float]:
    """Each model's mean service time from its capacity probe (0 when unknown)."""
    return {n: w.mean_service_ms / 1000 if math.isfinite(w.mean_service_ms) else 0.0 for n, w in probe.items()}
