"""TensorRT's Q/DQ rules checked on an ONNX graph (pure ONNX: runs without TensorRT, and on a
device's core install, which has onnx and numpy but neither torch nor onnx-ir).

    check_trt_rules(model_or_path) -> TrtCheck      findings, each naming the node
    rexdeploy inspect --check trt model.onnx        the same from the command line

Errors are what TensorRT's ONNX parser or builder refuses (docs/backends.md, from TensorRT's
documentation and its ONNX parser's source); warnings are what builds but does not run as int8
the way the graph suggests.

  opset            ai.onnx opset >= 13 (per-channel Q/DQ), >= 21 for INT4 / block_size
  operators        no QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger,
                   DynamicQuantizeLinear (the parser rejects them)
  zero-point       every Q/DQ zero point a constant 0 (TensorRT is symmetric only)
  weight-axis      per-channel weight scales on the output-channel axis: 0 for Conv and Gemm
                   with transB=1, 1 for ConvTranspose, the last axis for MatMul and Gemm transB=0
  activation-scale activations quantized per tensor (scalar scale)
  scale            scales constant, positive, finite
  int4             INT4 codes only as constant 2-D MatMul/Gemm weights with block_size;
                   block quantization only with INT4 codes
  pad-qdq          no Q/DQ between a Pad and a Conv
  residual         (warning) an Add joining a quantized convolution's output with a float
                   skip tensor: Q/DQ belongs on the skip input so Conv+Add fuse in int8. Not
                   for MatMul/Gemm outputs (transformer residual streams): there the Add runs
                   in float with the LayerNorm after it, as in ModelOpt's placement, and a Q/DQ
                   on the skip would only add int8 error to the residual stream.
  weight-only      (warning) int8 weights on a layer whose activation is float: TensorRT runs
                   it in float
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
REJECTED = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
            "DynamicQuantizeLinear")
MIN_OPSET, MIN_OPSET_INT4 = 13, 21


@dataclass(frozen=True)
class Finding:
    level: str    # error | warning
    rule: str     # one of the rule names in the module docstring
    node: str     # the ONNX node (or "model")
    message: str

    def __str__(self) -> str:
        return f"{self.level}: [{self.rule}] {self.node}: {self.message}"


@dataclass(frozen=True)
class TrtCheck:
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {"ok": self.ok, "errors": [str(f) for f in self.errors],
                "warnings": [str(f) for f in self.warnings]}


def check_trt_rules(model) -> TrtCheck:
    """Check an ONNX model (path, onnx.ModelProto or onnx_ir.Model) against TensorRT's rules."""
    import onnx

    if isinstance(model, str):
        model = onnx.load(model)
    elif not isinstance(model, onnx.ModelProto):  # an onnx_ir.Model, made where onnx-ir is
        model = model_proto(model)
    graph = _Graph(model.graph)
    out: list[Finding] = []
    opsets = {o.domain: o.version for o in model.opset_import}
    opset = opsets.get("", opsets.get("ai.onnx"))
    if opset is not None and opset < MIN_OPSET:
        out.append(Finding("error", "opset", "model", f"opset {opset}: per-channel Q/DQ needs "
                                                      f"opset >= {MIN_OPSET}"))
    for node in graph.nodes:
        out += _node_findings(node, opset)
    return TrtCheck(tuple(out))


def model_proto(model):
    """The ModelProto of an onnx_ir.Model (given one, onnx-ir is installed: the build side)."""
    if getattr(type(model), "__module__", "").split(".")[0] != "onnx_ir":
        raise TypeError(f"check_trt_rules takes a path, an onnx.ModelProto or an onnx_ir.Model, "
                        f"not {type(model).__name__}")
    import onnx_ir  # noqa: TID251 (only reached with an onnx_ir model in hand)

    return onnx_ir.to_proto(model)


# -- a read-only view of an ONNX graph: each value knows its producer, users, dtype, rank and
# constant (what the rules need of onnx-ir, which a device's core install does not have) --------
INT4_TYPES = (22, 21)  # onnx.TensorProto.INT4, UINT4
UINT4 = 21


class _Attributes:
    def __init__(self, proto):
        self._ints = {a.name: a.i for a in proto.attribute}

    def get_int(self, name: str, default: int) -> int:
        return int(self._ints.get(name, default))


class _Value:
    def __init__(self, name: str, graph: "_Graph"):
        self.name, self._graph = name, graph

    def producer(self):
        return self._graph.producers.get(self.name)

    def uses(self) -> list:
        return self._graph.users.get(self.name, [])

    @property
    def dtype(self) -> int | None:
        return self._graph.dtypes.get(self.name)

    @property
    def rank(self) -> int | None:
        return self._graph.ranks.get(self.name)

    def const(self) -> np.ndarray | None:
        return self._graph.constants.get(self.name)


class _Node:
    def __init__(self, proto, graph: "_Graph"):
        self.op_type, self.name = proto.op_type, proto.name or proto.output[0]
        self.attributes = _Attributes(proto)
        self.inputs = [graph.value(n) if n else None for n in proto.input]
        self.outputs = [graph.value(n) for n in proto.output]


class _Graph:
    def __init__(self, proto):
        from onnx import numpy_helper

        self.values: dict[str, _Value] = {}
        self.constants = {t.name: numpy_helper.to_array(t) for t in proto.initializer}
        self.dtypes = {t.name: t.data_type for t in proto.initializer}
        self.ranks = {t.name: len(t.dims) for t in proto.initializer}
        for info in list(proto.input) + list(proto.value_info) + list(proto.output):
            t = info.type.tensor_type
            self.dtypes.setdefault(info.name, t.elem_type)
            if t.HasField("shape"):
                self.ranks.setdefault(info.name, len(t.shape.dim))
        self.producers: dict[str, _Node] = {}
        self.users: dict[str, list] = {}
        self.nodes = [_Node(n, self) for n in proto.node]
        for node, raw in zip(self.nodes, proto.node):
            for out in raw.output:
                self.producers[out] = node
            for i, name in enumerate(raw.input):
                if name:
                    self.users.setdefault(name, []).append((node, i))
            if raw.op_type == "Constant" and raw.attribute and raw.attribute[0].name == "value":
                tensor = raw.attribute[0].t
                self.constants[raw.output[0]] = numpy_helper.to_array(tensor)
                self.dtypes[raw.output[0]] = tensor.data_type
                self.ranks[raw.output[0]] = len(tensor.dims)
            if raw.op_type == "QuantizeLinear":  # makes its zero point's type (uint8 without)
                zp = raw.input[2] if len(raw.input) > 2 else None
                self.dtypes.setdefault(raw.output[0], self.dtypes.get(zp, 2))

    def value(self, name: str) -> _Value:
        if name not in self.values:
            self.values[name] = _Value(name, self)
        return self.values[name]


def const_array(value: _Value | None) -> np.ndarray | None:
    """The array of a constant value (initializer or Constant node), else None."""
    return None if value is None else value.const()


def _node_findings(node, opset) -> list[Finding]:
    if node.op_type in REJECTED:
        return [Finding("error", "operators", node.name, f"{node.op_type} is rejected by "
                        "TensorRT's ONNX parser; use QuantizeLinear/DequantizeLinear pairs")]
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        return _qdq_findings(node, opset)
    if node.op_type in COMPUTE:
        return _compute_findings(node)
    if node.op_type == "Add":
        return _residual_findings(node)
    return []


def _qdq_findings(node, opset) -> list[Finding]:
    out = []
    name = node.name
    zp = node.inputs[2] if len(node.inputs) > 2 else None
    if zp is not None:
        z = const_array(zp)
        if z is None or np.asarray(z, np.int32).any():
            out.append(Finding("error", "zero-point", name, "zero point is not a constant 0 "
                               "(TensorRT supports symmetric quantization only)"))
    scale = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if scale is None:
        out.append(Finding("error", "scale", name, "scale is not a constant"))
    elif not (np.isfinite(scale.astype(np.float64)).all() and (scale > 0).all()):
        out.append(Finding("error", "scale", name, "scales must be positive and finite"))
    block = node.attributes.get_int("block_size", 0)
    data = node.inputs[0]
    codes = data.dtype if node.op_type == "DequantizeLinear" else \
        (zp.dtype if zp is not None else None)
    weight = _is_weight(node)
    int4 = codes in INT4_TYPES
    if (int4 or block) and opset is not None and opset < MIN_OPSET_INT4:
        out.append(Finding("error", "opset", name, f"INT4/block_size Q/DQ needs opset >= "
                                                   f"{MIN_OPSET_INT4} (model: {opset})"))
    if int4:
        out += _int4_findings(node, data, block, weight, codes)
    elif block:
        out.append(Finding("error", "int4", name, f"block quantization with {codes} codes: "
                           "TensorRT blocks INT4 (and FP8/FP4) only"))
    if scale is not None and scale.size > 1 and not block:
        if not weight:
            out.append(Finding("error", "activation-scale", name, f"activation scale has "
                               f"{scale.size} values: TensorRT quantizes activations per tensor"))
        elif node.op_type == "DequantizeLinear":
            out += _axis_findings(node)
    return out


def _is_weight(node) -> bool:
    """A Q/DQ of a constant: DQ(codes), Q(float weight), or DQ(Q(float weight)) as fake-quant
    exporters write it (TensorRT folds the Q at build time)."""
    src = node.inputs[0]
    if node.op_type == "DequantizeLinear":
        q = src.producer() if src is not None else None
        if q is not None and q.op_type == "QuantizeLinear":
            src = q.inputs[0]
    return const_array(src) is not None


def _int4_findings(node, data, block, weight, codes) -> list[Finding]:
    problems = []
    if codes == UINT4:
        problems.append("UINT4 codes (use signed INT4 with zero point 0)")
    if not weight:
        problems.append("INT4 on an activation (TensorRT's INT4 is weight-only)")
    rank = data.rank
    if rank is not None and rank != 2:
        problems.append(f"a {rank}-D weight (INT4 only on 2-D MatMul/Gemm weights; "
                        "no INT4 convolution)")
    if not block:
        problems.append("no block_size (INT4 weights are block-quantized: build with "
                        "--block-size 32, 64 or 128)")
    users = {u.op_type for u, _ in node.outputs[0].uses()}
    if users - {"MatMul", "Gemm"}:
        problems.append(f"feeds {', '.join(sorted(users - {'MatMul', 'Gemm'}))}")
    return [Finding("error", "int4", node.name, p) for p in problems]


def _axis_findings(dq) -> list[Finding]:
    out = []
    axis = dq.attributes.get_int("axis", 1)
    rank = dq.inputs[0].rank
    if rank is not None and axis < 0:
        axis += rank
    for user, index in dq.outputs[0].uses():
        if user.op_type not in COMPUTE or index != 1:
            continue
        want = _out_axis(user, rank)
        if want is not None and axis != want:
            out.append(Finding("error", "weight-axis", dq.name,
                               f"per-channel scale on axis {axis}; {user.op_type} {user.name} "
                               f"needs the output-channel axis {want}"))
    return out


def _out_axis(user, rank) -> int | None:
    if user.op_type == "Conv":
        return 0
    if user.op_type == "ConvTranspose":
        return 1
    if user.op_type == "Gemm":
        return 0 if user.attributes.get_int("transB", 0) else 1
    return None if rank is None else rank - 1  # MatMul: [..., K, N]


def _compute_findings(node) -> list[Finding]:
    out = []
    act = node.inputs[0].producer() if node.inputs[0] is not None else None
    weight = node.inputs[1].producer() if len(node.inputs) > 1 and node.inputs[1] is not None \
        else None
    if act is not None and act.op_type == "DequantizeLinear" and node.op_type == "Conv":
        q = act.inputs[0].producer()
        pad = q.inputs[0].producer() if q is not None and q.op_type == "QuantizeLinear" else None
        if pad is not None and pad.op_type == "Pad":
            out.append(Finding("error", "pad-qdq", node.name, f"Q/DQ between Pad {pad.name} and "
                               "this Conv; fuse the pad into the Conv or keep it float"))
    if weight is not None and weight.op_type == "DequantizeLinear" and \
            (act is None or act.op_type != "DequantizeLinear"):
        if weight.inputs[0].dtype not in INT4_TYPES:
            out.append(Finding("warning", "weight-only", node.name, "int8 weights with a float "
                               "activation: TensorRT runs this layer in float"))
    return out


def _layer_input(value, depth: int = 0):
    """The dequantized input of the quantized layer whose output is `value` (through bias Adds
    and REx sums of orders reading one input), else None."""
    layer = _layer(value, depth)
    return None if layer is None else layer.inputs[0]


def _layer(value, depth: int = 0):
    """The quantized compute node (order 1 of a REx sum) whose output is `value`, else None."""
    p = value.producer() if value is not None else None
    if p is None or depth > 8:
        return None
    if p.op_type in COMPUTE:
        act = p.inputs[0].producer() if p.inputs[0] is not None else None
        return p if act is not None and act.op_type == "DequantizeLinear" else None
    if p.op_type == "Add" and len(p.inputs) == 2:
        a, b = p.inputs
        if _is_const(a) or _is_const(b):  # a bias Add
            return _layer(b if _is_const(a) else a, depth + 1)
        la, lb = _layer(a, depth + 1), _layer(b, depth + 1)
        if la is not None and lb is not None and la.inputs[0] is lb.inputs[0]:
            return la  # orders summed
    return None


def _is_const(value) -> bool:
    return value is not None and const_array(value) is not None


def _residual_findings(node) -> list[Finding]:
    if len(node.inputs) != 2 or any(v is None or _is_const(v) for v in node.inputs):
        return []
    inputs = [_layer_input(v) for v in node.inputs]
    if all(i is None for i in inputs) or (inputs[0] is not None and inputs[0] is inputs[1]):
        return []  # no quantized layer here, or the Add summing a layer's REx orders
    for value in node.inputs:
        p = value.producer()
        if p is not None and p.op_type == "DequantizeLinear":
            return []
    skip = node.inputs[1] if inputs[0] is not None else node.inputs[0]
    layer = _layer(node.inputs[0] if inputs[0] is not None else node.inputs[1])
    if layer is None or not layer.op_type.startswith("Conv"):
        return []  # MatMul/Gemm: TensorRT runs the Add (and LayerNorm) in float; see docstring
    return [Finding("warning", "residual", node.name, f"skip input {skip.name} is float: put "
                    "Q/DQ on it so the layer and this Add fuse in int8")]
