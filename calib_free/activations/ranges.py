"""Activation range estimators (docs/algorithms.md section 6): each returns a positive clip
(real units).

From samples: max-abs, percentile of |x|, MSE-optimal clip for the integer grid. From moments
(BatchNorm/LayerNorm statistics): max_c |mean_c| + n std_c, with n chosen by the MSE criterion for
a Gaussian. `scale_from_clip` turns a clip into the per-tensor scale of the Q/DQ pair.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from calib_free.weights.quantizer import qmax

# A clip is never 0: an all-zero tensor still needs a finite, positive scale.
MIN_CLIP = 1e-12
# MSE search: geometric grid of fractions of max|x| from 2^-10 to 1 (ratio ~1.075 per step), over
# at most _MSE_MAX_SAMPLES samples (a fixed-seed uniform subset beyond: the MSE is a mean, a subset
# estimates it without bias), in chunks that keep the [fractions, chunk] matrix near 25 MB.
_MSE_FRACTIONS = 2.0 ** torch.linspace(-10.0, 0.0, 97, dtype=torch.float64)
_MSE_MAX_SAMPLES, _MSE_CHUNK = 1 << 16, 1 << 15


def maxabs(x: torch.Tensor) -> float:
    """max |x| over all elements."""
    return _positive(x.detach().abs().max()) if x.numel() else MIN_CLIP


def percentile(x: torch.Tensor, q: float = 99.99) -> float:
    """The q-th percentile (0..100, linear interpolation) of |x|."""
    if not 0 < q <= 100:
        raise ValueError(f"percentile q={q}: expected 0 < q <= 100")
    a = x.detach().abs().reshape(-1).double().cpu().numpy()
    return _positive(np.percentile(a, q)) if a.size else MIN_CLIP


def mse_optimal(x: torch.Tensor, bits: int = 8, signed: bool = True) -> float:
    """Clip minimising mean (x - Q(x))^2 on the grid of `bits` (signed: [-qmax, qmax]; unsigned:
    [0, qmax], negatives clip to 0). Searched over fractions of max|x|, 1.0 included."""
    if x.numel() == 0:
        return MIN_CLIP
    clips = maxabs(x) * _MSE_FRACTIONS  # [F]
    q = qmax(bits, signed)
    s = (clips / q)[:, None]  # [F, 1]
    lo = -q if signed else 0
    a = _subsample(x.detach().reshape(-1).double())
    err = torch.zeros_like(clips)
    for i in range(0, a.numel(), _MSE_CHUNK):  # all fractions at once, samples in chunks
        c = a[None, i:i + _MSE_CHUNK]
        r = c / s
        err += r.round_().clamp_(lo, q).mul_(s).sub_(c).square_().sum(dim=1)  # in place: 2x faster
    return _positive(clips[int(torch.argmin(err))])


def gaussian_clip(mean: torch.Tensor, std: torch.Tensor, sigma: float) -> float:
    """max_c (|mean_c| + sigma * std_c): the clip of a tensor whose channel c ~ N(mean_c, std_c^2).

    mean, std: [C] in the tensor's units; sigma: how many standard deviations (e.g. 4, or
    gaussian_mse_sigma(bits)).
    """
    return _positive((mean.detach().abs() + sigma * std.detach().abs()).max())


@functools.lru_cache(maxsize=None)
def gaussian_mse_sigma(bits: int = 8) -> float:
    """n minimising E[(X - Q(X))^2] for X ~ N(0, 1) on the symmetric grid of 2^bits - 1 levels
    with clip n*sigma (clipping plus rounding error, in closed form). About 3.9 at 8 bits."""
    q = qmax(bits)
    coarse = torch.linspace(0.5, 12.0, 576, dtype=torch.float64)  # step 0.02
    n0 = float(coarse[torch.argmin(_gaussian_grid_mse(coarse, q))])
    fine = torch.linspace(n0 - 0.02, n0 + 0.02, 401, dtype=torch.float64)  # step 1e-4
    return round(float(fine[torch.argmin(_gaussian_grid_mse(fine, q))]), 4)


def scale_from_clip(clip: float, bits: int = 8, signed: bool = True) -> float:
    """Real units per code step: clip / qmax (qmax = 127 for signed int8, 255 for uint8)."""
    return float(clip) / qmax(bits, signed)


def _gaussian_grid_mse(clips: torch.Tensor, q: int) -> torch.Tensor:
    """[F] MSE of the standard normal on the grid {k * c/q : |k| <= q} for each clip c in [F].

    By symmetry, twice the error over x >= 0: level k covers [(k - 1/2) s, (k + 1/2) s] (level 0
    starts at 0, level q runs to infinity, which is the clipping error). Each bin's
    int (x - c)^2 phi(x) dx uses the normal's partial moments.
    """
    s = (clips / q)[:, None]  # [F, 1]
    k = torch.arange(q + 1, dtype=torch.float64)[None, :]  # [1, q + 1]
    a = torch.clamp((k - 0.5) * s, min=0.0)
    b = torch.where(k == q, torch.full_like(a, math.inf), (k + 0.5) * s)
    m0, m1, m2 = _normal_partial_moments(a, b)
    c = k * s
    return 2 * (m2 - 2 * c * m1 + c * c * m0).sum(dim=1)


def _normal_partial_moments(a: torch.Tensor, b: torch.Tensor):
    """int_a^b x^j phi(x) dx for j = 0, 1, 2 (b may be +inf)."""
    cdf = lambda t: 0.5 * (1 + torch.erf(t / math.sqrt(2)))  # noqa: E731
    pdf = lambda t: torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)  # noqa: E731
    m0 = cdf(b) - cdf(a)
    m1 = pdf(a) - pdf(b)
    b_pdf_b = torch.where(torch.isinf(b), torch.zeros_like(b), b * pdf(b))  # inf * 0 -> 0
    m2 = m0 + a * pdf(a) - b_pdf_b
    return m0, m1, m2


def _subsample(a: torch.Tensor) -> torch.Tensor:
    """At most _MSE_MAX_SAMPLES elements of the 1-D `a`, a uniform subset with a fixed seed."""
    if a.numel() <= _MSE_MAX_SAMPLES:
        return a
    g = torch.Generator().manual_seed(0)
    return a[torch.randperm(a.numel(), generator=g)[:_MSE_MAX_SAMPLES]]


def _positive(v) -> float:
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"range estimate is {v}: the tensor holds inf or nan")
    return max(v, MIN_CLIP)
