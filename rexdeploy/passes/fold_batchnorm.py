"""Fold inference-mode BatchNormalization into the Conv that feeds it.

Requires: every BatchNormalization is in inference mode (one output, training_mode 0); a
training-mode BN means the model was exported in training mode, and its statistics are not
the ones the model runs with.
Ensures: no BatchNormalization is fed by a Conv whose only consumer it is (with constant Conv
weight and BN parameters). The Conv takes over the BN's output value name, so names downstream
and statistics keyed by the BN output name stay valid.

    W' = W * gamma / sqrt(var + eps)    (per output channel)
    b' = (b - mean) * gamma / sqrt(var + eps) + beta

BNs that do not follow such a Conv stay in the graph and are listed in `kept` with the reason.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from rexdeploy.constants import const_array as _const


class FoldBatchNormPass(ir.passes.InPlacePass):
    """Conv -> BatchNormalization  ==>  Conv with folded weight and bias."""

    def __init__(self) -> None:
        super().__init__()
        self.folded: list[str] = []               # BN node names folded by the last call
        self.kept: list[tuple[str, str]] = []     # (BN node name, why it was not folded)

    def requires(self, model: ir.Model) -> None:
        training = [n.name for n in model.graph if n.op_type == "BatchNormalization"
                    and (len(n.outputs) > 1 or n.attributes.get_int("training_mode", 0))]
        if training:
            raise ir.passes.PreconditionError(
                f"BatchNormalization in training mode: {training[:5]}; export the model in "
                "eval mode")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.folded, self.kept = [], []
        for bn in list(model.graph):
            if bn.op_type != "BatchNormalization" or bn.domain != "":
                continue
            reason = _why_not(bn)
            if reason:
                self.kept.append((bn.name, reason))
                continue
            _fold(model.graph, bn.inputs[0].producer(), bn)
            self.folded.append(bn.name)
        return ir.passes.PassResult(model, bool(self.folded))

    def ensures(self, model: ir.Model) -> None:
        left = [n.name for n in model.graph if n.op_type == "BatchNormalization"
                and _why_not(n) is None]
        if left:
            raise ir.passes.PostconditionError(f"foldable BatchNormalization left: {left}")


def _why_not(bn: ir.Node) -> str | None:
    """None when `bn` can be folded into its producer, else a short reason."""
    conv = bn.inputs[0].producer() if bn.inputs[0] is not None else None
    if conv is None or conv.op_type != "Conv" or conv.domain != "":
        return f"follows {conv.op_type if conv else 'a graph input'}, not a Conv"
    out = conv.outputs[0]
    if out.is_graph_output() or len(out.uses()) != 1:
        return "the Conv output has other consumers"
    if any(_const(v) is None for v in bn.inputs[1:5]) or _const(conv.inputs[1]) is None:
        return "weights or BN parameters are not constant"
    if len(conv.inputs) > 2 and conv.inputs[2] is not None and _const(conv.inputs[2]) is None:
        return "the Conv bias is not constant"
    return None


def _fold(graph: ir.Graph, conv: ir.Node, bn: ir.Node) -> None:
    gamma, beta, mean, var = (_const(v).astype(np.float64) for v in bn.inputs[1:5])
    scale = gamma / np.sqrt(var + bn.attributes.get_float("epsilon", 1e-5))
    weight = _const(conv.inputs[1])
    has_bias = len(conv.inputs) > 2 and conv.inputs[2] is not None
    bias = _const(conv.inputs[2]).astype(np.float64) if has_bias else 0.0
    new_weight = weight * scale.reshape(-1, *[1] * (weight.ndim - 1))
    new_bias = (bias - mean) * scale + beta
    base = bn.outputs[0].name or conv.name or "conv"
    _set_input(graph, conv, 1, new_weight.astype(weight.dtype), f"{base}.weight")
    _set_input(graph, conv, 2, new_bias.astype(weight.dtype), f"{base}.bias")
    # The Conv output takes the BN output's place and name.
    bn_out, conv_out = bn.outputs[0], conv.outputs[0]
    name = bn_out.name
    bn_out.name = None
    ir.convenience.replace_all_uses_with(bn_out, conv_out, replace_graph_outputs=True)
    conv_out.name = name
    conv_out.shape = bn_out.shape or conv_out.shape
    conv_out.type = bn_out.type or conv_out.type
    params = bn.inputs[1:5]
    graph.remove(bn, safe=True)
    for value in params:
        _drop_if_unused(graph, value)


def _set_input(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, name: str) -> None:
    """Give `node` a fresh initializer as input `index` (the old one may be shared)."""
    name = _unique(graph, name)
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name),
                     shape=ir.Shape(array.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    graph.register_initializer(value)
    old = node.inputs[index] if index < len(node.inputs) else None
    if index < len(node.inputs):
        node.replace_input_with(index, value)
    else:
        node.resize_inputs(index + 1)
        node.replace_input_with(index, value)
    _drop_if_unused(graph, old)


def _drop_if_unused(graph: ir.Graph, value: ir.Value | None) -> None:
    if (value is not None and value.is_initializer() and not value.uses()
            and not value.is_graph_output() and not value.is_graph_input()):
        graph.initializers.pop(value.name)


def _unique(graph: ir.Graph, name: str) -> str:
    candidate, i = name, 1
    while candidate in graph.initializers:
        candidate, i = f"{name}_{i}", i + 1
    return candidate
