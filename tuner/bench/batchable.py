"""Can a model run several requests in one ``session.run``? Make its batch dimension symbolic if it can.

A model whose inputs have a dynamic first dimension batches as it is. A model fixed at batch 1 (the
``onnx:`` models, most exports without ``dynamic_axes``) is rewritten when the graph allows it:

1. every input's first dimension becomes the symbol ``batch``, and the outputs' shapes are inferred
   again (``onnx.shape_inference``);
2. a Reshape whose data carries the batch (its inferred first dimension is ``batch``) and whose
   shape is a constant starting with 1 gets a copy of that shape starting with 0 (copy the input's
   first dimension); a shape starting with 0 or a lone -1 already keeps the batch; any other first
   value (a batch folded into another dimension, a computed shape of unknown form) is refused;
3. every output must keep ``batch`` as its first dimension;
4. the rewritten model is run by ONNX Runtime on 2 different requests stacked into one batch and
   compared with 2 runs of the original, one request each (weights that ConstantOfShape fills with
   one value are made to differ first, in both copies alike, so that different requests give
   different outputs and the comparison can fail).

The rewritten model is kept in the cache directory (``PLACETUNE_CACHE_DIR``, else
``$XDG_CACHE_HOME/placetune``, else ``~/.cache/placetune``), named by the original's SHA-256;
a model that cannot be rewritten is refused with the reason (``NotBatchable``).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tuner.bench.model import ModelInfo, make_inputs
from tuner.errors import UsageError

BATCH_SYMBOL = "batch"
VERIFY_REQUESTS = 2
REWRITE_VERSION = 1  # part of the cached file's name: a new rewrite rule must not reuse old files
# A batch is right when its outputs differ from one-request runs by far less (_CLOSE) than two
# different requests' outputs differ from each other; those must differ by more than float noise.
_CLOSE = 0.01
_DISTINCT = 1e-5


class NotBatchable(Exception):
    """Why a model cannot run batches (one line)."""


@dataclass(frozen=True)
class BatchCheck:
    """Whether ``model`` can batch, how, and the file a batching worker loads."""

    model: str  # the model's name
    batchable: bool
    how: str  # "dynamic batch dimension", "batch dimension made symbolic (...)", or why it cannot
    path: str | None  # what a worker with max_batch > 1 loads; None: it cannot batch


def cache_dir() -> Path:
    """Where rewritten models are kept."""
    if os.environ.get("PLACETUNE_CACHE_DIR"):
        return Path(os.environ["PLACETUNE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "placetune"


def check_batching(info: ModelInfo, directory: Path | None = None) -> BatchCheck:
    """Whether the model of ``info`` can batch (rewriting and verifying it when it is fixed at 1)."""
    dynamic = _dynamic_first_dims(info.path)
    if dynamic and all(dynamic):
        return BatchCheck(info.name, True, "dynamic batch dimension", info.path)
    if any(not spec.shape for spec in info.inputs):
        return BatchCheck(info.name, False, "an input is a scalar (no batch dimension to stack on)", None)
    target = (directory or cache_dir()) / f"{info.name}-{info.sha256[:16]}-batch{REWRITE_VERSION}.onnx"
    if target.is_file():
        return BatchCheck(info.name, True, "batch dimension made symbolic (cached)", str(target))
    try:
        import onnx

        original = onnx.load(info.path)
        symbolic, rewritten = make_symbolic(original)
        verify(original, symbolic, replace(info, npz=None))  # random requests: an .npz holds one
    except NotBatchable as exc:
        return BatchCheck(info.name, False, str(exc), None)
    except Exception as exc:  # onnx's checker and shape inference raise their own types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return BatchCheck(info.name, False, f"its graph cannot be rewritten ({first[:200]})", None)
    _save(symbolic, target)
    return BatchCheck(info.name, True, f"batch dimension made symbolic ({rewritten} Reshape(s) rewritten)",
                      str(target))


def with_batching(info: ModelInfo, max_batch: int, directory: Path | None = None) -> ModelInfo:
    """``info`` ready for ``max_batch``: with the file a batching worker loads; a model that cannot
    batch is a UsageError (one line, exit 2)."""
    if max_batch <= 1:
        return info
    check = check_batching(info, directory)
    if not check.batchable:
        raise UsageError(f"model {info.name} cannot batch (max_batch {max_batch}): {check.how}; use max_batch 1, "
                         "or export the model with a dynamic batch dimension")
    return replace(info, batch_model=check.path)


def _dynamic_first_dims(path: str) -> list[bool]:
    """For each input ONNX Runtime sees (initializers excluded), whether its first dimension is dynamic."""
    from tuner.bench.model import _load_session

    return [bool(i.shape) and not isinstance(i.shape[0], int) for i in _load_session(Path(path)).get_inputs()]


def _first_dims(model) -> dict[str, object]:
    """Each value's first dimension as shape inference sees it: an int, a symbol, or None (unknown)."""
    out = {}
    for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        shape = vi.type.tensor_type.shape
        if vi.type.tensor_type.HasField("shape") and len(shape.dim):
            d = shape.dim[0]
            out[vi.name] = d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
    return out


def _constants(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def make_symbolic(model):
    """(a copy of ``model`` with a symbolic batch dimension, the Reshapes rewritten); NotBatchable
    says why not. Shape inference runs again after each round of rewrites: a rewritten Reshape lets
    the batch reach the ones after it."""
    import onnx
    from onnx import numpy_helper, shape_inference

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    initialized = {t.name for t in g.initializer}
    for vi in g.input:
        if vi.name in initialized:
            continue
        dims = vi.type.tensor_type.shape.dim
        if not dims or dims[0].dim_value != 1:
            raise NotBatchable(f"input {vi.name}'s first dimension is {dims[0].dim_value if dims else 'absent'}, "
                               "not a batch of 1")
        dims[0].ClearField("dim_value")
        dims[0].dim_param = BATCH_SYMBOL
    for vi in g.output:
        vi.type.tensor_type.ClearField("shape")
    del g.value_info[:]
    reshapes = [n for n in g.node if n.op_type == "Reshape"]
    settled: set[int] = set()
    rewritten = 0
    for _ in range(len(reshapes) + 1):
        inferred = shape_inference.infer_shapes(m)
        first, constants = _first_dims(inferred), _constants(m)
        progress = False
        for k, node in enumerate(reshapes):
            if k in settled or first.get(node.input[0]) != BATCH_SYMBOL:
                continue  # not (yet) reached by the batch; one never reached reshapes a weight: left as is
            settled.add(k)
            progress = True
            shape = constants.get(node.input[1])
            if shape is None or shape.ndim != 1 or not shape.size:
                raise NotBatchable(f"Reshape {node.name or node.output[0]} takes a computed shape, which this "
                                   "rewrite cannot prove keeps the batch")
            if shape[0] == 0 or (shape[0] == -1 and np.count_nonzero(shape == -1) == 1 and 0 not in shape[1:]):
                continue
            allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
            if shape[0] != 1 or allowzero:
                raise NotBatchable(f"Reshape {node.name or node.output[0]} reshapes the batch to {shape.tolist()}")
            fixed = shape.copy()
            fixed[0] = 0
            name = f"{node.input[1]}__placetune_batch_{k}"
            g.initializer.append(numpy_helper.from_array(fixed, name))
            if m.ir_version < 4:  # before IR 4 every initializer is also a graph input
                g.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, [fixed.size]))
            node.input[1] = name
            rewritten += 1
        if not progress:
            break
    inferred = shape_inference.infer_shapes(m)
    for vi in inferred.graph.output:
        dims = vi.type.tensor_type.shape.dim
        if not dims or dims[0].dim_param != BATCH_SYMBOL:
            raise NotBatchable(f"output {vi.name} does not keep the batch as its first dimension")
    del g.output[:]
    g.output.extend(inferred.graph.output)
    return m, rewritten


def distinct_weights(model, seed: int = 0):
    """A copy of ``model`` whose ConstantOfShape weights (one value repeated) vary around that value:
    with them, different requests give different outputs. The same ``seed`` gives the same weights."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    rng = np.random.default_rng(seed)
    constants = _constants(m)
    for node in m.graph.node:
        shape = constants.get(node.input[0]) if node.op_type == "ConstantOfShape" and node.input else None
        if shape is None:
            continue
        value = numpy_helper.to_array(node.attribute[0].t) if node.attribute else np.zeros(1, np.float32)
        if value.dtype.kind != "f":
            continue
        dims = tuple(int(d) for d in shape)
        if len(dims) >= 2:  # a conv or dense weight: signed, He-scaled by its fan-in (nothing dies or saturates)
            weights = rng.standard_normal(dims, dtype=np.float32) * np.sqrt(2 / max(1, int(np.prod(dims[1:]))))
        else:  # a bias, scale or batch-norm statistic: positive (a variance stays one) and near 1
            weights = np.exp(0.2 * rng.standard_normal(dims, dtype=np.float32))
        node.op_type = "Constant"
        del node.input[:]
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("value", numpy_helper.from_array(weights.astype(value.dtype))))
    return m


def verify(original, symbolic, info: ModelInfo) -> None:
    """Run ``symbolic`` on ``VERIFY_REQUESTS`` different requests stacked and compare with one run of
    ``original`` per request; NotBatchable when they differ, or when different requests give equal
    outputs (the comparison could not tell a wrong batch from a right one)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # ORT's default threads: a one-off check, cached once passed
    try:
        one = ort.InferenceSession(_observed(distinct_weights(original)).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
        many = ort.InferenceSession(_observed(distinct_weights(symbolic)).SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])
        requests = [make_inputs(info, seed=k) for k in range(VERIFY_REQUESTS)]
        singles = [one.run(None, r) for r in requests]
        batched = many.run(None, stack(requests))
    except Exception as exc:  # ORT's own types: a rewrite ORT rejects is a model that cannot batch
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NotBatchable(f"ONNX Runtime cannot run it batched ({first[:200]})") from None
    errors, spreads, scales = [], [], []
    for j, out in enumerate(batched):
        alone = np.concatenate([s[j] for s in singles], axis=0)
        if out.shape != alone.shape or not (np.isfinite(out).all() and np.isfinite(alone).all()):
            raise NotBatchable(f"its output {j} has shape {out.shape} or non-finite values batched "
                               f"(one request at a time: {alone.shape})")
        errors.append(float(np.abs(out - alone).max()))
        spreads.append(float(np.abs(singles[0][j] - singles[1][j]).max()))
        scales.append(float(np.abs(alone).max()))
    if max(s / max(c, 1e-30) for s, c in zip(spreads, scales, strict=True)) < _DISTINCT:
        raise NotBatchable("different requests give the same outputs, so a batch could not be verified")
    if max(errors) > _CLOSE * max(spreads):
        raise NotBatchable(f"its outputs differ when {VERIFY_REQUESTS} requests run as one batch (by "
                           f"{max(errors):.3g}; two requests differ by {max(spreads):.3g})")


def _observed(model):
    """``model`` with the data input of each output's node as an extra output: a final softmax that
    saturates hides what the logits before it show."""
    import onnx

    producers = {out: node for node in model.graph.node for out in node.output}
    constants = {t.name for t in model.graph.initializer} | set(_constants(model))
    have = {o.name for o in model.graph.output}
    for out in list(have):
        node = producers.get(out)
        if node is not None and node.input and node.input[0] not in constants and node.input[0] not in have:
            model.graph.output.append(onnx.ValueInfoProto(name=node.input[0]))
            have.add(node.input[0])
    return model


def stack(requests: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One feed dict holding ``requests`` one after another along the first dimension."""
    return {name: np.concatenate([r[name] for r in requests], axis=0) for name in requests[0]}


def _save(model, target: Path) -> None:
    import onnx

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".batch-", suffix=".onnx")
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
