"""Lower a float ONNX model and its QuantPlan to a Q/DQ ONNX model (docs/algorithms.md section 7).

    lower(model, plan, int4_matmul=False) -> ir.Model     a new model; the input is not changed
    summarize(model) -> dict                              op counts and Q/DQ placement, for
                                                          golden tests and the build report

Passes, in order: QuantizeWeightsPass (weights -> DequantizeLinear, orders as parallel branches),
QuantizeRecurrentPass (LSTM/GRU W and R -> DequantizeLinear), QuantizeActivationsPass (Q/DQ on
layer inputs and residual skip inputs), then opset >= 21 and IR >= 10, ONNX shape inference and
the ONNX checker. The lowering applies the plan and never re-decides it.
"""

from __future__ import annotations

import math
from collections import Counter

import onnx_ir as ir
from onnx_ir.passes.common import CheckerPass

from calib_free.plan import QuantPlan
from rexdeploy.passes.qdq_nodes import layer_of
from rexdeploy.passes.quantize_activations import QuantizeActivationsPass
from rexdeploy.passes.quantize_recurrent import QuantizeRecurrentPass
from rexdeploy.passes.shapes import QuietShapeInferencePass as ShapeInferencePass
from rexdeploy.passes.quantize_weights import QuantizeWeightsPass

OPSET = 21  # DequantizeLinear with block_size and INT4 codes
IR_VERSION = 10  # the IR that opset 21 requires; also carries node metadata_props


def lower(model: ir.Model, plan: QuantPlan, *, int4_matmul: bool = False,
          int4_weight_only: bool = False, sparse_form: str = "dense",
          table_dtype: str = "float32") -> ir.Model:
    """The Q/DQ model for `plan` applied to a copy of the float `model` (BN already folded).

    int4_matmul: store MatMul/Gemm codes of <= 4 bits as ONNX INT4 tensors (TensorRT INT4
    weight-only, OpenVINO compressed FullyConnected); Conv codes stay int8 tensors.
    int4_weight_only: INT4 tensors only where the layer's input stays float (TensorRT: INT4 is
    weight-only; a W4A8 MatMul/Gemm keeps its 4-bit codes in int8 tensors and runs int8).
    sparse_form: "dense" (zero rows) or "compact" (kept channels only, scattered back) for
    group-sparse orders.
    table_dtype: storage of lookup-table (PowerQuant) weights, which no backend keeps
    compressed: "float32" (OpenVINO) or "float16" (TensorRT), see QuantizeWeightsPass.
    """
    lowered = _at_least_opset(model.clone(), OPSET)
    lowered.ir_version = max(lowered.ir_version or 0, IR_VERSION)
    if sparse_form != "dense" and any(o.channels is not None for lp in plan.layers
                                      for o in lp.orders):
        ShapeInferencePass(strict_mode=False)(lowered)  # compact orders need output ranks
    # Called one by one rather than through a PassManager, which would wrap the passes'
    # Precondition/PostconditionError (the messages callers act on) in a generic PassError.
    for lowering_pass in (QuantizeWeightsPass(plan, int4_matmul=int4_matmul,
                                              int4_weight_only=int4_weight_only,
                                              sparse_form=sparse_form, table_dtype=table_dtype),
                          QuantizeRecurrentPass(plan),
                          QuantizeActivationsPass(plan),
                          ShapeInferencePass(),
                          CheckerPass(full_check=False)):
        lowering_pass(lowered)
    return lowered


def summarize(model: ir.Model) -> dict:
    """A stable, JSON-able summary of a lowered model.

    ops: op counts. layers: one line per planned layer, e.g.
    "Conv /stem/Conv: act=DQ(u8) w=DQ(i8,axis0) orders=1". residual_adds: the Adds with a DQ on
    one input, e.g. "Add /block/Add: in0=DQ(u8) in1=layer /block/Conv". float_layers: Conv/Gemm/
    MatMul left with float weights.
    """
    graph = model.graph
    layers: dict[str, list[ir.Node]] = {}
    float_layers = []
    for node in graph:
        tag = layer_of(node)
        if tag and tag[1].startswith("order"):
            layers.setdefault(tag[0], []).append(node)
        elif node.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose") and tag is None:
            float_layers.append(f"{node.op_type} {node.name}: act={_act(node.inputs[0])} "
                                f"w={_weight(node.inputs[1])}")
    lines = []
    for name, nodes in layers.items():
        weights = list(dict.fromkeys(_weight(n.inputs[1]) for n in nodes))
        acts = list(dict.fromkeys(_act(n.inputs[0]) for n in nodes))
        lines.append(f"{nodes[0].op_type} {name}: act={'+'.join(acts)} w={'+'.join(weights)} "
                     f"orders={len(nodes)}")
    return {
        "ops": dict(sorted(Counter(n.op_type for n in graph).items())),
        "layers": lines,
        "residual_adds": [line for node in graph if (line := _residual(node))],
        "float_layers": float_layers,
    }


def _residual(node: ir.Node) -> str | None:
    if node.op_type != "Add" or len(node.inputs) != 2 or layer_of(node) is not None:
        return None
    parts = []
    for i, value in enumerate(node.inputs):
        producer = value.producer() if value is not None else None
        tag = layer_of(producer) if producer is not None else None
        if producer is not None and producer.op_type == "DequantizeLinear":
            parts.append(f"in{i}={_act(value)}")
        elif tag is not None:
            parts.append(f"in{i}=layer {tag[0]}")
        else:
            parts.append(f"in{i}=float")
    if not any("=DQ" in p for p in parts):
        return None
    return f"Add {node.name}: {' '.join(parts)}"


def _act(value: ir.Value | None) -> str:
    dq = value.producer() if value is not None else None
    if dq is None or dq.op_type != "DequantizeLinear":
        return "float"
    return f"DQ({_short(_codes_dtype(dq))})"


def _weight(value: ir.Value | None) -> str:
    dq = value.producer() if value is not None else None
    if dq is None or dq.op_type != "DequantizeLinear":
        return "float"
    scale = dq.inputs[1]
    rank = scale.shape.rank() if scale is not None and scale.shape is not None else 0
    block = dq.attributes.get_int("block_size", 0)
    axis = dq.attributes.get_int("axis", 1)
    if rank == 0 or (not block and math.prod(d if isinstance(d, int) else 2
                                             for d in scale.shape) == 1):
        granularity = "tensor"
    elif block:
        granularity = f"axis{axis},block{block}"
    else:
        granularity = f"axis{axis}"
    return f"DQ({_short(_codes_dtype(dq))},{granularity})"


def _codes_dtype(dq: ir.Node) -> ir.DataType | None:
    """The integer type DequantizeLinear reads: its input's, else its zero point's."""
    for value in (dq.inputs[0], dq.inputs[2] if len(dq.inputs) > 2 else None):
        if value is not None and value.dtype is not None:
            return value.dtype
    return None


def _short(dtype: ir.DataType | None) -> str:
    return "?" if dtype is None else dtype.short_name()


def _at_least_opset(model: ir.Model, opset: int) -> ir.Model:
    """`model` at ai.onnx opset >= `opset` (converted with the ONNX version converter if older)."""
    key = "" if "" in model.opset_imports else "ai.onnx"
    have = model.opset_imports.get(key)
    if have is None:
        model.opset_imports[""] = opset
        return model
    if have >= opset:
        return model
    from onnx import version_converter

    return ir.from_proto(version_converter.convert_version(ir.to_proto(model), opset))
