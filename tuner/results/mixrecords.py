"""Typed records of deployments (several models sharing one server, ``optimize --deployment``):
the deployment (``Deployment``, ``ModelEntry``), one candidate config (``MixConfig``), one window
of every model at once (``MixWindow``), each model's figures at the best load factor
(``ModelFigures``) and what one config achieved (``MixResult``). Frozen, with one strict JSON form
each (``to_dict`` / ``from_dict``: an unknown or a missing key is a ``ResultFormatError``), the
form every earlier version stored (samples: tests/data/mix/). No process machinery behind them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tuner import verdicts
from tuner.machine.placement import Params, Plan
from tuner.results.records import (
    Interference,
    MachineInfo,
    PlacementSeen,
    ResultFormatError,
    WindowResult,
    _pair,
    _plan_from_dict,
    _strict,
)


@dataclass(frozen=True)
class ModelEntry:
    """One model of the mix."""

    name: str
    model: str  # an .onnx path or onnx:NAME
    p99_bound_s: float
    share: float  # requests per unit of load factor

    def to_dict(self) -> dict:
        return {"name": self.name, "model": self.model, "p99_ms": self.p99_bound_s * 1000, "share": self.share}

    @classmethod
    def from_dict(cls, data: Mapping) -> ModelEntry:
        if not isinstance(data, Mapping) or set(data) != {"name", "model", "p99_ms", "share"}:
            raise ResultFormatError(f"a deployment's model must have the keys name, model, p99_ms, share: {data!r}")
        return cls(str(data["name"]), str(data["model"]), float(data["p99_ms"]) / 1000, float(data["share"]))


@dataclass(frozen=True)
class Deployment:
    """The parsed deployment file (tuner.mix.deployment reads it)."""

    path: str
    models: tuple[ModelEntry, ...]
    shared_cores: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    @property
    def shares(self) -> tuple[float, ...]:
        return tuple(m.share for m in self.models)

    def to_dict(self) -> dict:
        return {"path": self.path, "shared_cores": self.shared_cores, "models": [m.to_dict() for m in self.models]}

    @classmethod
    def from_dict(cls, data: Mapping) -> Deployment:
        d = _strict(data, cls, "a deployment")
        return cls(str(d["path"]), tuple(ModelEntry.from_dict(m) for m in d["models"]), bool(d["shared_cores"]))


@dataclass(frozen=True)
class MixConfig:
    """One candidate: the division and each model's Params inside its part."""

    division: str
    cpus: dict[str, tuple[int, ...]]  # model -> the CPUs of its part (empty: the whole machine, unpinned)
    params: dict[str, Params]

    def label(self) -> str:
        return f"{self.division}: " + ", ".join(f"{n}={p.label()}" for n, p in self.params.items())

    def to_dict(self) -> dict:
        return {"division": self.division, "cpus": {n: list(c) for n, c in self.cpus.items()},
                "params": {n: p.to_dict() for n, p in self.params.items()}}

    @classmethod
    def from_dict(cls, data: Mapping) -> MixConfig:
        d = _strict(data, cls, "a mix config")
        return cls(d["division"], {n: tuple(c) for n, c in d["cpus"].items()},
                   {n: Params.from_dict(p) for n, p in d["params"].items()})


def combined_verdict(each: Iterable[str]) -> str:
    """pass when every model passed, fail when any failed, else undecided."""
    each = list(each)
    if any(v == verdicts.FAIL for v in each):
        return verdicts.FAIL
    if each and all(v == verdicts.PASS for v in each):
        return verdicts.PASS
    return verdicts.UNDECIDED


@dataclass(frozen=True)
class MixWindow:
    """One window of every model at once, at one load factor."""

    load_factor: float
    windows: dict[str, WindowResult]  # model -> its own window (its own queue, its own latencies)

    @property
    def verdict(self) -> str:
        return combined_verdict(w.verdict for w in self.windows.values())

    def failing(self) -> list[str]:
        """Models whose window did not pass, with why."""
        return [f"{n}: {w.reason or w.verdict}" for n, w in self.windows.items() if w.verdict != verdicts.PASS]

    def to_dict(self) -> dict:
        return {"load_factor": self.load_factor, "verdict": self.verdict,
                "models": {n: w.to_dict() for n, w in self.windows.items()}}

    @classmethod
    def from_dict(cls, data: Mapping) -> MixWindow:
        if not isinstance(data, Mapping) or set(data) != {"load_factor", "verdict", "models"}:
            raise ResultFormatError(f"a mix window must have the keys load_factor, verdict, models: {sorted(data)}")
        return cls(float(data["load_factor"]), {n: WindowResult.from_dict(w) for n, w in data["models"].items()})


@dataclass(frozen=True)
class ModelFigures:
    """One model of a mix config at the best load factor (at the capacity probe when none passed)."""

    throughput: float  # req/s served (0 when no load factor passed)
    offered_rate: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p99_ci_ms: tuple[float, float]
    p99_bound_ms: float
    verdict: str
    capacity: float  # closed-loop req/s under co-load
    unloaded_p99_ms: float  # the capacity probe's P99
    cpu_util: float  # cores
    interference: Interference
    placement: tuple[PlacementSeen, ...]
    plan: Plan

    @property
    def p99_ratio(self) -> float:
        """P99 over the bound (below 1: headroom)."""
        return self.p99_ms / self.p99_bound_ms

    def to_dict(self) -> dict:
        return {"throughput": self.throughput, "offered_rate": self.offered_rate, "p50_ms": self.p50_ms,
                "p90_ms": self.p90_ms, "p99_ms": self.p99_ms, "p99_ci_ms": list(self.p99_ci_ms),
                "p99_bound_ms": self.p99_bound_ms, "verdict": self.verdict, "capacity": self.capacity,
                "unloaded_p99_ms": self.unloaded_p99_ms, "cpu_util": self.cpu_util,
                "interference": self.interference.to_dict(), "placement": [s.to_dict() for s in self.placement],
                "plan": self.plan.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping) -> ModelFigures:
        d = _strict(data, cls, "a model's figures")
        return cls(**{**d, "p99_ci_ms": _pair(d["p99_ci_ms"]),
                      "interference": Interference.from_dict(d["interference"]),
                      "placement": tuple(PlacementSeen.from_dict(p) for p in d["placement"]),
                      "plan": _plan_from_dict(d["plan"])})


@dataclass(frozen=True)
class MixResult:
    """What one mix config achieved (``trial.user_attrs["result"]`` of a deployment study)."""

    config: MixConfig
    label: str
    load_factor: float  # the estimated largest L every model serves within its bound (0: none)
    load_factor_ci: tuple[float, float]  # the estimate's interval (written before 2026-12-06: the
    # bisection's [highest passing L, lowest not proven to pass], the figure its low end)
    verdict: str  # pass (L above 0) | undecided (no load factor was estimated to hold every bound)
    reason: str
    models: dict[str, ModelFigures]  # per model at the best L
    runs: tuple[MixWindow, ...] = ()  # every run of the load-factor estimate, in order
    machine: MachineInfo | None = None
    duration_s: float = 0.0

    @property
    def feasible(self) -> bool:
        return self.verdict == verdicts.PASS

    @property
    def worst_p99_ratio(self) -> float:
        """The tightest model's P99 over its bound at the best load factor (below 1: headroom)."""
        return max(m.p99_ratio for m in self.models.values())

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "label": self.label, "load_factor": self.load_factor,
                "load_factor_ci": list(self.load_factor_ci), "verdict": self.verdict, "reason": self.reason,
                "models": {n: m.to_dict() for n, m in self.models.items()},
                "runs": [r.to_dict() for r in self.runs],
                "machine": self.machine.to_dict() if self.machine is not None else {},
                "duration_s": self.duration_s}

    @classmethod
    def from_dict(cls, data: Mapping) -> MixResult:
        d = _strict(data, cls, "a mix result")
        return cls(MixConfig.from_dict(d["config"]), d["label"], float(d["load_factor"]), _pair(d["load_factor_ci"]),
                   d["verdict"], d["reason"], {n: ModelFigures.from_dict(m) for n, m in d["models"].items()},
                   tuple(MixWindow.from_dict(r) for r in d["runs"]),
                   MachineInfo.from_dict(d["machine"]) if d["machine"] else None, float(d["duration_s"]))


def finite(value: float) -> float:
    """A metric MLflow and JSON can hold (inf and nan become -1)."""
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else -1.0

