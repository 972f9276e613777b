"""Gaussian moment propagation against Monte Carlo (1e6 samples) and against real torch layers."""

import math

import pytest
import torch

from calib_free.activations.moments import (add_moments, clipped_gaussian_moments, conv_moments,
                                            gelu_moments, linear_moments, normal_cdf, normal_pdf)

N_MC = 1_000_000


def _mc(mean, std, fn, seed=0):
    """Monte Carlo (mean, var) of fn(x), x ~ N(mean_c, std_c^2), per channel (rows)."""
    g = torch.Generator().manual_seed(seed)
    x = mean[:, None].double() + std[:, None].double() * torch.randn(len(mean), N_MC // len(mean),
                                                                     generator=g,
                                                                     dtype=torch.float64)
    y = fn(x)
    return y.mean(1), y.var(1)


MEANS = torch.tensor([-2.0, -0.5, 0.0, 0.7, 3.0, 5.5, 8.0])
STDS = torch.tensor([1.0, 0.3, 1.0, 2.0, 1.5, 1.0, 4.0])


@pytest.mark.parametrize("lo, hi", [(0.0, None), (0.0, 6.0), (-1.0, 1.0), (None, 2.0),
                                    (-0.5, None), (None, None)])
def test_clipped_gaussian_matches_monte_carlo(lo, hi):
    m, v = clipped_gaussian_moments(MEANS, STDS, lo, hi)
    mc_m, mc_v = _mc(MEANS, STDS, lambda x: torch.clamp(x, lo, hi) if (lo, hi) != (None, None)
                     else x)
    # MC standard error of the mean: std / sqrt(1.4e5) <= 0.011
    assert torch.allclose(m.double(), mc_m, atol=0.03)
    assert torch.allclose(v.double(), mc_v, rtol=0.02, atol=2e-3)


def test_relu_closed_form_at_zero_mean():
    m, v = clipped_gaussian_moments(torch.tensor([0.0]), torch.tensor([1.0]), 0.0, None)
    assert float(m) == pytest.approx(1 / math.sqrt(2 * math.pi))
    assert float(v) == pytest.approx(0.5 - 1 / (2 * math.pi))


def test_clipped_gaussian_edge_cases():
    mean = torch.tensor([-100.0, 100.0, 3.0, -1.0, 7.0])
    std = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
    m, v = clipped_gaussian_moments(mean, std, 0.0, 6.0)
    assert bool(torch.isfinite(m).all()) and bool(torch.isfinite(v).all())
    assert torch.allclose(m, torch.tensor([0.0, 6.0, 3.0, 0.0, 6.0]), atol=1e-6)
    assert torch.allclose(v, torch.zeros(5), atol=1e-6)
    m, v = clipped_gaussian_moments(mean, std, None, None)
    assert torch.equal(m, mean) and torch.allclose(v, std ** 2)
    assert m.dtype == torch.float32
    m64, _ = clipped_gaussian_moments(mean.double(), std.double(), 0.0, None)
    assert m64.dtype == torch.float64


def test_gelu_matches_monte_carlo_and_closed_form_mean():
    gelu = torch.nn.GELU()
    m, v = gelu_moments(MEANS, STDS)
    mc_m, mc_v = _mc(MEANS, STDS, gelu)
    assert torch.allclose(m.double(), mc_m, atol=0.03)
    assert torch.allclose(v.double(), mc_v, rtol=0.02, atol=2e-3)
    # E[x Phi(x)] = mu Phi(r) + s^2/sqrt(1+s^2) phi(r), r = mu/sqrt(1+s^2), for any std.
    mu, sd = torch.tensor([0.0, 1.0, -20.0, 3.0]).double(), torch.tensor([1.0, 30.0, 10.0, 0.0])
    r = mu / torch.sqrt(1 + sd.double() ** 2)
    exact = mu * normal_cdf(r) + sd.double() ** 2 / torch.sqrt(1 + sd.double() ** 2) * normal_pdf(r)
    assert torch.allclose(gelu_moments(mu, sd.double())[0], exact, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("cin, cout, groups, k", [(4, 6, 1, 3), (4, 6, 2, 3), (5, 5, 5, 3),
                                                  (3, 8, 1, 1)])
def test_conv_moments_match_a_real_conv(cin, cout, groups, k):
    g = torch.Generator().manual_seed(cin * 10 + groups)
    conv = torch.nn.Conv2d(cin, cout, k, groups=groups, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.5)
        conv.bias.copy_(torch.randn(cout, generator=g))
    mean_in = torch.randn(cin, generator=g)
    var_in = torch.rand(cin, generator=g) + 0.2
    x = mean_in[None, :, None, None] + var_in.sqrt()[None, :, None, None] * torch.randn(
        4, cin, 160, 160, generator=g)
    with torch.no_grad():
        y = conv(x)  # no padding: every output position is interior
    m, v = conv_moments(conv.weight, conv.bias, mean_in, var_in, groups=groups)
    assert m.shape == v.shape == (cout,)
    sd = v.sqrt()
    assert torch.allclose(m, y.mean((0, 2, 3)), atol=float(0.03 * sd.max()))
    assert torch.allclose(v, y.var((0, 2, 3)), rtol=0.05)


def test_linear_and_add_moments():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(3, 5, generator=g), torch.randn(3, generator=g)
    mean_in, var_in = torch.randn(5, generator=g), torch.rand(5, generator=g) + 0.1
    x = mean_in + var_in.sqrt() * torch.randn(200_000, 5, generator=g)
    y = x @ w.T + b
    m, v = linear_moments(w, b, mean_in, var_in)
    assert torch.allclose(m, y.mean(0), atol=0.02) and torch.allclose(v, y.var(0), rtol=0.03)
    m2, v2 = add_moments(m, v, torch.ones(3), torch.full((3,), 2.0))
    assert torch.allclose(m2, m + 1) and torch.allclose(v2, v + 2)
    with pytest.raises(ValueError):
        linear_moments(w[:, :, None], b, mean_in, var_in)


def test_conv_moments_reject_mismatched_channels():
    with pytest.raises(ValueError, match="input channels"):
        conv_moments(torch.randn(6, 2, 3, 3), None, torch.zeros(5), torch.ones(5), groups=2)
