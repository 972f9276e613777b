"""REx residual expansion (docs/algorithms.md section 2): W ~ sum_k Q^-1(R_k), each order with its
own scales.

R1 = Q(W), Rk = Q(W - sum_{j<k} Q^-1(Rj)). With round-to-nearest and max-abs scales,
max|W - W_hat(K)| <= max|W| / (2^b - 2)^K per group. The expansion does not care which quantizer Q
is: pass any (quantize_fn, dequantize_fn) pair.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from calib_free.metrics import power_db
from calib_free.weights.quantizer import dequantize, quantize_weight
from calib_free.weights.saturation import PairLimit

QuantizeFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
DequantizeFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def expand_residuals(w: torch.Tensor, orders: int, quantize_fn: QuantizeFn,
                     dequantize_fn: DequantizeFn, *, final_quantize_fn: QuantizeFn | None = None,
                     ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(codes, scale)] for orders 1..K; order k quantizes what orders < k left.

    quantize_fn(residual) -> (codes, scale); dequantize_fn(codes, scale) -> float tensor like w.
    final_quantize_fn, when given, quantizes order K instead (e.g. with an MSE-optimal clip).
    """
    if orders < 1:
        raise ValueError(f"orders={orders}: the expansion needs at least one order")
    w = w.detach()
    # Accumulate in float64 so the residual is what the orders really left, not float32 noise.
    approx = torch.zeros_like(w, dtype=torch.float64)
    result = []
    for k in range(1, orders + 1):
        residual = (w.double() - approx).to(w.dtype)
        last = k == orders and final_quantize_fn is not None
        codes, scale = (final_quantize_fn if last else quantize_fn)(residual)
        approx += dequantize_fn(codes, scale).double()
        result.append((codes, scale))
    return result


def expand_uniform(w: torch.Tensor, bits: int, orders: int, granularity: str = "channel",
                   axis: int = 0, block_size: int | None = None, clip_search: bool = False,
                   sum_dims: tuple[int, ...] | None = None, pairs: PairLimit | None = None,
                   power: torch.Tensor | None = None,
                   ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """REx with the uniform symmetric quantizer: K pairs of (int8 codes like w, float32 scale).

    clip_search applies to the last order only: its error is the one that remains. An earlier
    order that clips leaves outlier residuals far above half its step, which the next order's
    scale must then cover (measured on random normal and Student-t weights, K=2..3: 3-35 dB lower
    SQNR than max-abs when every order searched; last order only: 0-2.4 dB higher).
    sum_dims: keep each kernel's code sum over these axes (quantizer.preserve_sums), in the last
    order only, like the clip search: it moves a code up to one step from the weight, which would
    double the residual an earlier order leaves to the next one.
    pairs (calib_free.weights.saturation.PairLimit) and power: every order's codes pair-limited for
    a pre-VNNI int8 kernel (each order runs as a kernel of its own), see quantize_weight.
    """
    qfn = functools.partial(quantize_weight, bits=bits, granularity=granularity, axis=axis,
                            block_size=block_size, pairs=pairs, power=power)
    final = (functools.partial(qfn, clip_search=clip_search, sum_dims=sum_dims)
             if clip_search or sum_dims else None)
    dfn = functools.partial(dequantize, axis=axis, block_size=block_size)
    return expand_residuals(w, orders, qfn, dfn, final_quantize_fn=final)


def stop_orders(w: torch.Tensor, orders: list[tuple[torch.Tensor, torch.Tensor]],
                final_quantize_fn: QuantizeFn, dequantize_fn: DequantizeFn,
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each order k of `orders` as it would be if the expansion stopped there: order k's residual
    (w minus orders < k) quantized by `final_quantize_fn`, the quantizer an expansion gives its
    last order (clip search, sum-preserving rounding). The last entry is orders[-1] itself.

    A group-sparse expansion stops at different orders for different output channels: a channel
    without order k + 1 should carry order k's final form, not the plain rounding an order k + 1
    was meant to correct. Only valid for a quantizer whose scales are per output channel, so the
    forms can be mixed channel by channel.
    """
    approx = torch.zeros_like(w, dtype=torch.float64)
    stops = []
    for codes, scale in orders[:-1]:
        stops.append(final_quantize_fn((w.double() - approx).to(w.dtype)))
        approx += dequantize_fn(codes, scale).double()
    return stops + orders[-1:]


def weight_error(w: torch.Tensor, w_hat: torch.Tensor) -> dict[str, float]:
    """Error of w_hat against w (any shape): rel_l2 = ||w - w_hat|| / ||w||, max_abs =
    max|w - w_hat| (w's units), sqnr_db = 10 log10(||w||^2 / ||w - w_hat||^2) (dB).

    An exact reconstruction gives rel_l2 0 and sqnr_db inf; a zero w with an error gives rel_l2 inf.
    """
    w = w.detach().double()
    err = w - w_hat.detach().double()
    signal, noise = float(w.square().sum()), float(err.square().sum())
    rel = math.sqrt(noise / signal) if signal > 0 else (0.0 if noise == 0 else math.inf)
    return {"rel_l2": rel, "max_abs": float(err.abs().max()) if err.numel() else 0.0,
            "sqnr_db": power_db(signal, noise)}
