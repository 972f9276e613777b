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


def _calibrated_cnn(seed=0):
    """TinyCNN whose BN running statistics are the real statistics of N(0,1) inputs."""
    torch.manual_seed(seed)
    m = TinyCNN()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None  # cumulative average
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.normal_(0, 0.3)
    m.train()
    with torch.no_grad():
        for _ in range(20):
            m(torch.randn(16, 3, 32, 32))
    return m.eval()


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


def test_layernorm_is_tagged_ln():
    model = _export(tiny_mlp(), (1, 8, 32))
    stats = propagate_stats(model)
    ln = [n for n in model.graph if n.op_type == "LayerNormalization"]
    assert ln, "export should keep LayerNormalization at opset 21"
    assert "ln" in stats[ln[0].outputs[0].name].roots
