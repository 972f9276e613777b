"""find_layers: which Conv/Gemm/MatMul are quantizable, their axes, MACs, biases, and the
reasons given for the ones kept in float."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from rexdeploy.planning.analyze import find_layers
from tiny_models import tiny_cnn, tiny_mlp


def export(module: nn.Module, x: torch.Tensor) -> ir.Model:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "opset 21 is not supported" (it works)
        torch.onnx.export(module.eval(), (x,), f, dynamo=False, opset_version=21,
                          do_constant_folding=True)
    return ir.from_proto(onnx.load_from_string(f.getvalue()))


class TinyAttention(nn.Module):
    """One attention head: q/k/v/o projections (MatMul + bias) and two activation MatMuls."""

    def __init__(self, d: int = 16):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):  # [B, T, d]
        q, k, v = self.q(x), self.k(x), self.v(x)
        attn = torch.softmax(q @ k.transpose(-1, -2) * 0.25, dim=-1)
        return self.o(attn @ v)


@pytest.fixture(scope="module")
def cnn():
    return export(tiny_cnn(), torch.randn(1, 3, 32, 32))


@pytest.fixture(scope="module")
def mlp():
    module = tiny_mlp()
    return module, export(module, torch.randn(1, 8, 32))


def test_tiny_cnn_layers(cnn):
    layers, skipped = find_layers(cnn)
    assert skipped == []
    assert [(l.op, l.groups, l.out_channels, l.in_channels, l.kernel_shape) for l in layers] == [
        ("Conv", 1, 16, 3, (3, 3)),      # stem, stride 2 -> 16x16
        ("Conv", 16, 16, 16, (3, 3)),    # depthwise
        ("Conv", 1, 24, 16, (1, 1)),     # pointwise
        ("Conv", 1, 96, 24, (1, 1)),     # block expand
        ("Conv", 96, 96, 96, (3, 3)),    # block depthwise
        ("Conv", 1, 24, 96, (1, 1)),     # block project
        ("Conv", 1, 64, 24, (1, 1)),     # head
        ("Gemm", 1, 10, 64, ()),         # fc, transB=1
    ]
    hw = 16 * 16
    assert [l.macs for l in layers] == [
        hw * 16 * 27, hw * 16 * 9, hw * 24 * 16, hw * 96 * 24, hw * 96 * 9, hw * 24 * 96,
        hw * 64 * 24, 64 * 10]
    assert all((l.out_axis, l.in_axis) == (0, 1) for l in layers)
    assert all(l.bias is not None and l.bias_node is None for l in layers)  # BN folded
    for layer in layers:
        assert layer.weight_array.dtype == np.float32
        assert layer.bias_array.shape == (layer.out_channels,)
        assert layer.output == next(n for n in cnn.graph if n.name == layer.name).outputs[0].name
    assert layers[0].input == cnn.graph.inputs[0].name
    assert layers[-1].weight == "fc.weight"


def test_tiny_mlp_matmul_bias_is_the_following_add(mlp):
    module, model = mlp
    layers, skipped = find_layers(model)
    assert skipped == []
    fc1, fc2 = layers
    assert (fc1.op, fc1.out_axis, fc1.in_axis, fc1.out_channels, fc1.in_channels) == \
        ("MatMul", 1, 0, 64, 32)
    assert fc1.weight_array.shape == (32, 64)  # [Cin, Cout]
    np.testing.assert_allclose(fc1.weight_array, module.fc1.weight.detach().numpy().T)
    assert (fc1.bias, fc1.bias_node, fc1.output) == ("fc1.bias", "/fc1/Add", "/fc1/Add_output_0")
    np.testing.assert_allclose(fc1.bias_array, module.fc1.bias.detach().numpy())
    assert fc2.bias_node == "/fc2/Add" and fc2.input == "/Gelu_output_0"
    assert fc1.macs == fc2.macs == 8 * 32 * 64  # tokens x Cin x Cout at batch 1


def test_attention_matmuls_of_two_activations_are_skipped():
    model = export(TinyAttention(), torch.randn(1, 6, 16))
    layers, skipped = find_layers(model)
    assert len(layers) == 4 and all(l.op == "MatMul" and l.bias_node for l in layers)
    assert [(s.op, s.reason) for s in skipped] == \
        [("MatMul", "both inputs are activations; kept in float")] * 2


def test_conv_transpose_is_a_layer_with_its_own_axes_and_macs():
    module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 4, 2, stride=2))
    layers, skipped = find_layers(export(module, torch.randn(1, 3, 8, 8)))
    assert [l.op for l in layers] == ["Conv", "ConvTranspose"] and not skipped
    up = layers[1]
    # weight [Cin, Cout, k, k]: output channels on axis 1, input channels on axis 0
    assert (up.out_axis, up.in_axis, up.in_channels, up.out_channels) == (1, 0, 8, 4)
    assert up.kernel_shape == (2, 2) and up.strides == (2, 2) and up.bias_array.shape == (4,)
    # 8 x 6 x 6 inputs, each meeting 4 x 2 x 2 weights; 4 x 12 x 12 outputs
    assert up.macs == 8 * 36 * 16 and up.inputs == 8 * 36 and up.outputs == 4 * 144


def test_grouped_conv_transpose_is_listed():
    module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 4, 2, stride=2, groups=2))
    layers, skipped = find_layers(export(module, torch.randn(1, 3, 8, 8)))
    assert [l.op for l in layers] == ["Conv"]
    assert [s.op for s in skipped] == ["ConvTranspose"]
    assert "grouped ConvTranspose" in skipped[0].reason and skipped[0].macs == 8 * 36 * 2 * 4


@pytest.mark.parametrize("kernel, stride, pad", [(2, 2, 0), (4, 2, 1), (3, 1, 1)])
def test_conv_transpose_bias_shift_and_moments_match_torch(kernel, stride, pad):
    """The data-free bias correction and the propagated moments of a ConvTranspose equal what
    torch measures at interior positions (an output meets kernel / stride taps per axis)."""
    from rexdeploy.planning.quantize import _bias_shift
    from rexdeploy.planning.stats import _transposed_moments

    torch.manual_seed(0)
    up = nn.ConvTranspose2d(6, 5, kernel, stride, pad).double().eval()
    layers, _ = find_layers(export(nn.Sequential(up.float()), torch.randn(1, 6, 10, 10)))
    info = layers[0]
    delta = torch.randn(6, 5, kernel, kernel, dtype=torch.float64) * 0.01
    mean = torch.rand(6, dtype=torch.float64) + 0.5
    x = mean.reshape(1, 6, 1, 1) + torch.randn(64, 6, 20, 20, dtype=torch.float64)
    y = torch.nn.functional.conv_transpose2d(x, delta, stride=stride, padding=pad)
    inner = y[:, :, kernel:-kernel, kernel:-kernel]
    measured = inner.mean(dim=(0, 2, 3)).numpy()
    shift = _bias_shift(info, delta, mean.numpy())
    assert np.allclose(shift, measured, rtol=0.05, atol=2e-4), (shift, measured)

    w = torch.from_numpy(info.weight_array).double().transpose(0, 1)  # [Cout, Cin, k, k]
    z = torch.randn(64, 6, 20, 20, dtype=torch.float64) * 2.0
    out = torch.nn.functional.conv_transpose2d(z, torch.from_numpy(info.weight_array).double(),
                                               stride=stride, padding=pad)
    inner = out[:, :, kernel:-kernel, kernel:-kernel]
    m, v = _transposed_moments(w, None, torch.zeros(6, dtype=torch.float64),
                               torch.full((6,), 4.0, dtype=torch.float64), (stride, stride))
    assert np.allclose(m.numpy(), 0.0)
    assert np.allclose(v.numpy(), inner.var(dim=(0, 2, 3)).numpy(), rtol=0.1)


def _model(nodes, inputs, outputs, inits) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    proto.ir_version = 10
    return ir.from_proto(proto)


def _info(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def test_skip_reasons():
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(f32(4, 8), "w_gemm"),
             numpy_helper.from_array(rng.integers(-3, 3, (8, 4)).astype(np.int32), "w_int"),
             numpy_helper.from_array(rng.integers(-127, 127, (4, 3, 3, 3)).astype(np.int8), "q"),
             numpy_helper.from_array(np.float32(0.1), "s"),
             numpy_helper.from_array(f32(8, 8).astype(np.float64), "w_f64")]
    nodes = [
        helper.make_node("Gemm", ["a", "w_gemm"], ["g"], name="gemm_transA", transA=1),
        helper.make_node("MatMul", ["i", "w_int"], ["m"], name="int_matmul"),
        helper.make_node("DequantizeLinear", ["q", "s"], ["w_dq"], name="dq"),
        helper.make_node("Conv", ["x", "w_dq"], ["c"], name="quantized_conv"),
        helper.make_node("Conv", ["x", "w_in"], ["c2"], name="input_weight_conv"),
        helper.make_node("MatMul", ["d", "w_f64"], ["m64"], name="f64_matmul"),
        helper.make_node("Transpose", ["w_gemm"], ["w_t"], name="transpose"),
        helper.make_node("MatMul", ["a", "w_t"], ["mt"], name="unfolded_matmul"),
    ]
    inputs = [_info("a", TensorProto.FLOAT, [4, 2]), _info("i", TensorProto.INT32, [2, 8]),
              _info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
              _info("w_in", TensorProto.FLOAT, [4, 3, 3, 3]),
              _info("d", TensorProto.DOUBLE, [2, 8])]
    outputs = [_info(n, e, None) for n, e in [("g", 1), ("m", 6), ("c", 1), ("c2", 1),
                                              ("m64", 11), ("mt", 1)]]
    layers, skipped = find_layers(_model(nodes, inputs, outputs, inits))
    assert layers == []
    reasons = {s.name: s.reason for s in skipped}
    assert reasons == {
        "gemm_transA": "Gemm with transA=1 is not supported yet; kept in float",
        "int_matmul": "weight dtype INT32 is not floating point; kept as is",
        "quantized_conv": "already quantized (weight comes from DequantizeLinear); kept as is",
        "input_weight_conv": "weight is not a constant (a graph input); kept in float",
        "f64_matmul": "DOUBLE weights cannot be dequantized in ONNX (DequantizeLinear outputs "
                      "float32/float16/bfloat16); kept in float",
        "unfolded_matmul": "weight is computed from constants by Transpose (fold constants "
                           "first); kept in float",
    }


def test_gemm_transb0_axes_and_beta_scaled_bias():
    w = np.arange(24, dtype=np.float32).reshape(6, 4)  # [Cin, Cout]
    inits = [numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.ones((1, 4), np.float32), "c")]
    nodes = [helper.make_node("Gemm", ["a", "w", "c"], ["y"], name="gemm", beta=0.5)]
    model = _model(nodes, [_info("a", TensorProto.FLOAT, [1, 6])],
                   [_info("y", TensorProto.FLOAT, None)], inits)
    (layer,), _ = find_layers(model)
    assert (layer.out_axis, layer.in_axis, layer.out_channels, layer.in_channels) == (1, 0, 4, 6)
    np.testing.assert_array_equal(layer.bias_array, np.full(4, 0.5, np.float32))
    assert layer.macs == 24


def test_matmul_without_bias_and_unknown_macs():
    inits = [numpy_helper.from_array(np.ones((8, 4), np.float32), "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
             helper.make_node("Relu", ["y"], ["z"], name="relu")]
    model = _model(nodes, [_info("x", TensorProto.FLOAT, ["B", "T", 8])],
                   [_info("z", TensorProto.FLOAT, None)], inits)
    (layer,), _ = find_layers(model)
    assert (layer.bias, layer.bias_array, layer.bias_node, layer.output) == (None, None, None, "y")
    assert layer.macs == 0  # symbolic sequence length


def test_find_layers_leaves_the_model_unchanged(cnn):
    before = ir.to_proto(cnn).SerializeToString()
    find_layers(cnn)
    assert ir.to_proto(cnn).SerializeToString() == before
