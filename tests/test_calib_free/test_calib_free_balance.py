"""Balanced weight columns (calib_free.weights.balance): c is positive with a geometric mean of 1,
follows a column's scale, does not care about the layout, and makes 4-bit rounding of
outlier-column weights lose less of the layer's output on any input."""

from __future__ import annotations

import torch

from calib_free.weights.balance import LIMIT, column_scales
from calib_free.weights.quantizer import dequantize, quantize_weight


def _outlier_weight(rows=64, cols=96, seed=0) -> torch.Tensor:
    torch.manual_seed(seed)
    w = torch.distributions.StudentT(3.0).sample((rows, cols)) * 0.02
    w[:, :4] *= torch.tensor([8.0, 12.0, 20.0, 30.0])  # a few heavy input columns
    return w


def _rtn4(w: torch.Tensor, out_axis: int) -> torch.Tensor:
    codes, scale = quantize_weight(w, 4, "channel", out_axis)
    return dequantize(codes, scale, out_axis)


def test_scales_positive_geometric_mean_one_and_follow_a_column():
    w = _outlier_weight()
    c = column_scales(w, in_axis=1)
    assert c.shape == (96,) and bool((c > 0).all())
    assert float(torch.log(c).mean()) == 0.0 or abs(float(torch.log(c).mean())) < 1e-9
    assert float(c[:4].min()) > float(c[4:].max())  # the heavy columns get the big factors
    doubled = w.clone()
    doubled[:, 10] *= 2.0
    c2 = column_scales(doubled, in_axis=1)
    ratio = (c2[10] / c[10]) / torch.exp(torch.log(c2 / c).mean())
    assert abs(float(ratio) - 2.0) < 0.05  # a column twice as large: a factor about twice


def test_layout_does_not_matter_and_dead_columns_stay_finite():
    w = _outlier_weight()
    assert torch.allclose(column_scales(w, 1), column_scales(w.t().contiguous(), 0))
    w[:, 7] = 0.0  # a dead input column
    c = column_scales(w, 1)
    assert bool(torch.isfinite(c).all()) and float(c.max()) <= LIMIT and \
        float(c.min()) >= 1 / LIMIT


def test_balanced_4bit_rounding_loses_less_output():
    """Trained layers read inputs whose large channels meet small weight columns (a LayerNorm's
    outlier channels): plain per-row rounding flattens those columns, balanced keeps them."""
    torch.manual_seed(1)
    w = torch.distributions.StudentT(3.0).sample((64, 96)) * 0.02  # [out, in], a Linear's
    light = torch.ones(96)
    light[:6] = torch.tensor([0.02, 0.03, 0.05, 0.05, 0.1, 0.1])
    w = w * light  # a few light input columns ...
    x = torch.randn(512, 96) / light  # ... fed by heavy input channels
    plain = _rtn4(w, 0)
    c = column_scales(w, in_axis=1).float()
    balanced = _rtn4(w / c, 0) * c  # the layer computes Q(W / c) (c x)
    ref = x @ w.t()
    err_plain = float(((x @ plain.t() - ref) ** 2).mean())
    err_balanced = float(((x @ balanced.t() - ref) ** 2).mean())
    assert err_balanced < 0.5 * err_plain, (err_balanced, err_plain)
