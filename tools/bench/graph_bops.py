"""Bit-operations of a deployed graph, read from the OpenVINO model itself (any tool's output).

    from graph_bops import graph_bops
    base = graph_bops(["float.onnx"])["macs"]
    info = graph_bops(["model.xml"], base)  # or a Q/DQ .onnx; several files (ensemble) add up
    info["ratio"]                           # BOPs / the float model's MACs at 32 x 32 bits

Every Convolution, GroupConvolution and MatMul counts MACs x b_w x b_a, where a bit width is
found by walking up the input through the ops a quantizer inserts (Convert, Multiply, Subtract,
Reshape, Transpose, ...) to what made it low-precision: a FakeQuantize (bits = ceil(log2(levels)))
or an integer tensor of at most 8 bits (a constant counts the bits its codes really span, so int4
codes stored in int8 count 4; a non-constant counts its type's width). Nothing found: 32 bits
(float). An activation x activation MatMul with both inputs quantized counts 8 x 8, like any
other. The same rule for rexdeploy's artifacts and every peer's makes the x-axis of the Pareto
plot one scale: 1.0 is the float graph, W8A8 everywhere is 64/1024 = 0.0625.
"""

from __future__ import annotations

import math

import numpy as np

COMPUTE = ("Convolution", "GroupConvolution", "MatMul", "ScaledDotProductAttention")
# ops between a low-precision tensor and the layer that reads it (DQ chains, weight layouts)
PASS = {"Convert", "Multiply", "Subtract", "Reshape", "Transpose", "Unsqueeze", "Squeeze",
        "Broadcast", "Concat"}
INT_BITS = {"i4": 4, "u4": 4, "i8": 8, "u8": 8, "i2": 2, "u2": 2, "u1": 1, "nf4": 4}
MAX_DEPTH = 8


def code_bits(values: np.ndarray) -> int:
    """Bits the integer codes span: ceil(log2(max - min + 1)), at least 1."""
    values = np.asarray(values)
    if values.size == 0:
        return 1
    span = int(values.max()) - int(values.min()) + 1
    return max(1, math.ceil(math.log2(span)))


def _type_bits(output) -> int | None:
    return INT_BITS.get(output.get_element_type().get_type_name())


def input_bits(node, depth: int = 0) -> int:
    """Bits of the tensor a compute node reads on this input's producer `node` (32 = float)."""
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        levels = int(node.get_levels())
        return max(1, math.ceil(math.log2(levels))) if levels > 1 else 32
    if kind == "Constant":
        bits = _type_bits(node.output(0))
        if bits is None:
            return 32
        try:
            return min(bits, code_bits(node.get_data()))
        except (RuntimeError, TypeError, ValueError):  # packed sub-byte types
            return bits
    if kind == "Convert":
        bits = _type_bits(node.input_value(0))
        if bits is not None:
            return min(bits, input_bits(node.input_value(0).get_node(), depth + 1))
    if kind not in PASS or depth >= MAX_DEPTH:
        bits = _type_bits(node.output(0))
        return bits if bits is not None else 32
    values = node.input_values()
    if kind in ("Multiply", "Subtract", "Reshape", "Transpose", "Unsqueeze", "Squeeze",
                "Broadcast"):
        values = values[:1]  # the data; not a zero point, a scale or a shape
    found = [input_bits(v.get_node(), depth + 1) for v in values]
    return min(found) if found else 32


def layer_macs(node) -> int:
    """Multiply-accumulates of one Convolution / GroupConvolution / MatMul /
    ScaledDotProductAttention (OpenVINO's fused attention: Q K^T and the product with V), static
    shapes."""
    out = int(np.prod(list(node.get_output_shape(0))))
    kind = node.get_type_name()
    if kind == "Convolution":  # weights [Cout, Cin, k...]
        w = list(node.get_input_shape(1))
        return out * int(np.prod(w[1:]))
    if kind == "GroupConvolution":  # weights [G, Cout/G, Cin/G, k...]
        w = list(node.get_input_shape(1))
        return out * int(np.prod(w[2:]))
    if kind == "ScaledDotProductAttention":  # q [.., L, D] k [.., S, D] v [.., S, Dv]: 2 MatMuls
        q, k, v = (list(node.get_input_shape(i)) for i in range(3))
        return int(np.prod(q[:-1])) * k[-2] * (q[-1] + v[-1])
    a = list(node.get_input_shape(0))
    transpose_a = bool(node.get_attributes().get("transpose_a", False))
    k = a[-2] if transpose_a and len(a) > 1 else a[-1]
    return out * int(k)


def graph_bops(paths: list[str], float_macs: int | None = None) -> dict:
    """{"bops", "macs", "ratio", "layers": [(name, kind, macs, b_w, b_a)]} over the compute
    layers of every model in `paths` (read by OpenVINO, not compiled). ratio = bops /
    (float_macs x 1024): pass the float model's MACs, since an expansion or an ensemble runs
    more MACs than the model it stands for (default: this graph's own MACs)."""
    import openvino as ov

    core = ov.Core()
    layers = []
    for path in paths:
        model = core.read_model(path)
        for op in model.get_ordered_ops():
            if op.get_type_name() not in COMPUTE:
                continue
            macs = layer_macs(op)
            bits_a = input_bits(op.input_value(0).get_node())
            bits_w = input_bits(op.input_value(1).get_node())
            layers.append((op.get_friendly_name(), op.get_type_name(), macs, bits_w, bits_a))
    bops = float(sum(m * bw * ba for _, _, m, bw, ba in layers))
    macs = int(sum(m for _, _, m, _, _ in layers))
    base = float_macs or macs
    return {"bops": bops, "macs": macs, "ratio": bops / (base * 1024.0) if base else float("nan"),
            "layers": layers}
