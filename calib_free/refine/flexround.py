"""FlexRound (docs/algorithms.md section 5): learned rounding by block reconstruction.

    W_hat = s1 * clamp(round(W / (s1 * exp(S2) * exp(s3) * exp(s4))), -qmax, qmax)

s1 is the grid's scale (per output channel, per tensor or per block; learned, initialised to
the round-to-nearest scale), S2 element-wise, s3 per output channel, s4 per input channel (Conv
only), the last three initialised to 0 in log space, so step 0 is round-to-nearest exactly.
Everything is learned with Adam against the float block output (`calib_free.refine.reconstruction`),
rounding straight-through. The result is ordinary codes and a scale s1: lowering is unchanged.

Never worse: the loss of step t is the exact output error of the hard-rounded weights of step t
(the forward pass rounds), so the best step is kept, and step 0 is round-to-nearest.

Shapes (matrix form, see reconstruction.py): w [G, O, D]; scales "compact" [G, O, nb] with
nb = 1 (per channel; [1, 1, 1] per tensor) or ceil(D / block_size) (per block).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from calib_free.refine.reconstruction import LayerData, centered_shift, output_error
from calib_free.weights.quantizer import MIN_SCALE, qmax

Order = tuple[torch.Tensor, torch.Tensor]  # (codes [G, O, D] int, compact scale float32)


@dataclass(frozen=True)
class FlexRoundResult:
    orders: list[Order]        # refined (codes, scale) per order
    error_before: float        # output error of the given orders (sum of squares)
    error_after: float         # output error of the returned orders (<= error_before)
    steps: int                 # optimisation steps run in all


def expand_scale(s: torch.Tensor, d: int, block_size: int | None) -> torch.Tensor:
    """A compact scale broadcast to [.., D] columns."""
    if block_size:
        return s.repeat_interleave(block_size, dim=-1)[..., :d]
    return s


def rtn_scale(w: torch.Tensor, bits: int, granularity: str, block_size: int | None = None,
              ) -> torch.Tensor:
    """Max-abs scale of w [G, O, D] in compact form (float32)."""
    a = w.detach().abs()
    if granularity == "tensor":
        top = a.amax().reshape(1, 1, 1)
    elif granularity == "block":
        nb = math.ceil(w.shape[-1] / block_size)
        pad = torch.nn.functional.pad(a, (0, nb * block_size - w.shape[-1]))
        top = pad.reshape(*w.shape[:-1], nb, block_size).amax(dim=-1)
    else:
        top = a.amax(dim=-1, keepdim=True)
    return (top / qmax(bits)).float().clamp_min(MIN_SCALE)


def dequantize_orders(orders: list[Order], d: int, block_size: int | None) -> torch.Tensor:
    """sum_k s_k * codes_k in float64 ([G, O, D])."""
    total = torch.zeros((), dtype=torch.float64)
    for codes, s in orders:
        total = total + codes.double() * expand_scale(s.float(), d, block_size).double()
    return total


def flexround(w: torch.Tensor, orders: list[Order], bits: int, data: LayerData, *,
              granularity: str = "channel", block_size: int | None = None,
              masks: list[torch.Tensor | None] | None = None, mean: torch.Tensor | None = None,
              kernel_elems: int = 0, iters: int = 200, lr: float = 1e-2,
              progress: Callable[[int], None] | None = None) -> FlexRoundResult:
    """Refine every order of an expansion in turn (order k with orders < k fixed).

    w: float weights [G, O, D]; orders: the round-to-nearest expansion [(codes, scale)];
    masks[k]: [G, O, 1] bool of the output channels order k covers (None: all);
    mean: [G, D] the expected input the plan's bias correction uses (None: no correction);
    kernel_elems: columns per input channel for s4 (Conv: prod(kernel)); 0: no s4 (Linear).
    progress(steps) is called after each step with the number of steps just run (1).
    """
    d = w.shape[-1]
    w64 = w.detach().double()
    masks = masks or [None] * len(orders)
    # float32 steps without the constant residual (it would swamp float32's resolution of the
    # part that moves); the candidates are then compared exactly, in float64, with it
    fast = LayerData(data.m.float(), data.col_sum, data.rows, data.signal, data.d)
    mean32 = None if mean is None else mean.float()

    def error(ords: list[Order]) -> float:
        delta = w64 - dequantize_orders(ords, d, block_size)
        return float(output_error(data, delta, centered_shift(delta, mean)))

    before = error(orders)
    current = [(c.clone(), s.clone()) for c, s in orders]
    steps = 0
    for k in range(len(orders)):
        base = dequantize_orders(current[:k], d, block_size)
        residual = w64 - base
        init = current[k] if k == 0 else \
            rtn_order(residual, bits, granularity, block_size, masks[k])
        best = _refine_order(w, base, residual, init, bits, fast, mean32, block_size,
                             masks[k], kernel_elems, iters, lr, progress)
        steps += iters
        candidates = [init, best] + ([current[k]] if k else [])
        trial = [current[:k] + [c] + current[k + 1:] for c in candidates]
        current = min(trial, key=error)  # exact float64 errors with the float32 scales
    after = error(current)
    if after > before:  # cannot happen for k = 0 alone; guards the re-quantized higher orders
        current, after = [(c.clone(), s.clone()) for c, s in orders], before
    return FlexRoundResult(current, before, after, steps)


def rtn_order(residual: torch.Tensor, bits: int, granularity: str, block_size: int | None,
              mask: torch.Tensor | None = None) -> Order:
    """Round-to-nearest (codes, max-abs scale) of residual [G, O, D]; mask [G, O, 1] zeroes the
    output channels an order does not cover."""
    s = rtn_scale(residual, bits, granularity, block_size)
    q = qmax(bits)
    codes = torch.clamp(torch.round(residual / expand_scale(s, residual.shape[-1],
                                                            block_size).double()), -q, q)
    if mask is not None:
        codes = codes * mask
    return codes.to(torch.int8), s


def _refine_order(w: torch.Tensor, base: torch.Tensor, residual: torch.Tensor, init: Order,
                  bits: int, data: LayerData, mean: torch.Tensor | None,
                  block_size: int | None, mask: torch.Tensor | None, kernel_elems: int,
                  iters: int, lr: float, progress) -> Order:
    """Adam on (log s1, S2, s3, s4); returns the hard (codes, scale) of the best step."""
    d = w.shape[-1]
    g, o = w.shape[0], w.shape[1]
    q = qmax(bits)
    w32, base32, r32 = w.float(), base.float(), residual.float()
    log_s1 = init[1].float().log().clone().requires_grad_(True)
    s2 = torch.zeros(g, o, d, requires_grad=True)
    s3 = torch.zeros(g, o, 1, requires_grad=True)
    params = [log_s1, s2, s3]
    s4 = None
    if kernel_elems and d % kernel_elems == 0:
        s4 = torch.zeros(g, 1, d // kernel_elems, requires_grad=True)
        params.append(s4)
    opt = torch.optim.Adam(params, lr=lr)
    # cosine decay to 0 over the steps: a constant rate oscillates around the optimum once it
    # is near (measured: the error falls for ~45 of 100 steps, then climbs back)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, iters) / max(iters, 1))))
    maskf = None if mask is None else mask.float()
    best_loss, best = math.inf, init
    norm = 1.0  # loss scale for the gradients, set at step 0 (see below)
    for step in range(iters + 1):
        s1 = expand_scale(log_s1.exp(), d, block_size)
        logdiv = s2 + s3
        if s4 is not None:
            logdiv = logdiv + s4.repeat_interleave(kernel_elems, dim=-1)
        v = r32 / (s1 * logdiv.exp())
        codes = torch.clamp(v + (torch.round(v) - v).detach(), -q, q)  # straight-through
        if maskf is not None:
            codes = codes * maskf
        delta = w32 - (base32 + s1 * codes)
        loss = output_error(data, delta, centered_shift(delta, mean))
        value = float(loss.detach())
        if value < best_loss:  # the hard error of these parameters (the forward rounds)
            best_loss = value
            best = init if step == 0 else (codes.detach().round().to(torch.int8),
                                           log_s1.detach().exp().float().clone())
        if step == iters:
            break
        if step == 0:
            # Scale-free steps: the raw error can be ~1e-10 (small activations), where Adam's
            # eps swamps the gradients (no step moves) and their squares fall into float32
            # denormals (10-100x slower arithmetic). Scaled so that the start is one unit per
            # learned element, the gradients are O(1) whatever the layer's units.
            norm = s2.numel() / max(value, 1e-30)
        opt.zero_grad(set_to_none=True)
        (loss * norm).backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(1)
    return best
