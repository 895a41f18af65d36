"""What a deployment study stores, as typed records with no process machinery behind them: one
mix config's result (``MixResult``), and what MLflow and JSON can hold (``finite``). Reading a
deployment study (tuner.mix.trials, tuner.mix.tracking, tuner.mix.report) stands on this module,
never on tuner.mix.measure, which starts workers."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from tuner.bench import stats


@dataclass(frozen=True)
class MixResult:
    """What one mix config achieved."""

    config: dict  # MixConfig.to_dict()
    label: str
    load_factor: float  # the largest passing L (0 when none passed)
    load_factor_ci: tuple[float, float]
    verdict: str  # pass | undecided (no load factor tried passed; a lower one might)
    reason: str
    models: dict[str, dict]  # per model at the best L: throughput, p50_ms, p99_ms, p99_ci_ms, interference, ...
    runs: list[dict] = field(default_factory=list)  # every MixWindow, in order
    machine: dict = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def feasible(self) -> bool:
        return self.verdict == stats.PASS

    def to_dict(self) -> dict:
        d = asdict(self)
        d["load_factor_ci"] = list(self.load_factor_ci)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MixResult:
        return cls(**{**d, "load_factor_ci": tuple(d["load_factor_ci"])})


def finite(value: float) -> float:
    """A metric MLflow and JSON can hold (inf and nan become -1)."""
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else -1.0
