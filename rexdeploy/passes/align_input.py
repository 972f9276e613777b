"""Put an image input's pixels on one int8 grid, whatever the per-channel normalisation.

An image normalised per channel, x_c = (p - o_c) * s_c for 8-bit pixels p (ImageNet's mean and
std: s_c = 1 / (255 std_c), o_c = 255 mean_c), lies on a different grid in each channel, none of
them integer-aligned, so one int8 scale rounds every pixel: the quantized input is noise the
float model never saw (PP-OCRv4's detector: 0.6 dB of its output). This pass rewrites the
first convolution to read x' = a * x + d per channel, a_c = S / s_c and d_c = (o_c - Z) S, so
that x'_c = (p - Z) S: every pixel is an exact int8 code (p - Z, Z = 128) on the common step S.
The convolution takes W / a per input channel and the bias b - sum(W / a * d); its zero padding
moves in front of the affine as an explicit Pad of x (padded x = 0 is x' = d, not 0), so the
rewritten graph computes the same function everywhere, the border included. The padding itself
(x = 0, the mean pixel, which no pixel is) is the one value off the grid: its ring rounds.

Requires: the input read by exactly one node, a Conv with constant weights, NCHW, explicit
pads (auto_pad NOTSET or VALID).
Ensures: that Conv reads the aligned tensor (returned), whose values on pixels are integer
multiples of S within [-128 S, 127 S]; the model computes the same function.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from rexdeploy.constants import const_array as _const
from rexdeploy.passes.qdq_nodes import UniqueNames, add_initializer

ZERO = 128  # pixel p -> int8 code p - 128: all 256 levels exact


def alignable(model: ir.Model, name: str, channels: int) -> ir.Node | None:
    """The Conv that alone reads graph input `name` with `channels` channels, or None."""
    value = next((v for v in model.graph.inputs if v.name == name), None)
    if value is None or len(value.uses()) != 1:
        return None
    conv = value.uses()[0].node
    if conv.op_type != "Conv" or value.uses()[0].idx != 0 or len(conv.inputs) < 2 or \
            conv.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    w = _const(conv.inputs[1])
    if w is None or w.ndim != 4 or w.shape[1] * conv.attributes.get_int("group", 1) != channels:
        return None
    return conv


def align_input(model: ir.Model, conv: ir.Node, steps, offsets) -> tuple[str, float]:
    """Rewrite `conv` (from alignable) to read its input x, x_c = (p - offsets_c) * steps_c,
    as x' = (p - ZERO) * S; returns (x' name, S)."""
    graph, names = model.graph, UniqueNames(model.graph)
    steps, offsets = np.asarray(steps, np.float64), np.asarray(offsets, np.float64)
    step = float(np.exp(np.mean(np.log(np.abs(steps)))))  # S: the factors stay near 1
    scale = step / steps                                  # a_c (negative for a negative std)
    shift = (offsets - ZERO) * step                       # d_c
    x = conv.inputs[0]
    base = f"align{conv.name}"  # not "<layer>/...": the report maps runtime layers by prefix
    source = x
    pads = list(conv.attributes.get_ints("pads", [0] * 4))
    if any(pads):
        half = len(pads) // 2
        width = np.array([0, 0, *pads[:half], 0, 0, *pads[half:]], np.int64)
        padded = ir.Value(name=names.value(f"{base}/padded"), type=x.type)
        graph.insert_before(conv, ir.Node("", "Pad", [x, add_initializer(
            graph, names, f"{base}/pads", width)], outputs=[padded],
            name=names.node(f"{base}/pad")))
        source = padded
        conv.attributes["pads"] = ir.AttrInt64s("pads", [0] * len(pads))
    scaled = ir.Value(name=names.value(f"{base}/scaled"), type=x.type)
    aligned = ir.Value(name=names.value(f"{base}/pixels"), type=x.type, shape=None)
    per_channel = (1, -1, 1, 1)
    graph.insert_before(conv, [
        ir.Node("", "Mul", [source, add_initializer(graph, names, f"{base}/scale", scale.reshape(
            per_channel).astype(np.float32))], outputs=[scaled], name=names.node(f"{base}/mul")),
        ir.Node("", "Add", [scaled, add_initializer(graph, names, f"{base}/shift", shift.reshape(
            per_channel).astype(np.float32))], outputs=[aligned], name=names.node(base))])
    groups = conv.attributes.get_int("group", 1)
    w = _const(conv.inputs[1]).astype(np.float64)
    w = w / _input_channel(scale, w.shape, groups)
    has_bias = len(conv.inputs) > 2 and conv.inputs[2] is not None
    bias = _const(conv.inputs[2]).astype(np.float64) if has_bias else np.zeros(w.shape[0])
    bias = bias - (w * _input_channel(shift, w.shape, groups)).sum(axis=(1, 2, 3))
    conv.replace_input_with(0, aligned)
    conv.replace_input_with(1, add_initializer(graph, names, f"{conv.inputs[1].name}/aligned",
                                               w.astype(np.float32)))
    if not has_bias:
        conv.resize_inputs(3)
    conv.replace_input_with(2, add_initializer(graph, names, f"{base}/bias",
                                               bias.astype(np.float32)))
    return aligned.name, step


def _input_channel(values: np.ndarray, shape: tuple, groups: int) -> np.ndarray:
    """values[c] laid out as a Conv weight [Cout, Cin / groups, kh, kw] reads input channel c."""
    cout, cin_g = shape[0], shape[1]
    group = np.arange(cout) // (cout // groups)
    index = group[:, None] * cin_g + np.arange(cin_g)[None, :]
    return values[index][:, :, None, None]
