"""The FFN input rotation (rexdeploy/passes/rotate.py): which Linears it finds (after GELU, an
Erf-written GELU or SiLU; not after a LayerNorm, not with input channels that do not split into
blocks), that the rotated graph computes the same function, that the rotation is orthogonal and
spreads an outlier channel, and that the analysis lists the rotation as float with its reason."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rexdeploy.passes.rotate import BLOCK, ROTATION_KEY, ffn_outputs, rotate_inputs, rotation
from rexdeploy.planning.analyze import find_layers

T, D, HIDDEN = 8, 32, 128


def _ffn(activation: str, hidden: int = HIDDEN) -> onnx.ModelProto:
    """x [1, T, D] -> LayerNorm -> MatMul up -> activation -> MatMul down -> y."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((D, hidden)).astype(np.float32) * 0.2,
                                     "w_up"),
             numpy_helper.from_array(rng.standard_normal((hidden, D)).astype(np.float32) * 0.2,
                                     "w_down"),
             numpy_helper.from_array(np.ones(D, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(D, np.float32), "beta"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(np.sqrt(2.0), np.float32), "sqrt2")]
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], name="ln"),
             helper.make_node("MatMul", ["n", "w_up"], ["h"], name="up")]
    if activation == "gelu":
        nodes.append(helper.make_node("Gelu", ["h"], ["a"], name="act"))
    elif activation == "erf":  # h * 0.5 * (1 + erf(h / sqrt 2)), as older exports write GELU
        nodes += [helper.make_node("Div", ["h", "sqrt2"], ["d"], name="div"),
                  helper.make_node("Erf", ["d"], ["e"], name="erf"),
                  helper.make_node("Add", ["e", "one"], ["p"], name="add"),
                  helper.make_node("Mul", ["h", "half"], ["hh"], name="mulh"),
                  helper.make_node("Mul", ["hh", "p"], ["a"], name="act")]
    elif activation == "erf_last_half":  # (h * (1 + erf(h / sqrt 2))) * 0.5: Erf 3 nodes up,
        nodes += [helper.make_node("Div", ["h", "sqrt2"], ["d"], name="div"),  # as torch
                  helper.make_node("Erf", ["d"], ["e"], name="erf"),  # exports HF's GELU
                  helper.make_node("Add", ["e", "one"], ["p"], name="add"),
                  helper.make_node("Mul", ["h", "p"], ["hp"], name="mulp"),
                  helper.make_node("Mul", ["hp", "half"], ["a"], name="act")]
    elif activation == "silu":
        nodes += [helper.make_node("Sigmoid", ["h"], ["s"], name="sig"),
                  helper.make_node("Mul", ["h", "s"], ["a"], name="act")]
    else:
        nodes.append(helper.make_node("Relu", ["h"], ["a"], name="act"))
    nodes.append(helper.make_node("MatMul", ["a", "w_down"], ["y"], name="down"))
    graph = helper.make_graph(nodes, "ffn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, D])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    return onnx.shape_inference.infer_shapes(model)  # as the exported graphs carry them


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]


@pytest.mark.parametrize("activation", ["gelu", "erf", "erf_last_half", "silu"])
def test_rotates_the_ffn_output_linear_and_keeps_the_function(activation):
    proto = _ffn(activation)
    x = np.random.default_rng(1).standard_normal((1, T, D)).astype(np.float32) * 3
    before = _run(proto, x)
    model = ir.serde.deserialize_model(proto)
    found = ffn_outputs(model, {"up", "down"})
    assert [n.name for n in found] == ["down"]  # "up" reads a LayerNorm output
    assert rotate_inputs(model, found) == ["down"]
    after = _run(ir.serde.serialize_model(model), x)
    assert np.allclose(after, before, rtol=1e-4, atol=1e-4)
    layers, skipped = find_layers(model)
    assert sorted(layer.name for layer in layers) == ["down", "up"]
    rot = [s for s in skipped if "Hadamard rotation of down's input" in s.reason]
    assert len(rot) == 1 and rot[0].macs == T * HIDDEN * BLOCK, skipped
    node = next(n for n in model.graph if n.name == rot[0].name)
    assert node.metadata_props[ROTATION_KEY] == "down"


def test_not_after_relu_nor_blocks_that_do_not_fit():
    assert not ffn_outputs(ir.serde.deserialize_model(_ffn("relu")), {"up", "down"})
    assert not ffn_outputs(ir.serde.deserialize_model(_ffn("gelu", hidden=48)), {"up", "down"})
    assert not ffn_outputs(ir.serde.deserialize_model(_ffn("gelu")), {"up"})  # not planned


def test_rotation_is_orthogonal_and_spreads_an_outlier():
    r = rotation(BLOCK, seed=3)
    assert np.allclose(r @ r.T, np.eye(BLOCK), atol=1e-12)
    x = np.full(BLOCK, 0.1)
    x[5] = 20.0  # one outlier channel, 200x the rest
    y = x @ r
    assert np.abs(y).max() < 20.0 / np.sqrt(BLOCK) + 0.1 * np.sqrt(BLOCK)
    # a non-negative tensor's mean does not pile into one channel (the random signs)
    z = np.full(BLOCK, 1.0) @ r
    assert np.abs(z).max() < np.sqrt(BLOCK) / 2, z
