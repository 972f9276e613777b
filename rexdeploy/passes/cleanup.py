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

_ROUNDS = 4  # folding exposes shapes, shapes expose more folding; EfficientNet needs 2


class CleanupPass(ir.passes.InPlacePass):
    """Lift constants, fold, fuse pads, drop dead code, infer shapes, name every node."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        rounds = ir.passes.PassManager([
            common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
            common.ShapeInferencePass(),
            ConstantFoldPass(),
            FusePadIntoConvPass(),
            common.IdentityEliminationPass(),
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


class _OpTypeNames(common.naming.SimpleNameGenerator):
    """Unnamed nodes are named after their op (`Conv`, `Conv_1`, ...) rather than `node`."""

    def generate_node_name(self, node: ir.Node) -> str:
        return node.name or node.op_type
