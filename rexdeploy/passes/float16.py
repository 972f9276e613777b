"""Write the float parts of a lowered graph in float16 (strongly typed TensorRT).

Strongly typed TensorRT (always on 11.x, the default on 10.x here) takes each tensor's precision
from the ONNX graph: no builder flag turns float32 layers into fp16. This pass is how rexdeploy
writes fp16 into the graph (what ModelOpt's `high_precision_dtype="fp16"` and AutoCast do):

  * every float32 initializer becomes float16 (finite values clamped to +-65504, values below
    2^-25 become 0, both counted; Q/DQ scales kept positive, see below), so Conv/MatMul/Gemm
    bias, LayerNorm weights, Clip bounds and the DequantizeLinear scales (whose type is the DQ
    output type) are f16;
  * Cast(to=FLOAT) becomes Cast(to=FLOAT16); a Cast that then casts to its own type is removed;
  * every float32 intermediate value is typed float16;
  * the model's float32 inputs and outputs stay float32 behind a Cast, so callers feed and read
    float32 as before (`keep_io_types` in ModelOpt's words);
  * the few inputs ONNX types as float32 only (Resize's scales) stay float32.

Scales. A QuantizeLinear divides by its scale: an activation scale below f16's normal range
(6.1e-5, a tensor whose range is under 0.008) is raised to it, the same for the Q and its DQ.
A weight scale below that range loses relative precision as an f16 subnormal and one below 2^-24
would become 0, which TensorRT rejects: those are raised to 2^-24 (the weights of such a channel
are below 3e-6 in magnitude). Every change is counted in `stats` for the build report.

Requires: a lowered Q/DQ model (opset >= 21). Ensures: no float32 tensor left but the I/O and
float32-only inputs; ONNX type inference passes in strict mode.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

F32, F16 = ir.DataType.FLOAT, ir.DataType.FLOAT16
F16_MAX = 65504.0
F16_MIN_NORMAL = 2.0 ** -14
F16_MIN_SUBNORMAL = 2.0 ** -24
# (op_type, input index) that ONNX types tensor(float) only
_FLOAT32_ONLY = {("Resize", 2), ("Upsample", 1)}
_DTYPE_ATTRS = {"Cast": "to", "EyeLike": "dtype", "RandomNormal": "dtype",
                "RandomUniform": "dtype", "RandomNormalLike": "dtype",
                "RandomUniformLike": "dtype", "Multinomial": "dtype", "Bernoulli": "dtype"}


class Float16Pass(ir.passes.InPlacePass):
    """float32 -> float16 everywhere but the model's I/O (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.stats: dict[str, int] = {}

    def requires(self, model: ir.Model) -> None:
        if model.opset_imports.get("", 0) < 19:
            raise ir.passes.PreconditionError("float16 Q/DQ scales need opset >= 19")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from rexdeploy.passes.shapes import QuietShapeInferencePass

        QuietShapeInferencePass()(model)  # every value's type known before it is changed
        graph = model.graph
        self.stats = dict.fromkeys(("initializers", "values_clamped", "values_flushed",
                                    "activation_scales_raised",
                                    "weight_scales_raised", "casts_removed", "io_casts"), 0)
        self._initializers(graph)
        self._attributes(graph)
        self._values(graph)
        self._io(graph)
        self._float32_only_inputs(graph)
        self._drop_noop_casts(graph)
        return ir.passes.PassResult(model, True)

    def ensures(self, model: ir.Model) -> None:
        import onnx

        left = [v.name for v in _all_values(model.graph) if v.dtype == F32
                and not (v.is_graph_input() or v.is_graph_output() or _feeds_float32_only(v))]
        if left:
            raise ir.passes.PostconditionError(f"float32 values left: {left[:5]}")
        try:
            onnx.shape_inference.infer_shapes(ir.serde.serialize_model(model), check_type=True,
                                              strict_mode=True)
        except Exception as exc:  # onnx raises InferenceError / ValidationError
            raise ir.passes.PostconditionError(
                f"the float16 graph does not type-check: {exc}") from exc

    # -- steps ---------------------------------------------------------------------------------
    def _initializers(self, graph: ir.Graph) -> None:
        for value in list(graph.initializers.values()):
            if value.dtype != F32 or value.const_value is None:
                continue
            uses = list(value.uses())
            if uses and all(_float32_only(u.node, u.idx) for u in uses):
                continue
            if any(_float32_only(u.node, u.idx) for u in uses):
                _split_float32_uses(graph, value)
            array = value.const_value.numpy().astype(np.float32)
            array = self._scale_floor(value, uses, array)
            clipped = np.clip(array, -F16_MAX, F16_MAX)
            self.stats["values_clamped"] += int(np.count_nonzero(np.isfinite(array)
                                                                 & (clipped != array)))
            half = clipped.astype(np.float16)
            self.stats["values_flushed"] += int(np.count_nonzero((half == 0) & (array != 0)))
            value.const_value = ir.tensor(half, name=value.name)
            value.type = ir.TensorType(F16)  # a new type: a clone shares the old one
            self.stats["initializers"] += 1

    def _scale_floor(self, value: ir.Value, uses, array: np.ndarray) -> np.ndarray:
        """Q/DQ scales stay positive in f16 (see the module docstring)."""
        qdq = [u for u in uses if u.node.op_type in ("QuantizeLinear", "DequantizeLinear")
               and u.idx == 1]
        if not qdq:
            return array
        weight = all(u.node.op_type == "DequantizeLinear" and u.node.inputs[0] is not None
                     and u.node.inputs[0].const_value is not None for u in qdq)
        floor = F16_MIN_SUBNORMAL if weight else F16_MIN_NORMAL
        raised = (array > 0) & (array < floor)
        self.stats["weight_scales_raised" if weight else "activation_scales_raised"] += int(
            raised.sum())
        return np.where(raised, np.float32(floor), array)

    def _attributes(self, graph: ir.Graph) -> None:
        for node in _all_nodes(graph):
            name = _DTYPE_ATTRS.get(node.op_type)
            if name and node.attributes.get_int(name, -1) == F32:
                node.attributes[name] = ir.AttrInt64(name, int(F16))
            if node.op_type in ("ConstantOfShape", "Constant") and "value" in node.attributes:
                tensor = node.attributes["value"].as_tensor()
                if tensor.dtype == F32:
                    half = np.clip(tensor.numpy(), -F16_MAX, F16_MAX).astype(np.float16)
                    node.attributes["value"] = ir.AttrTensor("value", ir.tensor(half))

    def _values(self, graph: ir.Graph) -> None:
        for value in _all_values(graph):
            if value.dtype == F32 and not value.is_graph_input() and value.const_value is None:
                value.type = ir.TensorType(F16)  # a new type: a clone shares the old one

    def _io(self, graph: ir.Graph) -> None:
        """float32 inputs and outputs stay float32; a Cast joins them to the f16 graph."""
        for value in graph.inputs:
            if value.dtype != F32:
                continue
            uses = list(value.uses())
            half = ir.Value(name=f"{value.name}/f16", shape=value.shape, type=ir.TensorType(F16))
            cast = ir.Node("", "Cast", [value], [ir.AttrInt64("to", int(F16))], outputs=[half],
                           name=f"{value.name}/cast_f16")
            for use in uses:
                use.node.replace_input_with(use.idx, half)
            graph.insert_before(graph.node(0), cast)
            self.stats["io_casts"] += 1
        for i, value in enumerate(list(graph.outputs)):
            if value.dtype != F16:
                continue
            name, value.name = value.name, f"{value.name}/f16"
            out = ir.Value(name=name, shape=value.shape, type=ir.TensorType(F32))
            graph.append(ir.Node("", "Cast", [value], [ir.AttrInt64("to", int(F32))], outputs=[out],
                                 name=f"{name}/cast_f32"))
            graph.outputs[i] = out
            self.stats["io_casts"] += 1

    def _float32_only_inputs(self, graph: ir.Graph) -> None:
        """A computed (non-constant) float16 value feeding a float32-only input gets a Cast."""
        for node in list(graph):
            for idx, value in enumerate(node.inputs):
                if value is None or value.dtype != F16 or not _float32_only(node, idx):
                    continue
                f32 = ir.Value(name=f"{value.name}/f32", shape=value.shape,
                               type=ir.TensorType(F32))
                graph.insert_before(node, ir.Node("", "Cast", [value],
                                                  [ir.AttrInt64("to", int(F32))], outputs=[f32]))
                node.replace_input_with(idx, f32)

    def _drop_noop_casts(self, graph: ir.Graph) -> None:
        for node in list(graph):
            if node.op_type != "Cast" or node.inputs[0] is None:
                continue
            src, out = node.inputs[0], node.outputs[0]
            if src.dtype != node.attributes.get_int("to", -1) or out.is_graph_output():
                continue
            out.replace_all_uses_with(src)
            graph.remove(node, safe=True)
            self.stats["casts_removed"] += 1


def _float32_only(node: ir.Node, idx: int) -> bool:
    return (node.op_type, idx) in _FLOAT32_ONLY


def _feeds_float32_only(value: ir.Value) -> bool:
    return any(_float32_only(u.node, u.idx) for u in value.uses())


def _split_float32_uses(graph: ir.Graph, value: ir.Value) -> None:
    """Give the float32-only uses of a shared initializer their own float32 copy."""
    name = f"{value.name}/f32"
    copy = ir.Value(name=name, shape=value.shape, type=ir.TensorType(F32),
                    const_value=ir.tensor(value.const_value.numpy(), name=name))
    graph.register_initializer(copy)
    for use in list(value.uses()):
        if _float32_only(use.node, use.idx):
            use.node.replace_input_with(use.idx, copy)


def _all_nodes(graph: ir.Graph):
    return ir.traversal.RecursiveGraphIterator(graph)


def _all_values(graph: ir.Graph):
    seen: set[int] = set()
    for value in [*graph.inputs, *graph.initializers.values()]:
        seen.add(id(value))
        yield value
    for node in _all_nodes(graph):
        for value in node.outputs:
            if id(value) not in seen:
                seen.add(id(value))
                yield value
