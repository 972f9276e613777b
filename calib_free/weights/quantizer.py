"""Uniform symmetric quantizer Q (docs/algorithms.md section 1): zero-point 0, codes in
[-qmax, qmax].

One set of primitives covers the three granularities, told apart by the scale's shape:
- per tensor: scale shape [] (0-d);
- per channel: scale shape [w.shape[axis]];
- per block: scale has w's rank, dim `axis` is ceil(w.shape[axis] / block_size), the other dims are
  w's (ONNX DequantizeLinear blocked layout; a last partial block is allowed).
Scales are float32 and are computed before the codes, so codes and the stored scale agree exactly
with `calib_free.plan.WeightOrder.dequantize`.
"""

from __future__ import annotations

import math

import torch

from calib_free.weights.saturation import PairLimit

# Smallest scale handed out: an all-zero group gets it (codes 0). A normal float32 far above the
# denormals, so 1/scale stays finite in every backend that inverts it.
MIN_SCALE = 2.0 ** -100
GRANULARITIES = ("tensor", "channel", "block")
# Clip-search grid: fractions of the group's max-abs, 1.0 first so max-abs wins ties.
CLIP_FRACTIONS = tuple(1.0 - 0.02 * i for i in range(26))  # 1.0, 0.98, ..., 0.5


def qmax(bits: int, signed: bool = True) -> int:
    """Largest code: 2^(b-1) - 1 signed (symmetric grid), 2^b - 1 unsigned."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits={bits}: the quantizer supports 2..8 bits")
    return 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1


def choose_scale(w: torch.Tensor, bits: int, granularity: str = "channel", axis: int = 0,
                 block_size: int | None = None, clip_search: bool = False) -> torch.Tensor:
    """float32 scales (real units per code step) for `w`; shape per the module docstring.

    scale = clip / qmax with clip = max |w| of the group, or with `clip_search` the fraction of it
    (CLIP_FRACTIONS) minimising the group's squared reconstruction error.
    """
    rows, scale_shape = _group_rows(w, granularity, axis, block_size)
    q = qmax(bits)
    top = rows.abs().amax(dim=1)
    clip = _search_clip(rows, top, q) if clip_search else top
    scale = (clip / q).to(torch.float32).clamp_min(MIN_SCALE)
    return _rows_to_scale(scale, scale_shape, axis if granularity == "block" else None)


def quantize(w: torch.Tensor, scale: torch.Tensor, bits: int, axis: int = 0,
             block_size: int | None = None, sum_dims: tuple[int, ...] | None = None,
             pairs: PairLimit | None = None) -> torch.Tensor:
    """int8 codes: clamp(round(w / scale), -qmax, qmax), round half to even; with `pairs`
    (calib_free.weights.saturation) no pair of codes over its limit; with `sum_dims` (a
    convolution's spatial axes) the codes of each kernel then keep its sum (preserve_sums)."""
    q = qmax(bits)
    s = broadcast_scale(scale, w.shape, axis, block_size).to(_float_dtype(w))
    t = w / s
    codes = torch.clamp(torch.round(t), -q, q)
    if pairs is not None:
        from calib_free.weights.saturation import limit_pairs, pair_room

        codes = limit_pairs(t, codes, q, pairs)
        if sum_dims:
            codes = preserve_sums(t, codes, q, sum_dims, pair_room(codes, pairs))
            codes = limit_pairs(t, codes, q, pairs)  # two codes of one pair both moved
    elif sum_dims:
        codes = preserve_sums(t, codes, q, sum_dims)
    return codes.to(torch.int8)


def preserve_sums(t: torch.Tensor, codes: torch.Tensor, q: int, dims: tuple[int, ...],
                  room: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Codes whose sum over `dims` is round(sum of t) in every kernel, at most one step from t.

    t: w / scale; codes: round-to-nearest of t (clamped to [-q, q]). A kernel whose codes sum
    to d below (above) round(sum t) gets +1 (-1) on the d codes rounded down (up) the most,
    i.e. those nearest to .5, so each code stays within one step of t. What it keeps is the
    kernel's response to a flat input (its DC gain): convolution inputs (photos, feature maps)
    are smooth, so on them the rounding errors of a kernel's taps add up instead of cancelling
    (EfficientNet-Lite0's weight-only logits: 19.8 -> 23.8 dB, docs/benchmarks.md).
    room: (may go up, may go down) masks like codes (calib_free.weights.saturation.pair_room); a
    code outside them is not moved.
    """
    keep = [d for d in range(t.ndim) if d not in dims]
    perm = keep + list(dims)
    lead = [t.shape[d] for d in keep]

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.permute(perm).reshape(*lead, -1)

    tt, cc = flat(t).double(), flat(codes).double()
    can_up, can_down = (cc < q, cc > -q) if room is None else \
        (flat(room[0]) & (cc < q), flat(room[1]) & (cc > -q))
    need = torch.round(tt.sum(-1)) - cc.sum(-1)
    frac = tt - cc  # > 0: rounded down
    up = _first(torch.where(can_up, frac, -math.inf), need.clamp_min(0))
    down = _first(torch.where(can_down, -frac, -math.inf), (-need).clamp_min(0))
    cc = cc + up.double() - down.double()
    shape = [t.shape[d] for d in perm]
    return cc.reshape(shape).permute(_inverse(perm)).to(codes.dtype)


def _first(key: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Mask of the `count` (per row) entries with the largest finite `key` along the last axis."""
    order = torch.argsort(key, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(key.shape[-1]).expand_as(order))
    return (rank < count.unsqueeze(-1)) & torch.isfinite(key)


def _inverse(perm: list[int]) -> list[int]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


def dequantize(codes: torch.Tensor, scale: torch.Tensor, axis: int = 0,
               block_size: int | None = None) -> torch.Tensor:
    """float32 weights: codes * scale (one float32 multiply, as ONNX DequantizeLinear does)."""
    s = broadcast_scale(scale, codes.shape, axis, block_size).to(torch.float32)
    return codes.to(torch.float32) * s


def quantize_weight(w: torch.Tensor, bits: int, granularity: str = "channel", axis: int = 0,
                    block_size: int | None = None, clip_search: bool = False,
                    sum_dims: tuple[int, ...] | None = None, pairs: PairLimit | None = None,
                    power: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes shaped like w, float32 scale) in one call.

    pairs: keep every pair of codes a pre-VNNI int8 kernel adds in int16 within its limit
    (calib_free.weights.saturation), the scale of each output channel chosen for it (`safe_scale`,
    weighing the error by `power`, E[x^2] per input channel, where given). Per channel or per
    tensor scales only; axis must be pairs.out_axis for per-channel scales."""
    scale = choose_scale(w, bits, granularity, axis, block_size, clip_search)
    if pairs is not None:
        from calib_free.weights.saturation import safe_scale

        if granularity == "block" or (granularity == "channel" and
                                      axis % w.ndim != pairs.out_axis % w.ndim):
            raise ValueError("pair-limited codes need per-output-channel or per-tensor scales")
        if 2 * qmax(bits) > pairs.limit:  # below 8 bits no pair can reach the limit
            scale = safe_scale(w, scale, qmax(bits), pairs, power)
        else:
            pairs = None
    return quantize(w, scale, bits, axis, block_size, sum_dims, pairs), scale


def broadcast_scale(scale: torch.Tensor, shape: torch.Size | tuple[int, ...], axis: int | None,
                    block_size: int | None) -> torch.Tensor:
    """Expand a per-tensor, per-channel or per-block scale so it broadcasts against `shape`."""
    if block_size:
        axis = _axis(axis, len(shape))
        full = scale.repeat_interleave(block_size, dim=axis)
        return full.narrow(axis, 0, shape[axis])  # drop the padding of a partial last block
    if scale.ndim == 1 and axis is not None:
        view = [1] * len(shape)
        view[_axis(axis, len(shape))] = -1
        return scale.reshape(view)
    return scale


def _group_rows(w: torch.Tensor, granularity: str, axis: int,
                block_size: int | None) -> tuple[torch.Tensor, tuple[int, ...]]:
    """w as [groups, members] rows (each row shares one scale) and the scale shape before the
    blocked axis is moved back. Zero padding of a partial block changes neither max nor error."""
    w = w.detach().to(_float_dtype(w))
    if granularity == "tensor":
        return w.reshape(1, -1), ()
    if granularity == "channel":
        ax = _axis(axis, w.ndim)
        return w.movedim(ax, 0).reshape(w.shape[ax], -1), (w.shape[ax],)
    if granularity != "block":
        raise ValueError(f"granularity {granularity!r}: use one of {GRANULARITIES}")
    if not block_size or block_size < 1:
        raise ValueError("granularity 'block' needs a positive block_size")
    moved = w.movedim(_axis(axis, w.ndim), -1)
    nblocks = math.ceil(moved.shape[-1] / block_size)
    padded = torch.nn.functional.pad(moved, (0, nblocks * block_size - moved.shape[-1]))
    return padded.reshape(-1, block_size), (*moved.shape[:-1], nblocks)


def _rows_to_scale(scale: torch.Tensor, shape: tuple[int, ...], block_axis: int | None,
                   ) -> torch.Tensor:
    scale = scale.reshape(shape)
    if block_axis is None:
        return scale
    return scale.movedim(-1, _axis(block_axis, scale.ndim))


def _search_clip(rows: torch.Tensor, top: torch.Tensor, q: int) -> torch.Tensor:
    """Per row, the clip among CLIP_FRACTIONS * top with the least squared error. The loop runs
    over the 26 fractions (vectorised over all groups) so memory stays at one copy of w."""
    best_err = torch.full_like(top, math.inf)
    best_clip = top.clone()
    for frac in CLIP_FRACTIONS:
        clip = top * frac
        # Same float32 scale the final quantizer will use, so the error measured is the real one.
        s = (clip / q).to(torch.float32).clamp_min(MIN_SCALE).to(rows.dtype)[:, None]
        err = (rows - s * torch.clamp(torch.round(rows / s), -q, q)).square().sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_clip = torch.where(better, clip, best_clip)
    return best_clip


def _axis(axis: int | None, ndim: int) -> int:
    if axis is None or not -ndim <= axis < max(ndim, 1):
        raise ValueError(f"axis {axis} is out of range for a {ndim}-d tensor")
    return axis % max(ndim, 1)


def _float_dtype(w: torch.Tensor) -> torch.dtype:
    """Keep float64 when given (tests of the exact bounds); everything else computes in float32."""
    return torch.float64 if w.dtype == torch.float64 else torch.float32
