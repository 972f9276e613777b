"""FoldBatchNormPass: Conv -> BatchNormalization folded exactly; names downstream stay valid."""

from __future__ import annotations


import numpy as np
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from graph_helpers import run, ops
from rexdeploy.frontend import LoadedModel, export_onnx
from rexdeploy.inputspec import parse_input_specs
from rexdeploy.passes.fold_batchnorm import FoldBatchNormPass
from tiny_models import tiny_cnn

RNG = np.random.default_rng(0)


def exported_tiny_cnn(batch="1"):
    net = tiny_cnn()
    model, _ = export_onnx(LoadedModel("module", net, "TinyCNN", ""),
                           parse_input_specs([f"x:{batch}x3x32x32"]))
    return net, model


def test_tiny_cnn_folds_exactly():
    net, model = exported_tiny_cnn()
    bn_outputs = {n.outputs[0].name for n in model.graph if n.op_type == "BatchNormalization"}
    fold = FoldBatchNormPass()
    result = fold(model)
    assert result.modified and len(fold.folded) == 7 and fold.kept == []
    assert "BatchNormalization" not in ops(model)
    # The Conv took over each BN's output value name: statistics keyed by it stay valid.
    conv_outputs = {n.outputs[0].name for n in model.graph if n.op_type == "Conv"}
    assert bn_outputs == conv_outputs
    assert all(model.graph.initializers[v.name].const_value is not None
               for n in model.graph if n.op_type == "Conv" for v in n.inputs[1:])
    x = torch.randn(4, 1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    for xi in x:
        (got,) = run(model, {"x": xi.numpy()})
        want = net(xi).detach().numpy()
        assert np.abs(got - want).max() < 1e-5


def test_unused_batchnorm_parameters_are_dropped():
    _, model = exported_tiny_cnn()
    FoldBatchNormPass()(model)
    assert not [name for name in model.graph.initializers if "running_" in name]
    assert all(v.uses() for v in model.graph.initializers.values())


def test_dynamic_batch_model_folds_too():
    net, model = exported_tiny_cnn("B")
    FoldBatchNormPass()(model)
    x = torch.randn(3, 3, 32, 32)
    (got,) = run(model, {"x": x.numpy()})
    assert np.abs(got - net(x).detach().numpy()).max() < 1e-5


def _bn_inputs(prefix, c):
    return [numpy_helper.from_array(a.astype(np.float32), f"{prefix}.{n}") for n, a in [
        ("gamma", RNG.uniform(0.5, 1.5, c)), ("beta", RNG.standard_normal(c)),
        ("mean", RNG.standard_normal(c)), ("var", RNG.uniform(0.2, 2.0, c))]]


def _bn(prefix, x, y, **attrs):
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}.{n}" for n in
                                                         ("gamma", "beta", "mean", "var")],
                            [y], name=prefix, **attrs)


def make_model(nodes, inits, outputs) -> ir.Model:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 2, 5, 5])], [helper.make_tensor_value_info(
            o, TensorProto.FLOAT, None) for o in outputs], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    proto.ir_version = 10
    return ir.serde.deserialize_model(proto)


X = RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)


def test_batchnorm_not_after_a_single_consumer_conv_stays():
    w = RNG.standard_normal((2, 2, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), *_bn_inputs("bn_in", 2), *_bn_inputs("bn_c", 2)]
    nodes = [_bn("bn_in", "x", "xn"),                       # BN on the input
             helper.make_node("Conv", ["xn", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             _bn("bn_c", "c", "cn"),                          # the Conv output is also used
             helper.make_node("Add", ["c", "cn"], ["y"], name="add")]
    model = make_model(nodes, inits, ["y"])
    (before,) = run(model, {"x": X})
    fold = FoldBatchNormPass()
    assert not fold(model).modified
    assert dict(fold.kept) == {"bn_in": "follows a graph input, not a Conv",
                               "bn_c": "the Conv output has other consumers"}
    (after,) = run(model, {"x": X})
    np.testing.assert_array_equal(before, after)


def test_shared_conv_weights_and_bias_are_not_corrupted():
    """Two Convs share one weight and bias; each BN folds into its own copy."""
    w = RNG.standard_normal((2, 2, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(2).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             *_bn_inputs("bn1", 2), *_bn_inputs("bn2", 2)]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("Conv", ["x", "w", "b"], ["c2"], name="conv2", pads=[1] * 4),
             _bn("bn1", "c1", "y1", epsilon=1e-3), _bn("bn2", "c2", "y2")]
    model = make_model(nodes, inits, ["y1", "y2"])
    before = run(model, {"x": X})
    fold = FoldBatchNormPass()
    fold(model)
    assert fold.folded == ["bn1", "bn2"] and "BatchNormalization" not in ops(model)
    assert [v.name for v in model.graph.outputs] == ["y1", "y2"]  # graph outputs keep names
    after = run(model, {"x": X})
    for want, got in zip(before, after):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert "w" not in model.graph.initializers  # both users got their own folded copy


def test_training_mode_batchnorm_is_a_precondition_failure():
    w = RNG.standard_normal((2, 2, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), *_bn_inputs("bn", 2)]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             _bn("bn", "c", "y", training_mode=1)]
    model = make_model(nodes, inits, ["y"])
    with pytest.raises(ir.passes.PreconditionError, match="training mode"):
        FoldBatchNormPass()(model)
