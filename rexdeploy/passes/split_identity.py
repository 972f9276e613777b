"""Split a dominant diagonal out of a convolution: the folded identity of a reparameterised block.

Reparameterised networks (RepVGG, MobileOne, PP-LCNetV3: PP-OCRv4's detector and recogniser)
train a convolution beside an identity or 1x1 branch and fold the branches into one kernel for
inference. The identity lands on the kernel's diagonal at its centre tap, W[c, c, centre] for a
square convolution, W[c, 0, centre] for a depthwise one, and there it can dwarf the rest of the
row: PP-OCRv4's recogniser has a 480 x 480 pointwise convolution whose row 335 holds 29.3 on the
diagonal against at most 0.76 elsewhere. One int8 scale per output channel then spends its
codes on that one value, and the other weights of the row round to a few levels (that layer's
weight SQNR: 30.5 dB, where a Gaussian row gives about 40).

This pass takes the diagonal d out of the rows where it is the row's largest weight and
computes it beside the layer, exactly, in float:

    x -> Conv(W) -> y     becomes     x -> Conv(W - diag(d)) -> y' --+
                                      x -> Mul(d per channel) -------Add--> y  (y's name)

The layer keeps its name, bias and input; its weight scales now fit the rest of each row. The
Mul reads the float tensor x (the quantized layer reads x's Q/DQ), so the diagonal adds no
rounding of its own. It is exact in float only where the convolution maps a pixel onto itself:
stride 1, dilation-aware symmetric padding of (k - 1) / 2, an odd kernel, as many output as
input channels and, for a grouped convolution, one channel per group (depthwise).

A layer is split where its weight SQNR under per-channel round-to-nearest at the build's weight
bits rises by at least MIN_GAIN_DB; the cost is one elementwise Mul and Add on the layer's
input (memory traffic, no multiply-adds worth counting beside the convolution).

Requires: BatchNorm folded (the kernel holds the whole affine); constant weights.
Ensures: every split layer's weight lost its diagonal in the split rows, and the model computes
the same function (up to float rounding). The Mul and the Add are tagged as the layer's own
(role "diagonal"): no Q/DQ goes onto the Mul's output as if the Add were a residual one, and
the layer's output is the Add's (`quantize_weights.layer_output`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from rexdeploy.constants import const_array as _const
from rexdeploy.passes.qdq_nodes import UniqueNames, add_initializer, tag

# A split halves the layer's weight noise or more. Measured (per-channel int8, round to
# nearest): PP-OCRv4's pointwise convolutions gain 0.7-10.2 dB, their depthwise ones 0.6-7.5,
# EfficientNet-Lite0's depthwise ones 2.8-5.0, MobileNetV2's 1.7-6.0.
MIN_GAIN_DB = 3.0
# --split-identity all, depthwise convolutions included: any gain past chance (a Gaussian row
# has its largest weight on the diagonal now and then: 0.3 dB on a 16 x 16 kernel)
ALL_MIN_GAIN_DB = 0.5
ROLE = "diagonal"  # the rexdeploy.role of the Mul and the Add (rexdeploy.passes.qdq_nodes.tag)


@dataclass(frozen=True)
class IdentitySplit:
    """One convolution whose diagonal goes beside it: `rows` of its `channels` output
    channels, its weight SQNR before and after (per-channel round to nearest)."""

    layer: str
    rows: int
    channels: int
    before_db: float
    after_db: float


def identity_splits(model: ir.Model, layers: set[str], bits: int, mode: str = "auto"
                    ) -> list[IdentitySplit]:
    """The splits to make among the Conv nodes named in `layers` (module docstring): under
    "auto" the square (group 1) convolutions whose weight SQNR rises MIN_GAIN_DB or more, under
    "all" every eligible convolution, depthwise ones included, that gains ALL_MIN_GAIN_DB."""
    found = []
    for node in model.graph:
        if node.op_type != "Conv" or node.name not in layers or \
                (mode == "auto" and node.attributes.get_int("group", 1) != 1):
            continue
        diagonal = _diagonal(node)
        if diagonal is None:
            continue
        w, index, rows = diagonal
        rest = _off_diagonal(w, index, rows)
        signal = max(float((w ** 2).sum()), 1e-30)  # the diagonal beside the layer is exact
        before, after = (10 * np.log10(signal / _rounding_noise(v, bits)) for v in (w, rest))
        if after - before >= (MIN_GAIN_DB if mode == "auto" else ALL_MIN_GAIN_DB):
            found.append(IdentitySplit(node.name, int(rows.sum()), w.shape[0], before, after))
    return found


def split_identity(model: ir.Model, splits: list[IdentitySplit]) -> None:
    """Rewrite each split's Conv as its off-diagonal kernel plus a per-channel Mul of its
    input, summed into the Conv's original output value (module docstring)."""
    graph, names = model.graph, UniqueNames(model.graph)
    by_name = {node.name: node for node in graph}
    for split in splits:
        node = by_name[split.layer]
        dtype = _const(node.inputs[1]).dtype  # the graph's float type (a float16 model's too)
        w, index, rows = _diagonal(node)
        d = np.where(rows, w[index], 0.0)
        node.replace_input_with(1, add_initializer(
            graph, names, f"{node.inputs[1].name}/off_diagonal",
            _off_diagonal(w, index, rows).astype(dtype)))
        _add_diagonal(graph, node, d.reshape((1, -1) + (1,) * (w.ndim - 2)).astype(dtype), names)


def _add_diagonal(graph: ir.Graph, node: ir.Node, d: np.ndarray, names: UniqueNames) -> None:
    """node's output y -> Add(y', Mul(x, d)) under y's name (d shaped [1, C, 1, ...])."""
    out, x = node.outputs[0], node.inputs[0]
    uses = list(out.uses())
    graph_outputs = [i for i, v in enumerate(graph.outputs) if v is out]
    original = out.name
    out.name = names.value(f"{original}/off_diagonal")
    base = f"diagonal{node.name}"  # not "<layer>/...": the report maps runtime layers by prefix
    scaled = ir.Value(name=names.value(f"{base}/scaled"), type=out.type, shape=out.shape)
    total = ir.Value(name=original, type=out.type, shape=out.shape)
    mul = ir.Node("", "Mul", [x, add_initializer(graph, names, f"{base}/d", d)],
                  outputs=[scaled], name=names.node(f"{base}/mul"))
    add = ir.Node("", "Add", [out, scaled], outputs=[total], name=names.node(base))
    for n in (mul, add):  # the layer's own: no residual Add, no Q/DQ of its own
        tag(n, node.name, ROLE)
    graph.insert_after(node, [mul, add])
    for user, i in uses:
        user.replace_input_with(i, total)
    for i in graph_outputs:
        graph.outputs[i] = total


def _diagonal(node: ir.Node):
    """(weight float64, index of the diagonal's centre taps, bool [C]: the rows where the
    diagonal is the largest weight) when `node` maps each pixel and channel onto itself, else
    None."""
    w = _const(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None or w.ndim < 3 or node.inputs[0] is None:
        return None
    channels, spatial = w.shape[0], w.shape[2:]
    groups = node.attributes.get_int("group", 1)
    if not ((groups == 1 and w.shape[1] == channels) or (groups == channels and w.shape[1] == 1)):
        return None
    dims = len(spatial)
    strides = node.attributes.get_ints("strides", [1] * dims)
    dilations = node.attributes.get_ints("dilations", [1] * dims)
    pads = node.attributes.get_ints("pads", [0] * 2 * dims)
    same = [dl * (k - 1) // 2 for k, dl in zip(spatial, dilations)]
    auto_pad = node.attributes.get_string("auto_pad", "NOTSET")
    if any(k % 2 == 0 for k in spatial) or any(s != 1 for s in strides) or \
            auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER") or \
            (auto_pad == "NOTSET" and list(pads) != same + same):
        return None  # (an odd kernel at stride 1 pads SAME symmetrically)
    rows = np.arange(channels)
    index = (rows, rows if groups == 1 else np.zeros_like(rows)) + tuple(k // 2 for k in spatial)
    w = w.astype(np.float64)
    rest = np.abs(w)
    rest[index] = 0.0
    dominant = np.abs(w[index]) > rest.reshape(channels, -1).max(axis=1)
    return (w, index, dominant) if dominant.any() else None


def _off_diagonal(w: np.ndarray, index: tuple, rows: np.ndarray) -> np.ndarray:
    """w with its diagonal's centre taps zeroed in `rows` (what the layer keeps)."""
    rest = w.copy()
    rest[index] = np.where(rows, 0.0, rest[index])
    return rest


def _rounding_noise(w: np.ndarray, bits: int) -> float:
    """The weight's squared error under symmetric per-output-channel round to nearest."""
    rows = w.reshape(w.shape[0], -1)
    qmax = 2 ** (bits - 1) - 1
    step = np.abs(rows).max(axis=1, keepdims=True) / qmax
    step[step == 0] = 1.0
    return max(float(((np.round(rows / step) * step - rows) ** 2).sum()), 1e-30)
