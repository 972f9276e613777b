"""Fold nodes whose inputs are all constant into initializers.

Requires: nothing (Constant nodes and initializers both count as constant; run shape inference
first so that `Shape`/`Size` of statically shaped tensors fold too).
Ensures: every node it can evaluate within the size limit is replaced by initializers, so the
padding arithmetic the legacy exporter leaves behind (ConstantOfShape/Concat/Slice/Transpose/
Cast/Reshape -> Pad) becomes one constant `pads` input that `FusePadIntoConvPass` can read.

A folded output keeps its value name. Nothing is folded that would grow the model: an output
with more than `max_elements` elements folds only when its inputs held at least as many (a
Transpose of a weight, not a ConstantOfShape of a huge shape). Random, quantization and
control-flow ops and custom domains are never folded.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

MAX_ELEMENTS = 1_000_000
# Ops whose value is not a function of their inputs, that carry subgraphs, or whose folding
# would erase what later stages look for (Q/DQ pairs a user put in on purpose).
_NEVER = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
    "Bernoulli", "Dropout", "If", "Loop", "Scan", "SequenceMap", "QuantizeLinear",
    "DequantizeLinear", "DynamicQuantizeLinear", "Constant",
})


class ConstantFoldPass(ir.passes.InPlacePass):
    """Evaluate constant subgraphs once, with the ONNX reference implementation."""

    def __init__(self, max_elements: int = MAX_ELEMENTS):
        super().__init__()
        self.max_elements = max_elements
        self.folded: list[str] = []  # names of the nodes folded by the last call

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.folded = []
        opset = model.opset_imports.get("", 21)
        graph = model.graph
        for node in list(graph):  # a copy: folding removes nodes while we walk
            arrays = _constant_inputs(node)
            if arrays is None or not self._should_fold(node, arrays):
                continue
            outputs = _evaluate(node, arrays, node.version or opset)
            if outputs is None or not self._small_enough(outputs, arrays):
                continue
            for value, array in zip(node.outputs, outputs):
                _replace_with_initializer(graph, value, array)
            inputs = list(node.inputs)
            graph.remove(node, safe=True)
            _drop_dead(graph, inputs)
            self.folded.append(node.name or node.op_type)
        return ir.passes.PassResult(model, modified=bool(self.folded))

    def _should_fold(self, node: ir.Node, arrays: list[np.ndarray | None]) -> bool:
        if node.domain != "" or node.op_type in _NEVER or not node.outputs:
            return False
        if any(out.is_graph_output() for out in node.outputs):
            return False  # a constant model output stays computed, with its own name
        if node.op_type == "ConstantOfShape" and arrays[0] is not None:
            return math.prod(int(d) for d in arrays[0].ravel()) <= self.max_elements
        return True

    def _small_enough(self, outputs: list[np.ndarray], arrays: list[np.ndarray | None]) -> bool:
        produced = sum(a.size for a in outputs)
        consumed = sum(a.size for a in arrays if a is not None)
        return produced <= self.max_elements or produced <= consumed


def _constant_inputs(node: ir.Node) -> list[np.ndarray | None] | None:
    """The node's inputs as arrays (None for an omitted optional input), or None if any input
    is not constant. Inputs read only for their shape or type count as constant when those are
    known: `Shape`/`Size` of a statically shaped tensor, the `target_type` of CastLike (the
    dynamo exporter casts every scalar like an activation)."""
    if node.op_type in ("Shape", "Size") and node.domain == "" and node.inputs:
        return _static_shape_input(node)
    arrays: list[np.ndarray | None] = []
    for i, value in enumerate(node.inputs):
        if node.op_type == "CastLike" and i == 1 and value is not None and value.dtype:
            arrays.append(np.zeros(0, value.dtype.numpy()))
            continue
        if value is None:
            arrays.append(None)
            continue
        if value.is_graph_input():  # an initializer that is also an input can be overridden
            return None
        tensor = ir.convenience.get_const_tensor(value)
        if tensor is None:
            return None
        arrays.append(tensor.numpy())
    return arrays


def _static_shape_input(node: ir.Node) -> list[np.ndarray | None] | None:
    value = node.inputs[0]
    if value is None or value.shape is None or not value.shape.is_static():
        return None
    # A zero-filled stand-in with the right shape: Shape/Size read only its shape.
    return [np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), tuple(value.shape.numpy()),
                                            [0] * len(value.shape))]


def _evaluate(node: ir.Node, arrays: list[np.ndarray | None], opset: int):
    import onnx
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if a is not None else "" for i, a in enumerate(arrays)]
    outs = [f"out{i}" for i in range(len(node.outputs))]
    attrs = [ir.serde.serialize_attribute(a) for a in node.attributes.values()]
    proto = onnx.helper.make_node(node.op_type, names, outs)
    proto.attribute.extend(attrs)
    graph = onnx.helper.make_graph([proto], "fold", [], [onnx.helper.make_empty_tensor_value_info(o)
                                                         for o in outs])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    feeds = {n: a for n, a in zip(names, arrays) if n}
    try:
        results = ReferenceEvaluator(model).run(None, feeds)
    except Exception:  # an op the reference cannot run (or rejects) simply stays in the graph
        return None
    return [np.asarray(r) for r in results]


def _replace_with_initializer(graph: ir.Graph, value: ir.Value, array: np.ndarray) -> None:
    if value.dtype is not None:  # the reference may widen a scalar; keep the declared type
        array = array.astype(value.dtype.numpy(), copy=False)
    name = value.name
    value.name = None  # free the name for the initializer that replaces it
    const = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    const.shape = ir.Shape(array.shape)
    const.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
    ir.convenience.replace_all_uses_with(value, const)
    graph.register_initializer(const)


def _drop_dead(graph: ir.Graph, values: list[ir.Value | None]) -> None:
    """Remove the Constant nodes and initializers that only fed the folded node."""
    for value in values:
        if value is None or value.uses() or value.is_graph_output() or value.is_graph_input():
            continue
        producer = value.producer()
        if producer is not None and producer.op_type == "Constant" and producer.domain == "":
            graph.remove(producer, safe=True)
        elif value.is_initializer():
            graph.initializers.pop(value.name)
