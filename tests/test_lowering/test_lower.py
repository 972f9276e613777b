"""lower(): graph structure of the Q/DQ model, golden summaries, TensorRT placement rules.

The plans are built with a small numpy round-to-nearest quantizer (per output channel, max-abs)
and activation ranges observed by ONNX Runtime on random inputs (tests/lowering_helpers.py), so
these tests do not depend on calib_free's algorithms.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto

from calib_free.plan import ActivationPlan, LayerPlan, QuantPlan, WeightOrder
from lowering_helpers import (check_golden, cnn_fixture, cnn_inputs_fixture,  # noqa: F401
                              export, make_plan, mlp_fixture, mlp_inputs_fixture, random_inputs,
                              run_ort, sqnr_db)
from rexdeploy.planning.analyze import find_layers
from rexdeploy.lower import lower, summarize
from rexdeploy.passes.qdq_nodes import branches, const_array, dq_zero_point_is_zero, layer_of


def node(model: ir.Model, name: str) -> ir.Node:
    return next(n for n in model.graph if n.name == name)


# -- structure ----------------------------------------------------------------------------------
def test_lower_leaves_the_input_model_unchanged(cnn, cnn_inputs):
    before = ir.to_proto(cnn).SerializeToString()
    lowered = lower(cnn, make_plan(cnn, cnn_inputs, orders=2, bias_shift=0.1))
    assert ir.to_proto(cnn).SerializeToString() == before
    assert lowered is not cnn
    assert lowered.opset_imports[""] == 21 and lowered.ir_version == 10


def test_weights_become_dequantize_linear_of_int8_codes(cnn, cnn_inputs):
    plan = make_plan(cnn, cnn_inputs, activations=False)
    lowered = lower(cnn, plan)
    for lp in plan.layers:
        (conv,) = branches(lowered.graph, lp.name)
        assert conv.name == lp.name
        dq = conv.inputs[1].producer()
        assert dq.op_type == "DequantizeLinear" and len(dq.inputs) == 2  # no zero point
        assert dq.attributes.get_int("axis") == 0
        codes = const_array(dq.inputs[0])
        assert dq.inputs[0].dtype == ir.DataType.INT8
        np.testing.assert_array_equal(codes, lp.orders[0].codes)
        np.testing.assert_array_equal(const_array(dq.inputs[1]), lp.orders[0].scale)
        assert lp.weight not in lowered.graph.initializers  # float weight removed
        assert conv.inputs[0].name == lp.input  # weights only: activations stay float
    assert summarize(lowered)["ops"].get("QuantizeLinear", 0) == 0


def test_orders_are_parallel_branches_summed_into_the_original_output(cnn, cnn_inputs):
    plan = make_plan(cnn, cnn_inputs, orders=3)
    lowered = lower(cnn, plan)
    for lp in plan.layers:
        nodes = branches(lowered.graph, lp.name)
        assert [n.name for n in nodes] == [lp.name, f"{lp.name}/order2", f"{lp.name}/order3"]
        assert len({id(n.inputs[0]) for n in nodes}) == 1  # one shared (dequantized) input
        assert nodes[0].inputs[2] is not None  # bias on order 1 only
        assert all(len(n.inputs) == 2 or n.inputs[2] is None for n in nodes[1:])
        for k, n in enumerate(nodes):
            np.testing.assert_array_equal(const_array(n.inputs[1].producer().inputs[0]),
                                          lp.orders[k].codes)
        original = node(cnn, lp.name).outputs[0].name
        (total,) = [v for n in lowered.graph for v in n.outputs if v.name == original]
        assert total.producer().op_type == "Add"
        assert layer_of(total.producer()) == (lp.name, "sum")
    assert [o.name for o in lowered.graph.outputs] == [o.name for o in cnn.graph.outputs]
    # never pre-summed: no Add of two dequantized weights
    for add in (n for n in lowered.graph if n.op_type == "Add"):
        assert not all(v.producer() is not None and v.producer().op_type == "DequantizeLinear"
                       and v.producer().inputs[0].const_value is not None for v in add.inputs)


def test_bias_shift_is_subtracted_from_conv_gemm_and_matmul_add(cnn, mlp, cnn_inputs,
                                                                 mlp_inputs):
    for model, inputs in ((cnn, cnn_inputs), (mlp, mlp_inputs)):
        plan = make_plan(model, inputs, orders=2, bias_shift=0.05)
        lowered = lower(model, plan)
        layers = {l.name: l for l in find_layers(model)[0]}
        for lp in plan.layers:
            info = layers[lp.name]
            if lp.op == "MatMul":
                add = node(lowered, info.bias_node)
                assert layer_of(add) == (lp.name, "bias")
                bias = next(const_array(v) for v in add.inputs if v.const_value is not None)
            else:
                bias = const_array(node(lowered, lp.name).inputs[2])
            np.testing.assert_allclose(bias.ravel(), info.bias_array - lp.bias_shift, atol=1e-6)


def _single_layer_model(module: torch.nn.Module, shape) -> ir.Model:
    return export(module, shape)


@pytest.mark.parametrize("module, shape", [
    (torch.nn.Conv2d(3, 8, 3, bias=False), (1, 3, 8, 8)),
    (torch.nn.Linear(8, 4, bias=False), (1, 5, 8)),  # MatMul without Add
], ids=["conv", "matmul"])
def test_bias_is_created_when_the_layer_has_none(module, shape):
    torch.manual_seed(0)
    model = _single_layer_model(module, shape)
    x = random_inputs(shape, 1)
    plain = make_plan(model, x, activations=False)
    shifted = make_plan(model, x, activations=False, bias_shift=0.5)
    lowered = lower(model, shifted)
    assert [o.name for o in lowered.graph.outputs] == [o.name for o in model.graph.outputs]
    delta = run_ort(lowered, x[0]) - run_ort(lower(model, plain), x[0])
    shift = shifted.layers[0].bias_shift
    expected = -shift.reshape(-1, 1, 1) if delta.ndim == 4 else -shift
    np.testing.assert_allclose(delta, np.broadcast_to(expected, delta.shape), atol=1e-5)


def test_gemm_bias_shift_accounts_for_beta():
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "w"),
             numpy_helper.from_array(np.ones((1, 4), np.float32), "c")]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["a", "w", "c"], ["y"], name="gemm", beta=0.5)], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    proto.ir_version = 10
    model = ir.from_proto(proto)
    x = random_inputs((2, 6), 1)
    shifted = make_plan(model, x, orders=2, bias_shift=0.5)
    lowered = lower(model, shifted)
    assert tensorrt_violations(lowered) == []  # transB=0: per-channel axis 1
    delta = run_ort(lowered, x[0]) - run_ort(lower(model, make_plan(model, x, orders=2)), x[0])
    np.testing.assert_allclose(delta, np.broadcast_to(-shifted.layers[0].bias_shift, (2, 4)),
                               atol=1e-5)


def test_empty_plan_changes_nothing_but_the_opset(cnn, cnn_inputs):
    lowered = lower(cnn, QuantPlan((), ()))
    assert summarize(lowered)["ops"] == summarize(cnn)["ops"]
    np.testing.assert_array_equal(run_ort(lowered, cnn_inputs[0]), run_ort(cnn, cnn_inputs[0]))


def test_int4_codes_only_for_matmul_and_only_when_asked(cnn, mlp, cnn_inputs, mlp_inputs):
    def codes_types(model: ir.Model):
        proto = ir.to_proto(model)
        return {i.data_type for i in proto.graph.initializer if i.name.endswith("weight_codes")}

    mlp_plan = make_plan(mlp, mlp_inputs, bits=4, orders=2)
    int4 = lower(mlp, mlp_plan, int4_matmul=True)
    int8 = lower(mlp, mlp_plan)
    assert codes_types(int4) == {TensorProto.INT4}
    assert codes_types(int8) == {TensorProto.INT8}
    np.testing.assert_allclose(run_ort(int4, mlp_inputs[0]), run_ort(int8, mlp_inputs[0]),
                               atol=1e-5)
    cnn_int4 = lower(cnn, make_plan(cnn, cnn_inputs, bits=4), int4_matmul=True)
    convs = [n for n in cnn_int4.graph if n.op_type == "Conv"]
    assert all(c.inputs[1].producer().inputs[0].dtype == ir.DataType.INT8 for c in convs)
    (gemm,) = [n for n in cnn_int4.graph if n.op_type == "Gemm"]
    assert gemm.inputs[1].producer().inputs[0].dtype == ir.DataType.INT4


def test_blocked_weights(mlp, mlp_inputs):
    plan = make_plan(mlp, mlp_inputs, bits=4, block_size=16, activations=False)
    lowered = lower(mlp, plan, int4_matmul=True)
    assert summarize(lowered)["layers"] == [
        "MatMul /fc1/MatMul: act=float w=DQ(i4,axis0,block16) orders=1",
        "MatMul /fc2/MatMul: act=float w=DQ(i4,axis0,block16) orders=1"]
    x = mlp_inputs[0]
    assert sqnr_db(run_ort(mlp, x), run_ort(lowered, x)) > 20


def test_per_tensor_weights(mlp, mlp_inputs):
    layers = find_layers(mlp)[0]
    orders = {}
    for l in layers:
        scale = np.float32(np.abs(l.weight_array).max() / 127)
        codes = np.round(l.weight_array / scale).astype(np.int8)
        orders[l.name] = WeightOrder(codes, np.array(scale), 8, None)
    plan = QuantPlan(tuple(LayerPlan(l.name, l.op, l.weight, l.input, (orders[l.name],))
                           for l in layers), ())
    lowered = lower(mlp, plan)
    assert summarize(lowered)["layers"][0] == \
        "MatMul /fc1/MatMul: act=float w=DQ(i8,tensor) orders=1"
    x = mlp_inputs[0]
    assert sqnr_db(run_ort(mlp, x), run_ort(lowered, x)) > 35


# -- activations ------------------------------------------------------------------------------
def test_activation_qdq_on_layer_inputs_and_residual_skip(cnn, cnn_inputs):
    plan = make_plan(cnn, cnn_inputs, orders=2)
    lowered = lower(cnn, plan)
    for lp in plan.layers:
        act = plan.activation(lp.input)
        dqs = {n.inputs[0].producer() for n in branches(lowered.graph, lp.name)}
        assert len(dqs) == 1  # both orders read the same DQ
        (dq,) = dqs
        assert dq.op_type == "DequantizeLinear" and dq_zero_point_is_zero(dq)
        assert dq.inputs[0].producer().op_type == "QuantizeLinear"
        assert dq.inputs[0].dtype == (ir.DataType.INT8 if act.signed else ir.DataType.UINT8)
        assert float(const_array(dq.inputs[1])) == pytest.approx(act.scale)
    add = node(lowered, "/block/Add")
    skip, body = add.inputs
    assert skip.producer().op_type == "DequantizeLinear"
    assert skip.producer().inputs[0].producer().inputs[0].name == "/pw/pw.0/Conv_output_0"
    assert layer_of(body.producer()) == ("/block/body/body.2/body.2.0/Conv", "sum")
    # one Q/DQ pair per tensor, shared by all its quantized consumers
    assert summarize(lowered)["ops"]["QuantizeLinear"] == len(plan.activations)


def test_other_consumers_and_graph_outputs_keep_the_float_tensor(mlp, mlp_inputs):
    plan = make_plan(mlp, mlp_inputs)
    assert plan.activation("input") is not None  # residual skip of the MLP block
    lowered = lower(mlp, plan)
    assert node(lowered, "/ln/LayerNormalization").inputs[0].name == "input"
    residual = node(lowered, "/Add")
    assert residual.inputs[0].producer().op_type == "DequantizeLinear"
    assert layer_of(residual.inputs[1].producer()) == ("/fc2/MatMul", "bias")

    class TwoOutputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 4, 1)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return h, self.b(h)

    model = export(TwoOutputs(), (1, 3, 4, 4))
    x = random_inputs((1, 3, 4, 4), 2)
    lowered = lower(model, make_plan(model, x))
    h = lowered.graph.outputs[0]
    assert h.name == model.graph.outputs[0].name and h.producer().op_type == "Relu"
    conv_b = next(n for n in lowered.graph if n.op_type == "Conv" and n.inputs[0] is not None
                  and n.inputs[0].producer().op_type == "DequantizeLinear"
                  and n.inputs[0].producer().inputs[0].producer().inputs[0] is h)
    assert conv_b is not None


def _pad_conv_model(mode: str) -> ir.Model:
    from onnx import helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((4, 2, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Pad", ["x", "pads"], ["padded"], name="pad", mode=mode),
             helper.make_node("Conv", ["padded", "w"], ["y"], name="conv")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    proto.ir_version = 10
    return ir.from_proto(proto)


def test_qdq_between_pad_and_conv_is_refused():
    model = _pad_conv_model("reflect")
    plan = make_plan(model, random_inputs((1, 2, 6, 6), 1))
    with pytest.raises(ir.passes.PostconditionError, match="between Pad"):
        lower(model, plan)


def test_plan_that_does_not_match_the_graph_is_refused(cnn, cnn_inputs):
    plan = make_plan(cnn, cnn_inputs, activations=False)
    first = plan.layers[0]
    wrong = [LayerPlan("nope", "Conv", first.weight, first.input, first.orders),
             LayerPlan(first.name, "MatMul", first.weight, first.input, first.orders),
             LayerPlan(first.name, "Conv", first.weight, first.input,
                       (WeightOrder(first.orders[0].codes[:1], first.orders[0].scale[:1], 8),))]
    for lp in wrong:
        with pytest.raises(ir.passes.PreconditionError, match=lp.name):
            lower(cnn, QuantPlan((lp,), ()))
    bad_act = QuantPlan((), (ActivationPlan("missing", 0.1),))
    with pytest.raises(ir.passes.PreconditionError, match="missing"):
        lower(cnn, bad_act)


# -- golden summaries ---------------------------------------------------------------------------
@pytest.mark.parametrize("which, orders", [("cnn", 1), ("cnn", 2), ("mlp", 1), ("mlp", 2)])
def test_golden_summary(which, orders, request):
    model = request.getfixturevalue(which)
    inputs = request.getfixturevalue(f"{which}_inputs")
    summary = summarize(lower(model, make_plan(model, inputs, orders=orders)))
    check_golden(f"lower_tiny_{which}_k{orders}.json", summary)


# -- TensorRT placement rules -------------------------------------------------------------------
def tensorrt_violations(model: ir.Model) -> list[str]:
    """TensorRT's Q/DQ rules (docs/backends.md), checked on a lowered graph; [] when it follows
    them."""
    problems = []
    compute = ("Conv", "Gemm", "MatMul")
    for n in model.graph:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = n.inputs[2] if len(n.inputs) > 2 else None
            if zp is not None and (const_array(zp) is None or const_array(zp).any()):
                problems.append(f"{n.name}: zero point is not 0")
        if n.op_type == "DequantizeLinear" and n.inputs[0].const_value is not None:
            problems += _weight_rule(n)
        elif n.op_type == "DequantizeLinear":
            if np.asarray(const_array(n.inputs[1])).size != 1:
                problems.append(f"{n.name}: activation scale is not per tensor")
            for user, index in n.outputs[0].uses():
                if not ((user.op_type in compute and index == 0) or user.op_type == "Add"):
                    problems.append(f"{n.name}: activation DQ feeds {user.op_type} {user.name}")
            q = n.inputs[0].producer()
            if q is not None and q.inputs[0].producer() is not None \
                    and q.inputs[0].producer().op_type == "Pad":
                problems.append(f"{n.name}: Q/DQ between Pad and a Conv")
        if n.op_type == "QuantizeLinear" and n.inputs[0].producer() is not None \
                and n.inputs[0].producer().op_type in ("QuantizeLinear", "DequantizeLinear"):
            problems.append(f"{n.name}: chained Q/DQ")
        if n.op_type == "Add" and layer_of(n) is None and len(n.inputs) == 2:
            producers = [v.producer() for v in n.inputs]
            from_layer = any(p is not None and layer_of(p) for p in producers)
            from_dq = any(p is not None and p.op_type == "DequantizeLinear" for p in producers)
            if from_layer and not from_dq and all(v.const_value is None for v in n.inputs):
                problems.append(f"{n.name}: residual Add without a dequantized skip input")
    for n in model.graph:
        if n.op_type in compute and layer_of(n) is not None:
            act = n.inputs[0].producer()
            if act is None or act.op_type != "DequantizeLinear":
                problems.append(f"{n.name}: activation input is not dequantized")
    return problems


def _weight_rule(dq: ir.Node) -> list[str]:
    problems = []
    codes = const_array(dq.inputs[0])
    if dq.inputs[0].dtype == ir.DataType.INT8 and np.abs(codes.astype(np.int32)).max() > 127:
        problems.append(f"{dq.name}: int8 weight codes use -128")
    for user, index in dq.outputs[0].uses():
        if index != 1:
            problems.append(f"{dq.name}: weight DQ feeds {user.op_type} input {index}")
            continue
        if np.asarray(const_array(dq.inputs[1])).size == 1 or dq.attributes.get_int(
                "block_size", 0):
            continue
        trans_b = user.attributes.get_int("transB", 0)
        want = 0 if user.op_type == "Conv" or (user.op_type == "Gemm" and trans_b) else 1
        if dq.attributes.get_int("axis", 1) != want:
            problems.append(f"{dq.name}: per-channel axis is not the output channel ({want})")
    return problems


@pytest.mark.parametrize("which, orders", [("cnn", 1), ("cnn", 2), ("mlp", 2)])
def test_tensorrt_placement_rules(which, orders, request):
    model = request.getfixturevalue(which)
    inputs = request.getfixturevalue(f"{which}_inputs")
    lowered = lower(model, make_plan(model, inputs, orders=orders))
    assert tensorrt_violations(lowered) == []


def test_tensorrt_rules_catch_a_bad_graph(cnn, cnn_inputs):
    lowered = lower(cnn, make_plan(cnn, cnn_inputs))
    add = node(lowered, "/block/Add")
    add.replace_input_with(0, add.inputs[0].producer().inputs[0].producer().inputs[0])
    assert tensorrt_violations(lowered) == [
        "/block/Add: residual Add without a dequantized skip input"]
