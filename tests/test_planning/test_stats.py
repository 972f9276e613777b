"""Data-free statistics: BN/LN moments propagated through the float graph match reality on a
model whose BatchNorm statistics are true (set by running Gaussian inputs through it)."""

import io

import numpy as np
import onnx_ir as ir
import pytest
import torch

from rexdeploy.planning.observe import observe
from rexdeploy.planning.stats import propagate_stats
from tiny_models import TinyCNN, tiny_mlp


def _calibrated(m, shape, gamma=(0.5, 1.5), beta=0.3):
    """`m` with BN running statistics that are the real statistics of N(0,1) inputs of
    `shape` (BN scales uniform in `gamma`, shifts N(0, beta^2))."""
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None  # cumulative average
            mod.weight.data.uniform_(*gamma)
            mod.bias.data.normal_(0, beta)
    m.train()
    with torch.no_grad():
        for _ in range(20):
            m(torch.randn(16, *shape))
    return m.eval()


def _calibrated_cnn(seed=0):
    """TinyCNN whose BN running statistics are the real statistics of N(0,1) inputs."""
    torch.manual_seed(seed)
    return _calibrated(TinyCNN(), (3, 32, 32))


def _export(model, shape):
    f = io.BytesIO()
    torch.onnx.export(model, (torch.randn(*shape),), f, dynamo=False, opset_version=21,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                      input_names=["input"], output_names=["output"])
    return ir.from_proto(__import__("onnx").load_from_string(f.getvalue()))


@pytest.fixture(scope="module")
def cnn():
    model = _export(_calibrated_cnn(), (1, 3, 32, 32))
    stats = propagate_stats(model, sigma=4.0)
    rng = np.random.default_rng(0)
    samples = [{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}
               for _ in range(32)]
    return model, stats, samples


def test_bn_outputs_are_beta_gamma(cnn):
    model, stats, _ = cnn
    bns = [n for n in model.graph if n.op_type == "BatchNormalization"]
    assert len(bns) == 7
    for n in bns:
        s = stats[n.outputs[0].name]
        np.testing.assert_allclose(s.mean, n.inputs[2].const_value.numpy(), rtol=1e-6)
        np.testing.assert_allclose(np.sqrt(s.var), np.abs(n.inputs[1].const_value.numpy()),
                                   rtol=1e-6)
        assert s.roots == {"bn"}


def test_propagated_means_match_observed(cnn):
    model, stats, samples = cnn
    names = [n.outputs[0].name for n in model.graph
             if n.op_type in ("Clip", "Add", "GlobalAveragePool", "Gemm")]
    obs = observe(model, names, samples)
    for name in names:
        s, o = stats[name], obs[name]
        scale = np.sqrt(s.var).mean() + 1e-6
        err = np.abs(s.mean - o.channel_mean).mean() / scale
        assert err < 0.35, f"{name}: mean error {err:.2f} std"


def test_extents_cover_observed_values(cnn):
    model, stats, samples = cnn
    names = [n.outputs[0].name for n in model.graph if n.op_type in ("Clip", "Add")]
    obs = observe(model, names, samples)
    for name in names:
        s, o = stats[name], obs[name]
        # 4 sigma ranges cover the observed values (slack for the independence assumption)
        assert o.hi <= s.hi * 1.3 + 1e-6 and o.lo >= s.lo * 1.3 - 1e-6, (name, s.lo, s.hi, o.lo,
                                                                          o.hi)
        # and are not absurdly wide
        assert s.bound < 4 * o.bound + 1e-6, (name, s.bound, o.bound)


def test_relu6_extent_is_capped(cnn):
    model, stats, _ = cnn
    for n in model.graph:
        if n.op_type == "Clip":
            s = stats[n.outputs[0].name]
            assert 0.0 <= s.lo and s.hi <= 6.0 and s.nonneg


def test_channel_bounds_after_a_clip_cover_each_channels_observed_values(cnn):
    """Per channel, a clipped Gaussian's own mean + 4 std misses its tail (a mostly-negative
    channel through ReLU6); the extent kept from before the clip covers it."""
    model, stats, samples = cnn
    names = [n.outputs[0].name for n in model.graph if n.op_type == "Clip"]
    obs = observe(model, names, samples)
    for name in names:
        s, o = stats[name], obs[name]
        bounds = s.channel_bounds(4.0)
        assert bounds.shape == o.channel_absmax.shape and (bounds <= 6.0).all()
        # one channel's estimate is rougher than the tensor's (the build gives it a margin
        # of 3, rexdeploy.planning.quantize.CHANNEL_MARGIN). Measured: observed maxima up to 2.1x
        # the
        # bounds; up to 3.7x the clipped moments' mean + 4 std
        assert (o.channel_absmax <= bounds * 2.5 + 1e-6).all(), name
        std = np.sqrt(s.var)
        from_moments = np.minimum(np.abs(s.mean) + 4 * std, 6.0)
        assert (bounds >= from_moments - 1e-9).all()


def test_input_range_is_used():
    model = _export(_calibrated_cnn(), (1, 3, 32, 32))
    stats = propagate_stats(model, {"input": (-1.0, 1.0)})
    s = stats["input"]
    assert (s.lo, s.hi) == (-1.0, 1.0) and s.roots == {"input"}
    assumed = propagate_stats(model)["input"]
    assert assumed.roots == {"assumed-input"} and assumed.bound == pytest.approx(4.0)


class _Normalised(torch.nn.Module):
    """(x - mean) / std inside the model, as the Fashion-MNIST CNN does, then a convolution."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return self.conv((x - 0.2860) / 0.3530)


def test_a_shifted_input_keeps_its_exact_extent():
    """An input's given range, moved and rescaled by constants, stays that range: the moments
    of a uniform input put mean + 4 std 2.3x past its end (the Fashion-MNIST CNN's normalised
    input read 3.9 for 2.0, and its W8A8 build fell from 37.1 to 26.5 dB)."""
    model = _export(_Normalised().eval(), (1, 1, 28, 28))
    stats = propagate_stats(model, {"input": (0.0, 1.0)})
    conv = next(n for n in model.graph if n.op_type == "Conv")
    s = stats[conv.inputs[0].name]
    assert (s.lo, s.hi) == pytest.approx(((0 - 0.2860) / 0.3530, (1 - 0.2860) / 0.3530))
    assert s.roots == {"input"}


def test_layernorm_is_tagged_ln():
    model = _export(tiny_mlp(), (1, 8, 32))
    stats = propagate_stats(model)
    ln = [n for n in model.graph if n.op_type == "LayerNormalization"]
    assert ln, "export should keep LayerNormalization at opset 21"
    assert "ln" in stats[ln[0].outputs[0].name].roots


class _Gates(torch.nn.Module):
    """BatchNorm -> the gated activations of real exports: SiLU (x * Sigmoid(x)), torch's
    HardSwish op, Paddle2ONNX's hard-swish (x * Clip(x + 3, 0, 6) / 6), a per-channel scale,
    Sigmoid; then a convolution with no BatchNorm after it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bns = torch.nn.ModuleList(torch.nn.BatchNorm2d(8) for _ in range(4))
        self.scale = torch.nn.Parameter(torch.linspace(0.5, 2.0, 8).view(1, 8, 1, 1))
        self.after = torch.nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = self.conv(x)
        silu = self.bns[0](y) * torch.sigmoid(self.bns[0](y))
        hswish = torch.nn.functional.hardswish(self.bns[1](y))
        b = self.bns[2](y)
        paddle = b * torch.clamp(b + 3.0, 0.0, 6.0) / 6.0 * self.scale
        return self.after(silu + hswish + paddle + torch.sigmoid(self.bns[3](y)))


@pytest.fixture(scope="module")
def gates():
    torch.manual_seed(0)
    model = _export(_calibrated(_Gates(), (3, 16, 16), gamma=(0.5, 2.0), beta=1.0),
                    (1, 3, 16, 16))
    rng = np.random.default_rng(0)
    samples = [{"input": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
               for _ in range(16)]
    return model, propagate_stats(model, sigma=4.0), samples


def test_gated_activations_after_batchnorm_have_statistics_that_match(gates):
    """Each gated activation's moments and extent, carried from its BatchNorm by quadrature,
    match what Gaussian inputs give (they had none before: their ranges came from synthetic
    images, 3x under what the PP-OCRv4 recogniser's text lines reach after its swish)."""
    model, stats, samples = gates
    ops = {"Mul", "Div", "HardSwish", "Sigmoid"}
    names = [n.outputs[0].name for n in model.graph if n.op_type in ops
             and n.outputs[0].name in stats and "bn" in stats[n.outputs[0].name].roots]
    kinds = {n.op_type for n in model.graph if n.outputs[0].name in names}
    assert kinds == ops, kinds  # the swish and hard-swish Muls, the Div by 6, the scale
    obs = observe(model, names, samples)
    for name in names:
        s, o = stats[name], obs[name]
        scale = np.sqrt(s.var).mean() + 1e-6
        assert np.abs(s.mean - o.channel_mean).mean() / scale < 0.1, name
        # 4 sigma, as everywhere (a little slack: 4k values reach past it); the extent samples
        # f on a grid, and swish's minimum falls between two points
        slack = 1e-3 * s.bound
        assert o.hi <= s.hi * 1.1 + slack and o.lo >= s.lo * 1.1 - slack, (name, s.lo, s.hi,
                                                                            o.lo, o.hi)
        assert s.bound < 2.0 * o.bound, (name, s.bound, o.bound)  # and not absurdly wide


def test_statistics_through_a_convolution_with_no_batchnorm_after_it_are_a_guess(gates):
    """Moments a BatchNorm anchored, pushed through a convolution with no BatchNorm after it,
    are not trusted for ranges (observed instead), under the default and under --calib."""
    from rexdeploy.planning.quantize import use_stats

    model, stats, _ = gates
    added = [n.outputs[0].name for n in model.graph if n.op_type == "Add"][-1]
    after = next(n for n in model.graph if n.op_type == "Conv" and n.inputs[0].name == added)
    s = stats[after.outputs[0].name]
    assert "bn" in s.roots and s.through_conv
    assert not use_stats(s, "auto") and not use_stats(s, "calib") and use_stats(s, "stats")
    assert use_stats(stats[added], "auto")  # the BatchNorm-anchored sum before it is
