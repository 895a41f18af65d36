"""What a result records of the model it measured: its file, name, digest and inputs (data only;
resolving, inspecting and feeding a model is ``tuner.bench.model``, which re-exports these)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name


@dataclass(frozen=True)
class ModelInfo:
    path: str
    name: str
    sha256: str
    inputs: tuple[InputSpec, ...]
    npz: str | None = None
    # the file a worker with max_batch > 1 loads (tuner.bench.batchable): the model itself when its
    # batch dimension is dynamic, a rewritten copy when it was fixed at 1; None: not checked
    batch_model: str | None = None

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "name": self.name,
            "sha256": self.sha256,
            "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in self.inputs],
            "npz": self.npz,
            "batch_model": self.batch_model,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ModelInfo:
        return cls(
            data["path"], data["name"], data["sha256"],
            tuple(InputSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in data["inputs"]),
            data.get("npz"), data.get("batch_model"),
        )

    def path_for(self, max_batch: int) -> str:
        """The file a worker running batches of up to ``max_batch`` loads."""
        return self.batch_model or self.path if max_batch > 1 else self.path
