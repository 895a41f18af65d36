"""What a study tunes: the seam between the search and what is measured.

A subject is a single model (``ModelSubject``) or a deployment of several models on one server
(``tuner.mix.study.DeploymentSubject``). The study loop (``tuner.search.study.run_trials``), the
strategy (``tuner.search.strategy.Sampled``), the baselines' queue
(``tuner.search.study.enqueue_baselines``) and the final race (``tuner.search.race.race_subject``)
are written once against it; what differs lives behind it:

- ``suggest(trial)``: define-by-run, one config of its space (``Params``; a deployment's
  ``MixConfig``: the division, then each model's ``Params`` in its part), with a ``label()``;
- ``express(config)``: the values a trial suggests to give ``config`` (None: enqueue what the
  sampler suggested);
- ``baselines()``: what users would run without placetune, measured first: (name, values, user
  attrs) each;
- ``measure(config, settings, say)``: one config measured into a typed, frozen result
  (``tuner.results.records.TrialResult``; a deployment's ``tuner.results.mixrecords.MixResult``);
- ``entrants(study, k)`` and ``race_value(entrant, seed)``: who races at the end and one race
  measurement (req/s; a deployment's load factor: ``unit``), or (figure, calm): a figure from
  disturbed windows alone is shown but paired in no interval (``tuner.search.race.paired_ratio``).

How a study stores and reads its results is the same seam one layer down (tuner.results: the
records, and ``tuner.app.kinds`` for the commands that read a study).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from tuner.bench.measure import MeasureSettings, calm_figure, measure
from tuner.bench.model import ModelInfo
from tuner.machine.placement import Params, plan
from tuner.machine.topology import Topology
from tuner.results.records import TrialResult
from tuner.search.race import Entrant, dithered, study_entrants
from tuner.search.space import SearchSpace

# a race measurement's wait for calm CPUs (MeasureSettings.replay_wait_s), at most: a round's figure
# is one of several and the race has its time limit, while a study's figure stands alone
RACE_REPLAY_WAIT_S = 10.0


class Subject(Protocol):
    """What is being tuned (see the module docstring)."""

    unit: str  # what ``race_value`` returns

    def suggest(self, trial) -> object: ...

    def express(self, config) -> dict | None: ...

    def baselines(self) -> list[tuple[str, dict, dict]]: ...

    def measure(self, config, settings: MeasureSettings, say: Callable[[str], None]) -> object: ...

    def entrants(self, study, k: int) -> list[Entrant]: ...

    def race_value(self, entrant: Entrant, seed: int) -> float | tuple[float, bool]: ...


@dataclass(frozen=True)
class ModelSubject:
    """A single model on the machine, its space, and ``measure_fn`` (tuner.bench.measure.measure, or a
    stand-in: a simulated fleet, a replay)."""

    model: ModelInfo
    topology: Topology
    space: SearchSpace
    settings: MeasureSettings
    measure_fn: Callable[..., TrialResult] = measure
    unit: str = "req/s"

    def suggest(self, trial) -> Params:
        return self.space.suggest(trial)

    def express(self, params: Params) -> dict | None:
        return self.space.express(params)

    def baselines(self) -> list[tuple[str, dict, dict]]:
        from tuner.search.study import baselines

        return [(name, self.space.express(params) or {}, {"params": params.to_dict()})
                for name, params in baselines(self.topology)]

    def measure(self, params: Params, settings: MeasureSettings, say: Callable[[str], None]) -> TrialResult:
        return self.measure_fn(plan(self.topology, params), self.model, settings, progress=say)

    def entrants(self, study, k: int) -> list[Entrant]:
        return study_entrants(study, k)

    def race_value(self, entrant: Entrant, seed: int) -> tuple[float, bool]:
        """Three windows per run, the first near the entrant's estimate (dithered): the race's
        evidence is its rounds (the bound rule, from its bisection: three steps and the boundary re-test).
        Returns the figure and whether it is calm (``tuner.bench.measure.calm_figure``)."""
        settings = self.settings
        steps = 2 if settings.estimator == "estimate" else 3
        quick = replace(settings, seed=seed, search_steps=min(steps, settings.search_steps),
                        start_rate=dithered(entrant.rate, seed) or None, incumbent_rate=None,
                        replay_wait_s=min(settings.replay_wait_s, RACE_REPLAY_WAIT_S), narrow_top_up_s=0.0)
        result = self.measure_fn(plan(self.topology, entrant.params), self.model, quick)
        return (result.throughput if result.feasible else 0.0), calm_figure(result)
