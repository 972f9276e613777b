"""The input alignment pass (rexdeploy/passes/align_input.py): the rewritten first convolution
computes what the original does, border included, and reads every pixel as an exact int8 code."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from rexdeploy.ort_session import session, with_outputs
from rexdeploy.passes.align_input import ZERO, align_input, alignable

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _model(groups: int = 1, pads=(1, 1, 1, 1), bias: bool = True, readers: int = 1) -> ir.Model:
    rng = np.random.default_rng(0)
    cout = 6
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (cout, 3 // groups, 3, 3)).astype(
        np.float32), "w")]
    ins = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(0, 1, cout).astype(np.float32), "b"))
        ins.append("b")
    nodes = [helper.make_node("Conv", ins, ["y"], name="conv", pads=list(pads), strides=[2, 2],
                              group=groups)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if readers > 1:
        nodes.append(helper.make_node("Relu", ["x"], ["r"], name="relu"))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 9])],
        outputs, inits)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _pixels(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (1, 3, 9, 9)).astype(np.float64) for _ in range(n)]


def _run(model: ir.Model, x: np.ndarray, names=("y",)) -> list[np.ndarray]:
    proto = with_outputs(ir.to_proto(model), list(names), copy=False)
    return session(proto.SerializeToString(), "test").run(list(names), {"x": x})


@pytest.mark.parametrize("groups, pads, bias", [(1, (1, 1, 1, 1), True), (1, (0, 1, 2, 0), False),
                                                (3, (1, 1, 1, 1), True), (1, (0, 0, 0, 0), True)])
def test_aligned_convolution_computes_the_same_function(groups, pads, bias):
    steps, offsets = 1 / (255 * STD), 255 * MEAN
    before = _model(groups, pads, bias)
    after = _model(groups, pads, bias)
    conv = alignable(after, "x", 3)
    assert conv is not None
    name, step = align_input(after, conv, steps, offsets)
    for p in _pixels():
        x = ((p - offsets.reshape(1, 3, 1, 1)) * steps.reshape(1, 3, 1, 1)).astype(np.float32)
        want = _run(before, x)[0]
        got, aligned = _run(after, x, ("y", name))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        codes = aligned / step  # every pixel an int8 code, p - ZERO
        top, left = pads[0], pads[1]
        inner = codes[..., top:top + 9, left:left + 9]
        np.testing.assert_allclose(inner, p - ZERO, atol=2e-3)
        # the padding ring is x = 0, the mean pixel: no pixel, so its Q rounds it (the ring only)
        ring = np.ones(codes.shape[2:], bool)
        ring[top:top + 9, left:left + 9] = False
        np.testing.assert_allclose(codes[..., ring], np.broadcast_to(
            (offsets - ZERO).reshape(1, 3, 1), codes[..., ring].shape), atol=2e-3)


def test_only_an_input_a_single_convolution_reads_is_aligned():
    assert alignable(_model(readers=2), "x", 3) is None
    assert alignable(_model(), "x", 1) is None    # channels that do not match
    assert alignable(_model(), "nope", 3) is None
