"""Typed results: what one window, one worker's placement and one config measured."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from tuner.bench import stats
from tuner.machine.cpulist import format_cpulist


@dataclass(frozen=True)
class TrialResult:
    """What one config achieved, with everything needed to trust (or doubt) the number."""

    params: dict
    plan: dict
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
    worker_cpu: list[float]
    harness_cpu: float
    placement: list[dict]
    windows: list[dict]
    model: dict
    machine: dict
    duration_s: float
    notes: list[str] = field(default_factory=list)
    verdict: str = ""  # "pass" | "fail" (proven) | "undecided"
    throughput_ci: list[float] = field(default_factory=lambda: [math.nan, math.nan])
    p99_ci_ms: list[float] = field(default_factory=lambda: [math.nan, math.nan])
    confidence: float = math.nan
    interference: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.verdict:  # stored before verdicts existed
            object.__setattr__(self, "verdict", stats.PASS if self.feasible else stats.FAIL)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrialResult:
        """Reads results of every stored format: older ones lack the verdict and interval fields."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})  # stored copies carry extra keys (_trial)


@dataclass(frozen=True)
class WindowResult:
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
    verdict: str = stats.PASS  # "pass" | "fail" | "undecided" (tuner.bench.stats)
    p99_ci_ms: tuple[float, float] = (math.nan, math.nan)  # one-sided bounds at `confidence` each
    confidence: float = stats.DEFAULT_CONFIDENCE
    over_bound: int = 0  # requests over the bound (unserved ones included)
    extensions: int = 0  # times an undecided window was extended
    service_cv: float = math.nan  # std/mean of the service time: identical work, so spread is noise
    interference: dict = field(default_factory=dict)  # tuner.bench.interference.window_interference

    def to_dict(self) -> dict:
        d = asdict(self)
        d["worker_cpu"] = list(self.worker_cpu)
        d["p99_ci_ms"] = list(self.p99_ci_ms)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> WindowResult:
        """Also reads windows stored before verdicts existed (their verdict follows ``passed``)."""
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d.setdefault("verdict", stats.PASS if d.get("passed") else stats.FAIL)
        return cls(**{**d, "worker_cpu": tuple(d["worker_cpu"]),
                      "p99_ci_ms": tuple(d.get("p99_ci_ms", (math.nan, math.nan)))})


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
        return {
            "index": self.index, "pid": self.pid, "planned_cpus": format_cpulist(self.planned_cpus),
            "threads": self.threads, "thread_cpus": list(self.thread_cpus),
            "memory_policy": self.memory_policy, "expected_memory_policy": self.expected_memory_policy,
        }

