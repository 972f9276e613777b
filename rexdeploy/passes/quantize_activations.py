"""Insert QuantizeLinear -> DequantizeLinear on the planned activation tensors: per tensor, or per
channel (axis 1) on the inputs of depthwise convolutions (`ActivationPlan.channel_scale`).

Requires: every `ActivationPlan` names a non-constant value of the graph (graph input or node
output), 8 bits, a positive finite scale; every planned layer reads its `input` at input 0;
every planned attention MatMul is a node of the graph reading its two `inputs`, both planned.
Ensures: every planned layer whose input has an ActivationPlan (all K branches), and both inputs
of every planned attention MatMul, read it from a DequantizeLinear with the planned zero point
(0 unless `ActivationPlan.zero_point`), fed by a QuantizeLinear; no Q/DQ sits between a Pad and a
Conv (TensorRT refuses that; the frontend fuses zero pads into the Conv, so one left here means
a non-zero pad the plan should not have quantized).

Only these consumers of a tensor T are re-wired to T's DQ output:
  - the planned layers whose input is T (every order's branch), planned LSTM/GRU layers
    whose X is T, and planned activation x activation MatMuls (attention) reading T;
  - residual Adds: an Add with T on one side and a planned layer's output (its order node, the
    Add summing its orders, or a MatMul's bias Add) on the other side gets the DQ on the T side.
    That is TensorRT's rule: Q/DQ on the skip branch lets Conv+Add fuse in int8.
Every other consumer, and a graph output T, keep the float tensor.

A smoothed activation (`ActivationPlan.smooth`, calib_free.activations.smooth) is multiplied by that
per-channel factor (last axis) before its QuantizeLinear, and its DQ output feeds only the
planned layers (whose weights carry the inverse factor); residual Adds keep the float tensor.
So does a per-channel activation: its DQ output feeds only the depthwise layers planned on it.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from calib_free.plan import ActivationPlan, QuantPlan
from rexdeploy.passes.qdq_nodes import (
    FLOAT_DTYPES, UniqueNames, add_initializer, branches, dequantize_node,
    const_array, dq_zero_point_is_zero, layer_of, numpy_dtype, quantize_node)


class QuantizeActivationsPass(ir.passes.InPlacePass):
    """T -> QuantizeLinear -> DequantizeLinear -> (planned layers, residual Adds)."""

    def __init__(self, plan: QuantPlan):
        super().__init__()
        self.plan = plan

    def requires(self, model: ir.Model) -> None:
        tensors = [act.tensor for act in self.plan.activations]
        if len(set(tensors)) != len(tensors):
            raise ir.passes.PreconditionError("the plan lists an activation tensor twice")
        values = _values(model.graph)
        for act in self.plan.activations:
            value = values.get(act.tensor)
            if value is None:
                raise ir.passes.PreconditionError(f"activation {act.tensor!r} is not in the graph")
            if act.bits != 8:
                raise ir.passes.PreconditionError(
                    f"activation {act.tensor!r}: {act.bits} bits; the Q/DQ lowering writes int8/"
                    "uint8 activations only")
            if not (math.isfinite(act.scale) and act.scale > 0):
                raise ir.passes.PreconditionError(
                    f"activation {act.tensor!r}: scale {act.scale} is not positive and finite")
            if act.channel_scale is not None:
                cs = np.asarray(act.channel_scale)
                if cs.ndim != 1 or not (np.isfinite(cs).all() and (cs > 0).all()):
                    raise ir.passes.PreconditionError(
                        f"activation {act.tensor!r}: channel scales are not a vector of positive "
                        "finite numbers")
        nodes = {node.name: node for node in model.graph if node.name}
        planned = set(tensors)
        for a in self.plan.attention:
            node = nodes.get(a.name)
            if node is None or node.op_type != "MatMul" or \
                    tuple(v.name if v is not None else None for v in node.inputs) != a.inputs:
                raise ir.passes.PreconditionError(
                    f"attention MatMul {a.name!r} is not in the graph reading {a.inputs}")
            if not set(a.inputs) <= planned:
                raise ir.passes.PreconditionError(
                    f"attention MatMul {a.name!r}: an input has no ActivationPlan")
        for lp in self.plan.layers:
            for branch in branches(model.graph, lp.name):
                node, _ = branch_input(branch)
                if node.inputs[0] is None or node.inputs[0].name != lp.input:
                    raise ir.passes.PreconditionError(
                        f"layer {lp.name!r} reads {node.inputs[0] and node.inputs[0].name!r}, "
                        f"the plan says {lp.input!r}")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        names = UniqueNames(graph)
        values = _values(graph)
        planned = {lp.name for lp in self.plan.layers}
        modified = False
        for act in self.plan.activations:
            value = values[act.tensor]
            targets = _targets(graph, value, act, self.plan, planned)
            if not targets:
                continue
            dq_out = _insert_qdq(graph, value, act, names)
            for node, index in targets:
                node.replace_input_with(index, dq_out)
            modified = True
        return ir.passes.PassResult(model, modified)

    def ensures(self, model: ir.Model) -> None:
        nodes = {node.name: node for node in model.graph if node.name}
        for a in self.plan.attention:
            node = nodes.get(a.name)
            for value in (node.inputs if node is not None else [None]):
                act = self.plan.activation(value.name) if value is not None else None
                problem = _activation_problem(value, act.zero_point if act else 0)
                if problem:
                    raise ir.passes.PostconditionError(f"attention MatMul {a.name!r}: {problem}")
        for lp in self.plan.layers:
            act = self.plan.activation(lp.input)
            if act is None:
                continue
            for branch in branches(model.graph, lp.name):
                node, _ = branch_input(branch)
                problem = _activation_problem(node.inputs[0], act.zero_point)
                if problem:
                    raise ir.passes.PostconditionError(f"{node.name!r}: {problem}")
        for node in model.graph:
            if node.op_type != "Conv" or node.inputs[0] is None:
                continue
            dq = node.inputs[0].producer()
            q = dq.inputs[0].producer() if dq is not None and dq.op_type == "DequantizeLinear" \
                else None
            if q is not None and q.op_type == "QuantizeLinear":
                pad = q.inputs[0].producer()
                if pad is not None and pad.op_type == "Pad":
                    raise ir.passes.PostconditionError(
                        f"Q/DQ between Pad {pad.name!r} and Conv {node.name!r}: TensorRT refuses "
                        "it; fuse the pad into the Conv (FusePadIntoConvPass) or keep "
                        f"{q.inputs[0].name!r} float")


def _targets(graph: ir.Graph, value: ir.Value, act: ActivationPlan, plan: QuantPlan,
             planned: set[str]) -> list[tuple[ir.Node, int]]:
    """(consumer, input index) pairs of `value` (planned as `act`) that get its dequantized
    version."""
    targets = []
    for lp in plan.layers:
        if lp.input == value.name:
            targets += [branch_input(node) for node in branches(graph, lp.name)]
    recurrent = {rp.name for rp in plan.recurrent if rp.input == value.name}
    targets += [(node, index) for node, index in value.uses()
                if index == 0 and node.name in recurrent]
    attention = {a.name: a.inputs for a in plan.attention if value.name in a.inputs}
    targets += [(node, index) for node, index in value.uses()
                if node.name in attention and attention[node.name][index] == value.name]
    if act.smooth is not None or act.channel_scale is not None:
        # x / s, and per-channel codes, are meant for the planned layers only
        return list(dict.fromkeys(targets))
    for node, index in value.uses():
        if node.op_type != "Add" or node.domain != "" or len(node.inputs) != 2 \
                or layer_of(node) is not None:  # an Add summing orders or adding a bias
            continue
        other = node.inputs[1 - index]
        if other is not None and other is not value and _is_layer_output(other, planned):
            targets.append((node, index))
    return list(dict.fromkeys(targets))


def branch_input(branch: ir.Node) -> tuple[ir.Node, int]:
    """(node, input index) that reads a branch's activation: the branch itself, or the layer's
    own node in front of it: the Gather of a compact depthwise order (rexdeploy.role "gather")
    or the Mul by balanced columns' scale ("scale")."""
    x = branch.inputs[0]
    producer = x.producer() if x is not None else None
    tagged = layer_of(producer) if producer is not None else None
    if tagged is not None and tagged[1] in ("gather", "scale") and \
            tagged[0] == (layer_of(branch) or ("",))[0]:
        return producer, 0
    return branch, 0


def _is_layer_output(value: ir.Value, planned: set[str]) -> bool:
    producer = value.producer()
    if producer is None:
        return False
    tagged = layer_of(producer)
    return tagged[0] in planned if tagged else producer.name in planned


def _insert_qdq(graph: ir.Graph, value: ir.Value, act: ActivationPlan,
                names: UniqueNames) -> ir.Value:
    """Q/DQ nodes right after `value`'s producer; returns the DQ output."""
    dtype = value.dtype if value.dtype in FLOAT_DTYPES else ir.DataType.FLOAT
    qdq_scale = act.qdq_scale
    scale = add_initializer(graph, names, f"{value.name}/scale",
                            qdq_scale.astype(numpy_dtype(dtype)))
    zero = add_initializer(graph, names, f"{value.name}/zero_point",
                           np.full(qdq_scale.shape, act.zero_point,
                                   np.int8 if act.signed else np.uint8))
    axis = 1 if qdq_scale.ndim else None
    head = []
    source = value
    if act.smooth is not None:
        factor = add_initializer(graph, names, f"{value.name}/smooth",
                                 np.asarray(act.smooth, numpy_dtype(dtype)))
        out = ir.Value(name=names.value(f"{value.name}/smoothed"), shape=value.shape,
                       type=ir.TensorType(dtype))
        mul = ir.Node("", "Mul", [value, factor], outputs=[out],
                      name=names.node(f"{value.name}/smooth"))
        head, source = [mul], out
    q = quantize_node(names.node(f"{value.name}/QuantizeLinear"), source, scale, zero,
                      out_name=names.value(f"{value.name}/quantized"), axis=axis)
    dq = dequantize_node(names.node(f"{value.name}/DequantizeLinear"), q.outputs[0], scale, zero,
                         axis=axis, out_name=names.value(f"{value.name}/dequantized"),
                         out_dtype=dtype, shape=value.shape)
    producer = value.producer()
    nodes = head + [q, dq]
    if producer is not None:
        graph.insert_after(producer, nodes)
    else:
        first = next(iter(graph), None)
        if first is None:
            graph.extend(nodes)
        else:
            graph.insert_before(first, nodes)
    return dq.outputs[0]


def _activation_problem(value: ir.Value | None, zero_point: int = 0) -> str | None:
    dq = value.producer() if value is not None else None
    if dq is None or dq.op_type != "DequantizeLinear":
        return "activation input does not come from DequantizeLinear"
    if zero_point == 0 and not dq_zero_point_is_zero(dq):
        return "activation zero point is not 0"
    if zero_point and not _zero_point_is(dq, zero_point):
        return f"activation zero point is not the planned {zero_point}"
    q = dq.inputs[0].producer()
    if q is None or q.op_type != "QuantizeLinear":
        return "activation DequantizeLinear is not fed by QuantizeLinear"
    return None


def _zero_point_is(dq: ir.Node, zero_point: int) -> bool:
    zp = const_array(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] is not None else None
    return zp is not None and zp.dtype == np.uint8 and bool(np.all(zp == zero_point))


def _values(graph: ir.Graph) -> dict[str, ir.Value]:
    """Non-constant values by name: graph inputs and node outputs."""
    values = {v.name: v for v in graph.inputs if not v.is_initializer()}
    for node in graph:
        if node.op_type != "Constant":
            values.update((v.name, v) for v in node.outputs)
    return values
