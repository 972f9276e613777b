"""Sequential reconstruction for `--refine` (`--refine-inputs quantized`, the default).

BRECQ/AdaRound's setting: a layer is reconstructed on the inputs the *quantized* model feeds
it, with every upstream layer already quantized (and refined) and every activation Q/DQ of the
plan in place, against the *float* layer's output for the float model's input. The refinement
then also corrects what the upstream layers' errors do to this layer's output, as far as its own
weights and bias can, instead of each layer assuming a perfect input.

How: the target layers are ordered in dependency levels (`levels`: a layer's level is one more
than the deepest refined layer upstream of its input; layers of one level, e.g. query, key and
value, read inputs no layer of their level changes). Before each level the current plan (the
levels before it refined) is lowered to its Q/DQ ONNX model (`rexdeploy.lower`, the model the
backend gets), pruned to the nodes that produce the level's inputs, and run by ONNX Runtime on
the calibration samples; the rows taken are the same positions the float capture took.
"""

from __future__ import annotations

import onnx_ir as ir


def levels(model: ir.Model, names: list[str], inputs: dict[str, str]) -> list[list[str]]:
    """`names` (the target layers, node names) grouped by dependency level, in order.

    inputs: layer name -> the tensor it quantizes (its input 0).
    """
    targets = set(names)
    upstream: dict[str, frozenset] = {}  # value name -> target layers it depends on
    for node in model.graph:
        deps = frozenset().union(*(upstream.get(v.name, frozenset())
                                   for v in node.inputs if v is not None))
        if node.name in targets:
            deps = deps | {node.name}
        for out in node.outputs:
            upstream[out.name] = deps
    level: dict[str, int] = {}
    for name in _topological(model, names):
        deps = upstream.get(inputs[name], frozenset())
        level[name] = 1 + max((level[d] for d in deps if d in level), default=-1)
    out: list[list[str]] = [[] for _ in range(1 + max(level.values(), default=-1))]
    for name in names:
        out[level[name]].append(name)
    return [group for group in out if group]


def _topological(model: ir.Model, names: list[str]) -> list[str]:
    order = {node.name: i for i, node in enumerate(model.graph)}
    return sorted(names, key=lambda n: order.get(n, 0))


def quantized_model(float_model: ir.Model, plan, tensors: list[str]):
    """The Q/DQ model of `plan` pruned to produce `tensors` (names in the float model, which the
    lowering keeps: the Q/DQ goes after them), as an ONNX proto; None when every tensor is a
    graph input (nothing upstream to quantize)."""
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    from rexdeploy.lower import lower

    lowered = lower(float_model, plan)
    graph = lowered.graph
    produced = {out.name: out for node in graph for out in node.outputs}
    wanted = [produced[t] for t in dict.fromkeys(tensors) if t in produced]
    if not wanted:
        return None
    graph.outputs.clear()
    graph.outputs.extend(wanted)
    RemoveUnusedNodesPass()(lowered)
    return ir.to_proto(lowered)
