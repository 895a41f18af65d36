"""Waiting for what a test's processes say or store: a line on their output, a state in the study's
storage; always with a timeout, never for a fixed time that a loaded machine can outlast."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import IO, TypeVar

import pytest

T = TypeVar("T")
POLL_S = 0.1  # a database has no change notification: how often it is looked at


def wait_for_line(stream: IO[str], accept: Callable[[str], bool], timeout_s: float = 600) -> list[str]:
    """The lines read from ``stream`` up to and including the first one ``accept`` takes; fails the
    test at the end of the stream or after ``timeout_s``."""
    seen: list[str] = []
    done = threading.Event()

    def read() -> None:
        for line in stream:
            seen.append(line)
            if accept(line):
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    if not done.wait(timeout_s) or not seen or not accept(seen[-1]):
        pytest.fail(f"the expected line never came (within {timeout_s:g}s); got: {''.join(seen)[-2000:]}")
    return seen


def wait_until(probe: Callable[[], T | None], what: str, timeout_s: float = 120) -> T:
    """The first truthy value ``probe`` returns (it is called every ``POLL_S``); fails the test after
    ``timeout_s`` saying ``what`` never happened."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(POLL_S)
    pytest.fail(f"{what} never happened (within {timeout_s:g}s)")
