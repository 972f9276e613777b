"""Find the quantizable layers of a float ONNX graph, and say why the others stay float.

    find_layers(model) -> (layers: list[LayerInfo], skipped: list[SkippedLayer])

A quantizable layer is a Conv with a constant weight, an ungrouped ConvTranspose with a constant
weight, a Gemm (transA=0) with a constant B, or a MatMul whose second input is a constant 2-D
matrix. Weight arrays are float32 in the ONNX layout; `out_axis` / `in_axis` say where the
output / input channels sit in that layout:

    Conv   [Cout, Cin/g, k...]   out_axis 0, in_axis 1
    ConvTranspose [Cin, Cout, k...] out_axis 1, in_axis 0 (group 1 only)
    Gemm   transB=1: [Cout, Cin] out_axis 0, in_axis 1;  transB=0: [Cin, Cout] out_axis 1, in_axis 0
    MatMul [Cin, Cout]           out_axis 1, in_axis 0

The analysis reads the graph and never changes it (missing shapes are inferred on a clone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from rexdeploy.constants import const_array as _const

from calib_free.plan import SkippedLayer
from rexdeploy.passes.qdq_nodes import FLOAT_DTYPES, value_dtype
from rexdeploy.passes.rotate import ROTATION_KEY

_COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True, eq=False)
class LayerInfo:
    """One quantizable Conv/Gemm/MatMul, as the graph holds it.

    bias: initializer name of the layer's bias (Conv input 2, Gemm C, or the constant of the Add
    that follows a MatMul), None if there is none; bias_array is it as float32 [Cout] (for Gemm
    already multiplied by beta). bias_node: the node holding the bias when it is not the layer
    itself (the MatMul's Add), else None.
    output: the layer's output value *after* its bias, i.e. the bias Add's output for MatMul+Add.
    macs: multiply-accumulates at batch 1 from the inferred shapes (0 when a dim is unknown).
    """

    name: str
    op: str
    weight: str
    weight_array: np.ndarray
    bias: str | None
    bias_array: np.ndarray | None
    input: str
    output: str
    groups: int
    out_axis: int
    in_axis: int
    out_channels: int
    in_channels: int
    macs: int
    kernel_shape: tuple[int, ...]
    bias_node: str | None = None
    strides: tuple[int, ...] = ()

    @property
    def outputs(self) -> int:
        """Output elements at batch 1 (0 when the MACs are unknown)."""
        if self.op == "ConvTranspose":  # MACs = inputs x Cout x kernel; outputs = inputs x strides
            return self.inputs // max(self.in_channels, 1) * self.out_channels * \
                int(np.prod(self.strides or (1,)))
        per_output = int(np.prod(self.weight_array.shape[1:])) if self.op == "Conv" \
            else self.in_channels
        return self.macs // per_output if per_output else 0

    @property
    def inputs(self) -> int:
        """Input elements it reads at batch 1, from its output size and strides (same-padded
        convolutions; 0 when the MACs are unknown)."""
        if self.op == "ConvTranspose":
            per_input = self.out_channels * int(np.prod(self.kernel_shape or (1,)))
            return self.macs // per_input if per_input else 0
        return self.outputs // max(self.out_channels, 1) * self.in_channels * \
            int(np.prod(self.strides or (1,)))

    def cost(self, errors, bits_w: int, bits_a: int):
        """The budget allocator's view of this layer (calib_free.weights.sparse.LayerCost)."""
        from calib_free.weights.sparse import LayerCost

        return LayerCost(self.name, errors, self.macs, bits_w, bits_a,
                         int(self.weight_array.size), self.outputs, self.inputs)


# Every op that does multiply-accumulate work: each is either quantized or listed as kept float
# with its reason and multiply-adds (coverage by count and by MACs never leaves one out).
COMPUTE_OPS = _COMPUTE + ("LSTM", "GRU", "RNN", "Einsum")
_RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def find_layers(model: ir.Model, dims: dict[str, int] | None = None
                ) -> tuple[list[LayerInfo], list[SkippedLayer]]:
    """The quantizable layers of the main graph, in graph order, and every other compute op
    (COMPUTE_OPS, subgraphs of If/Loop/Scan included) kept float with its reason and MACs.
    dims: values of named dynamic dims (--dim) the multiply-adds are counted at; a layer a
    dynamic dim without one reaches counts 0."""
    layers: list[LayerInfo] = []
    skipped: list[SkippedLayer] = []
    shapes = _output_shapes(model, dims or {})
    gates = squeeze_excite_layers(model)
    for node in model.graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        skipped += _subgraph_layers(node)
        if node.op_type not in COMPUTE_OPS:
            continue
        reason = _why_not(node) or gates.get(node.name)
        if reason:
            skipped.append(SkippedLayer(node.name, node.op_type, reason,
                                        skipped_macs(node, shapes)))
            continue
        layers.append(_layer_info(node, shapes))
    return layers, skipped


# Ops a squeeze-and-excitation branch passes through between its global pooling and the Mul
# that gates the feature map (activations, a hard sigmoid written as Add/Clip/Div by a constant)
_SE_CHAIN = ("Conv", "Gemm", "MatMul", "Relu", "Sigmoid", "HardSigmoid", "HardSwish", "Clip",
             "Mul", "Add", "Div", "Sub", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
SE_REASON = ("squeeze-and-excitation gate (a layer on a globally pooled tensor whose output "
             "gates a feature map): int8 there errs most where the gate turns channels off, and "
             "it does few multiply-adds; kept in float")


def squeeze_excite_layers(model: ir.Model) -> dict[str, str]:
    """node name -> SE_REASON for the compute layers of squeeze-and-excitation branches: from a
    GlobalAveragePool (or a ReduceMean keeping dims) through single-consumer activations and
    1x1 layers to a Mul whose other input is the feature map the branch was pooled from (or
    an ancestor). PP-OCRv4's recogniser: 4 such layers, 1.7 dB with them int8, 13.3 float."""
    out: dict[str, str] = {}
    for node in model.graph:
        if node.op_type not in ("GlobalAveragePool", "ReduceMean") or not node.outputs:
            continue
        if node.op_type == "ReduceMean" and not node.attributes.get_int("keepdims", 1):
            continue
        chain, value = [], node.outputs[0]
        while True:
            uses = list(value.uses())
            if len(uses) != 1 or value.is_graph_output():
                break
            nxt, index = uses[0]
            other = [v for i, v in enumerate(nxt.inputs) if i != index and v is not None]
            if nxt.op_type == "Mul" and other and all(v.const_value is None for v in other):
                if any(n.op_type in _COMPUTE for n in chain):  # the gate: a layer makes it
                    out.update({n.name: SE_REASON for n in chain if n.op_type in _COMPUTE})
                break
            if nxt.op_type not in _SE_CHAIN or any(v.const_value is None and
                                                  v.producer() is not None and
                                                  v.producer().op_type != "Constant"
                                                  for v in other):
                break
            chain.append(nxt)
            value = nxt.outputs[0]
    return out


def _subgraph_layers(node: ir.Node) -> list[SkippedLayer]:
    """The compute ops inside `node`'s subgraphs (If branches, Loop/Scan bodies), recursively:
    only the main graph is quantized."""
    out = []
    for attr in node.attributes.values():
        graphs = [attr.value] if attr.type == ir.AttributeType.GRAPH else \
            list(attr.value) if attr.type == ir.AttributeType.GRAPHS else []
        for graph in graphs:
            for inner in graph:
                if inner.op_type in COMPUTE_OPS and inner.domain in ("", "ai.onnx"):
                    out.append(SkippedLayer(
                        inner.name or f"{node.name}/{attr.name}/{inner.op_type}", inner.op_type,
                        f"inside the {attr.name} subgraph of {node.op_type} {node.name}: only "
                        "the main graph is quantized; kept in float"))
                out += _subgraph_layers(inner)
    return out


def skipped_macs(node: ir.Node, shapes: dict[str, tuple]) -> int:
    """Multiply-adds at batch 1 of a compute op kept float (0 where a shape is unknown)."""
    op = node.op_type
    out = shapes.get(node.outputs[0].name) if node.outputs else None
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if op in _RECURRENT_GATES:
        return _recurrent_macs(node, shapes)
    if op in ("Conv", "ConvTranspose") and weight is not None and weight.shape is not None:
        w = [d for d in weight.shape]
        if not all(isinstance(d, int) for d in w):
            return 0
        if op == "Conv":
            return _macs(out, w[0], int(np.prod(w[1:])))
        # ConvTranspose: every input element meets Cout/g x kernel weights
        x = shapes.get(node.inputs[0].name) or _shape(node.inputs[0])
        per_input = int(np.prod(w[1:]))
        return _macs(x, w[0], per_input) if x else 0
    if op in ("MatMul", "Gemm") and weight is not None:
        k = _shape(node.inputs[0])
        if not k or not isinstance(k[-1], int):
            return 0
        reduce = k[0] if op == "Gemm" and node.attributes.get_int("transA", 0) else k[-1]
        return _macs(out, 0, int(reduce)) if out else 0
    return 0


def _recurrent_macs(node: ir.Node, shapes: dict[str, tuple]) -> int:
    """LSTM/GRU/RNN: gates x hidden x (input + hidden) per step and direction, x steps."""
    w = _shape(node.inputs[1]) if len(node.inputs) > 1 else None
    x = shapes.get(node.inputs[0].name) or _shape(node.inputs[0])
    if not w or not x or not all(isinstance(d, int) for d in w):
        return 0
    directions, gates_hidden, inputs = w
    hidden = gates_hidden // _RECURRENT_GATES[node.op_type]
    layout = node.attributes.get_int("layout", 0)
    steps = x[1] if layout else x[0]
    if not isinstance(steps, int):
        return 0
    return int(steps * directions * gates_hidden * (inputs + hidden))


def _shape(value: ir.Value | None) -> tuple | None:
    if value is None or value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else str(d) for d in value.shape)


def matmul_bias(value: ir.Value, channels: int) -> tuple[ir.Node, int] | None:
    """(Add node, index of its constant input) when `value` (a MatMul's output) flows only into
    an Add with a constant of `channels` values along the last axis, i.e. a Linear's bias."""
    uses = list(value.uses())
    if value.is_graph_output() or len(uses) != 1:
        return None
    add, index = uses[0]
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
        return None
    other = add.inputs[1 - index]
    array = _const(other)
    if array is None or array.size != channels or not value_dtype(other).is_floating_point():
        return None
    if array.ndim == 0 or array.shape[-1] != channels:
        return None
    return add, 1 - index


def _why_not(node: ir.Node) -> str | None:
    """Why `node` (Conv/Gemm/MatMul) cannot be quantized, or None when it can."""
    op = node.op_type
    if ROTATION_KEY in node.metadata_props:
        return (f"Hadamard rotation of {node.metadata_props[ROTATION_KEY]}'s input (--rotate): "
                "a float MatMul by a fixed orthogonal matrix, so that layer's int8 input has "
                "no outlier channels; kept in float")
    if op in _RECURRENT_GATES:  # rexdeploy/planning/recurrent.py decides, and words the reason
        return f"recurrent layer ({op}); kept in float"
    if op == "ConvTranspose" and node.attributes.get_int("group", 1) != 1:
        return ("grouped ConvTranspose is not quantized (its weight's per-channel axis holds "
                "Cout/groups channels, not one per output channel); kept in float")
    if op == "Einsum":
        return "Einsum is not quantized; kept in float"
    if op == "Gemm" and node.attributes.get_int("transA", 0):
        return "Gemm with transA=1 is not supported yet; kept in float"
    if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
        return "missing input; kept in float"
    data, weight = node.inputs[0], node.inputs[1]
    if op == "MatMul" and _const(data) is not None and _const(weight) is None:
        return "the constant is the first input (W @ x); not supported yet; kept in float"
    array = _const(weight)
    if array is None:
        producer = weight.producer()
        if producer is not None and producer.op_type == "DequantizeLinear":
            return "already quantized (weight comes from DequantizeLinear); kept as is"
        if producer is not None and all(_const(v) is not None for v in producer.inputs if v):
            return (f"weight is computed from constants by {producer.op_type} (fold constants "
                    "first); kept in float")
        if op in ("MatMul", "Gemm"):
            return "both inputs are activations; kept in float"
        source = "a graph input" if producer is None else f"computed by {producer.op_type}"
        return f"weight is not a constant ({source}); kept in float"
    dtype = value_dtype(weight)
    if dtype is not None and not dtype.is_floating_point():
        return f"weight dtype {dtype.name} is not floating point; kept as is"
    if dtype is not None and dtype not in FLOAT_DTYPES:
        return (f"{dtype.name} weights cannot be dequantized in ONNX (DequantizeLinear outputs "
                "float32/float16/bfloat16); kept in float")
    if op == "MatMul" and array.ndim != 2:
        return (f"weight has rank {array.ndim}; only 2-D MatMul weights are quantized; "
                "kept in float")
    if op.startswith("Conv") and array.ndim < 3:
        return f"weight has rank {array.ndim}; kept in float"
    if op.startswith("Conv") and len(node.inputs) > 2 and node.inputs[2] is not None \
            and _const(node.inputs[2]) is None:
        return "bias is not a constant; kept in float"
    return None


def _layer_info(node: ir.Node, shapes: dict[str, tuple]) -> LayerInfo:
    op = node.op_type
    out_shape = shapes.get(node.outputs[0].name)
    weight = node.inputs[1]
    array = _const(weight).astype(np.float32)
    groups = node.attributes.get_int("group", 1) if op == "Conv" else 1
    if op == "Conv":
        out_axis, in_axis = 0, 1
    elif op == "Gemm" and node.attributes.get_int("transB", 0):
        out_axis, in_axis = 0, 1
    else:
        out_axis, in_axis = 1, 0
    cout = array.shape[out_axis]
    cin = array.shape[in_axis] * groups
    kernel = tuple(int(k) for k in array.shape[2:]) if op.startswith("Conv") else ()
    bias, bias_array, bias_node = None, None, None
    output = node.outputs[0].name
    if op in ("Conv", "ConvTranspose", "Gemm") and len(node.inputs) > 2 \
            and node.inputs[2] is not None:
        bias_array = _per_channel(_const(node.inputs[2]), cout)
        if op == "Gemm" and bias_array is not None:
            bias_array = bias_array * node.attributes.get_float("beta", 1.0)
        bias = node.inputs[2].name if bias_array is not None else None
    elif op == "MatMul":
        match = matmul_bias(node.outputs[0], cout)
        if match is not None:
            add, index = match
            bias, bias_node, output = add.inputs[index].name, add.name, add.outputs[0].name
            bias_array = _per_channel(_const(add.inputs[index]), cout)
    if op == "ConvTranspose":  # every input element meets Cout x kernel weights
        x = shapes.get(node.inputs[0].name) or _shape(node.inputs[0])
        macs = _macs(x, cin, cout * int(np.prod(kernel)))
    else:
        macs = _macs(out_shape, cout, int(np.prod(array.shape[1:])) if op == "Conv" else cin)
    strides = tuple(node.attributes.get_ints("strides", [1] * len(kernel))) \
        if op.startswith("Conv") else ()
    return LayerInfo(node.name, op, weight.name, array, bias, bias_array, node.inputs[0].name,
                     output, groups, out_axis, in_axis, cout, cin, macs, kernel, bias_node,
                     strides)


def _macs(shape: tuple | None, cout: int, per_output: int) -> int:
    """MACs at batch 1: output elements (dim 0 taken as batch) x MACs per output element."""
    if not shape:
        return 0
    dims = list(shape[1:]) if len(shape) > 1 else [cout]
    if not all(isinstance(d, int) for d in dims):
        return 0
    return int(np.prod(dims, dtype=np.int64)) * per_output


def _output_shapes(model: ir.Model, dims: dict[str, int] | None = None) -> dict[str, tuple]:
    """Static-or-symbolic output shapes of the compute nodes, inferring them on a clone when the
    graph does not carry them (the export often has no intermediate value_info)."""
    def collect(graph: ir.Graph) -> dict[str, tuple]:
        found = {}
        for n in graph:
            if n.op_type not in COMPUTE_OPS:
                continue
            for v in (n.outputs[0], n.inputs[0] if n.inputs else None):
                if v is not None and v.shape is not None:
                    found[v.name] = tuple(d if isinstance(d, int) else str(d) for d in v.shape)
        return found

    shapes = collect(model.graph)
    symbolic = any(isinstance(d, str) for s in shapes.values() for d in s)
    if dims and symbolic or any(n.op_type in COMPUTE_OPS and n.outputs[0].name not in shapes
                                for n in model.graph):
        from rexdeploy.passes.shapes import QuietShapeInferencePass as ShapeInferencePass

        clone = model.clone()
        if dims:  # the example values of the named dims, so the MACs they scale are counted
            for value in clone.graph.inputs:
                if value.shape is not None:
                    value.shape = ir.Shape([dims.get(str(d), d) if not isinstance(d, int)
                                            else d for d in value.shape])
            for node in clone.graph:
                for out in node.outputs:
                    if not out.is_graph_output():
                        out.shape = None
        ShapeInferencePass(strict_mode=False)(clone)
        shapes = (shapes | collect(clone.graph)) if dims else (collect(clone.graph) | shapes)
    return shapes


def _per_channel(array: np.ndarray | None, channels: int) -> np.ndarray | None:
    """A bias as float32 [channels] (broadcasting a single value), None when not per channel."""
    if array is None:
        return None
    array = np.asarray(array, np.float32)
    if array.size == 1:
        return np.full(channels, array.ravel()[0], np.float32)
    if array.size == channels and array.shape[-1] == channels:
        return array.reshape(channels)
    return None
