"""Weight codes that int8 kernels without VNNI compute exactly: pairs within a 16-bit limit.

x86 CPUs without VNNI (SSE4.1, AVX2, AVX-512 without VNNI) multiply int8 with `pmaddubsw`: it
takes unsigned 8-bit activations a and signed 8-bit weight codes w, and adds each pair of
adjacent products into a *saturating* int16 before widening to int32. oneDNN, which runs
OpenVINO's CPU int8 layers, feeds it u8 activations (signed ones shifted by +128, the shift
compensated afterwards), so a pair reaches 255 x (w_a + w_b): two same-sign codes whose
magnitudes sum above 128 can saturate (255 x 128 = 32640 <= 32767 < 255 x 129). Where OpenVINO
pairs them (measured, openvino 2026.4, kernels jit_avx2_1x1_I8, jit_avx2_I8, jit_gemm_I8 and
brgconv_avx512_*_I8 / brgemm_avx512_I8 under ONEDNN_MAX_CPU_ISA=AVX2 and AVX512_CORE):
adjacent input channels (2k, 2k + 1) at the same kernel tap, along the reduction axis of a
convolution or a fully connected layer; a depthwise kernel has one input channel per group and
never pairs. With VNNI (`vpdpbusd`) or AMX the products accumulate in int32: nothing saturates.

`limit_pairs` keeps every such pair within `limit` (PAIR_LIMIT) in magnitude, per output
channel choosing between a slightly coarser scale and moving the few codes of the pairs over the
limit onto it, whichever loses less (`safe_scale`). Only pairs that can overflow change: a
layer without one keeps its codes bit for bit. What it costs and saves is in docs/benchmarks.md
("int8 on CPUs without VNNI").

Shapes: weights in the ONNX layout, `out_axis` the output channels (one scale each),
`in_axis` the reduction axis whose adjacent entries pair; any other axes are kernel taps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The largest |sum| of a same-sign pair of weight codes that 255 x it stays within int16.
PAIR_LIMIT = 32767 // 255  # 128
# Scale factors tried per output channel, geometric from 1 to the factor that leaves no pair
# over the limit (2 x 127 / 128 for int8): 1 first, so an untouched channel keeps its scale.
SCALE_STEPS = 24


@dataclass(frozen=True)
class PairLimit:
    """Adjacent entries (2k, 2k + 1) along `in_axis` of a weight must keep |sum of their
    same-sign codes| <= `limit`; `out_axis` holds the output channels."""

    in_axis: int
    out_axis: int
    limit: int = PAIR_LIMIT


def to_pairs(x: torch.Tensor, rule: PairLimit) -> torch.Tensor:
    """x as [C_out, pairs, 2, taps]: the reduction axis zero-padded to even length and split
    into pairs; a padded entry is 0 and never pushes a pair over."""
    _check(rule, x.ndim)
    x = x.movedim((rule.out_axis, rule.in_axis), (0, 1))
    c, n = x.shape[0], x.shape[1]
    x = x.reshape(c, n, -1)
    if n % 2:
        x = torch.nn.functional.pad(x, (0, 0, 0, 1))
    return x.reshape(c, (n + 1) // 2, 2, x.shape[-1])


def from_pairs(p: torch.Tensor, shape: torch.Size | tuple[int, ...],
               rule: PairLimit) -> torch.Tensor:
    """The inverse of `to_pairs` for a tensor of `shape`."""
    out_axis, in_axis = rule.out_axis % len(shape), rule.in_axis % len(shape)
    moved = [shape[out_axis], shape[in_axis]] + [n for d, n in enumerate(shape)
                                                 if d not in (out_axis, in_axis)]
    flat = p.reshape(p.shape[0], -1, p.shape[-1])[:, :moved[1]]
    return flat.reshape(moved).movedim((0, 1), (rule.out_axis, rule.in_axis))


def pair_sums(codes: torch.Tensor, rule: PairLimit) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the positive codes, sum of the negative codes) of every pair: [C, P, taps]."""
    p = to_pairs(codes.to(torch.int32), rule)
    return p.clamp_min(0).sum(2), p.clamp_max(0).sum(2)


def overflowing_pairs(codes: torch.Tensor, rule: PairLimit) -> int:
    """How many pairs of `codes` could saturate a pre-VNNI int8 kernel."""
    over_p, over_n = _over(to_pairs(codes.to(torch.int32), rule), rule.limit)
    return int((over_p | over_n).sum())


def _over(p: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive sum over the limit, negative sum under -limit) of every pair of pair-shaped
    codes p [C, P, 2, taps]: [C, P, taps] masks."""
    return p.clamp_min(0).sum(2) > limit, p.clamp_max(0).sum(2) < -limit


def _project(t: torch.Tensor, c: torch.Tensor, limit: int, q: int) -> torch.Tensor:
    """Pairs (dim 2 of [C, P, 2, taps]) of rounded codes c over the limit moved onto it: the
    integer pair with sum exactly +-limit nearest to t (w / scale). The continuous optimum
    moves both codes by the same amount, (a + b - limit) / 2. Two codes of at most q <= limit
    in magnitude only overflow with the same sign, so each side is one case."""
    over_p, over_n = _over(c, limit)
    if not bool(over_p.any() or over_n.any()):
        return c
    a, b = t[:, :, 0], t[:, :, 1]
    lo, hi = max(0, limit - q), min(q, limit)
    up = torch.round((a - b + limit) / 2).clamp(lo, hi)       # first code, positive pair
    down = -torch.round((b - a + limit) / 2).clamp(lo, hi)    # first code, negative pair
    first = torch.where(over_p, up, torch.where(over_n, down, c[:, :, 0]))
    second = torch.where(over_p, limit - up, torch.where(over_n, -limit - down, c[:, :, 1]))
    return torch.stack((first, second), 2)


def limit_pairs(t: torch.Tensor, codes: torch.Tensor, q: int, rule: PairLimit) -> torch.Tensor:
    """`codes` (round-to-nearest of t = w / scale, clamped to [-q, q]) with every pair over
    `rule.limit` projected onto it; other codes unchanged. Same shape and dtype as codes."""
    tp = to_pairs(t.to(torch.float32), rule)
    cp = to_pairs(codes.to(torch.float32), rule)
    return from_pairs(_project(tp, cp, rule.limit, q), codes.shape, rule).to(codes.dtype)


def safe_scale(w: torch.Tensor, scale: torch.Tensor, q: int, rule: PairLimit,
               power: torch.Tensor | None = None) -> torch.Tensor:
    """Per output channel, the scale among scale x f (f from 1 up to 2q / limit, SCALE_STEPS
    geometric steps) whose rounded and pair-limited codes reconstruct w with the least squared
    error, weighted by `power` (E[x^2] per input channel, [in]) where given.

    scale: [C_out] (per channel) or 0-d (per tensor: one factor for the whole tensor). Returns
    the same shape, float32. A channel with no pair over the limit keeps its scale (f = 1 ties
    win)."""
    top = max(1.0, 2 * q / rule.limit)
    factors = [top ** (i / SCALE_STEPS) for i in range(SCALE_STEPS + 1)]
    wp = to_pairs(w.detach().to(torch.float32), rule)
    base = scale.to(torch.float32).reshape(-1, 1, 1, 1)
    if scale.ndim == 1:  # only channels with a pair over the limit can gain from a search
        over_p, over_n = _over(torch.clamp(torch.round(wp / base), -q, q), rule.limit)
        over = (over_p | over_n).flatten(1).any(1)
        if not bool(over.any()):
            return scale.to(torch.float32)
        idx = over.nonzero().squeeze(1)
        out = scale.to(torch.float32).clone()
        out[idx] = _search(wp[idx], base[idx], q, rule, power, factors, False)
        return out
    return _search(wp, base, q, rule, power, factors, True).reshape(scale.shape)


def _search(wp: torch.Tensor, base: torch.Tensor, q: int, rule: PairLimit,
            power: torch.Tensor | None, factors: list[float], whole: bool) -> torch.Tensor:
    """safe_scale's search over `factors` on pair-shaped weights wp [C, P, 2, taps] with base
    scales [C, 1, 1, 1] (whole: one factor for all rows, a per-tensor scale). Returns [C]."""
    weight = torch.ones(1, wp.shape[1], 2, 1)
    if power is not None and power.numel() in (2 * wp.shape[1], 2 * wp.shape[1] - 1):
        n = power.numel()
        padded = torch.nn.functional.pad(power.to(torch.float32), (0, n % 2))
        weight = (padded / padded.max().clamp_min(1e-30)).reshape(1, -1, 2, 1)
    best_err = best_s = None
    for f in factors:
        s = base * f  # float32, as the plan stores it
        t = wp / s
        c = _project(t, torch.clamp(torch.round(t), -q, q), rule.limit, q)
        err = ((wp - c * s).square() * weight).sum((1, 2, 3), dtype=torch.float64)
        if whole:
            err = err.sum().reshape(1)
        if best_err is None:
            best_err, best_s = err, s.reshape(-1)
            continue
        better = err < best_err * (1 - 1e-6)
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, s.reshape(-1), best_s)
    return best_s


def pair_room(codes: torch.Tensor, rule: PairLimit) -> tuple[torch.Tensor, torch.Tensor]:
    """(can go up, can go down): bool masks like `codes`, True where one step up (down) keeps
    the code's pair within the limit (the sum-preserving rounding asks before it moves a code)."""
    c = to_pairs(codes.to(torch.int32), rule)
    pos, neg = c.clamp_min(0).sum(2, keepdim=True), c.clamp_max(0).sum(2, keepdim=True)
    # one step up adds 1 to the positive sum unless the code is negative (then it shrinks neg)
    up = torch.where(c >= 0, pos + 1 <= rule.limit, torch.ones_like(c, dtype=torch.bool))
    down = torch.where(c <= 0, neg - 1 >= -rule.limit, torch.ones_like(c, dtype=torch.bool))
    return from_pairs(up, codes.shape, rule), from_pairs(down, codes.shape, rule)


def worst_case_sum(codes: torch.Tensor, rule: PairLimit, activation_max: int = 255) -> int:
    """The largest |16-bit partial sum| any pair of `codes` reaches with activations up to
    `activation_max` (the u8 code a pre-VNNI kernel sees)."""
    pos, neg = pair_sums(codes, rule)
    return int(max(int(pos.max()) if pos.numel() else 0,
                   -int(neg.min()) if neg.numel() else 0)) * activation_max


def _check(rule: PairLimit, ndim: int) -> None:
    if rule.in_axis % ndim == rule.out_axis % ndim:
        raise ValueError("the pairing axis must differ from the output-channel axis")
    if not 1 <= rule.limit <= 32767:
        raise ValueError(f"pair limit {rule.limit} out of range")
