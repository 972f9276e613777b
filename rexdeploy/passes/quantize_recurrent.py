"""Replace the float W and R of each planned LSTM/GRU by DequantizeLinear of int8 codes.

Requires: every `RecurrentPlan` names an LSTM/GRU node of the main graph reading the plan's W
and R initializers at inputs 1 and 2, with codes of their shapes.
Ensures: those inputs come from a DequantizeLinear of an INT8 constant with a blocked scale
[D, G*H, 1] (one per direction and gate row, shared by W and R: oneDNN's int8 RNN takes one);
X's Q/DQ is QuantizeActivationsPass's (the plan carries X's ActivationPlan).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from calib_free.plan import QuantPlan
from rexdeploy.passes.qdq_nodes import UniqueNames, add_initializer, dequantize_node


class QuantizeRecurrentPass(ir.passes.InPlacePass):
    """W, R (float) -> DequantizeLinear(int8 codes, per-row scale) -> LSTM/GRU."""

    def __init__(self, plan: QuantPlan):
        super().__init__()
        self.plan = plan

    def requires(self, model: ir.Model) -> None:
        nodes = {node.name: node for node in model.graph}
        for rp in self.plan.recurrent:
            node = nodes.get(rp.name)
            if node is None or node.op_type != rp.op:
                raise ir.passes.PreconditionError(f"{rp.op} {rp.name!r} is not in the graph")
            for index, (name, codes) in enumerate(zip(rp.weights, (rp.w_codes, rp.r_codes)), 1):
                value = node.inputs[index]
                if value is None or value.name != name or value.const_value is None or \
                        tuple(value.const_value.shape) != codes.shape:
                    raise ir.passes.PreconditionError(
                        f"{rp.name!r} input {index} is not the planned constant {name!r} "
                        f"of shape {codes.shape}")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        names = UniqueNames(graph)
        nodes = {node.name: node for node in graph}
        for rp in self.plan.recurrent:
            node = nodes[rp.name]
            scale = add_initializer(graph, names, f"{rp.name}/weight_scale",
                                    rp.scale[..., None].astype(np.float32))
            for index, codes in ((1, rp.w_codes), (2, rp.r_codes)):
                float_weight = node.inputs[index]
                q = add_initializer(graph, names, f"{float_weight.name}/quantized",
                                    codes.astype(np.int8))
                dq = dequantize_node(names.node(f"{rp.name}/DequantizeLinear_{index}"), q,
                                     scale, axis=2, block_size=codes.shape[2],
                                     out_name=names.value(f"{float_weight.name}/dequantized"),
                                     out_dtype=ir.DataType.FLOAT, shape=ir.Shape(codes.shape))
                graph.insert_before(node, dq)
                node.replace_input_with(index, dq.outputs[0])
                if not float_weight.uses() and float_weight.name in graph.initializers:
                    graph.initializers.pop(float_weight.name)
        return ir.passes.PassResult(model, bool(self.plan.recurrent))

    def ensures(self, model: ir.Model) -> None:
        nodes = {node.name: node for node in model.graph}
        for rp in self.plan.recurrent:
            for index in (1, 2):
                dq = nodes[rp.name].inputs[index].producer()
                if dq is None or dq.op_type != "DequantizeLinear" or \
                        dq.inputs[0].dtype != ir.DataType.INT8:
                    raise ir.passes.PostconditionError(
                        f"{rp.name!r} input {index} is not an int8 DequantizeLinear")
