"""Data-free scale migration for Linear inputs (SmoothQuant-style; docs/algorithms.md section 3).

A per-tensor int8 activation with a few outlier channels (MiniLM's LayerNorm and GELU outputs
carry 10-15x channels) spends its 255 steps on those channels, and every other channel is left
with a handful. Dividing input channel j by s_j and multiplying the weights' input row j by s_j
leaves the float product unchanged, (x / s) (s W) = x W, and moves part of the range from the
activation (per tensor, hard) to the weights (per output channel, easy):

    s_j = max|x_j|^alpha / max_i |W_ij|^(1 - alpha)

alpha = 0 leaves the activations alone as far as the weights allow; alpha = 1 flattens the
activation channels completely and puts their whole spread into the weights. The activation
maxima come from synthetic inputs (random token ids for embedding models): no data. Several
layers reading the same tensor (query, key and value) share one s, from the largest weight row
among them.

Measured with torch fake-quant on all-MiniLM-L6-v2 (120 fortunes quotes, every Linear W8A8 per
tensor, maxima from 8 random-token sequences): no migration 0.9829 mean cosine; alpha 0.5
0.9608, 0.6 0.9904, 0.7 0.9930, 0.8 0.9864; with maxima from real text instead, 0.8 gives
0.9954. Too high an alpha fits the synthetic maxima too tightly: real text then clips.
"""

from __future__ import annotations

import torch

# Floors keep s finite for dead channels (zero activation or zero weight row).
_EPS = 1e-5


def smoothing_factors(act_absmax: torch.Tensor, weight_absmax: torch.Tensor,
                      alpha: float) -> torch.Tensor:
    """s [C] (float64) for input channels with activation maxima `act_absmax` [C] and weight
    maxima `weight_absmax` [C] (over output channels, and over all layers reading the tensor).

    Divide the activation by s and multiply the weights' input channels by s."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha {alpha}: must be in [0, 1]")
    a = act_absmax.double().flatten().clamp_min(_EPS)
    w = weight_absmax.double().flatten().clamp_min(_EPS)
    if a.shape != w.shape:
        raise ValueError(f"{a.numel()} activation channels but {w.numel()} weight input channels")
    s = a.pow(alpha) / w.pow(1.0 - alpha)
    # Scale-free normalisation: the geometric mean of s is 1, so the weights' magnitude stays
    # where it was on average (the product is unchanged whatever the normalisation).
    s = s / torch.exp(torch.log(s).mean())
    return s.clamp(_EPS, 1.0 / _EPS)


def weight_input_absmax(w: torch.Tensor, in_axis: int) -> torch.Tensor:
    """max over every axis but `in_axis` of |w|: [C_in] float64."""
    dims = [d for d in range(w.ndim) if d != in_axis]
    return w.detach().double().abs().amax(dim=dims) if dims else w.detach().double().abs()


def scale_input_channels(w: torch.Tensor, s: torch.Tensor, in_axis: int) -> torch.Tensor:
    """w with its input channels (along `in_axis`) multiplied by s, in w's dtype."""
    shape = [1] * w.ndim
    shape[in_axis] = -1
    return (w.double() * s.double().reshape(shape)).to(w.dtype)
