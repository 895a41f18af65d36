"""A search space fitted to the model it searches for: batching only where the model can batch."""

from __future__ import annotations

from dataclasses import replace

from tuner.bench.batchable import check_batching
from tuner.bench.model import ModelInfo
from tuner.search.space import SearchSpace


def fit_to_model(space: SearchSpace, info: ModelInfo) -> tuple[SearchSpace, ModelInfo]:
    """``space`` and ``info`` ready to search: a model that can batch gets the file a batching worker
    loads (its batch dimension made symbolic when it was fixed at 1); for one that cannot, the
    space keeps ``max_batch`` 1 only, with a note saying why (``SearchSpace.notes``)."""
    if not space.batching:
        return space, info
    check = check_batching(info)
    if not check.batchable:
        return space.without_batching(f"model {info.name} has its batch dimension fixed at 1 ({check.how})"), info
    return space, replace(info, batch_model=check.path)
