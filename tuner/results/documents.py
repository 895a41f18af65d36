"""The best-config documents, typed: ``ConfigDocument`` (``placetune-config/1``: one model's config,
what ``measure --config``, ``tuner.deploy.apply`` and the exporters read) and ``DeploymentDocument``
(``placetune-deployment/1``: a deployment's config, one ``ConfigDocument`` per model). Frozen, with
one strict JSON form each; ``to_dict`` writes what earlier versions wrote, key for key, and
``from_dict`` reads every earlier version (a deployment document before c9a1088 has no
``baseline``: samples in tests/data/mix/). The race each may hold is stored as the race wrote it
(``tuner.search.race.RaceResult.to_dict``; a deployment's: ``tuner.app.deployment.race_document``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tuner.machine.placement import Params, Plan
from tuner.results.mixrecords import Deployment
from tuner.results.records import Interference, MachineInfo, ResultFormatError, _pair, _plan_from_dict, _strict

CONFIG_FORMAT = "placetune-config/1"
DEPLOYMENT_FORMAT = "placetune-deployment/1"


@dataclass(frozen=True)
class ModelRef:
    """Which model a config was measured with."""

    name: str
    path: str
    sha256: str

    def to_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: Mapping) -> ModelRef:
        return cls(**_strict(data, cls, "a config's model"))


_OPTIONAL = ("share", "p99_ci_ms", "offered_rate", "interference", "race", "selected_from", "envelope_note")


@dataclass(frozen=True)
class ConfigDocument:
    """One model's best config (``placetune-config/1``). The optional fields are written only when
    set: ``share`` .. ``interference`` in a deployment's model, ``race`` after optimize's race,
    ``selected_from`` and ``envelope_note`` in ``export --p99``."""

    study: str
    trial: int
    label: str | None
    params: Params
    plan: Plan
    scenario: str
    p99_bound_ms: float | None
    throughput: float
    p50_ms: float
    p99_ms: float
    model: ModelRef
    topology_fingerprint: str | None
    machine: MachineInfo
    share: float | None = None
    p99_ci_ms: tuple[float, float] | None = None
    offered_rate: float | None = None
    interference: Interference | None = None
    race: dict | None = None
    selected_from: str | None = None
    envelope_note: str | None = None
    format: str = CONFIG_FORMAT

    def to_dict(self) -> dict:
        order = ("format", "study", "trial", "label", "params", "plan", "scenario", "p99_bound_ms", "share",
                 "throughput", "p50_ms", "p99_ms", "p99_ci_ms", "offered_rate", "interference", "model",
                 "topology_fingerprint", "machine", "race", "selected_from", "envelope_note")
        out = {}
        for key in order:
            value = getattr(self, key)
            if value is None and key in _OPTIONAL:
                continue
            out[key] = (value.to_dict() if hasattr(value, "to_dict") else
                        list(value) if isinstance(value, tuple) else value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> ConfigDocument:
        d = _strict(data, cls, "a config document", optional=_OPTIONAL)
        if d["format"] != CONFIG_FORMAT:
            raise ResultFormatError(f"a config document has format {d['format']!r}, not {CONFIG_FORMAT}")
        return cls(**{**d, "params": Params.from_dict(d["params"]), "plan": _plan_from_dict(d["plan"]),
                      "model": ModelRef.from_dict(d["model"]), "machine": MachineInfo.from_dict(d["machine"]),
                      "p99_ci_ms": _pair(d["p99_ci_ms"]) if "p99_ci_ms" in d else None,
                      "interference": Interference.from_dict(d["interference"]) if "interference" in d else None})


@dataclass(frozen=True)
class BaselineFigure:
    """A baseline of a deployment study: its config and the load factor it served."""

    label: str
    load_factor: float

    def to_dict(self) -> dict:
        return {"label": self.label, "load_factor": self.load_factor}

    @classmethod
    def from_dict(cls, data: Mapping) -> BaselineFigure:
        return cls(**_strict(data, cls, "a deployment's baseline"))


@dataclass(frozen=True)
class DeploymentDocument:
    """A deployment's best config (``placetune-deployment/1``): the config the race recommends
    (``baseline`` names the baseline when it is one), its load factor with its interval, the
    baselines' load factors, the race, the deployment, and one ``ConfigDocument`` per model."""

    study: str
    trial: int
    label: str
    division: str
    load_factor: float
    load_factor_ci: tuple[float, float]
    baselines: dict[str, BaselineFigure]
    race: dict | None
    deployment: Deployment
    topology_fingerprint: str
    models: dict[str, ConfigDocument]
    baseline: str = ""  # absent before c9a1088
    format: str = DEPLOYMENT_FORMAT

    def to_dict(self) -> dict:
        return {"format": self.format, "study": self.study, "trial": self.trial, "label": self.label,
                "baseline": self.baseline, "division": self.division, "load_factor": self.load_factor,
                "load_factor_ci": list(self.load_factor_ci),
                "baselines": {n: b.to_dict() for n, b in self.baselines.items()}, "race": self.race,
                "deployment": self.deployment.to_dict(), "topology_fingerprint": self.topology_fingerprint,
                "models": {n: m.to_dict() for n, m in self.models.items()}}

    @classmethod
    def from_dict(cls, data: Mapping) -> DeploymentDocument:
        d = _strict(data, cls, "a deployment document", optional=("baseline",))
        if d["format"] != DEPLOYMENT_FORMAT:
            raise ResultFormatError(f"a deployment document has format {d['format']!r}, not {DEPLOYMENT_FORMAT}")
        return cls(**{**d, "load_factor_ci": _pair(d["load_factor_ci"]),
                      "baselines": {n: BaselineFigure.from_dict(b) for n, b in d["baselines"].items()},
                      "deployment": Deployment.from_dict(d["deployment"]),
                      "models": {n: ConfigDocument.from_dict(m) for n, m in d["models"].items()}})


def is_deployment(document: object) -> bool:
    """Whether a loaded JSON document is a deployment's (``placetune-deployment/1``)."""
    return isinstance(document, Mapping) and document.get("format") == DEPLOYMENT_FORMAT

