"""Data-free scale migration (calib_free.activations.smooth) and its place in the pipeline: the math
keeps the float product, `--smooth auto` picks only outlier-heavy MatMul inputs, the lowering puts a
Mul before the activation's QuantizeLinear and keeps residual Adds on the float tensor, the plan
round-trips, ONNX Runtime shows the gain, and OpenVINO still runs the smoothed MatMuls in int8.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import rexdeploy
from calib_free.activations.smooth import (scale_input_channels, smoothing_factors,
                                           weight_input_absmax)
from calib_free.plan import QuantPlan
from rexdeploy.config import BuildConfig, QuantConfig
from rexdeploy.errors import UserError


def test_migration_keeps_the_float_product():
    torch.manual_seed(0)
    x = torch.randn(64, 16, dtype=torch.float64) * torch.linspace(0.1, 20, 16, dtype=torch.float64)
    w = torch.randn(16, 8, dtype=torch.float64)  # MatMul layout [Cin, Cout]: in_axis 0
    s = smoothing_factors(x.abs().amax(0), weight_input_absmax(w, 0), 0.7)
    y = (x / s) @ scale_input_channels(w, s, 0)
    torch.testing.assert_close(y, x @ w)


def test_alpha_moves_the_spread_from_activations_to_weights():
    a = torch.tensor([1.0, 1.0, 16.0, 1.0])
    w = torch.ones(4)
    flat = a / smoothing_factors(a, w, 1.0)   # alpha 1: activation channels all equal
    assert float(flat.max() / flat.min()) == pytest.approx(1.0)
    kept = a / smoothing_factors(a, w, 0.0)   # alpha 0 with equal weights: no change in shape
    assert float(kept.max() / kept.min()) == pytest.approx(16.0)
    half = a / smoothing_factors(a, w, 0.5)
    assert float(half.max() / half.min()) == pytest.approx(4.0)


def test_factors_are_finite_for_dead_channels_and_checked():
    s = smoothing_factors(torch.tensor([0.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 1.0]), 0.7)
    assert torch.isfinite(s).all() and (s > 0).all()
    with pytest.raises(ValueError, match="alpha"):
        smoothing_factors(torch.ones(3), torch.ones(3), 1.5)
    with pytest.raises(ValueError, match="channels"):
        smoothing_factors(torch.ones(3), torch.ones(4), 0.5)


class OutlierMLP(nn.Module):
    """LayerNorm with two 30x channels (as BERT's) -> Linear -> GELU -> Linear, plus the skip."""

    def __init__(self, d=32, h=64):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        with torch.no_grad():
            self.ln.weight[3] = 30.0
            self.ln.weight[17] = -25.0
        self.fc1 = nn.Linear(d, h)
        self.fc2 = nn.Linear(h, d)

    def forward(self, x):
        y = self.ln(x)
        return y + self.fc2(nn.functional.gelu(self.fc1(y)))


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory):
    torch.manual_seed(0)
    model = OutlierMLP().eval()
    path = tmp_path_factory.mktemp("smooth") / "outlier_mlp.pt"
    torch.jit.save(torch.jit.trace(model, torch.randn(1, 8, 32)), str(path))
    return str(path), model


def _build(model, out, smooth, target="openvino"):
    path = model[0]
    cfg = BuildConfig(target=target, quant=QuantConfig(smooth=smooth))
    return rexdeploy.build(path, ["x:1x8x32"], output=str(out), config=cfg, force=True,
                           quiet=True)


def _ort(onnx_path, x):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])


def _sqnr(ref, test):
    return 10 * np.log10((ref ** 2).sum() / ((ref - test) ** 2).sum())


@pytest.mark.openvino
def test_auto_smooths_the_outlier_input_and_gains_in_onnxruntime(outlier_model, tmp_path):
    import onnx

    smooth = _build(outlier_model, tmp_path / "smooth", "auto")
    plain = _build(outlier_model, tmp_path / "plain", "off")
    plan = QuantPlan.load(smooth.path)
    smoothed = [a for a in plan.activations if a.smooth is not None]
    # the LayerNorm output (30x channels) is migrated; the GELU output (no outliers) is not
    assert len(smoothed) == 1 and "+smooth" in smoothed[0].source
    assert not any(a.smooth is not None for a in QuantPlan.load(plain.path).activations)
    assert plan.config["smooth"] == "auto" and plan.config["smooth_alpha"] == 0.7

    graph = onnx.load(smooth.file("onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    muls = [n for n in graph.node if n.op_type == "Mul" and n.name.endswith("/smooth")]
    assert len(muls) == 1
    q = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == muls[0].output[0])
    assert q is not None
    # the residual Add reads the float LayerNorm output, not x / s
    add = next(n for n in graph.node if n.op_type == "Add" and muls[0].input[0] in n.input)
    assert producers[muls[0].input[0]].op_type != "DequantizeLinear"
    assert add is not None

    torch.manual_seed(1)
    model = outlier_model[1]
    x = torch.randn(16, 8, 32).numpy().astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    # the skip is float in both: the errors are the MLP branch's
    gain = _sqnr(ref, _ort(smooth.file("onnx"), x)) - _sqnr(ref, _ort(plain.file("onnx"), x))
    assert gain > 3.0, gain


@pytest.mark.openvino
def test_smoothed_matmuls_still_run_int8_in_openvino(outlier_model, tmp_path):
    import json

    art = _build(outlier_model, tmp_path / "ov", "all")
    assert sum(a.smooth is not None for a in QuantPlan.load(art.path).activations) == 2
    with open(art.file("report")) as f:
        summary = json.load(f)["summary"]  # read from OpenVINO's compiled runtime model
    assert summary["runtime_compute_layers"] == 2, summary
    assert summary["runtime_int8_layers"] == 2, summary


def test_plan_round_trip_keeps_the_factors(tmp_path, outlier_model):
    art = _build(outlier_model, tmp_path / "rt", "all")
    plan = QuantPlan.load(art.path)
    plan.save(str(tmp_path))
    again = QuantPlan.load(str(tmp_path))
    for a, b in zip(plan.activations, again.activations):
        assert (a.smooth is None) == (b.smooth is None)
        if a.smooth is not None:
            np.testing.assert_array_equal(a.smooth, b.smooth)


def test_options_are_validated():
    with pytest.raises(UserError, match="--smooth-alpha"):
        QuantConfig(smooth_alpha=1.5).validate()
    with pytest.raises(UserError, match="--smooth sometimes"):
        QuantConfig(smooth="sometimes").validate()
    with pytest.raises(UserError, match="--ensemble"):
        QuantConfig(smooth="all", ensemble=2).validate()


def test_auto_leaves_image_models_alone_without_real_data(tmp_path):
    """Gaussian images do not show an image model's channel pattern: under --ranges synthetic a
    CNN's classifier input has 'outlier channels' on them that real photos do not share
    (EfficientNet-Lite0: 13.3 dB without migration, 1.4 dB with), so auto does not migrate on
    image inputs; `all` still does when asked."""
    from tiny_models import tiny_cnn

    plans = {}
    for smooth in ("auto", "all"):
        cfg = BuildConfig(quant=QuantConfig(ranges="synthetic", smooth=smooth,
                                            auto_budget=False))  # every input int8
        art = rexdeploy.build(tiny_cnn(), ["input:1x3x32x32"], output=str(tmp_path / smooth),
                              config=cfg, quiet=True)
        plans[smooth] = QuantPlan.load(art.path)
    assert not any(a.smooth is not None for a in plans["auto"].activations)
    assert any(a.smooth is not None for a in plans["all"].activations)
