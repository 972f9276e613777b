"""Gaussian moment propagation, per channel (docs/algorithms.md section 3).

A channel is modelled as N(mean_c, var_c), channels and positions independent. These primitives
carry (mean, var) through clipping activations, Conv/Linear and Add, so activation ranges and the
input means used by bias correction come from BatchNorm/LayerNorm statistics without data.
Every function returns tensors in its inputs' dtype and computes in float64.
"""

from __future__ import annotations

import functools
import math

import torch

# Quadrature for nonlinear activations: Simpson on z in [-10, 10] (tail mass 1e-23), step 0.025.
_Z_MAX, _NODES, _CHUNK = 10.0, 801, 4096


def normal_cdf(t: torch.Tensor) -> torch.Tensor:
    """Phi(t) of the standard normal."""
    return 0.5 * (1 + torch.erf(t / math.sqrt(2)))


def normal_pdf(t: torch.Tensor) -> torch.Tensor:
    """phi(t) of the standard normal (0 at +-inf)."""
    return torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)


def normal_partial_moments(a: torch.Tensor, b: torch.Tensor):
    """(m0, m1, m2) with m_j = int_a^b x^j phi(x) dx; a and b may be -inf / +inf."""
    m0 = normal_cdf(b) - normal_cdf(a)
    m1 = normal_pdf(a) - normal_pdf(b)
    m2 = m0 + _times(a, normal_pdf(a)) - _times(b, normal_pdf(b))
    return m0, m1, m2


def clipped_gaussian_moments(mean: torch.Tensor, std: torch.Tensor, lo: float | None,
                             hi: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, var) of clamp(x, lo, hi) for x ~ N(mean, std^2), elementwise; None = unbounded.

    ReLU is lo=0, hi=None; ReLU6 is lo=0, hi=6. std == 0 gives the clamped mean and var 0.
    """
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"clip range [{lo}, {hi}]: lo must not exceed hi")
    dtype = mean.dtype
    mu, sd = mean.detach().double(), std.detach().double().abs()
    safe = torch.where(sd > 0, sd, torch.ones_like(sd))
    # z = (y - mu) / sd = clamp(x_std, alpha, beta): moments of a clipped standard normal.
    alpha = (_bound(lo, -math.inf, mu) - mu) / safe
    beta = (_bound(hi, math.inf, mu) - mu) / safe
    below, above = normal_cdf(alpha), 1 - normal_cdf(beta)
    _, m1, m2 = normal_partial_moments(alpha, beta)
    ez = _times(alpha, below) + _times(beta, above) + m1
    ez2 = _times(alpha * alpha, below) + _times(beta * beta, above) + m2
    out_mean = mu + safe * ez
    out_var = (safe * safe * (ez2 - ez * ez)).clamp_min(0.0)
    point = mu if lo is None and hi is None else torch.clamp(mu, lo, hi)  # std == 0: a point
    out_mean = torch.where(sd > 0, out_mean, point)
    out_var = torch.where(sd > 0, out_var, torch.zeros_like(out_var))
    return out_mean.to(dtype), out_var.to(dtype)


def conv_mean(weight: torch.Tensor, mean_in: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """[Cout] E[conv(x, weight)] at interior positions (no bias, padding borders ignored).

    weight: [Cout, Cin/groups, *kernel] or [Cout, Cin]; mean_in: [Cin].
    """
    w = _as_3d(weight)
    return _weighted_sum(w.sum(dim=2), mean_in, groups).to(mean_in.dtype)


def conv_moments(weight: torch.Tensor, bias: torch.Tensor | None, mean_in: torch.Tensor,
                 var_in: torch.Tensor, groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """([Cout] mean, [Cout] var) of a Conv's output at interior positions.

    weight [Cout, Cin/groups, *kernel], bias [Cout] or None, mean_in/var_in [Cin]. Inputs are taken
    independent across channels and positions: mean = sum W mean_in + b, var = sum W^2 var_in.
    """
    w = _as_3d(weight)
    out_mean = _weighted_sum(w.sum(dim=2), mean_in, groups)
    if bias is not None:
        out_mean = out_mean + bias.detach().double().reshape(-1)
    out_var = _weighted_sum(w.square().sum(dim=2), var_in, groups)
    return out_mean.to(mean_in.dtype), out_var.to(var_in.dtype)


def linear_moments(weight: torch.Tensor, bias: torch.Tensor | None, mean_in: torch.Tensor,
                   var_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([Cout] mean, [Cout] var) of weight @ x + bias; weight [Cout, Cin], mean_in/var_in [Cin]."""
    if weight.ndim != 2:
        raise ValueError(f"linear weight must be [Cout, Cin], got shape {tuple(weight.shape)}")
    return conv_moments(weight, bias, mean_in, var_in, groups=1)


def add_moments(m1: torch.Tensor, v1: torch.Tensor, m2: torch.Tensor,
                v2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, var) of the sum of two independent tensors."""
    return m1 + m2, v1 + v2


def gelu_moments(mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, var) of GELU(x) = x Phi(x) for x ~ N(mean, std^2), elementwise (quadrature)."""
    gelu = lambda x: x * normal_cdf(x)  # noqa: E731  (exact GELU, as torch's default)
    m, m2 = gaussian_expectations(mean, std, gelu)
    return m.to(mean.dtype), (m2 - m * m).clamp_min(0.0).to(mean.dtype)


def gaussian_expectations(mean: torch.Tensor, std: torch.Tensor, fn) -> tuple[torch.Tensor,
                                                                             torch.Tensor]:
    """float64 (E[f(x)], E[f(x)^2]) for x ~ N(mean, std^2) elementwise; f acts elementwise.

    Composite Simpson rule on a uniform grid of z = (x - mean) / std over [-10, 10]. Not
    Gauss-Hermite: for std >> 1 a GELU-like f bends within 1/std in z, between the Hermite nodes
    (measured: 1 % error at std 10 with 96 nodes). Measured on GELU's mean against its closed
    form: 1e-15 relative up to std 10, 4e-8 at std 30, 4e-5 at std 100.
    """
    z, wz = _simpson_normal()
    mean, std = torch.broadcast_tensors(mean.detach().double(), std.detach().double().abs())
    mu, sd = mean.reshape(-1), std.reshape(-1)
    out1, out2 = torch.empty_like(mu), torch.empty_like(mu)
    for i in range(0, mu.numel(), _CHUNK):  # chunks bound memory to _CHUNK x nodes doubles
        f = fn(mu[i:i + _CHUNK, None] + sd[i:i + _CHUNK, None] * z)
        out1[i:i + _CHUNK], out2[i:i + _CHUNK] = f @ wz, (f * f) @ wz
    return out1.reshape(mean.shape), out2.reshape(mean.shape)


@functools.lru_cache(maxsize=1)
def _simpson_normal() -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes z and weights w with sum_i w_i f(z_i) ~ E[f(Z)], Z ~ N(0, 1), normalised to sum 1."""
    z = torch.linspace(-_Z_MAX, _Z_MAX, _NODES, dtype=torch.float64)
    simpson = torch.ones(_NODES, dtype=torch.float64)
    simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
    w = simpson * normal_pdf(z)
    return z, w / w.sum()


def _as_3d(weight: torch.Tensor) -> torch.Tensor:
    """float64 [Cout, Cin/groups, kernel positions]."""
    w = weight.detach().double()
    if w.ndim < 2:
        raise ValueError(f"weight must be [Cout, Cin/groups, ...], got shape {tuple(w.shape)}")
    return w.reshape(w.shape[0], w.shape[1], -1)


def _weighted_sum(coef: torch.Tensor, stat_in: torch.Tensor, groups: int) -> torch.Tensor:
    """float64 [Cout]: sum_c coef[o, c] * stat_in[channel c of o's group]; coef [Cout, Cin/g]."""
    cout, cin_g = coef.shape
    stat_in = stat_in.detach().double().reshape(-1)
    if groups < 1 or cout % groups or stat_in.numel() != cin_g * groups:
        raise ValueError(f"weight [{cout}, {cin_g}, ...] with groups={groups} does not fit "
                         f"{stat_in.numel()} input channels")
    group_of_output = torch.arange(cout) // (cout // groups)
    return (coef * stat_in.reshape(groups, cin_g)[group_of_output]).sum(dim=1)


def _bound(value: float | None, default: float, like: torch.Tensor) -> torch.Tensor:
    return torch.full_like(like, default if value is None else float(value))


def _times(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """t * p with inf * 0 = 0 (a tail with no mass contributes nothing)."""
    return torch.where(p == 0, torch.zeros_like(p), t * p)
