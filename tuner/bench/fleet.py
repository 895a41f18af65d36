"""The seam below one measurement window: what the window logic needs from a fleet of workers.

``tuner.bench.loadgen`` (window sizing, extensions, early stop, verdicts, interference) and
``tuner.bench.measure`` (warm-up, capacity probe, disturbed re-runs, the rate search) talk to a
``Fleet``: the shared request block (``buffers``, owned by ``tuner.bench.protocol``), one call that
serves the window written there (``run_window``), the workers' CPU time, the /proc counters that
``tuner.bench.interference`` judges (``snapshot``), and the clock windows are scheduled on.

``tuner.bench.launcher.Launcher`` is the real fleet (pinned processes, ``time.monotonic``, /proc).
A simulator (``experiments/sim``) is another: its clock is simulated time, its ``run_window``
serves the block's schedule with modelled workers, its ``snapshot`` returns /proc/stat-like
counters of a modelled machine. Everything above the seam is the code users run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from tuner.bench.interference import Snapshot
from tuner.bench.protocol import SharedBuffers, Window
from tuner.results.records import MachineInfo, PlacementSeen

if TYPE_CHECKING:
    from tuner.bench.measure import MeasureSettings
    from tuner.bench.model import ModelInfo
    from tuner.machine.placement import Plan


class Fleet(Protocol):
    """A plan's workers, ready to serve windows (a context manager: workers never outlive it)."""

    plan: Plan
    pids: list[int]  # one per worker
    max_requests: int  # requests the shared block holds
    hang_grace_s: float  # a window this long past its end has a hung worker
    buffers: SharedBuffers

    def __enter__(self) -> Fleet: ...

    def __exit__(self, *exc: object) -> bool: ...

    def run_window(self, window: Window, timeout_s: float) -> list[int]:
        """Serve the window already written to ``buffers``; requests served per worker."""
        ...

    def cpu_seconds(self) -> list[float]:
        """CPU time (user + system) each worker has used so far."""
        ...

    def snapshot(self) -> Snapshot:
        """The interference counters now (/proc/stat per CPU, the workers' context switches...)."""
        ...

    def clock(self) -> float:
        """Seconds on the clock the block's times use (monotonic; simulated time in a simulator)."""
        ...

    def idle(self, seconds: float) -> None:
        """Let ``seconds`` pass with the workers idle (waiting for a neighbour's load to go)."""
        ...

    def own_cpu_seconds(self) -> float:
        """CPU time the harness itself has used so far (not foreign load)."""
        ...

    def placement_seen(self) -> list[PlacementSeen]:
        """What each worker really runs with (verified against the plan when it pins)."""
        ...

    def check_alive(self) -> None:
        """Raise WorkerError when a worker has died."""
        ...

    def machine_info(self) -> MachineInfo:
        """The machine the fleet runs on, recorded with every result."""
        ...


FleetFactory = Callable[["Plan", "ModelInfo", "MeasureSettings"], Fleet]  # (plan, model, settings) -> fleet
