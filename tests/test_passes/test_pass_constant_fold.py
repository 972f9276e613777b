"""ConstantFoldPass: constant subgraphs become initializers, within a size budget."""

from __future__ import annotations


import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from graph_helpers import run, ops
from rexdeploy.passes.constant_fold import ConstantFoldPass


def make_model(nodes, inputs, outputs, initializers=()) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(a, n) for n, a in initializers])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    proto.ir_version = 10
    return ir.serde.deserialize_model(proto)


def const(name, array):
    return helper.make_node("Constant", [], [name], name=f"make_{name}",
                            value=numpy_helper.from_array(np.asarray(array)))


def padding_arithmetic_model() -> ir.Model:
    """The shape of what the legacy exporter leaves for EfficientNet's 'same' padding:
    pads = Cast(Reshape(Transpose(Slice(Reshape(Concat(pads2d, ConstantOfShape(...)))))))."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        const("pads2d", np.array([0, 1, 0, 1], np.int64)),            # W: 0/1, H: 0/1
        const("n_zero", np.array([4], np.int64)),
        helper.make_node("ConstantOfShape", ["n_zero"], ["zeros"],
                         value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Concat", ["pads2d", "zeros"], ["all"], axis=0),
        const("shape2", np.array([-1, 2], np.int64)),
        helper.make_node("Reshape", ["all", "shape2"], ["pairs"]),
        const("start", np.array([-1], np.int64)), const("end", np.array([-9999], np.int64)),
        const("axis", np.array([0], np.int64)), const("step", np.array([-1], np.int64)),
        helper.make_node("Slice", ["pairs", "start", "end", "axis", "step"], ["rev"]),
        helper.make_node("Transpose", ["rev"], ["tr"], perm=[1, 0]),
        const("flat", np.array([-1], np.int64)),
        helper.make_node("Reshape", ["tr", "flat"], ["pads_i"]),
        helper.make_node("Cast", ["pads_i"], ["pads"], to=TensorProto.INT64),
        const("value", np.array(0.0, np.float32)),
        helper.make_node("Pad", ["x", "pads", "value"], ["y"], mode="constant", name="pad"),
    ]
    return make_model(nodes, [x], [y])


def test_padding_arithmetic_folds_into_one_constant():
    model = padding_arithmetic_model()
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype(np.float32)
    (before,) = run(model, {"x": x})
    fold = ConstantFoldPass()
    result = fold(model)
    assert result.modified and result.model is model
    assert ops(model) == {"Pad": 1, "Constant": 1}  # the pad value: lifting is not folding
    pad = next(n for n in model.graph if n.op_type == "Pad")
    assert pad.inputs[1].name == "pads"  # the folded value keeps its name
    np.testing.assert_array_equal(pad.inputs[1].const_value.numpy(), [0, 0, 0, 0, 0, 0, 1, 1])
    (after,) = run(model, {"x": x})
    np.testing.assert_array_equal(before, after)
    assert before.shape == (1, 2, 6, 6)
    assert len(fold.folded) == 7  # ConstantOfShape Concat Reshape Slice Transpose Reshape Cast


def test_shape_of_a_static_tensor_folds_but_not_a_dynamic_one():
    def model_with(batch):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        nodes = [helper.make_node("Shape", ["x"], ["s"], start=0, end=1),
                 const("minus1", np.array([-1], np.int64)),
                 helper.make_node("Concat", ["s", "minus1"], ["target"], axis=0),
                 helper.make_node("Reshape", ["x", "target"], ["y"])]
        return make_model(nodes, [x], [y])

    static = model_with(2)
    ConstantFoldPass()(static)
    assert ops(static) == {"Reshape": 1}
    assert static.graph.node(0).inputs[1].const_value.numpy().tolist() == [2, -1]

    dynamic = model_with("B")
    ConstantFoldPass()(dynamic)
    assert ops(dynamic)["Shape"] == 1 and ops(dynamic)["Concat"] == 1


def test_outputs_beyond_the_budget_are_not_materialised():
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2000, 1000])
    nodes = [const("big_shape", np.array([2000, 1000], np.int64)),
             helper.make_node("ConstantOfShape", ["big_shape"], ["big"],
                              value=numpy_helper.from_array(np.array([1.0], np.float32))),
             helper.make_node("Add", ["x", "big"], ["y"])]
    model = make_model(nodes, [x], [y])
    ConstantFoldPass(max_elements=1_000_000)(model)
    assert ops(model)["ConstantOfShape"] == 1


def test_a_transposed_weight_folds_even_when_large():
    """No growth: the folded weight replaces the original, so the budget does not apply."""
    w = np.random.default_rng(0).standard_normal((1200, 1000)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1200])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "wt"], ["y"])]
    model = make_model(nodes, [x], [y], [("w", w.T.copy())])
    ConstantFoldPass()(model)
    assert ops(model) == {"MatMul": 1}
    assert list(model.graph.initializers) == ["wt"]  # the original is gone
    np.testing.assert_array_equal(model.graph.node(0).inputs[1].const_value.numpy(), w)


def test_random_ops_graph_outputs_and_overridable_initializers_stay():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    k = helper.make_tensor_value_info("k", TensorProto.FLOAT, [2])
    noise = helper.make_tensor_value_info("noise", TensorProto.FLOAT, None)
    out = helper.make_tensor_value_info("const_out", TensorProto.FLOAT, None)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("RandomNormal", [], ["noise"], shape=[2]),
             const("c", np.array([1.0, 2.0], np.float32)),
             helper.make_node("Neg", ["c"], ["const_out"]),
             helper.make_node("Mul", ["k", "x"], ["y"])]
    model = make_model(nodes, [x, k], [noise, out, y], [("k", np.ones(2, np.float32))])
    ConstantFoldPass()(model)
    assert ops(model)["RandomNormal"] == 1   # not a function of its inputs
    assert ops(model)["Neg"] == 1            # a model output keeps being computed
    assert ops(model)["Mul"] == 1            # k is an input with a default, not a constant


def test_castlike_of_a_constant_folds_from_the_target_type():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)
    nodes = [const("six", np.array(6.0, np.float32)),
             helper.make_node("CastLike", ["six", "x"], ["six_h"]),
             helper.make_node("Min", ["x", "six_h"], ["y"])]
    model = make_model(nodes, [x], [y])
    ConstantFoldPass()(model)
    assert ops(model) == {"Min": 1}
    assert model.graph.node(0).inputs[1].const_value.numpy().dtype == np.float16


@pytest.mark.parametrize("unchanged", [True])
def test_nothing_to_fold_reports_unmodified(unchanged):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [x], [y])
    assert ConstantFoldPass()(model).modified is not unchanged
