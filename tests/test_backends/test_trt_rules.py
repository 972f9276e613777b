"""TensorRT rule checker: each rule violated once by a hand-built graph, clean graphs pass, and
the real lowered graphs of the tiny models pass."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from backends.trt_rules import check_trt_rules
from lowering_helpers import CNN_INPUT, MLP_INPUT, export, make_plan, random_inputs
from tiny_models import tiny_cnn, tiny_mlp
from trt_rules_helpers import conv_graph, onnx_model, tensor
from rexdeploy.lower import lower


def _rules(model, level="error"):
    check = check_trt_rules(model)
    found = check.errors if level == "error" else check.warnings
    return [(f.rule, f.node) for f in found]


def test_clean_graph_passes():
    check = check_trt_rules(conv_graph())
    assert check.ok and check.findings == (), [str(f) for f in check.findings]


def test_nonzero_zero_point():
    assert _rules(conv_graph(zp=3)) == [("zero-point", "q"), ("zero-point", "dq")]


def test_weight_scale_on_the_wrong_axis():
    m = conv_graph(w_axis=1)
    assert _rules(m) == [("weight-axis", "w_dq")]


def test_per_channel_activation_scale():
    m = conv_graph(act_scale=np.full(4, 0.1, np.float32))
    # ONNX needs an axis for a 1-D scale: set it so only the TensorRT rule fails
    for n in m.graph.node:
        if n.name in ("q", "dq"):
            n.attribute.append(helper.make_attribute("axis", 1))
    rules = _rules(m)
    assert ("activation-scale", "dq") in rules and ("activation-scale", "q") in rules


def test_skip_branch_without_qdq_warns():
    m = conv_graph(skip_qdq=False)
    assert _rules(m) == []
    assert _rules(m, "warning") == [("residual", "add")]


def test_float_skip_of_a_matmul_residual_is_not_flagged():
    """Transformer residual streams: the Add after an int8 MatMul runs in float with its
    LayerNorm on TensorRT (ModelOpt's residual-add rule is convolution-only too)."""
    inits = [tensor("a_s", np.float32(0.1)), tensor("a_z", np.int8(0)),
             tensor("w", np.ones((8, 8), np.int8)), tensor("w_s", np.full(8, 0.01, np.float32)),
             tensor("b", np.zeros(8, np.float32))]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "a_s", "a_z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "a_s", "a_z"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["w", "w_s"], ["wd"], name="w_dq", axis=1),
        helper.make_node("MatMul", ["xd", "wd"], ["mm"], name="matmul"),
        helper.make_node("Add", ["mm", "b"], ["mb"], name="bias"),
        helper.make_node("Add", ["mb", "x"], ["y"], name="add"),
    ]
    m = onnx_model(nodes, inits, inputs=(("x", [1, 4, 8]),))
    assert _rules(m) == [] and _rules(m, "warning") == []


def test_opset_too_low():
    assert ("opset", "model") in _rules(conv_graph(opset=12))


def test_qdq_between_pad_and_conv():
    assert _rules(conv_graph(pad=True)) == [("pad-qdq", "conv")]


def test_rejected_operators():
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"], name="dyn"),
             helper.make_node("Identity", ["x"], ["y"], name="id")]
    assert _rules(onnx_model(nodes, [])) == [("operators", "dyn")]


def test_nonpositive_scale():
    assert _rules(conv_graph(w_scale=np.array([0.01, 0, 0.01, 0.01], np.float32))) == [
        ("scale", "w_dq")]


def _int4_graph(shape=(8, 4), block=4, consumer="MatMul"):
    import ml_dtypes

    w = np.ones(shape, ml_dtypes.int4)
    scale_shape = (shape[0] // block, shape[1]) if block else (shape[1],)
    t = helper.make_tensor("w", TensorProto.INT4, list(shape),
                           np.ones(int(np.prod(shape)), np.int8).tolist())
    del w
    attrs = {"axis": 0, **({"block_size": block} if block else {"axis": 1})}
    nodes = [helper.make_node("DequantizeLinear", ["w", "w_s"], ["wd"], name="w_dq", **attrs),
             helper.make_node(consumer, ["x", "wd"], ["y"], name="mm")]
    return onnx_model(nodes, [t, tensor("w_s", np.full(scale_shape, 0.1, np.float32))],
                      inputs=(("x", [2, 8]),))


def test_int4_blocked_matmul_weight_passes():
    check = check_trt_rules(_int4_graph())
    assert check.ok and not check.warnings, [str(f) for f in check.findings]


def test_int4_without_block_size():
    assert _rules(_int4_graph(block=None)) == [("int4", "w_dq")]


def test_int4_needs_opset_21():
    m = _int4_graph()
    m.opset_import[0].version = 19
    assert ("opset", "w_dq") in _rules(m)


def test_block_quantization_with_int8_codes():
    w = np.ones((8, 4), np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["w", "w_s"], ["wd"], name="w_dq", axis=0,
                              block_size=4),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")]
    m = onnx_model(nodes, [tensor("w", w), tensor("w_s", np.full((2, 4), 0.1, np.float32))],
                   inputs=(("x", [2, 8]),))
    assert _rules(m) == [("int4", "w_dq")]


def test_weight_only_int8_warns():
    nodes = [helper.make_node("DequantizeLinear", ["w", "w_s"], ["wd"], name="w_dq", axis=1),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")]
    m = onnx_model(nodes, [tensor("w", np.ones((8, 4), np.int8)),
                           tensor("w_s", np.full(4, .1, np.float32))], inputs=(("x", [2, 8]),))
    assert _rules(m) == [] and _rules(m, "warning") == [("weight-only", "mm")]


@pytest.mark.parametrize("which, orders, bits", [("cnn", 1, 8), ("cnn", 2, 8), ("mlp", 2, 8),
                                                 ("mlp", 1, 4)])
def test_real_lowered_graphs_pass(which, orders, bits):
    module, shape = (tiny_cnn(), CNN_INPUT) if which == "cnn" else (tiny_mlp(), MLP_INPUT)
    model = export(module, shape)
    plan = make_plan(model, random_inputs(shape), orders=orders, bits=bits,
                     block_size=4 if bits == 4 else None)
    lowered = lower(model, plan, int4_matmul=bits <= 4)
    check = check_trt_rules(lowered)
    assert check.ok, check.to_dict()
    assert check.warnings == [], check.to_dict()


def test_a_broken_lowered_graph_is_caught():
    model = export(tiny_cnn(), CNN_INPUT)
    lowered = lower(model, make_plan(model, random_inputs(CNN_INPUT)))
    add = next(n for n in lowered.graph if n.name == "/block/Add")
    skip = add.inputs[0].producer().inputs[0].producer().inputs[0]  # DQ <- Q <- float skip
    add.replace_input_with(0, skip)
    assert [(f.rule, f.node) for f in check_trt_rules(lowered).warnings] == [
        ("residual", "/block/Add")]


def test_checker_reads_a_file(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(conv_graph(zp=1), str(path))
    assert not check_trt_rules(str(path)).ok
