"""ERQ (docs/algorithms.md section 5) for Linear layers: Aqer, then Wqer.

Aqer (activation quantization error reduction): with A = [xq, 1] and the float outputs y,

    Delta = (A^T A + lambda1 I)^-1 A^T (y - A [W, b]^T),   [W, b] <- [W, b] + Delta^T

Wqer (weight quantization error reduction): quantize the input columns in two halves. In each
half, round to nearest, then per output row flip one code per step to the other neighbour
(floor <-> ceil) where the proxy delta^T E[xq xq^T] delta drops (E[x x^T] = mu mu^T + Sigma), at
most `steps` steps; after the first half, move the still-float columns by ridge regression so
they absorb the first half's error: dW2^T = (X2^T X2 + lambda2 I)^-1 X2^T X1 delta1^T.

Our choices (the paper's normalisation is not known to us): lambda1 and lambda2 are relative to
the mean diagonal of the Gram matrix they regularise (scale-free); the bias shift that the plan
carries is the one minimising the calibration error for the final weights (it contains Aqer's
bias update). Matrix form as in reconstruction.py, G = 1 (no grouped layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from calib_free.refine.flexround import expand_scale, rtn_scale
from calib_free.refine.reconstruction import LayerData, optimal_shift, output_error
from calib_free.weights.quantizer import qmax


@dataclass(frozen=True)
class ErqResult:
    w_updated: torch.Tensor    # [G, O, D] Aqer's weights (the target of the higher orders)
    codes: torch.Tensor        # [G, O, D] int8 order-1 codes
    scale: torch.Tensor        # compact float32 scale
    shift: torch.Tensor        # [G, O] bias shift (subtract from the bias)
    error_after: float         # output error of (codes, scale, shift) alone (order 1)


def aqer(data: LayerData, w: torch.Tensor, lam: float = 1e-3,
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(W + dW [G, O, D], db [G, O]): the ridge solution above, lambda1 = lam * mean diag."""
    gram = data.gram()  # [G, D+1, D+1]
    a = data.m[..., :data.d + 1]
    rhs = a.transpose(-1, -2) @ data.e0  # A^T (y - A [W, b]^T)  [G, D+1, O]
    reg = _ridge(gram, lam)
    delta = torch.linalg.solve(gram + reg, rhs)  # [G, D+1, O]
    return (w.double() + delta[:, :data.d, :].transpose(-1, -2)), delta[:, data.d, :]


def wqer(data: LayerData, w: torch.Tensor, bits: int, *, granularity: str = "channel",
         block_size: int | None = None, lam: float = 1e-3, steps: int = 100,
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 [G, O, D], compact scale) of w [G, O, D] (Aqer's weights)."""
    d = w.shape[-1]
    w = w.double()
    scale = rtn_scale(w, bits, granularity, block_size)
    s = expand_scale(scale, d, block_size).double().expand_as(w)
    gram = data.gram()[..., :d, :d]
    h = gram / data.rows  # E[xq xq^T]
    q = qmax(bits)
    half = d // 2
    first = torch.zeros(d, dtype=torch.bool)
    first[:half] = True
    target = w.clone()
    codes = torch.clamp(torch.round(target / s), -q, q)
    if half:
        codes = _flip(codes, w, s, h, first, first, q, steps)
        delta1 = (w - s * codes)[..., :half]  # [G, O, h]
        g22, g21 = gram[..., half:, half:], gram[..., half:, :half]
        shift = torch.linalg.solve(g22 + _ridge(g22, lam), g21 @ delta1.transpose(-1, -2))
        target[..., half:] = w[..., half:] + shift.transpose(-1, -2)
        codes[..., half:] = torch.clamp(torch.round(target[..., half:] / s[..., half:]), -q, q)
    second = ~first
    codes = _flip(codes, w, s, h, second, torch.ones(d, dtype=torch.bool), q, steps)
    return codes.to(torch.int8), scale


def erq(data: LayerData, w: torch.Tensor, bits: int, *, granularity: str = "channel",
        block_size: int | None = None, lam1: float = 1e-3, lam2: float = 1e-3,
        steps: int = 100) -> ErqResult:
    """Aqer then Wqer on one layer; the error is against the float layer's outputs."""
    w_new, _ = aqer(data, w, lam1)
    codes, scale = wqer(data, w_new, bits, granularity=granularity, block_size=block_size,
                        lam=lam2, steps=steps)
    w_hat = codes.double() * expand_scale(scale, w.shape[-1], block_size).double()
    delta = w.double() - w_hat
    shift = optimal_shift(data, delta)
    return ErqResult(w_new, codes, scale, shift, float(output_error(data, delta, shift)))


def _ridge(gram: torch.Tensor, lam: float) -> torch.Tensor:
    """lam * (mean diagonal of gram) * I, batched ([G, n, n])."""
    n = gram.shape[-1]
    diag = torch.diagonal(gram, dim1=-2, dim2=-1).mean(dim=-1).clamp_min(1e-12)
    return lam * diag[:, None, None] * torch.eye(n, dtype=gram.dtype)


def _flip(codes: torch.Tensor, w: torch.Tensor, s: torch.Tensor, h: torch.Tensor,
          movable: torch.Tensor, active: torch.Tensor, q: int, steps: int) -> torch.Tensor:
    """Greedy rounding: per row, flip the movable code that lowers delta^T H delta most (delta over
    the `active` columns, w - s * codes), one per row per step, until none lowers it."""
    codes = codes.clone()
    act = active.to(w.dtype)
    diag = torch.diagonal(h, dim1=-2, dim2=-1)[:, None, :]  # [G, 1, D]
    for _ in range(steps):
        delta = (w - s * codes) * act
        grad = delta @ h  # (H delta)_j per row, H symmetric  [G, O, D]
        direction = torch.sign(delta)  # towards w: the other neighbour
        eps = -s * direction
        change = 2 * eps * grad + eps * eps * diag
        moved = codes + direction
        bad = (~movable) | (direction == 0) | (moved.abs() > q)
        change = change.masked_fill(bad, float("inf"))
        best, j = change.min(dim=-1)  # [G, O]
        improve = best < 0
        if not bool(improve.any()):
            break
        step = torch.zeros_like(codes).scatter_(-1, j[..., None], 1.0) * improve[..., None]
        codes = codes + step * direction
    return codes
