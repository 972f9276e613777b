"""FusePadIntoConvPass: a zero constant Pad on spatial dims disappears into the Conv."""

from __future__ import annotations

import collections

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from rexdeploy.passes.fuse_pad_into_conv import FusePadIntoConvPass

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 2, 3, 3)).astype(np.float32)
X = RNG.standard_normal((1, 2, 6, 6)).astype(np.float32)


def pad_conv_model(pads, value=0.0, mode="constant", conv_pads=(0, 0, 0, 0), axes=None,
                   extra_consumer=False) -> ir.Model:
    inits = [numpy_helper.from_array(W, "w"),
             numpy_helper.from_array(np.array(pads, np.int64), "pads"),
             numpy_helper.from_array(np.array(value, np.float32), "value")]
    pad_inputs = ["x", "pads", "value"]
    if axes is not None:
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
        pad_inputs.append("axes")
    nodes = [helper.make_node("Pad", pad_inputs, ["padded"], name="pad", mode=mode),
             helper.make_node("Conv", ["padded", "w"], ["y"], name="conv",
                              pads=list(conv_pads))]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_consumer:
        nodes.append(helper.make_node("Relu", ["padded"], ["side"], name="relu"))
        outputs.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 2, 6, 6])], outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    proto.ir_version = 10
    return ir.serde.deserialize_model(proto)


def run(model: ir.Model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(ir.to_proto(model).SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(None, {"x": X})


def ops(model):
    return collections.Counter(n.op_type for n in model.graph)


@pytest.mark.parametrize("pads, conv_pads, axes, expected", [
    ([0, 0, 1, 1, 0, 0, 1, 1], (0, 0, 0, 0), None, [1, 1, 1, 1]),
    ([0, 0, 0, 1, 0, 0, 1, 0], (1, 1, 1, 1), None, [1, 2, 2, 1]),   # adds to the Conv's pads
    ([2, 0, 1, 3], (0, 0, 0, 0), [2, 3], [2, 0, 1, 3]),               # opset-18 `axes` form
])
def test_zero_pad_is_fused(pads, conv_pads, axes, expected):
    model = pad_conv_model(pads, conv_pads=conv_pads, axes=axes)
    (before,) = run(model)
    result = FusePadIntoConvPass()(model)
    assert result.modified
    assert ops(model) == {"Conv": 1}
    conv = model.graph.node(0)
    assert list(conv.attributes.get_ints("pads")) == expected
    assert conv.inputs[0].name == "x"
    (after,) = run(model)
    np.testing.assert_allclose(after, before, atol=1e-6)


@pytest.mark.parametrize("kwargs", [
    {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "value": 1.0},                  # not a zero pad
    {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "mode": "reflect"},
    {"pads": [1, 0, 1, 1, 0, 0, 1, 1]},                                # pads the batch
    {"pads": [0, 0, -1, 1, 0, 0, 1, 1]},                               # crops
    {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "extra_consumer": True},        # output used elsewhere
])
def test_other_pads_stay(kwargs):
    model = pad_conv_model(**kwargs)
    (before, *_) = run(model)
    result = FusePadIntoConvPass()(model)
    assert not result.modified
    assert ops(model)["Pad"] == 1
    (after, *_) = run(model)
    np.testing.assert_array_equal(after, before)


def test_postcondition_catches_a_fusable_pad_left_behind():
    model = pad_conv_model([0, 0, 1, 1, 0, 0, 1, 1])
    with pytest.raises(ir.passes.PostconditionError, match="zero Pad still feeds a Conv"):
        FusePadIntoConvPass().ensures(model)
