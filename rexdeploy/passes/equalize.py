"""Equalize the channel ranges of a depthwise convolution's input through the layer before it.

A depthwise convolution computes each channel alone, yet its int8 input shares one scale over
all channels; when their ranges differ (PP-OCRv4's recogniser: 0.3 to 23 at its first depthwise
input, 75x), the small channels keep a few codes each (local SQNR 23.8 dB). Where the input is
made by a convolution, directly or through a ReLU (positive homogeneous), scaling that
convolution's output channel c by f_c and the depthwise kernel c by 1 / f_c changes nothing in
float (cross-layer equalization, Nagel et al., "Data-Free Quantization", 2019). Both layers have
a weight scale per output channel, which absorbs the factor exactly: the weights lose nothing,
and f_c = R / r_c (r_c the channel's range, R the largest) gives every channel the full int8
range.

Requires: BatchNorm folded; `ranges` holds the per-channel range of each pair's tensor.
Ensures: for every equalized pair, the producer's weights and bias are multiplied by f per
output channel and the depthwise kernel divided by it; the model computes the same function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from rexdeploy.constants import const_array as _const

MAX_FACTOR = 1e3  # a nearly dead channel is not blown up past this (its codes stay few anyway)


@dataclass(frozen=True)
class DepthwisePair:
    """anchor -> [per-channel Add/Sub by a constant, Relu]* -> depthwise Conv. The anchor is a
    Conv with constant weights or a Mul by a per-channel constant (an affine after an
    activation, as Paddle writes a learnable scale); the factor enters there and every Add/Sub
    constant after it carries it too."""

    anchor: str
    after: tuple[str, ...]  # the Add/Sub/Relu nodes between anchor and depthwise, in order
    depthwise: str
    tensor: str             # the depthwise convolution's input (what gets equalized)
    scaled: tuple[str, ...]  # every tensor from the anchor's output on (each scaled by f)
    channels: int


def depthwise_pairs(model: ir.Model) -> list[DepthwisePair]:
    """Every depthwise convolution whose input is made from an anchor (module docstring)
    through ops that are exact under a positive per-channel factor, each read by one node."""
    pairs = []
    for node in model.graph:
        if not _is_depthwise(node):
            continue
        channels = _const(node.inputs[1]).shape[0]
        x, after, scaled = node.inputs[0], [], [node.inputs[0].name]
        while True:
            p = x.producer()
            if p is None or len(list(x.uses())) != 1 or x.is_graph_output() or \
                    p.domain not in ("", "ai.onnx"):
                p = None
                break
            if p.op_type == "Relu" or (p.op_type in ("Add", "Sub") and
                                       _per_channel_operand(p, channels) is not None):
                after.append(p)
                x = p.inputs[0] if p.op_type == "Relu" else \
                    p.inputs[1 - _per_channel_operand(p, channels)]
                scaled.append(x.name)
                continue
            break
        if p is None:
            continue
        anchor_ok = (p.op_type == "Conv" and _const(p.inputs[1]) is not None and
                     _const(p.inputs[1]).shape[0] == channels and
                     (len(p.inputs) < 3 or p.inputs[2] is None or _const(p.inputs[2]) is not None)
                     ) or (p.op_type == "Mul" and _per_channel_operand(p, channels) is not None)
        if not anchor_ok or (p.op_type == "Sub" and after and after[-1].op_type == "Sub"):
            continue
        pairs.append(DepthwisePair(p.name, tuple(n.name for n in reversed(after)), node.name,
                                   node.inputs[0].name, tuple(scaled), channels))
    return pairs


def _per_channel_operand(node: ir.Node, channels: int) -> int | None:
    """Index of `node`'s constant input when it is a scalar or holds one value per channel on
    axis 1 of an NCHW tensor ([C, 1, 1] or [1, C, 1, 1]), the other input not constant."""
    if len(node.inputs) != 2 or any(v is None for v in node.inputs):
        return None
    for i in (0, 1):
        a = _const(node.inputs[i])
        if a is None or _const(node.inputs[1 - i]) is not None:
            continue
        if node.op_type == "Sub" and i == 0:
            return None  # constant - x: the factor would flip into the constant's side wrongly
        if a.size == 1 or (a.size == channels and a.ndim >= 3 and a.shape[-3] == channels):
            return i
    return None


def _is_depthwise(node: ir.Node) -> bool:
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return False
    w = _const(node.inputs[1])
    groups = node.attributes.get_int("group", 1)
    return w is not None and w.ndim >= 3 and w.shape[1] == 1 and groups == w.shape[0] > 1 and \
        (len(node.inputs) < 3 or node.inputs[2] is None or _const(node.inputs[2]) is not None)


def factors(ranges: np.ndarray, min_gain: float = 1.5) -> np.ndarray | None:
    """f_c = R / r_c (R the largest range), clipped to [1, MAX_FACTOR]; None where the channels
    are within `min_gain` of each other already (nothing worth changing)."""
    r = np.asarray(ranges, np.float64)
    top = float(r.max()) if r.size else 0.0
    if top <= 0 or top / max(float(np.median(r)), 1e-30) < min_gain:
        return None
    return np.clip(top / np.maximum(r, top / MAX_FACTOR), 1.0, MAX_FACTOR)


def equalize(model: ir.Model, pair: DepthwisePair, f: np.ndarray) -> None:
    """Scale the anchor's output channel c by f_c (and every Add/Sub constant after it), the
    depthwise kernel c by 1 / f_c."""
    nodes = {n.name: n for n in model.graph}
    anchor, dw = nodes[pair.anchor], nodes[pair.depthwise]
    if anchor.op_type == "Conv":
        _scale_input(anchor, 1, f, axis=0)
        if len(anchor.inputs) > 2 and anchor.inputs[2] is not None:
            _scale_input(anchor, 2, f, axis=0)
    else:
        _scale_channels(anchor, _per_channel_operand(anchor, pair.channels), f)
    for name in pair.after:
        node = nodes[name]
        if node.op_type in ("Add", "Sub"):
            _scale_channels(node, _per_channel_operand(node, pair.channels), f)
    _scale_input(dw, 1, 1.0 / f, axis=0)


def _scale_channels(node: ir.Node, index: int, f: np.ndarray) -> None:
    """A per-channel (or scalar) constant operand of an elementwise op times f, as [C, 1, 1]."""
    value = node.inputs[index]
    a = _const(value).astype(np.float32)
    per = np.broadcast_to(a.reshape(-1), f.shape) if a.size == 1 else a.reshape(-1)
    _replace(node, index, (per * f).astype(np.float32).reshape(-1, 1, 1))


def _scale_input(node: ir.Node, index: int, f: np.ndarray, axis: int) -> None:
    """Replace a node's constant input by itself times f along `axis`, as a new initializer
    (a weight shared with another node keeps its value there)."""
    array = _const(node.inputs[index]).astype(np.float32)
    shape = [1] * array.ndim
    shape[axis] = -1
    _replace(node, index, (array * f.reshape(shape)).astype(np.float32))


def _replace(node: ir.Node, index: int, scaled: np.ndarray) -> None:
    value = node.inputs[index]
    name = f"{node.name}/{index}/equalized"
    graph = node.graph
    new = ir.Value(name=name, shape=ir.Shape(scaled.shape), type=ir.TensorType(ir.DataType.FLOAT),
                   const_value=ir.tensor(scaled, name=name))
    graph.register_initializer(new)
    node.replace_input_with(index, new)
    if not list(value.uses()) and value.name in graph.initializers:
        del graph.initializers[value.name]


def channel_ranges(stats, sigma: float) -> np.ndarray:
    """Per-channel range of a tensor from its data-free moments: |mean| + sigma * std, capped
    by the tensor's extent (a ReLU6's 6)."""
    r = np.abs(stats.mean) + sigma * np.sqrt(stats.var)
    return np.minimum(r, max(abs(stats.lo), abs(stats.hi)))


def scaled_stats(stats, f: np.ndarray):
    """The statistics of a tensor whose channel c was multiplied by f_c (<= R / r_c): per
    channel moments scaled; its extent stays, the largest channel's, which f leaves at 1."""
    from rexdeploy.planning.stats import TensorStats

    extent = None if stats.extent is None else (stats.extent[0] * f, stats.extent[1] * f)
    return TensorStats(stats.mean * f, stats.var * f * f, stats.lo, stats.hi, stats.roots,
                       stats.through_conv, extent)


def equalize_depthwise(model: ir.Model, stats: dict, sigma: float, planned: set[str],
                       use_stats) -> list[tuple[DepthwisePair, float]]:
    """Equalize every depthwise pair whose depthwise layer is planned int8 (names in
    `planned`) and whose input's per-channel ranges come from data-free moments that
    `use_stats(stats)` trusts (BatchNorm statistics). Ranges observed on synthetic images are
    not used: channel by channel they do not carry over to the real inputs, and a factor that
    lifts a channel quiet on them clips it on real data (PP-OCRv4's recogniser on lines of
    text: 13.3 dB without, 6.0 dB equalized by such ranges). Updates `stats` in place for the
    tensors it changes. Returns (pair, spread) of the pairs equalized, spread the largest
    channel range over the median one before."""
    pairs = [p for p in depthwise_pairs(model) if p.depthwise in planned]
    ranges = {}
    for p in pairs:
        s = stats.get(p.tensor)
        if use_stats(s) and s.mean.size == p.channels and "bn" in s.roots:
            ranges[p.tensor] = channel_ranges(s, sigma)
    done = []
    for p in pairs:
        r = ranges.get(p.tensor)
        f = None if r is None else factors(r)
        if f is None:
            continue
        equalize(model, p, f)
        for name in p.scaled:
            if name in stats:
                stats[name] = scaled_stats(stats[name], f)
        done.append((p, float(r.max() / max(float(np.median(r)), 1e-30))))
    return done
