"""CleanupPass: what every exported float graph is guaranteed before analysis."""

from __future__ import annotations

import collections

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from rexdeploy.passes.cleanup import CleanupPass


def messy_model() -> ir.Model:
    """Duplicate and empty node names, a Constant, an Identity, dead code, a zero Pad."""
    w = np.random.default_rng(0).standard_normal((4, 2, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["pads"], name="same",
                         value=numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1],
                                                                np.int64))),
        helper.make_node("Pad", ["x", "pads"], ["padded"], name="same"),
        helper.make_node("Conv", ["padded", "w"], ["c"], name=""),
        helper.make_node("Identity", ["c"], ["c_id"], name=""),
        helper.make_node("Relu", ["c_id"], ["r"], name="same"),
        helper.make_node("Relu", ["c_id"], ["y"], name="same"),
        helper.make_node("Sigmoid", ["x"], ["dead"], name="unused"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("r", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    proto.ir_version = 10
    return ir.serde.deserialize_model(proto)


def run(model: ir.Model, x):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(ir.to_proto(model).SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_cleanup_guarantees():
    import torch

    model = messy_model()
    x = np.random.default_rng(1).standard_normal((1, 2, 6, 6)).astype(np.float32)
    w = torch.tensor(np.array(model.graph.initializers["w"].const_value.numpy()))
    want = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), w, padding=1)).numpy()
    before = [want, want]  # ORT refuses the messy model itself: duplicate node names
    assert CleanupPass()(model).modified
    names = [n.name for n in model.graph]
    assert all(names) and len(set(names)) == len(names)
    assert collections.Counter(n.op_type for n in model.graph) == {"Conv": 1, "Relu": 2}
    assert [v.name for v in model.graph.inputs] == ["x"]
    assert [v.name for v in model.graph.outputs] == ["y", "r"]
    assert model.graph.outputs[0].shape == ir.Shape([1, 4, 6, 6])  # inferred
    for want, got in zip(before, run(model, x)):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_unnamed_nodes_are_named_after_their_op():
    model = messy_model()
    CleanupPass()(model)
    conv = next(n for n in model.graph if n.op_type == "Conv")
    assert conv.name.startswith("Conv")


def test_postcondition_rejects_duplicate_names():
    model = messy_model()
    with pytest.raises(ir.passes.PostconditionError):
        CleanupPass().ensures(model)
