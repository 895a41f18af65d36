"""Generated benchmark models (onnx.helper, fixed-seed random weights, no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(nodes, name, inputs, outputs, inits, path: Path) -> Path:
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def mlp(path: Path, batch: int = 64, features: int = 512, hidden: int = 1024, layers: int = 4,
        classes: int = 10) -> Path:
    """A recommender-style MLP: ``layers`` x (MatMul + bias + Relu) then a classifier, batch 64."""
    rng = np.random.default_rng(1)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])
    nodes, inits, prev, width = [], [], "x", features
    for i in range(layers):
        w = (rng.standard_normal((width, hidden)) / np.sqrt(width)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(hidden, np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"])]
        prev, width = f"r{i}", hidden
    inits.append(numpy_helper.from_array(rng.standard_normal((width, classes)).astype(np.float32), "wout"))
    nodes.append(helper.make_node("MatMul", [prev, "wout"], ["y"]))
    return _save(nodes, "mlp", [x], [y], inits, path)


def transformer_block(path: Path, seq: int = 128, d_model: int = 256, heads: int = 4, d_ff: int = 1024) -> Path:
    """One pre-LN-free transformer encoder block (BERT-style): multi-head self-attention with a
    residual and LayerNormalization, then a ReLU feed-forward with a residual and LayerNormalization."""
    rng = np.random.default_rng(2)
    dh = d_model // heads
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, d_model])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, d_model])
    inits = []

    def weight(name, shape):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32),
                                             name))
        return name

    def const(name, values, dtype=np.int64):
        inits.append(numpy_helper.from_array(np.array(values, dtype=dtype), name))
        return name

    heads_shape = const("heads_shape", [1, seq, heads, dh])
    back_shape = const("back_shape", [1, seq, d_model])
    scale = const("scale", 1 / np.sqrt(dh), np.float32)
    for n in ("ln1", "ln2"):
        inits += [numpy_helper.from_array(np.ones(d_model, np.float32), f"{n}_g"),
                  numpy_helper.from_array(np.zeros(d_model, np.float32), f"{n}_b")]
    nodes = []
    for p in ("q", "k", "v"):
        nodes += [helper.make_node("MatMul", ["x", weight(f"w{p}", (d_model, d_model))], [f"{p}_lin"]),
                  helper.make_node("Reshape", [f"{p}_lin", heads_shape], [f"{p}_heads"])]
    nodes += [
        helper.make_node("Transpose", ["q_heads"], ["q_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["k_heads"], ["k_t"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["v_heads"], ["v_t"], perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["q_t", "k_t"], ["scores_raw"]),
        helper.make_node("Mul", ["scores_raw", scale], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["attn"], axis=-1),
        helper.make_node("MatMul", ["attn", "v_t"], ["ctx_t"]),
        helper.make_node("Transpose", ["ctx_t"], ["ctx"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ctx", back_shape], ["ctx_flat"]),
        helper.make_node("MatMul", ["ctx_flat", weight("wo", (d_model, d_model))], ["attn_out"]),
        helper.make_node("Add", ["x", "attn_out"], ["res1"]),
        helper.make_node("LayerNormalization", ["res1", "ln1_g", "ln1_b"], ["h1"], axis=-1),
        helper.make_node("MatMul", ["h1", weight("w_ff1", (d_model, d_ff))], ["ff1"]),
        helper.make_node("Relu", ["ff1"], ["ff1_r"]),
        helper.make_node("MatMul", ["ff1_r", weight("w_ff2", (d_ff, d_model))], ["ff2"]),
        helper.make_node("Add", ["h1", "ff2"], ["res2"]),
        helper.make_node("LayerNormalization", ["res2", "ln2_g", "ln2_b"], ["y"], axis=-1),
    ]
    return _save(nodes, "transformer_block", [x], [y], inits, path)


GENERATORS = {"mlp": mlp, "transformer": transformer_block}
