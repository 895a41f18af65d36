"""A worker's dynamic batching decision, free of processes and clocks (the worker gives it both).

A worker that holds its first request of a batch (picked up at its scheduled arrival, or late when
the queue is backed up) adds the requests that have ARRIVED, in FIFO order, up to ``max_batch``;
while it holds fewer it waits for the next arrival, but never past ``opened_at + batch_timeout_s``
(``opened_at``: when it picked up the first one). It then runs the batch once. A request that has
not arrived is never taken, so a batch never serves a request before its scheduled time, and each
request's latency is still counted from its own scheduled arrival (no coordinated omission).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass


class Action(enum.Enum):
    TAKE = "take"  # claim the next request now: it has arrived
    WAIT = "wait"  # sleep until ``until``, then ask again
    RUN = "run"  # run what is held


@dataclass(frozen=True)
class Step:
    action: Action
    until: float = 0.0  # monotonic seconds, for WAIT


def next_step(now: float, held: int, max_batch: int, opened_at: float, batch_timeout_s: float,
              next_arrival: float | None) -> Step:
    """What a worker holding ``held`` requests does at ``now``; ``next_arrival`` is the scheduled time
    of the next unclaimed request (None: the schedule is used up)."""
    if held >= max_batch or next_arrival is None:
        return Step(Action.RUN)
    if next_arrival <= now:
        return Step(Action.TAKE)
    deadline = opened_at + batch_timeout_s
    if now >= deadline:
        return Step(Action.RUN)
    return Step(Action.WAIT, min(deadline, next_arrival))


def gather(first: int, opened_at: float, max_batch: int, batch_timeout_s: float, *,
           clock: Callable[[], float], sleep: Callable[[float], None],
           next_arrival: Callable[[], float | None], claim_arrived: Callable[[float], int]) -> list[int]:
    """The indices of one batch, ``first`` included. ``claim_arrived(now)`` claims the next request
    if it has arrived by ``now`` (another worker may have taken it: -1), ``next_arrival()`` peeks."""
    batch = [first]
    while True:
        now = clock()
        step = next_step(now, len(batch), max_batch, opened_at, batch_timeout_s, next_arrival())
        if step.action is Action.RUN:
            return batch
        if step.action is Action.WAIT:
            sleep(step.until - now)
            continue
        i = claim_arrived(now)
        if i >= 0:
            batch.append(i)
