"""Errors a user can act on. The CLI turns each into one line and an exit code (tuner/cli/main.py)."""

from __future__ import annotations


class PlacetuneError(Exception):
    """Base class: a failure with a message that says what is wrong and how to fix it."""

    exit_code = 1


class UsageError(PlacetuneError):
    """Bad input from the user (a flag value, a file that is not what it should be)."""

    exit_code = 2


class TopologyError(UsageError):
    """A topology source (--fsroot, --topology) is missing or unreadable."""


class Infeasible(PlacetuneError):
    """The placement asked for cannot be planned on this topology; the message says why."""


class ModelError(PlacetuneError):
    """The model cannot be loaded or fed (missing file, not ONNX, unresolved dynamic dims)."""


class WorkerError(PlacetuneError):
    """A worker process failed to start, died, or stopped answering."""


class PlacementMismatch(PlacetuneError):
    """What the workers really run on differs from the plan."""


class StudyMismatch(UsageError):
    """Resuming a study with a different model, topology, bound or scenario."""
