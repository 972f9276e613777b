"""PowerQuant: the non-uniform power operator Q_a (docs/algorithms.md section 4).

    Q_a(W)   = round(qmax * sign(W) * |W / clip|^a)        a in (0, 1]; a = 1 is uniform
    Q_a^-1   = sign(q) * clip * |q / qmax|^(1/a)

`clip` is the max-abs of each group (per output channel, per tensor or per block, the uniform
quantizer's groups and scale layouts), `a` one exponent per call (per layer, or per order of a REx
expansion), chosen by `search_exponent` to minimise ||W - Q_a^-1(Q_a(W))||^2.

Deployment view: for a given `a` the 2 qmax + 1 levels `sign(q) |q / qmax|^(1/a)` form a lookup
table, so a PowerQuant weight is integer codes + one table + the per-group clip:
W_hat = clip * table[codes + qmax] (`levels`, `dequantize_table`). Integer engines cannot
multiply-accumulate these codes; the lowering decides what the runtime gets.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from calib_free.weights.quantizer import (MIN_SCALE, _group_rows, _rows_to_scale, broadcast_scale,
                                          qmax)

# The exponent's search interval (the paper's minimum lies inside; below 0.2 the levels bunch
# so tightly near 0 that the outer levels are spent on a handful of weights).
EXPONENT_RANGE = (0.2, 1.0)
GRID_POINTS = 9          # coarse grid over EXPONENT_RANGE, evaluated in one vectorised pass
GOLDEN_STEPS = 16        # golden-section refinement around the best grid point (~1e-4 wide)
_GOLDEN = (math.sqrt(5) - 1) / 2


class PowerScale(NamedTuple):
    """The float side of a PowerQuant weight: per-group clip (the uniform quantizer's scale
    layout, float32, in W's units) and the exponent a."""

    clip: torch.Tensor
    exponent: float


def levels(bits: int, exponent: float) -> torch.Tensor:
    """The lookup table: float32 [2 qmax + 1], entry q + qmax = sign(q) |q / qmax|^(1/a)."""
    q = qmax(bits)
    codes = torch.arange(-q, q + 1, dtype=torch.float64)
    return (torch.sign(codes) * (codes.abs() / q) ** (1.0 / exponent)).to(torch.float32)


def choose_clip(w: torch.Tensor, granularity: str = "channel", axis: int = 0,
                block_size: int | None = None) -> torch.Tensor:
    """Max-abs of each group, float32, in the uniform quantizer's scale layout."""
    rows, shape = _group_rows(w, granularity, axis, block_size)
    clip = rows.abs().amax(dim=1).to(torch.float32).clamp_min(MIN_SCALE)
    return _rows_to_scale(clip, shape, axis if granularity == "block" else None)


def quantize_power(w: torch.Tensor, clip: torch.Tensor, exponent: float, bits: int,
                   axis: int = 0, block_size: int | None = None) -> torch.Tensor:
    """int8 codes in [-qmax, qmax]: round(qmax sign(w) |w / clip|^a), round half to even."""
    _check_exponent(exponent)
    q = qmax(bits)
    c = broadcast_scale(clip, w.shape, axis, block_size).to(_dtype(w))
    u = (w.to(_dtype(w)).abs() / c).clamp(max=1.0)
    return (torch.sign(w) * torch.round(q * u ** exponent)).clamp(-q, q).to(torch.int8)


def dequantize_power(codes: torch.Tensor, scale: PowerScale, bits: int, axis: int = 0,
                     block_size: int | None = None) -> torch.Tensor:
    """float32 weights clip * table[codes + qmax] (the lookup-table form, exactly)."""
    table = levels(bits, scale.exponent)
    c = broadcast_scale(scale.clip, codes.shape, axis, block_size).to(torch.float32)
    return table[codes.long() + qmax(bits)] * c


def quantize_weight_power(w: torch.Tensor, bits: int, granularity: str = "channel",
                          axis: int = 0, block_size: int | None = None,
                          exponent: float | None = None) -> tuple[torch.Tensor, PowerScale]:
    """(int8 codes like w, PowerScale); the exponent is searched unless given."""
    clip = choose_clip(w, granularity, axis, block_size)
    if exponent is None:
        exponent = search_exponent(w, bits, granularity, axis, block_size)
    return quantize_power(w, clip, exponent, bits, axis, block_size), PowerScale(clip, exponent)


def search_exponent(w: torch.Tensor, bits: int, granularity: str = "channel", axis: int = 0,
                    block_size: int | None = None) -> float:
    """The exponent a in EXPONENT_RANGE minimising the layer's squared reconstruction error.

    A coarse grid (a = 1 included) evaluated in one broadcast pass, then golden-section search
    between the best grid point's neighbours. The error is piecewise smooth in a (rounding
    makes it jump), so the best value seen is returned: never worse than a = 1, the uniform
    quantizer with the same clip and bits.
    """
    rows, _ = _group_rows(w, granularity, axis, block_size)
    rows = rows.to(_dtype(w))
    q = qmax(bits)
    clip = rows.abs().amax(dim=1, keepdim=True).to(torch.float32).clamp_min(MIN_SCALE)
    u = (rows.abs() / clip.to(rows.dtype)).clamp(max=1.0)
    sign = torch.sign(rows)
    lo, hi = EXPONENT_RANGE
    grid = torch.linspace(lo, hi, GRID_POINTS, dtype=torch.float64)
    errors = _errors(rows, u, sign, clip, q, grid)
    best = int(torch.argmin(errors))
    seen = {float(a): float(e) for a, e in zip(grid, errors)}
    left, right = float(grid[max(best - 1, 0)]), float(grid[min(best + 1, GRID_POINTS - 1)])
    x1 = right - _GOLDEN * (right - left)
    x2 = left + _GOLDEN * (right - left)
    f1, f2 = (float(e) for e in _errors(rows, u, sign, clip, q, torch.tensor([x1, x2])))
    seen.update({x1: f1, x2: f2})
    for _ in range(GOLDEN_STEPS):
        if f1 <= f2:
            right, x2, f2 = x2, x1, f1
            x1 = right - _GOLDEN * (right - left)
            f1 = float(_errors(rows, u, sign, clip, q, torch.tensor([x1]))[0])
            seen[x1] = f1
        else:
            left, x1, f1 = x1, x2, f2
            x2 = left + _GOLDEN * (right - left)
            f2 = float(_errors(rows, u, sign, clip, q, torch.tensor([x2]))[0])
            seen[x2] = f2
    # min over (error, -a): ties go to the larger exponent, i.e. to a = 1 (uniform)
    return min(seen.items(), key=lambda kv: (kv[1], -kv[0]))[0]


def reconstruction_error(w: torch.Tensor, bits: int, exponent: float,
                         granularity: str = "channel", axis: int = 0,
                         block_size: int | None = None) -> float:
    """||W - Q_a^-1(Q_a(W))||^2 with max-abs clips (what `search_exponent` minimises)."""
    codes, scale = quantize_weight_power(w, bits, granularity, axis, block_size, exponent)
    w_hat = dequantize_power(codes, scale, bits, axis, block_size)
    return float((w.double() - w_hat.double()).square().sum())


def _errors(rows, u, sign, clip, q: int, exponents: torch.Tensor) -> torch.Tensor:
    """Squared reconstruction error of all rows for each exponent: [len(exponents)] float64.
    One exponent at a time keeps memory at a few copies of w (MiniLM's FFN weights have 0.6 M
    entries), each computed over the whole tensor at once."""
    out = []
    for a in exponents.tolist():
        codes = (sign * torch.round(q * u ** a)).long() + q
        # the table lookup itself, so the error is exactly that of `dequantize_power`
        w_hat = levels(q_bits(q), a)[codes].to(rows.dtype) * clip.to(rows.dtype)
        out.append((rows - w_hat).square().sum(dtype=torch.float64))
    return torch.stack(out)


def q_bits(q: int) -> int:
    """Bits of the signed symmetric grid whose largest code is q (inverse of `qmax`)."""
    return int(math.log2(q + 1)) + 1


def _check_exponent(a: float) -> None:
    if not 0.0 < a <= 1.0:
        raise ValueError(f"exponent {a}: the power operator needs 0 < a <= 1")


def _dtype(w: torch.Tensor) -> torch.dtype:
    return torch.float64 if w.dtype == torch.float64 else torch.float32


def expand_power(w: torch.Tensor, bits: int, orders: int, granularity: str = "channel",
                 axis: int = 0, block_size: int | None = None,
                 ) -> list[tuple[torch.Tensor, PowerScale]]:
    """REx with the power operator: K pairs of (int8 codes, PowerScale), each order with its own
    clips and its own searched exponent (the residual of order k is shaped differently from W)."""
    import functools

    from calib_free.weights.expansion import expand_residuals

    qfn = functools.partial(quantize_weight_power, bits=bits, granularity=granularity, axis=axis,
                            block_size=block_size)
    dfn = functools.partial(dequantize_power, bits=bits, axis=axis, block_size=block_size)
    return expand_residuals(w, orders, qfn, dfn)
