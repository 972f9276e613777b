"""Activation range estimators: sample-based clips, the Gaussian MSE-optimal sigma, and scales."""

import math

import numpy as np
import pytest
import torch

from calib_free.activations.ranges import (MIN_CLIP, gaussian_clip, gaussian_mse_sigma, maxabs,
                                           mse_optimal, percentile, scale_from_clip)
from calib_free.weights.quantizer import qmax


def _grid_mse(x: torch.Tensor, clip: float, bits: int = 8, signed: bool = True) -> float:
    q = qmax(bits, signed)
    s = clip / q
    x = x.double()
    return float((x - s * torch.clamp(torch.round(x / s), -q if signed else 0, q)).square().mean())


def test_maxabs_and_percentile():
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(0))
    assert maxabs(x) == pytest.approx(float(x.abs().max()))
    assert percentile(x, 99.0) == pytest.approx(float(np.percentile(x.abs().numpy(), 99.0)))
    assert percentile(x, 100.0) == pytest.approx(maxabs(x))
    assert percentile(x) < maxabs(x)
    assert 2.4 < percentile(x, 99.0) < 2.75  # |N(0,1)|: 2.576
    with pytest.raises(ValueError):
        percentile(x, 0.0)


def test_estimators_return_positive_finite_clips():
    z = torch.zeros(10)
    for clip in (maxabs(z), percentile(z), mse_optimal(z), maxabs(torch.empty(0))):
        assert clip == MIN_CLIP
    with pytest.raises(ValueError, match="inf or nan"):
        maxabs(torch.tensor([1.0, math.inf]))


def test_mse_optimal_beats_maxabs_on_heavy_tails():
    torch.manual_seed(0)
    x = torch.distributions.StudentT(3.0).sample((200_000,))
    clip = mse_optimal(x, bits=8)
    assert clip < 0.7 * maxabs(x)
    assert _grid_mse(x, clip) < 0.9 * _grid_mse(x, maxabs(x))


def test_mse_optimal_gaussian_near_theory():
    x = torch.randn(400_000, generator=torch.Generator().manual_seed(1))
    clip = mse_optimal(x, bits=8)
    assert 3.3 < clip < 4.8  # theory: 3.92 sigma; the MSE is flat there
    assert _grid_mse(x, clip) <= _grid_mse(x, maxabs(x))


def test_mse_optimal_unsigned():
    x = torch.relu(torch.randn(50_000, generator=torch.Generator().manual_seed(2)))
    clip = mse_optimal(x, bits=8, signed=False)
    assert 0 < clip <= maxabs(x)
    assert _grid_mse(x, clip, signed=False) <= _grid_mse(x, maxabs(x), signed=False)


def test_gaussian_clip():
    mean, std = torch.tensor([0.5, -2.0, 0.0]), torch.tensor([1.0, 0.5, 0.1])
    assert gaussian_clip(mean, std, 4.0) == pytest.approx(4.5)  # max(4.5, 4.0, 0.4)


def test_gaussian_mse_sigma_known_values():
    # 2 bits = 3 levels {-c, 0, c}: the Lloyd-Max optimum for a Gaussian has c = 1.224.
    assert gaussian_mse_sigma(2) == pytest.approx(1.224, abs=2e-3)
    assert gaussian_mse_sigma(8) == pytest.approx(3.92, abs=0.02)  # ACIQ's 8-bit value
    sigmas = [gaussian_mse_sigma(b) for b in (2, 3, 4, 5, 6, 8)]
    assert sigmas == sorted(sigmas)


def test_gaussian_mse_sigma_is_the_monte_carlo_minimum():
    x = torch.randn(1_000_000, generator=torch.Generator().manual_seed(3))
    n = gaussian_mse_sigma(4)
    assert _grid_mse(x, n, 4) < min(_grid_mse(x, n - 0.3, 4), _grid_mse(x, n + 0.3, 4))


def test_scale_from_clip():
    assert scale_from_clip(1.27) == pytest.approx(0.01)
    assert scale_from_clip(2.55, 8, signed=False) == pytest.approx(0.01)
    assert scale_from_clip(7.0, 4) == pytest.approx(1.0)
