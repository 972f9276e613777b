"""Data-free activation statistics from the float graph (docs/algorithms.md §3).

Every tensor gets per-channel Gaussian moments (mean, variance) and an extent [lo, hi] where they
can be derived without data: BatchNormalization outputs are N(beta, gamma^2) per channel,
LayerNormalization outputs N(bias, scale^2); the moments are then carried through Conv/Gemm/MatMul
(independent inputs), Relu/Clip (clipped Gaussian), Add, pooling and reshapes. The extent of a
tensor is `mean_c +- sigma * std_c` over its channels, clamped by Relu/Clip and kept through
pooling (the pre-pool bound: a pooled Gaussian's own spread is far too narrow, measured).

Runs on the graph BEFORE BatchNorm folding (it needs the BN nodes). Needs numpy and onnx_ir; the
math itself lives in calib_free.activations.moments.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass, replace

import numpy as np
import onnx_ir as ir

from rexdeploy.constants import const_array as _const

# Where a tensor's statistics come from; "ln" is kept apart because LayerNorm statistics miss the
# outlier channels of transformers (MiniLM W8A8 cosine 0.81-0.89, docs/algorithms.md §3.3).
ROOTS = ("bn", "ln", "input", "assumed-input")
_PASS_THROUGH = {"Identity", "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
                 "GlobalAveragePool", "AveragePool", "MaxPool", "GlobalMaxPool", "ReduceMean",
                 "ReduceMax", "Cast"}


class Extremes:
    """What a tensor's extremes `lo` and `hi` say (TensorStats, and the observed ranges of
    rexdeploy.planning.observe.Observed)."""

    @property
    def bound(self) -> float:
        """Symmetric clip value: the largest magnitude the tensor is expected to reach."""
        return float(max(abs(self.lo), abs(self.hi)))

    @property
    def nonneg(self) -> bool:
        return self.lo >= 0.0


@dataclass(frozen=True, eq=False)
class TensorStats(Extremes):
    """Per-channel moments and extent of one tensor. mean/var: float64 [C] (C may be 1)."""

    mean: np.ndarray
    var: np.ndarray
    lo: float
    hi: float
    roots: frozenset[str]  # which of ROOTS the statistics were derived from
    # carried through a convolution since their root: an input's moments pushed through a
    # kernel assume independent inputs, and neighbouring pixels are not (their correlation is
    # lost), so without a BatchNorm re-anchoring them they are a weak guess (use_stats passes
    # them over); through a Linear layer of independent features they hold
    through_conv: bool = False
    # per-channel extent (lo_c, hi_c), float64 [C] each, where a Relu/Clip made the moments
    # unfit for one: a clipped Gaussian's mean + sigma * std misses its tail (a channel of
    # N(-3, 1) through a ReLU reaches about 1, its clipped moments say 0.05), so the extent is
    # the pre-clip mean_c +- sigma * std_c, clipped; None: from the moments (channel_bounds)
    extent: tuple[np.ndarray, np.ndarray] | None = None

    def channel_bounds(self, sigma: float) -> np.ndarray:
        """max(|lo_c|, |hi_c|) per channel, within the tensor's extent [lo, hi]."""
        if self.extent is not None:
            lo, hi = self.extent
        else:
            std = np.sqrt(np.maximum(self.var, 0.0))
            lo, hi = self.mean - sigma * std, self.mean + sigma * std
        lo, hi = np.clip(lo, self.lo, self.hi), np.clip(hi, self.lo, self.hi)
        return np.maximum(np.abs(lo), np.abs(hi))

    @property
    def source(self) -> str:
        return "+".join(sorted(self.roots)) or "propagated"


def propagate_stats(model: ir.Model, input_ranges: dict[str, tuple[float, float]] | None = None,
                    sigma: float = 4.0) -> dict[str, TensorStats]:
    """Statistics for every tensor where they can be derived without data, keyed by value name.

    input_ranges: graph input name -> (lo, hi) of its values (e.g. (-1, 1) for images scaled to
    [-1, 1]); inputs without one are assumed N(0, 1) per element. Integer inputs get none.
    """
    input_ranges = input_ranges or {}
    stats: dict[str, TensorStats] = {}
    for value in model.graph.inputs:
        if value.dtype is not None and not value.dtype.is_floating_point():
            continue
        channels = _channels(value)
        if value.name in input_ranges:
            lo, hi = input_ranges[value.name]
            mean = np.full(channels, (lo + hi) / 2.0)
            var = np.full(channels, (hi - lo) ** 2 / 12.0)
            stats[value.name] = TensorStats(mean, var, lo, hi, frozenset({"input"}))
        else:
            stats[value.name] = _from_moments(np.zeros(channels), np.ones(channels), sigma,
                                              frozenset({"assumed-input"}))
    for node in model.graph:
        _visit(node, stats, sigma)
    return stats


def _visit(node: ir.Node, stats: dict[str, TensorStats], sigma: float) -> None:
    op = node.op_type
    out = node.outputs[0] if node.outputs else None
    if out is None or not out.name:
        return
    if op == "BatchNormalization":
        gamma, beta = _const(node.inputs[1]), _const(node.inputs[2])
        if gamma is not None and beta is not None:
            stats[out.name] = _from_moments(beta, gamma**2, sigma, frozenset({"bn"}))
        return
    if op == "LayerNormalization":
        scale = _const(node.inputs[1])
        bias = _const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None \
            else None
        if scale is not None:
            bias = np.zeros_like(scale) if bias is None else bias
            stats[out.name] = _from_moments(bias.ravel(), scale.ravel() ** 2, sigma,
                                            frozenset({"ln"}))
        return
    inputs = [stats.get(v.name) if v is not None else None for v in node.inputs]
    first = inputs[0] if inputs else None
    result = None
    if op in _PASS_THROUGH and first is not None:
        result = _reshaped(first, _channels(out))
    elif op in ("Relu", "Clip") and first is not None:
        lo, hi = (0.0, None) if op == "Relu" else clip_bounds(node)
        result = _clipped(first, lo, hi, sigma)
    elif op == "Pad" and first is not None:
        result = TensorStats(first.mean, first.var, min(first.lo, 0.0), max(first.hi, 0.0),
                             first.roots, first.through_conv, first.extent)
    elif op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and first is not None:
        result = _linear(node, first, sigma)
    elif op in ("Add", "Sub"):
        result = _add(node, inputs, sigma, subtract=op == "Sub")
    elif op in _UNARY and first is not None:
        result = _pointwise(first, _UNARY[op](node), sigma)
    elif op in ("Mul", "Div"):
        result = _product(node, inputs, stats, sigma)
    elif op == "Concat":
        result = _concat(node, inputs, out)
    if result is not None:
        stats[out.name] = result


# -- rules -------------------------------------------------------------------------------------
def _from_moments(mean: np.ndarray, var: np.ndarray, sigma: float,
                  roots: frozenset[str], through_conv: bool = False) -> TensorStats:
    mean = np.asarray(mean, np.float64).ravel()
    var = np.maximum(np.asarray(var, np.float64).ravel(), 0.0)
    std = np.sqrt(var)
    return TensorStats(mean, var, float(np.min(mean - sigma * std)),
                       float(np.max(mean + sigma * std)), roots, through_conv)


def _clipped(s: TensorStats, lo: float | None, hi: float | None, sigma: float = 4.0
             ) -> TensorStats:
    import torch

    from calib_free.activations.moments import clipped_gaussian_moments

    m, v = clipped_gaussian_moments(torch.from_numpy(s.mean), torch.from_numpy(np.sqrt(s.var)),
                                    lo, hi)
    new_lo = s.lo if lo is None else min(max(s.lo, lo), hi if hi is not None else np.inf)
    new_hi = s.hi if hi is None else max(min(s.hi, hi), lo if lo is not None else -np.inf)
    if lo is not None:
        new_hi = max(new_hi, lo)
    if s.extent is not None:
        c_lo, c_hi = s.extent
    else:
        std = np.sqrt(np.maximum(s.var, 0.0))
        c_lo, c_hi = s.mean - sigma * std, s.mean + sigma * std
    low = -np.inf if lo is None else lo
    high = np.inf if hi is None else hi
    extent = (np.clip(c_lo, low, high), np.clip(c_hi, low, high))
    return TensorStats(m.double().numpy(), v.double().numpy(), float(new_lo), float(new_hi),
                       s.roots, s.through_conv, extent)


def _linear(node: ir.Node, s: TensorStats, sigma: float) -> TensorStats | None:
    import torch

    from calib_free.activations.moments import conv_moments, linear_moments

    weight = _const(node.inputs[1])
    if weight is None:
        return None
    bias = _const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if node.op_type == "Conv":
        groups = node.attributes.get_int("group", 1)
        cin = weight.shape[1] * groups
        fn = lambda w, b, m, v: conv_moments(w, b, m, v, groups=groups)  # noqa: E731
    elif node.op_type == "ConvTranspose":
        if node.attributes.get_int("group", 1) != 1 or weight.ndim < 3:
            return None
        weight = np.swapaxes(weight, 0, 1)  # [Cin, Cout, k...] -> [Cout, Cin, k...]
        cin = weight.shape[1]
        fn = functools.partial(_transposed_moments, strides=node.attributes.get_ints(
            "strides", [1] * (weight.ndim - 2)))
    else:
        if node.op_type == "MatMul" or not node.attributes.get_int("transB", 0):
            weight = weight.T  # -> [Cout, Cin]
        if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
            return None
        if weight.ndim != 2:
            return None
        cin = weight.shape[1]
        fn = linear_moments
    mean, var = _fit_channels(s, cin)
    t = lambda a: None if a is None else torch.from_numpy(np.asarray(a, np.float64))  # noqa: E731
    m, v = fn(t(weight), t(bias.ravel()) if bias is not None else None, t(mean), t(var))
    return _from_moments(m.numpy(), v.numpy(), sigma, s.roots,
                         through_conv=s.through_conv or node.op_type.startswith("Conv"))


def _transposed_moments(w, b, mean, var, strides):
    """A ConvTranspose's output moments ([Cout, Cin, k...] weight): an output position meets
    kernel / strides taps on average, so the Conv's sums over the whole kernel are scaled by
    1 / prod(strides) (exact for kernel = stride, the usual upsampling)."""
    from calib_free.activations.moments import conv_moments

    m, v = conv_moments(w, None, mean, var)
    taps = float(np.prod(strides))
    m, v = m / taps, v / taps
    return (m + b.reshape(-1) if b is not None else m), v


def _add(node: ir.Node, inputs: list[TensorStats | None], sigma: float,
         subtract: bool) -> TensorStats | None:
    a, b = (inputs + [None, None])[:2]
    sign = -1.0 if subtract else 1.0
    if a is not None and b is not None:
        c = max(a.mean.size, b.mean.size)
        (ma, va), (mb, vb) = _fit_channels(a, c), _fit_channels(b, c)
        return _from_moments(ma + sign * mb, va + vb, sigma, a.roots | b.roots,
                             a.through_conv or b.through_conv)
    # tensor + constant (e.g. a MatMul's bias): shift the mean
    known, const_value = (a, node.inputs[1]) if a is not None else (b, node.inputs[0])
    const = _const(const_value) if const_value is not None else None
    if known is None or const is None:
        return None
    shift = const.ravel().astype(np.float64)
    if shift.size not in (1, known.mean.size):
        return None
    if known is b and subtract:
        return None  # constant - tensor: rare, not worth a rule
    mean = known.mean + sign * shift
    moved = _from_moments(mean, known.var * np.ones_like(mean), sigma, known.roots,
                          known.through_conv)
    # the extent moves with the constant: where it is tighter than the moments' (an input's
    # given range, uniform: mean +- 4 std reaches 2.3x past it), it stays. The Fashion-MNIST
    # CNN's in-model (x - mean) / std read range 3.9 for the pixels' 2.0, and 37.1 dB fell to
    # 26.5 while a missing rule had it observed instead
    lo, hi = known.lo + float(np.min(sign * shift)), known.hi + float(np.max(sign * shift))
    return replace(moved, lo=max(moved.lo, lo), hi=min(moved.hi, hi))


def _concat(node: ir.Node, inputs: list[TensorStats | None], out: ir.Value) -> TensorStats | None:
    if any(s is None for s in inputs) or not inputs:
        return None
    axis = node.attributes.get_int("axis", 1)
    rank = len(out.shape) if out.shape is not None else 4
    if axis % rank != _channel_axis(rank):
        merged = [_fit_channels(s, 1) for s in inputs]
        mean = np.concatenate([m for m, _ in merged]).mean(keepdims=True)
        var = np.concatenate([v for _, v in merged]).mean(keepdims=True)
    else:
        mean = np.concatenate([s.mean for s in inputs])
        var = np.concatenate([s.var for s in inputs])
    return TensorStats(mean, var, min(s.lo for s in inputs), max(s.hi for s in inputs),
                       frozenset().union(*(s.roots for s in inputs)),
                       any(s.through_conv for s in inputs))


# -- elementwise functions ---------------------------------------------------------------------
# x ~ N(mean_c, std_c^2) per channel through f: the moments by quadrature, the extent from f over
# each channel's [lo_c, hi_c] (sampled). Swish and the hard-swish of Paddle2ONNX exports
# (x * Sigmoid(x), x * Clip(x + 3, 0, 6) / 6) after a BatchNorm: before these rules such a
# tensor had no statistics and its range came from natural synthetic images, which put the
# PP-OCRv4 recogniser's neck output at 0.62 where text lines reach 1.7 (its BatchNorm says 3.1)
_UNARY = {
    "Sigmoid": lambda node: lambda x: 0.5 * (1.0 + np.tanh(0.5 * x)),
    "Tanh": lambda node: np.tanh,
    "HardSigmoid": lambda node: functools.partial(
        _hard_sigmoid, alpha=node.attributes.get_float("alpha", 0.2),
        beta=node.attributes.get_float("beta", 0.5)),
    "HardSwish": lambda node: lambda x: x * _hard_sigmoid(x, 1.0 / 6.0, 0.5),
    "LeakyRelu": lambda node: functools.partial(
        _leaky, alpha=node.attributes.get_float("alpha", 0.01)),
}
_EXTENT_POINTS = 129  # samples of f over a channel's extent


def _hard_sigmoid(x, alpha: float, beta: float):
    return np.clip(alpha * x + beta, 0.0, 1.0)


def _leaky(x, alpha: float):
    return np.where(x >= 0.0, x, alpha * x)


def _pointwise(s: TensorStats, fn, sigma: float) -> TensorStats:
    import torch

    from calib_free.activations.moments import gaussian_expectations

    std = np.sqrt(np.maximum(s.var, 0.0))
    torch_fn = lambda t: torch.from_numpy(fn(t.numpy()))  # noqa: E731
    m1, m2 = gaussian_expectations(torch.from_numpy(s.mean), torch.from_numpy(std), torch_fn)
    m1, var = m1.numpy(), np.maximum(m2.numpy() - m1.numpy() ** 2, 0.0)
    c_lo, c_hi = s.extent if s.extent is not None else (s.mean - sigma * std,
                                                        s.mean + sigma * std)
    c_lo, c_hi = np.clip(c_lo, s.lo, s.hi), np.clip(c_hi, s.lo, s.hi)
    grid = c_lo[:, None] + (c_hi - c_lo)[:, None] * np.linspace(0.0, 1.0, _EXTENT_POINTS)
    values = fn(grid)
    extent = (values.min(axis=1), values.max(axis=1))
    return TensorStats(m1, var, float(extent[0].min()), float(extent[1].max()), s.roots,
                       s.through_conv, extent)


def _product(node: ir.Node, inputs: list[TensorStats | None], stats: dict[str, TensorStats],
             sigma: float) -> TensorStats | None:
    """Mul/Div by a constant (a scalar or one value per channel): the moments scaled. Mul of a
    tensor by a gate computed from it alone (x * Sigmoid(x), x * Clip(x + 3, 0, 6)): a
    function of x."""
    a, b = (list(node.inputs) + [None, None])[:2]
    if a is None or b is None:
        return None
    for known, other, s in ((a, b, inputs[0]), (b, a, inputs[1])):
        const = _const(other)
        if s is None or const is None or (known is b and node.op_type == "Div"):
            continue
        factor = const.astype(np.float64).ravel()
        if factor.size not in (1, s.mean.size) or not _per_channel(const, known, factor.size):
            return None
        if node.op_type == "Div":
            if np.any(factor == 0):
                return None
            factor = 1.0 / factor
        return _scaled(s, factor)
    if node.op_type == "Mul":
        for x, gate in ((a, b), (b, a)):
            fn = _chain(gate, x)
            if fn is not None and stats.get(x.name) is not None:
                return _pointwise(stats[x.name], lambda t, g=fn: t * g(t), sigma)
    return None


def _scaled(s: TensorStats, factor: np.ndarray) -> TensorStats:
    """The statistics of the tensor times `factor` (one value, or one per channel): exact."""
    c_lo, c_hi = s.extent if s.extent is not None else (None, None)
    extent = None if c_lo is None else (np.minimum(c_lo * factor, c_hi * factor),
                                        np.maximum(c_lo * factor, c_hi * factor))
    lo, hi = s.lo * factor, s.hi * factor
    return TensorStats(s.mean * factor, s.var * factor ** 2, float(np.min(np.minimum(lo, hi))),
                       float(np.max(np.maximum(lo, hi))), s.roots, s.through_conv, extent)


def _per_channel(const: np.ndarray, tensor: ir.Value, size: int) -> bool:
    """Whether a constant of `size` values broadcasts along the tensor's channel axis."""
    if size == 1:
        return True
    rank = len(tensor.shape) if tensor.shape is not None else 4
    shape = (1,) * (rank - const.ndim) + tuple(const.shape)
    axis = _channel_axis(rank)
    return len(shape) == rank and all(d == 1 for i, d in enumerate(shape) if i != axis)


def _chain(value: ir.Value, root: ir.Value, depth: int = 6):
    """f with value = f(root) elementwise, when value comes from root through unary ops and
    scalar-constant arithmetic alone (at most `depth` of them); else None."""
    node = value.producer()
    if node is None or depth == 0 or not node.inputs or node.inputs[0] is None:
        return None
    step = elementwise_step(node)
    if step is None:
        return None
    fn, source = step
    if source is root:
        return fn
    inner = _chain(source, root, depth - 1)
    return None if inner is None else (lambda x: fn(inner(x)))


def elementwise_step(node: ir.Node):
    """(f, its tensor input) of one unary elementwise node, or None."""
    op = node.op_type
    if op in _UNARY:
        return _UNARY[op](node), node.inputs[0]
    if op == "Relu":
        return (lambda x: np.maximum(x, 0.0)), node.inputs[0]
    if op == "Clip":
        lo, hi = clip_bounds(node)
        low, high = -np.inf if lo is None else lo, np.inf if hi is None else hi
        return (lambda x: np.clip(x, low, high)), node.inputs[0]
    if op in ("Add", "Sub", "Mul", "Div") and len(node.inputs) == 2:
        for i in (0, 1):
            c = _const(node.inputs[i])
            if c is None or c.size != 1 or (op in ("Sub", "Div") and i == 0):
                continue
            c = float(c.ravel()[0])
            fn = {"Add": lambda x: x + c, "Sub": lambda x: x - c, "Mul": lambda x: x * c,
                  "Div": lambda x: x / c}[op]
            return fn, node.inputs[1 - i]
    return None


# -- helpers -----------------------------------------------------------------------------------
def _channel_axis(rank: int) -> int:
    return rank - 1 if rank == 3 else 1 if rank >= 2 else 0


def _channels(value: ir.Value) -> int:
    shape = value.shape
    if shape is None or len(shape) == 0:
        return 1
    dim = shape[_channel_axis(len(shape))]
    return dim if isinstance(dim, int) and dim > 0 else 1


def _fit_channels(s: TensorStats, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The stats as `channels` per-channel values; pooled to one value when layouts differ."""
    if s.mean.size == channels:
        return s.mean, s.var
    mean = float(s.mean.mean())
    var = float(s.var.mean() + s.mean.var())
    return np.full(channels, mean), np.full(channels, var)


def _reshaped(s: TensorStats, channels: int) -> TensorStats:
    mean, var = _fit_channels(s, channels)
    extent = s.extent if s.mean.size == channels else None
    return TensorStats(mean, var, s.lo, s.hi, s.roots, s.through_conv, extent)


def clip_bounds(node: ir.Node) -> tuple[float | None, float | None]:
    bounds = []
    for i in (1, 2):
        v = node.inputs[i] if len(node.inputs) > i else None
        if v is not None and v.producer() is not None and v.producer().op_type == "Cast":
            v = v.producer().inputs[0]  # torch's export casts clamp's bounds
        c = _const(v) if v is not None else None
        bounds.append(None if c is None else float(c))
    if "min" in node.attributes or "max" in node.attributes:  # opset < 11 form
        bounds = [node.attributes.get_float("min", None), node.attributes.get_float("max", None)]
    return bounds[0], bounds[1]
