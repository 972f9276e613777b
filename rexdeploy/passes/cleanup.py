"""The cleanup every exported float graph gets before analysis.

Requires: a valid ONNX graph (as exported, or as the user gave it).
Ensures: no Constant node (all constants are initializers); constant subgraphs folded; no zero
Pad feeding a Conv; no removable Identity; no dead node or initializer; shapes inferred where
ONNX can; nodes in topological order; every node name non-empty and unique (later stages key
the quantization plan by node name). BatchNormalization nodes are kept: the data-free ranges are
read from their statistics before `FoldBatchNormPass` runs.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import common

from rexdeploy.passes.constant_fold import ConstantFoldPass
from rexdeploy.passes.fuse_pad_into_conv import FusePadIntoConvPass
from rexdeploy.passes.shapes import QuietShapeInferencePass

_ROUNDS = 4  # folding exposes shapes, shapes expose more folding; EfficientNet needs 2


class CleanupPass(ir.passes.InPlacePass):
    """Lift constants, fold, fuse pads, drop dead code, infer shapes, name every node."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        rounds = ir.passes.PassManager([
            common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
            QuietShapeInferencePass(),
            ConstantFoldPass(),
            FusePadIntoConvPass(),
            _IdentityElimination(),
            common.RemoveUnusedNodesPass(),
        ], steps=_ROUNDS, early_stop=True)
        modified = rounds(model).modified
        for final in (common.TopologicalSortPass(), common.NameFixPass(_OpTypeNames())):
            modified = final(model).modified or modified
        return ir.passes.PassResult(model, modified)

    def ensures(self, model: ir.Model) -> None:
        nodes = list(model.graph)
        constants = [n.name for n in nodes if n.op_type == "Constant" and n.domain == ""
                     and not n.outputs[0].is_graph_output()]
        if constants:
            raise ir.passes.PostconditionError(f"Constant nodes left: {constants[:5]}")
        names = [n.name for n in nodes]
        if not all(names) or len(set(names)) != len(names):
            raise ir.passes.PostconditionError("node names are not unique and non-empty")


def has_subgraphs(model: ir.Model) -> bool:
    """Whether any node of the main graph carries a graph attribute (If, Loop, Scan)."""
    return any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
               for node in model.graph for a in node.attributes.values())


class _IdentityElimination(ir.passes.InPlacePass):
    """onnx_ir's IdentityEliminationPass, except in a model with subgraphs (If/Loop/Scan): there
    it turns a branch's `Identity(outer value)` output into the outer value itself, renaming it,
    and the model becomes invalid ("Subgraph output ... is an outer scope value being returned
    directly", onnx-ir 0.2). There only the main graph's Identity nodes whose output is no
    graph's output are removed, their uses (in subgraphs too) reading the input instead."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if not has_subgraphs(model):
            return common.IdentityEliminationPass()(model)
        modified = False
        for node in list(model.graph):
            if node.op_type != "Identity" or node.domain not in ("", "ai.onnx") or \
                    len(node.inputs) != 1 or node.inputs[0] is None:
                continue
            out = node.outputs[0]
            if out.is_graph_output() or _is_subgraph_output(model, out):
                continue
            ir.convenience.replace_all_uses_with(out, node.inputs[0])
            model.graph.remove(node, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified)


def _is_subgraph_output(model: ir.Model, value: ir.Value) -> bool:
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for attr in node.attributes.values():
            graphs = [attr.value] if attr.type == ir.AttributeType.GRAPH else \
                list(attr.value) if attr.type == ir.AttributeType.GRAPHS else []
            if any(value in g.outputs for g in graphs):
                return True
    return False


class _OpTypeNames(common.naming.SimpleNameGenerator):
    """Unnamed nodes are named after their op (`Conv`, `Conv_1`, ...) rather than `node`."""

    def generate_node_name(self, node: ir.Node) -> str:
        return node.name or node.op_type
