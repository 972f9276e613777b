"""Centre non-negative int8 activations, for TensorRT (signed int8 activations only).

TensorRT quantizes activations to signed int8 with zero point 0, so a tensor that is never
negative (a ReLU or ReLU6 output) only uses the codes 0..127: 7 bits where OpenVINO's uint8 gives
it 8. Centring quantizes x' = x - c instead, with c half the planned range, so the codes span
-127..127 at half the step, and gives c back in the bias of every layer reading the tensor:

    Conv(W, b)(x) = Conv(W, b + c * sum(W))(x - c)          (exact without padding)

The shift costs no node: it goes into the producer, Clip(y, 0, M) - c = Clip(y - c, -c, M - c)
(ReLU: Clip(y - c, min=-c)), with y - c taken from the producing layer's bias; global average
pooling, Flatten, Reshape, Squeeze and Unsqueeze between the Clip and the Q commute with it. The
graph keeps its node count and its TensorRT fusion pattern (Conv -> Clip -> Q -> DQ -> Conv),
only constants change.

A residual Add that reads the tensor's DQ (the skip input; its other input is a layer's output, the
TensorRT placement rule) gets c back through that layer's bias: DQ(x') + (y + c) = x + y.

A Conv with padding reads its padding as x' = 0, i.e. x = c, so near the border the output is off
by c times the weights that fall on the padding. `border`:
  - "add": an Add of that correction (a constant [1, Cout, H, W] map, zero inside) after the
    layer: exact, one extra node per such layer (needs static spatial shapes);
  - "skip": tensors read by a padded Conv stay uncentred (7 bits).

Requires: the graph went through QuantizeWeightsPass and QuantizeActivationsPass.
Ensures: every centred tensor's Q/DQ has zero point 0 and scale c / 127; the graph computes the
same function up to quantization (exactly, for float inputs that do not saturate).
A tensor is left as it is, and the reason counted in `stats`, when anything is not as above:
a consumer of its DQ that is neither a planned layer nor a residual Add whose other side is a
layer output read by that Add alone, a weight that is not a constant, a producer that is not a
Clip/ReLU on a layer output with a bias to fold into, a smoothed (scale-migrated) or per-channel
activation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from calib_free.plan import QuantPlan
from rexdeploy.passes.qdq_nodes import (
    UniqueNames, add_initializer, branches, const_array, layer_of, numpy_dtype)
from rexdeploy.passes.quantize_weights import add_to_bias, append_constant_add, layer_output

BORDERS = ("add", "skip")
# node metadata: on a centred tensor's QuantizeLinear, the shift of the tensor it reads; on a
# layer's order-1 (or only) node, the shift of the layer's output (both: new = original + shift)
INPUT_SHIFT_KEY = "rexdeploy.input_shift"
OUTPUT_SHIFT_KEY = "rexdeploy.output_shift"
_COMMUTING = ("GlobalAveragePool", "Flatten", "Reshape", "Squeeze", "Unsqueeze")
_QMAX = 127


@dataclass
class _Centring:
    """What one tensor's centring changes (gathered first, applied only when all of it works)."""

    c: float
    q: ir.Node
    dq: ir.Node
    clip: ir.Node
    producer: tuple[ir.Node, str]                  # (order-1 or float node, layer name)
    consumers: dict[str, tuple[ir.Node, np.ndarray]] = field(default_factory=dict)
    borders: dict[str, np.ndarray] = field(default_factory=dict)   # layer -> [1, Cout, H, W]
    skips: list[tuple[ir.Node, str]] = field(default_factory=list)  # layers adding c back


class CenterActivationsPass(ir.passes.InPlacePass):
    """Shift non-negative signed-int8 activations by half their range (TensorRT)."""

    def __init__(self, plan: QuantPlan, border: str = "add"):
        super().__init__()
        if border not in BORDERS:
            raise ValueError(f"border must be one of {BORDERS}, not {border!r}")
        self.plan = plan
        self.border = border
        self.stats: Counter = Counter()   # "centred" tensors, "border_adds"
        self.kept: Counter = Counter()    # reason -> tensors left at 7 bits

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        names = UniqueNames(graph)
        quantizers = {n.inputs[0].name: n for n in graph
                      if n.op_type == "QuantizeLinear" and n.inputs[0] is not None}
        for act in self.plan.activations:
            q = quantizers.get(act.tensor)
            if q is None or not act.signed or act.range <= 0:
                continue
            found = self._plan_one(graph, q, act)
            if isinstance(found, str):
                if found != "signed":
                    self.kept[found] += 1
                continue
            replaced = [found.q.inputs[1], *found.clip.inputs[1:]]
            self._apply(graph, found, names)
            self.stats["centred"] += 1
            for value in replaced:  # old scales and Clip bounds nothing reads any more
                if value is not None and not value.uses() and value.is_initializer() \
                        and value.name in graph.initializers:
                    del graph.initializers[value.name]
        return ir.passes.PassResult(model, bool(self.stats["centred"]))

    def _plan_one(self, graph: ir.Graph, q: ir.Node, act) -> _Centring | str:
        """The centring of `act`'s tensor, or why it stays as it is ("signed": not ReLU-like)."""
        if act.smooth is not None:
            return "scale-migrated activation"
        if act.channel_scale is not None:
            return "per-channel activation"
        clip = _nonneg_source(q.inputs[0])
        if clip is None:
            return "signed"
        dqs = [u for u, _ in q.outputs[0].uses()]
        if len(q.inputs[0].uses()) != 1 or len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear":
            return "read unquantized too"
        producer = _bias_owner(clip.inputs[0])
        if producer is None:
            return "no producer bias to fold the shift into"
        c = act.range / 2
        plan = _Centring(c, q, dqs[0], clip, producer)
        for user, index in dqs[0].outputs[0].uses():
            tagged = layer_of(user)
            if user.op_type == "Add" and tagged is None and len(user.inputs) == 2:
                other = _layer_side(user.inputs[1 - index])  # the residual's layer side
                if other is None or other[0] in [n for n, _ in plan.skips]:
                    return "read by an Add whose other side has no bias to give the shift back"
                plan.skips.append(other)
                continue
            if tagged is not None and tagged[1] == "gather":
                return "read through a compact sparse order's Gather"
            if index != 0 or tagged is None or not tagged[1].startswith("order") \
                    or user.op_type not in ("Conv", "Gemm", "MatMul"):
                return "read by a node that is neither a planned layer nor a residual Add"
            weight = _weight(user)
            if weight is None:
                return "a reading layer's weight is not constant"
            delta = c * _weight_sums(user, weight)
            border = None
            if user.op_type == "Conv" and _padded(user):
                if self.border == "skip":
                    return "read by a padded Conv (--centering pointwise)"
                border = _border_map(user, weight, dqs[0].outputs[0], c)
                if border is None:
                    return "read by a padded Conv with auto_pad or a dynamic spatial shape"
            layer = tagged[0]
            head, total = plan.consumers.get(layer, (None, 0.0))
            plan.consumers[layer] = (head or branches(graph, layer)[0], total + delta)
            if border is not None:
                plan.borders[layer] = plan.borders.get(layer, 0.0) + border
        return plan

    def _apply(self, graph: ir.Graph, p: _Centring, names: UniqueNames) -> None:
        dtype = numpy_dtype(p.q.inputs[1].dtype)
        scale = add_initializer(graph, names, f"{p.q.inputs[0].name}/centred_scale",
                                np.array(p.c / _QMAX, dtype))
        for node in (p.q, p.dq):
            node.replace_input_with(1, scale)
        # what the Q now reads, and whose outputs moved, for tools that compare tensors with
        # the float model's (rexdeploy.evaluate.localize): value_new = value_original + shift
        p.q.metadata_props[INPUT_SHIFT_KEY] = repr(-p.c)
        node, layer = p.producer
        add_to_bias(graph, node, layer, np.full(_out_channels(node), -p.c), names)
        _add_output_shift(node, -p.c)
        _shift_clip(graph, p.clip, p.c, names)
        for layer, (head, delta) in p.consumers.items():
            add_to_bias(graph, head, layer, delta, names)
        for head, layer in p.skips:
            add_to_bias(graph, head, layer, np.full(_out_channels(head), p.c), names)
            _add_output_shift(head, p.c)
        for layer, border in p.borders.items():
            out = layer_output(branches(graph, layer)[0])
            append_constant_add(graph, out, layer, border.astype(numpy_dtype(out.dtype)),
                                "border", names)
            self.stats["border_adds"] += 1


def centred_tensors(model: ir.Model) -> set[str]:
    """The tensors this pass centred in `model`: what its QuantizeLinear nodes carrying an input
    shift read (the plan's activation tensor names)."""
    return set(shifts(model)[0])


def shifts(model: ir.Model) -> tuple[dict[str, float], dict[str, float]]:
    """What this pass recorded in `model`'s node metadata: ({tensor: shift} of the tensors the
    centred Q nodes read, {layer: shift} of the layers whose output moved); value in the Q/DQ
    model = the float model's value + shift."""
    ins, outs = {}, {}
    for node in model.graph:
        if INPUT_SHIFT_KEY in node.metadata_props:
            ins[node.inputs[0].name] = float(node.metadata_props[INPUT_SHIFT_KEY])
        if OUTPUT_SHIFT_KEY in node.metadata_props:
            layer = (layer_of(node) or (node.name,))[0]
            outs[layer] = float(node.metadata_props[OUTPUT_SHIFT_KEY])
    return ins, outs


def _add_output_shift(node: ir.Node, shift: float) -> None:
    total = float(node.metadata_props.get(OUTPUT_SHIFT_KEY, "0")) + shift
    node.metadata_props[OUTPUT_SHIFT_KEY] = repr(total)


def _nonneg_source(value: ir.Value) -> ir.Node | None:
    """The Clip(min >= 0) or Relu that makes `value` non-negative, reached through single-use
    shift-commuting nodes, or None."""
    while True:
        node = value.producer()
        if node is None:
            return None
        if node.op_type == "Relu":
            return node
        if node.op_type == "Clip":
            low = node.inputs[1] if len(node.inputs) > 1 else None
            bound = const_array(low) if low is not None else None
            return node if bound is not None and float(bound) >= 0 else None
        if node.op_type not in _COMMUTING or node.inputs[0] is None:
            return None
        value = node.inputs[0]
        if len(value.uses()) != 1 or value.is_graph_output():
            return None


def _bias_owner(y: ir.Value) -> tuple[ir.Node, str] | None:
    """(node whose bias shifts y, layer name) when y is read by one node only (the Clip): a
    layer's output (`_layer_side`), or a residual Add's, x + y2, whose layer side y2 (read by
    the Add alone) takes the shift (ResNet: ReLU(x + f(x)))."""
    owner = _layer_side(y)
    if owner is not None:
        return owner
    node = y.producer()
    if node is None or node.op_type != "Add" or layer_of(node) is not None \
            or len(node.inputs) != 2 or len(y.uses()) != 1 or y.is_graph_output():
        return None
    for side in node.inputs:
        owner = _layer_side(side) if side is not None else None
        if owner is not None:
            return owner
    return None


def _layer_side(y: ir.Value) -> tuple[ir.Node, str] | None:
    """(node whose bias sets y, layer name) when y is a layer's whole output and one node reads
    it: a planned layer's order-1 node, or a float Conv/Gemm with a constant or no bias."""
    node = y.producer()
    if node is None or len(y.uses()) != 1 or y.is_graph_output():
        return None
    tagged = layer_of(node)
    if tagged is not None:
        head = _head_of(node, tagged[0])
        if head is not None and (layer_output(head) is y or tagged[1] in ("bias", "border")):
            return head, tagged[0]
        return None
    if node.op_type in ("Conv", "Gemm") and node.outputs[0] is y:
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if bias is None or const_array(bias) is not None:
            return node, node.name
    return None


def _head_of(node: ir.Node, layer: str) -> ir.Node | None:
    """The order-1 (or only) node of `layer`, found from one of its nodes."""
    graph = node.graph
    found = branches(graph, layer) if graph is not None else []
    return found[0] if found else None


def _weight(node: ir.Node) -> np.ndarray | None:
    """The float weight a Conv/Gemm/MatMul computes with: DQ(constant codes) or a constant,
    possibly behind a Cast; float64."""
    value = node.inputs[1]
    src = value.producer() if value is not None else None
    if src is not None and src.op_type == "Cast":
        value, src = src.inputs[0], src.inputs[0].producer()
    if src is None or src.op_type != "DequantizeLinear":
        array = const_array(value)
        return None if array is None else np.asarray(array, np.float64)
    codes = const_array(src.inputs[0])
    scale = const_array(src.inputs[1])
    zero = const_array(src.inputs[2]) if len(src.inputs) > 2 and src.inputs[2] is not None \
        else None
    if codes is None or scale is None or (len(src.inputs) > 2 and src.inputs[2] is not None
                                          and zero is None):
        return None
    codes = np.asarray(codes, np.float64)
    if zero is not None:
        codes = codes - np.asarray(zero, np.float64)
    scale = np.asarray(scale, np.float64)
    if scale.size == 1:
        return codes * scale.reshape(())
    axis = src.attributes.get_int("axis", 1) % codes.ndim
    block = src.attributes.get_int("block_size", 0)
    if block:
        scale = np.repeat(scale, block, axis=axis)[tuple(
            slice(0, n) if i == axis else slice(None) for i, n in enumerate(codes.shape))]
        return codes * scale
    shape = [1] * codes.ndim
    shape[axis] = -1
    return codes * scale.reshape(shape)


def _weight_sums(node: ir.Node, w: np.ndarray) -> np.ndarray:
    """sum(W) per output channel: what a shift of every input element by 1 adds to the output."""
    if node.op_type == "Conv":
        return w.reshape(w.shape[0], -1).sum(axis=1)
    if node.op_type == "Gemm":
        w = w.T if node.attributes.get_int("transB", 0) else w
        return node.attributes.get_float("alpha", 1.0) * w.sum(axis=0)
    return w.reshape(-1, w.shape[-1]).sum(axis=0)  # MatMul [..., K, N]


def _out_channels(node: ir.Node) -> int:
    return _weight_sums(node, _weight(node)).size


def _padded(conv: ir.Node) -> bool:
    auto = conv.attributes.get_string("auto_pad", "NOTSET")
    return auto not in ("NOTSET", "VALID") or any(conv.attributes.get_ints("pads", []) or [])


def _border_map(conv: ir.Node, w: np.ndarray, x: ir.Value, c: float) -> np.ndarray | None:
    """c * (what the padding removes from sum(W)) per output position: [1, Cout, *out]; zero
    where the window lies inside. None without static spatial dims or with auto_pad."""
    if conv.attributes.get_string("auto_pad", "NOTSET") != "NOTSET" or x.shape is None:
        return None
    spatial = list(x.shape)[2:]
    if not spatial or not all(isinstance(d, int) for d in spatial):
        return None
    k = w.shape[2:]
    nd = len(k)
    strides = conv.attributes.get_ints("strides", [1] * nd)
    dilations = conv.attributes.get_ints("dilations", [1] * nd)
    pads = conv.attributes.get_ints("pads", [0] * 2 * nd)
    taps = w.sum(axis=1)                                   # [Cout, *k]: summed over inputs
    outs = [(spatial[i] + pads[i] + pads[nd + i] - dilations[i] * (k[i] - 1) - 1) // strides[i]
            + 1 for i in range(nd)]
    inside = np.zeros((w.shape[0], *outs))
    for tap in np.ndindex(*k):
        valid = np.ones(outs, bool)
        for i in range(nd):
            pos = np.arange(outs[i]) * strides[i] + tap[i] * dilations[i] - pads[i]
            ok = (pos >= 0) & (pos < spatial[i])
            valid &= ok.reshape([-1 if j == i else 1 for j in range(nd)])
        inside += taps[(slice(None), *tap)].reshape(-1, *[1] * nd) * valid
    missing = taps.reshape(w.shape[0], -1).sum(axis=1).reshape(-1, *[1] * nd) - inside
    return (-c * missing)[None]


def _shift_clip(graph: ir.Graph, clip: ir.Node, c: float, names: UniqueNames) -> None:
    """Clip(y, lo, hi) -> Clip(y, lo - c, hi - c); Relu(y) -> Clip(y, -c)."""
    dtype = numpy_dtype(clip.outputs[0].dtype)
    if clip.op_type == "Relu":  # same node, same output name: the plan keeps naming it
        clip.op_type = "Clip"
        clip.resize_inputs(2)
        clip.replace_input_with(1, add_initializer(graph, names, f"{clip.name}/centred_min",
                                                   np.array(-c, dtype)))
        return
    for i in (1, 2):
        bound = clip.inputs[i] if len(clip.inputs) > i else None
        if bound is None:
            continue
        shifted = np.asarray(const_array(bound), np.float64) - c
        clip.replace_input_with(i, add_initializer(graph, names, f"{clip.name}/centred_bound",
                                                   shifted.astype(dtype)))
