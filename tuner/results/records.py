"""Typed results: what one window, one worker's placement, the machine and one config measured.

Every record is a frozen dataclass with one strict JSON form, ``to_dict`` / ``from_dict``
(``TrialResult.to_json`` / ``from_json`` for text): a key the reader does not know, or a key it
needs and does not find, is a ``ResultFormatError`` that names it; only the documented keys of
older stored formats are read without one. A result says its format in ``format`` (``FORMAT``);
a stored result older than that key is read by the version its keys show.

Stored formats of a trial result (``trial.user_attrs["result"]``, ``placetune measure --json``):

- 1: stored before verdicts existed (before commit c508556): no ``format``, ``verdict``,
  ``throughput_ci``, ``p99_ci_ms``, ``confidence`` or ``interference``; the verdict follows
  ``feasible``. Its windows lack the verdict, interval and interference fields (the verdict
  follows ``passed``), and the oldest (ee771ed) the service-time percentiles too.
- 2: with verdicts (c508556 to 14a8e9b): every key but ``format``; ``interference`` (of the
  result and of each window) is ``{}`` in the first of them (c508556, before 88ee81d).
- 3: ``format: 3`` (14a8e9b to the estimator, 2026-12-05): no ``estimator``; its windows lack
  ``inflation`` and ``stopped_early``. Its ``throughput`` is the highest rate proven to pass.
- 4: ``format: 4`` (2026-12-05 to 2026-12-08): no ``replay_id``; ``estimator`` says what
  ``throughput`` is (``estimate``: the fitted highest rate, ``throughput_ci`` its interval;
  ``bound``: the highest rate proven to pass, as in format 3).
- 5 (``FORMAT``): ``format: 5``, every key present; ``replay_id`` names the measurement's replay
  in its study's tail pool when its figure is a replay ("" otherwise), so that the study can
  replay it again at its end (``tuner.search.study.refigure``).

In every format the study stores ``_trial`` (the trial's number) beside the result
(``tuner.search.study``): it is accepted and dropped. ``numa_local`` / ``numa_remote`` of an
interference appear only where the machine exposes them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields

from tuner import verdicts
from tuner.errors import PlacetuneError
from tuner.machine.cpulist import format_cpulist, parse_cpulist
from tuner.machine.placement import Params, Plan
from tuner.results.modelinfo import ModelInfo

FORMAT = 5
STORED_BESIDE = ("_trial",)  # keys the study stores beside a result (every format)
_NAN_PAIR = (math.nan, math.nan)


class ResultFormatError(PlacetuneError):
    """A stored result is not in a format this version reads (an unknown or a missing key)."""


def _known(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def _strict(data: object, cls: type, what: str, optional: Iterable[str] = (), beside: Iterable[str] = ()) -> dict:
    """``data``'s keys that are ``cls``'s fields; an unknown key (not ``beside``) or a missing one
    (not ``optional``: its field default applies) is a ResultFormatError."""
    if not isinstance(data, Mapping):
        raise ResultFormatError(f"{what} is not a mapping but {type(data).__name__}")
    known = _known(cls)
    unknown = set(data) - set(known) - set(beside)
    if unknown:
        raise ResultFormatError(f"{what} has unknown key(s) {', '.join(sorted(unknown))}; "
                                f"known: {', '.join(known)}")
    missing = [k for k in known if k not in data and k not in optional]
    if missing:
        raise ResultFormatError(f"{what} lacks key(s) {', '.join(missing)}")
    return {k: v for k, v in data.items() if k in known}


def _pair(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = values
    return float(lo), float(hi)


class _InterferenceForm:
    """The JSON form of both interference records: ``numa_*`` only where the machine exposes them;
    before format ``FORMAT`` any key may be missing (``{}`` before interference was measured)."""

    _what = "an interference"

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None or not k.startswith("numa_")}

    @classmethod
    def from_dict(cls, data: Mapping, version: int = FORMAT):
        optional = _known(cls) if version < 4 else ("numa_local", "numa_remote")
        return cls(**_strict(data, cls, cls._what, optional))


@dataclass(frozen=True)
class WindowInterference(_InterferenceForm):
    """One window's interference on the trial's CPUs (``tuner.bench.interference``); NaN or None:
    not measured."""

    steal_pct: float = math.nan  # percent of the CPUs' time stolen by the hypervisor
    foreign_cpu: float = math.nan  # cores of other processes' work on the trial's CPUs
    involuntary_ctx_switches: int | None = None
    migrations: int | None = None
    numa_local: int | None = None  # page allocations, system-wide, where exposed
    numa_remote: int | None = None
    disturbed: bool = False  # steal or foreign load over the thresholds: the window is re-run
    _what = "a window's interference"



@dataclass(frozen=True)
class Interference(_InterferenceForm):
    """A result's interference: its result window's figures, that window's service-time CV, and
    how many of the measurement's windows were disturbed."""

    steal_pct: float = math.nan
    foreign_cpu: float = math.nan
    involuntary_ctx_switches: int | None = None
    migrations: int | None = None
    service_cv: float = math.nan  # std/mean of the service time: identical work, so spread is noise
    disturbed_windows: int = 0
    numa_local: int | None = None
    numa_remote: int | None = None
    _what = "a result's interference"

    @classmethod
    def of_windows(cls, windows: Iterable[WindowResult], result_window: WindowResult) -> Interference:
        """The interference of a result whose windows are ``windows`` and whose figure is ``result_window``'s."""
        seen = result_window.interference
        disturbed = sum(w.interference.disturbed for w in windows)
        return cls(steal_pct=seen.steal_pct, foreign_cpu=seen.foreign_cpu,
                   involuntary_ctx_switches=seen.involuntary_ctx_switches, migrations=seen.migrations,
                   service_cv=result_window.service_cv, disturbed_windows=disturbed,
                   numa_local=seen.numa_local, numa_remote=seen.numa_remote)



@dataclass(frozen=True)
class WindowResult:
    """One measured window: its load, latencies, CPU use and verdict."""

    scenario: str
    offered_rate: float  # requests/s asked for (server) or 0 (offline)
    achieved_rate: float  # completed requests / elapsed
    requests: int  # requests in the window
    completed: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_service_ms: float  # time inside session.run, without queueing
    duration_s: float
    kept_up: bool
    passed: bool
    reason: str  # why it failed, "" when it passed
    worker_cpu: tuple[float, ...]  # CPU use of each worker in cores (1.0 = one core busy)
    harness_cpu: float  # CPU use of the tuner process itself in cores
    service_p50_ms: float = math.nan  # time inside session.run: the same work every request, so its
    service_p99_ms: float = math.nan  # spread is interference (a noisy machine), not queueing
    verdict: str = verdicts.PASS  # "pass" | "fail" | "undecided" (tuner.verdicts)
    p99_ci_ms: tuple[float, float] = _NAN_PAIR  # one-sided bounds at `confidence` each
    confidence: float = verdicts.DEFAULT_CONFIDENCE
    over_bound: int = 0  # requests over the bound (unserved ones included)
    extensions: int = 0  # times an undecided window was extended
    service_cv: float = math.nan  # std/mean of the service time: identical work, so spread is noise
    interference: WindowInterference = field(default_factory=WindowInterference)
    inflation: float = 1.0  # requests per independent one (tuner.bench.stats.inflation; format 4)
    stopped_early: bool = False  # cut once its failure was certain: its over-bound share is biased up
    # per worker, its service times (s) in this window when its CPUs were calm, else None; not stored
    calm_service: tuple = field(default=(), repr=False, compare=False)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "calm_service"}
        return {**d, "worker_cpu": list(self.worker_cpu), "p99_ci_ms": list(self.p99_ci_ms),
                "interference": self.interference.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping, version: int = FORMAT) -> WindowResult:
        """A window of a result stored in format ``version`` (format 1: its verdict follows ``passed``)."""
        optional = (_known(cls)[_known(cls).index("service_p50_ms"):] if version < 2
                    else ("inflation", "stopped_early", "calm_service") if version < 4 else ("calm_service",))
        d = _strict(data, cls, "a window", optional)
        if "verdict" not in d:
            d["verdict"] = verdicts.PASS if d["passed"] else verdicts.FAIL
        return cls(**{**d, "worker_cpu": tuple(d["worker_cpu"]),
                      "p99_ci_ms": _pair(d.get("p99_ci_ms", _NAN_PAIR)),
                      "interference": WindowInterference.from_dict(d.get("interference", {}), version)})


@dataclass(frozen=True)
class PlacementSeen:
    """One worker's placement as read from /proc after it started."""

    index: int
    pid: int
    planned_cpus: tuple[int, ...]
    threads: int
    thread_cpus: tuple[str, ...]  # distinct Cpus_allowed_list values over its threads
    memory_policy: str
    expected_memory_policy: str

    def to_dict(self) -> dict:
        return {**asdict(self), "planned_cpus": format_cpulist(self.planned_cpus),
                "thread_cpus": list(self.thread_cpus)}

    @classmethod
    def from_dict(cls, data: Mapping) -> PlacementSeen:
        d = _strict(data, cls, "a worker's placement seen")
        return cls(**{**d, "planned_cpus": tuple(sorted(parse_cpulist(d["planned_cpus"]))),
                      "thread_cpus": tuple(d["thread_cpus"])})


@dataclass(frozen=True)
class MachineInfo:
    """What the measurement ran on (recorded with every result)."""

    hostname: str
    cpu_model: str
    kernel: str
    python: str
    onnxruntime: str  # its version
    affinity: int  # CPUs the tuner process may run on

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> MachineInfo:
        return cls(**_strict(data, cls, "the machine"))


def _model_from_dict(data: Mapping) -> ModelInfo:
    _strict(data, ModelInfo, "the model", optional=("npz", "batch_model"))
    return ModelInfo.from_dict(data)


def _plan_from_dict(data: Mapping) -> Plan:
    _strict(data, Plan, "the plan")
    return Plan.from_dict(data)


_LATER_THAN_1 = ("verdict", "throughput_ci", "p99_ci_ms", "confidence", "interference")


@dataclass(frozen=True)
class TrialResult:
    """What one config achieved, with everything needed to trust (or doubt) the number."""

    params: Params
    plan: Plan
    scenario: str
    p99_bound_ms: float | None
    feasible: bool
    reason: str  # why not feasible, "" otherwise
    throughput: float  # req/s at the bound (server) or at saturation (offline)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    offered_rate: float
    achieved_rate: float
    capacity: float  # closed-loop req/s
    unloaded_p50_ms: float
    unloaded_p99_ms: float
    cpu_util: float  # mean CPU use of all workers in the result window, in cores
    worker_cpu: tuple[float, ...]
    harness_cpu: float
    placement: tuple[PlacementSeen, ...]
    windows: tuple[WindowResult, ...]
    model: ModelInfo
    machine: MachineInfo
    duration_s: float
    notes: tuple[str, ...] = ()
    verdict: str = ""  # "pass" | "fail" (proven) | "undecided"; "" when built: feasible's
    throughput_ci: tuple[float, float] = _NAN_PAIR
    p99_ci_ms: tuple[float, float] = _NAN_PAIR
    confidence: float = math.nan
    interference: Interference = field(default_factory=Interference)
    estimator: str = "bound"  # what ``throughput`` is: "estimate" (fitted) or "bound" (proven; format <= 3)
    # the measurement's key in its study's tail pool when its figure is a replay (``TailPool.again``
    # does it again at the study's end, in the process that measured it); "" otherwise
    replay_id: str = ""

    def __post_init__(self) -> None:
        if not self.verdict:
            object.__setattr__(self, "verdict", verdicts.PASS if self.feasible else verdicts.FAIL)

    def to_dict(self) -> dict:
        """The stored form (format ``FORMAT``): plain JSON types, the keys of every earlier format."""
        out: dict = {"format": FORMAT}
        for f in fields(self):
            value = getattr(self, f.name)
            if hasattr(value, "to_dict"):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = [v.to_dict() if hasattr(v, "to_dict") else v for v in value]
            out[f.name] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: Mapping) -> TrialResult:
        """A result of any stored format (see the module's docstring); anything else is refused."""
        version = format_version(data)
        d = _strict({k: v for k, v in data.items() if k != "format"}, cls, f"a format-{version} result",
                    optional=(*_LATER_THAN_1, "estimator", "replay_id") if version < 2
                    else ("estimator", "replay_id") if version < 4 else ("replay_id",) if version < 5 else (),
                    beside=STORED_BESIDE)
        return cls(**{
            **d, "params": Params.from_dict(d["params"]), "plan": _plan_from_dict(d["plan"]),
            "worker_cpu": tuple(d["worker_cpu"]), "notes": tuple(d.get("notes", ())),
            "placement": tuple(PlacementSeen.from_dict(p) for p in d["placement"]),
            "windows": tuple(WindowResult.from_dict(w, version) for w in d["windows"]),
            "model": _model_from_dict(d["model"]), "machine": MachineInfo.from_dict(d["machine"]),
            "throughput_ci": _pair(d.get("throughput_ci", _NAN_PAIR)),
            "p99_ci_ms": _pair(d.get("p99_ci_ms", _NAN_PAIR)),
            "interference": Interference.from_dict(d.get("interference", {}), version),
        })

    @classmethod
    def from_json(cls, text: str) -> TrialResult:
        return cls.from_dict(json.loads(text))


def format_version(data: Mapping) -> int:
    """The stored format of a result: its ``format`` key, else 2 with verdicts, else 1."""
    if not isinstance(data, Mapping):
        raise ResultFormatError(f"a result is not a mapping but {type(data).__name__}")
    if "format" in data:
        version = data["format"]
        if version not in range(1, FORMAT + 1):
            raise ResultFormatError(f"result format {version!r} is not one this version reads (1 to {FORMAT}); "
                                    "a newer placetune wrote it")
        return version
    return 2 if "verdict" in data else 1
