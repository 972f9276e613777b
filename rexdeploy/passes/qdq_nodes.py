"""Building blocks for the Q/DQ lowering passes: unique names, constants, Q/DQ nodes, layer tags.

Every node the lowering creates for a planned layer carries two `metadata_props` (serialised
into the ONNX NodeProto, ignored by runtimes):
    rexdeploy.layer = the plan's layer name (the original ONNX node name)
    rexdeploy.role  = "order<k>" (the k-th weight order's Conv/Gemm/MatMul, k = 1..K),
                      "sum" (an Add summing the orders) or "bias" (a MatMul's bias Add)
so the later passes, `summarize` and the backends' reports can find a layer's K branches.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from rexdeploy.constants import const_array

LAYER_KEY = "rexdeploy.layer"
ROLE_KEY = "rexdeploy.role"

# DequantizeLinear-21 outputs these float types; the weight/activation keeps its own.
FLOAT_DTYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


class UniqueNames:
    """Hands out value and node names not yet used in `graph` (suffix _1, _2, ... on clashes)."""

    def __init__(self, graph: ir.Graph):
        self._values = {v.name for v in graph.inputs} | set(graph.initializers)
        self._nodes: set[str] = set()
        for node in graph:
            self._nodes.add(node.name or "")
            self._values.update(v.name for v in node.outputs)

    def value(self, base: str) -> str:
        return self._take(base, self._values)

    def node(self, base: str) -> str:
        return self._take(base, self._nodes)

    @staticmethod
    def _take(base: str, used: set[str]) -> str:
        name, i = base, 0
        while name in used:
            i += 1
            name = f"{base}_{i}"
        used.add(name)
        return name


def add_initializer(graph: ir.Graph, names: UniqueNames, base: str, array) -> ir.Value:
    """A new initializer holding `array` (numpy, ml_dtypes included), named after `base`."""
    name = names.value(base)
    tensor = ir.tensor(array, name=name)
    value = ir.Value(name=name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype),
                     const_value=tensor)
    graph.register_initializer(value)
    return value


def value_dtype(value: ir.Value) -> ir.DataType | None:
    """A value's element type, read from its constant when the value carries no type."""
    if value.dtype is not None:
        return value.dtype
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.dtype


def numpy_dtype(dtype: ir.DataType | None):
    """numpy (or ml_dtypes) type for a float ONNX dtype; float32 when unknown."""
    return (dtype or ir.DataType.FLOAT).numpy()


def dequantize_node(name: str, x: ir.Value, scale: ir.Value, zero_point: ir.Value | None = None,
                    *, axis: int | None = None, block_size: int | None = None,
                    out_name: str | None = None, out_dtype: ir.DataType | None = None,
                    shape: ir.Shape | None = None) -> ir.Node:
    """DequantizeLinear(x, scale[, zero_point]); `axis`/`block_size` for per-channel/per-block."""
    attrs = []
    if axis is not None:
        attrs.append(ir.AttrInt64("axis", axis))
    if block_size:
        attrs.append(ir.AttrInt64("block_size", block_size))
    out = ir.Value(name=out_name, shape=shape, type=ir.TensorType(out_dtype or scale.dtype))
    inputs = [x, scale] + ([zero_point] if zero_point is not None else [])
    return ir.Node("", "DequantizeLinear", inputs, attrs, outputs=[out], name=name)


def quantize_node(name: str, x: ir.Value, scale: ir.Value, zero_point: ir.Value,
                  *, out_name: str | None = None, axis: int | None = None) -> ir.Node:
    """QuantizeLinear(x, scale, zero_point), per tensor or (`axis`) per channel: output dtype is
    the zero point's."""
    out = ir.Value(name=out_name, shape=x.shape, type=ir.TensorType(zero_point.dtype))
    attrs = [ir.AttrInt64("axis", axis)] if axis is not None else []
    return ir.Node("", "QuantizeLinear", [x, scale, zero_point], attrs, outputs=[out], name=name)


def tag(node: ir.Node, layer: str, role: str) -> None:
    node.metadata_props[LAYER_KEY] = layer
    node.metadata_props[ROLE_KEY] = role


def layer_of(node: ir.Node | None) -> tuple[str, str] | None:
    """(layer name, role) when `node` was created or claimed for a planned layer, else None."""
    if node is None or LAYER_KEY not in node.metadata_props:
        return None
    return node.metadata_props[LAYER_KEY], node.metadata_props.get(ROLE_KEY, "")


def branches(graph: ir.Graph, layer: str) -> list[ir.Node]:
    """The K compute nodes (Conv/Gemm/MatMul) of a planned layer, order 1 first.

    Falls back to the node named `layer` when the graph carries no tags (weights not lowered).
    """
    tagged = [n for n in graph if (layer_of(n) or ("", ""))[0] == layer
              and layer_of(n)[1].startswith("order")]
    if tagged:
        return sorted(tagged, key=lambda n: int(layer_of(n)[1][len("order"):]))
    return [n for n in graph if n.name == layer]


def dq_zero_point_is_zero(dq: ir.Node) -> bool:
    """True when a DequantizeLinear has no zero point or a constant all-zero one."""
    if len(dq.inputs) < 3 or dq.inputs[2] is None:
        return True
    zp = const_array(dq.inputs[2])
    return zp is not None and not np.asarray(zp, np.int32).any()

