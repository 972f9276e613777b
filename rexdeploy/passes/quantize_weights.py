"""Replace the float weights of the planned layers by DequantizeLinear of integer codes.

Requires: every `LayerPlan` names a Conv/Gemm/MatMul node of the graph whose weight input is the
float constant `plan.weight`, with codes of the weight's shape in [-(2^(b-1)-1), 2^(b-1)-1].
Ensures: every planned layer reads its weight(s) from DequantizeLinear with constant int8 (or
INT4) codes and no/zero zero point, one Conv/Gemm/MatMul per order, and the float weight is gone
from those nodes (and from the graph once nothing else reads it).

With K = len(orders) > 1 the layer becomes K nodes reading the same input, order 1 keeping the
node's name and bias, summed by Add into the original output value:

    x -> Conv(DQ(codes1, s1), bias) -> y1 --+
    x -> Conv(DQ(codes2, s2))       -> y2 --Add--> y        (original name of y)

The dequantized orders are never summed into one float weight: backends fold that into a float
weight and run the layer in float (measured on OpenVINO, docs/algorithms.md section 7).

A group-sparse order (`WeightOrder.channels`) is lowered in one of two forms (`sparse_form`):
"dense" keeps the full weight with zero rows (same graph as a dense order); "compact" computes
only the kept channels (a Conv/MatMul with fewer filters; a depthwise Conv first Gathers its kept
input channels) and adds them into the right channels with ScatterElements(reduction="add"):

    x -> Conv(DQ(codes2[kept], s2[kept])) -> y2 [N, k, H, W] --+
    y1 -------------------------------------------------------ScatterElements(axis=1, add)-> y

Which form is faster depends on the runtime (tools/bench/rex_latency.py measures it); a
grouped, non-depthwise Conv always takes the dense form.

A lookup-table order (PowerQuant: `WeightOrder.table`) has no integer kernel anywhere, and
OpenVINO's CPU plugin decompresses even its own codebook form (NNCF CODEBOOK: Gather from a
table) to f32 weights [measured, openvino 2026.4.1]. It is lowered as the float weight
scale * table[codes + qmax], stored in `table_dtype` (float32; float16 for TensorRT) and Cast
to the layer's type; the plan keeps the codes and the table, and the build report lists the
layer as computing in float.

Codes are INT4 tensors only for MatMul/Gemm with bits <= 4 and `int4_matmul=True`; Conv codes
stay int8 tensors whatever the bits, because OpenVINO runs int8 kernels on those but decompresses
INT4 convolution weights to float. `int4_weight_only=True` (TensorRT, whose INT4 is weight-only)
also keeps int8 tensors for a MatMul/Gemm whose input is quantized (W4A8: an int8 layer with
4-bit codes).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir

from calib_free.plan import LayerPlan, QuantPlan, WeightOrder
from rexdeploy.planning.analyze import matmul_bias
from rexdeploy.passes.qdq_nodes import (
    FLOAT_DTYPES, UniqueNames, add_initializer, branches, const_array, dq_zero_point_is_zero,
    dequantize_node, layer_of, numpy_dtype, tag, value_dtype)

_WEIGHT_INPUT = 1
_BIAS_INPUT = 2
SPARSE_FORMS = ("dense", "compact", "gather")


class QuantizeWeightsPass(ir.passes.InPlacePass):
    """Float weight -> DequantizeLinear(codes, scale) per order; orders as parallel branches."""

    def __init__(self, plan: QuantPlan, *, int4_matmul: bool = False,
                 int4_weight_only: bool = False, sparse_form: str = "dense",
                 table_dtype: str = "float32"):
        super().__init__()
        if table_dtype not in ("float32", "float16"):
            raise ValueError(f"table_dtype {table_dtype!r}: use float32 or float16")
        self.table_dtype = np.dtype(table_dtype)
        if sparse_form not in SPARSE_FORMS:
            raise ValueError(f"sparse_form {sparse_form!r}: use one of {SPARSE_FORMS}")
        self.plan = plan
        self.int4_matmul = int4_matmul
        self.int4_weight_only = int4_weight_only
        self.sparse_form = sparse_form

    def requires(self, model: ir.Model) -> None:
        names = [lp.name for lp in self.plan.layers]
        if len(set(names)) != len(names):
            raise ir.passes.PreconditionError("the plan lists a layer twice")
        nodes = {n.name: n for n in model.graph}
        for lp in self.plan.layers:
            problem = _plan_problem(lp, nodes.get(lp.name))
            if problem:
                raise ir.passes.PreconditionError(f"layer {lp.name!r}: {problem}")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        names = UniqueNames(graph)
        nodes = {n.name: n for n in graph}
        weights = set()
        for lp in self.plan.layers:
            node = nodes[lp.name]
            weights.add(node.inputs[_WEIGHT_INPUT])
            int4 = self.int4_matmul and not (self.int4_weight_only
                                             and self.plan.activation(lp.input) is not None)
            _lower_layer(graph, node, lp, names, int4, self.sparse_form, self.table_dtype)
        for value in weights:
            _drop_if_unused(graph, value)
        return ir.passes.PassResult(model, bool(self.plan.layers))

    def ensures(self, model: ir.Model) -> None:
        for lp in self.plan.layers:
            nodes = branches(model.graph, lp.name)
            if len(nodes) != len(lp.orders):
                raise ir.passes.PostconditionError(
                    f"layer {lp.name!r}: {len(nodes)} branches for {len(lp.orders)} orders")
            for node, order in zip(nodes, lp.orders):
                problem = _weight_dq_problem(node.inputs[_WEIGHT_INPUT]) \
                    if order.table is None else _weight_table_problem(node.inputs[_WEIGHT_INPUT])
                if problem:
                    raise ir.passes.PostconditionError(f"{node.name!r}: {problem}")


def _plan_problem(lp: LayerPlan, node: ir.Node | None) -> str | None:
    if node is None:
        return "no node of that name in the graph"
    if node.op_type != lp.op:
        return f"the plan says {lp.op}, the graph has {node.op_type}"
    if not lp.orders:
        return "no weight order"
    weight = node.inputs[_WEIGHT_INPUT] if len(node.inputs) > _WEIGHT_INPUT else None
    if weight is None or weight.name != lp.weight:
        return f"weight input is {None if weight is None else weight.name!r}, not {lp.weight!r}"
    array = const_array(weight)
    if array is None or value_dtype(weight) not in FLOAT_DTYPES:
        return f"weight {lp.weight!r} is not a float constant"
    for k, order in enumerate(lp.orders, 1):
        if order.channels is not None and k == 1:
            return "order 1 must cover every channel"
        if order.codes.shape != array.shape:
            return f"order {k} codes {order.codes.shape} != weight {array.shape}"
        if not np.issubdtype(order.codes.dtype, np.integer) or not 2 <= order.bits <= 8:
            return f"order {k}: codes must be integers of 2..8 bits"
        qmax = 2 ** (order.bits - 1) - 1
        if np.abs(order.codes.astype(np.int32)).max(initial=0) > qmax:
            return f"order {k}: codes exceed +-{qmax} for {order.bits} bits"
        problem = _scale_problem(order)
        if problem:
            return f"order {k}: {problem}"
    channels = _out_channels(node, array)
    if lp.bias_shift is not None and lp.bias_shift.size != channels:
        return f"bias_shift has {lp.bias_shift.size} values for {channels} channels"
    if lp.input_scale is not None:
        c = np.asarray(lp.input_scale)
        if lp.op not in ("MatMul", "Gemm") or c.ndim != 1 or \
                not (np.isfinite(c).all() and (c > 0).all()):
            return "input_scale must be a vector of positive finite numbers on a MatMul/Gemm"
    return None


def _scale_problem(order: WeightOrder) -> str | None:
    scale = np.asarray(order.scale)
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        return "scales must be positive and finite"
    shape = order.codes.shape
    if order.block_size:
        want = tuple(-(-n // order.block_size) if i == order.axis else n
                     for i, n in enumerate(shape))
        if order.axis is None or scale.shape != want:
            return f"blocked scale shape {scale.shape}, expected {want}"
    elif scale.size > 1 and (order.axis is None or scale.shape != (shape[order.axis],)):
        return f"per-channel scale shape {scale.shape} does not match axis {order.axis}"
    return None


def _lower_layer(graph: ir.Graph, node: ir.Node, lp: LayerPlan, names: UniqueNames,
                 int4_matmul: bool, sparse_form: str, table_dtype=np.dtype("float32")) -> None:
    dtype = value_dtype(node.inputs[_WEIGHT_INPUT])
    int4 = int4_matmul and lp.op in ("MatMul", "Gemm")
    orders = [_compact(node, order) if sparse_form != "dense" else None
              for order in lp.orders]
    dqs = [_weight_dq(graph, names, lp, k, compact or order, dtype, int4 and order.bits <= 4)
           if order.table is None else
           _weight_table(graph, names, lp, k, compact or order, dtype, table_dtype)
           for k, (order, compact) in enumerate(zip(lp.orders, orders), 1)]
    graph.insert_before(node, dqs)
    tag(node, lp.name, "order1")
    node.replace_input_with(_WEIGHT_INPUT, dqs[0].outputs[0])
    if lp.input_scale is not None:
        _scale_input(graph, node, lp, names)
    if len(dqs) > 1:
        _add_orders(graph, node, lp, dqs[1:], names,
                    [None if c is None else lp.orders[k].channels
                     for k, c in enumerate(orders[1:], 1)], sparse_form)
    if lp.bias_shift is not None:
        _shift_bias(graph, node, lp, names)
    elif lp.op == "MatMul":
        _claim_bias_add(node, lp)


def _scale_input(graph: ir.Graph, node: ir.Node, lp: LayerPlan, names: UniqueNames) -> None:
    """The layer reads x * input_scale (per channel, last axis) through a Mul of its own
    (tagged "scale"); every order then reads that product."""
    x = node.inputs[0]
    dtype = value_dtype(x) if x.dtype in FLOAT_DTYPES else ir.DataType.FLOAT
    factor = add_initializer(graph, names, f"{lp.name}/input_scale",
                             np.asarray(lp.input_scale, numpy_dtype(dtype)))
    out = ir.Value(name=names.value(f"{lp.name}/scaled_input"), shape=x.shape,
                   type=ir.TensorType(dtype))
    mul = ir.Node("", "Mul", [x, factor], outputs=[out], name=names.node(f"{lp.name}/scale"))
    tag(mul, lp.name, "scale")
    graph.insert_before(node, [mul])
    node.replace_input_with(0, out)


def _out_axis(node: ir.Node) -> int:
    if node.op_type == "Conv" or (node.op_type == "Gemm" and node.attributes.get_int("transB", 0)):
        return 0
    return 1


def _output_channel_axis(node: ir.Node, rank: int) -> int:
    """Where a layer's output channels sit in its output: 1 for a convolution (NCHW), the last
    axis for Gemm/MatMul."""
    return 1 if node.op_type in ("Conv", "ConvTranspose") else rank - 1


def _compact(node: ir.Node, order: WeightOrder) -> WeightOrder | None:
    """`order` restricted to its kept channels, or None when it stays dense (it covers every
    channel, or the layer is a grouped Conv that is not depthwise, or its rank is unknown)."""
    if order.channels is None:
        return None
    if node.op_type == "Conv":
        groups = node.attributes.get_int("group", 1)
        if groups != 1 and not (groups == order.codes.shape[0] and order.codes.shape[1] == 1):
            return None
    out = node.outputs[0]
    if out.shape is None:
        return None
    axis = _out_axis(node)
    idx = np.asarray(order.channels, np.int64)
    codes = np.take(order.codes, idx, axis=axis)
    scale = np.asarray(order.scale)
    if order.block_size:  # blocked along the input axis: scales [.., Cout] sliced like codes
        scale = np.take(scale, idx, axis=axis)
    elif scale.size > 1:
        scale = scale[idx]
    return WeightOrder(codes, scale, order.bits, order.axis, order.block_size, idx)


def _weight_dq(graph: ir.Graph, names: UniqueNames, lp: LayerPlan, k: int, order: WeightOrder,
               dtype: ir.DataType, int4: bool) -> ir.Node:
    """DequantizeLinear(codes, scale) for order k, with a fresh codes and scale initializer."""
    base = f"{lp.name}/order{k}"
    codes = order.codes.astype(ml_dtypes.int4 if int4 else np.int8)
    scale = np.asarray(order.scale).astype(numpy_dtype(dtype))
    per_tensor = scale.size == 1 and not order.block_size
    if per_tensor:
        scale = scale.reshape(())  # DequantizeLinear's per-tensor form is a scalar scale
    codes_value = add_initializer(graph, names, f"{base}/weight_codes", codes)
    scale_value = add_initializer(graph, names, f"{base}/weight_scale", scale)
    axis = None if per_tensor or order.axis is None else order.axis
    return dequantize_node(names.node(f"{base}/weight_dq"), codes_value, scale_value,
                           axis=axis, block_size=order.block_size,
                           out_name=names.value(f"{base}/weight"), out_dtype=dtype,
                           shape=ir.Shape(codes.shape))


def _weight_table(graph: ir.Graph, names: UniqueNames, lp: LayerPlan, k: int,
                  order: WeightOrder, dtype: ir.DataType, storage: np.dtype) -> ir.Node:
    """Cast(scale * table[codes + qmax]) for a lookup-table order: the float weight, stored as
    `storage`, cast to the layer's float type (a no-op Cast when they match)."""
    base = f"{lp.name}/order{k}"
    weight = add_initializer(graph, names, f"{base}/weight_table",
                             order.dequantize().astype(storage))
    out = ir.Value(name=names.value(f"{base}/weight"), shape=ir.Shape(order.codes.shape),
                   type=ir.TensorType(dtype))
    return ir.Node("", "Cast", [weight], [ir.AttrInt64("to", int(dtype))], outputs=[out],
                   name=names.node(f"{base}/weight_cast"))


def _weight_table_problem(weight: ir.Value | None) -> str | None:
    cast = weight.producer() if weight is not None else None
    if cast is None or cast.op_type != "Cast" or const_array(cast.inputs[0]) is None:
        return "lookup-table weight is not a Cast of a constant"
    return None


def _add_orders(graph: ir.Graph, node: ir.Node, lp: LayerPlan, dqs: list[ir.Node],
                names: UniqueNames, compact: list[np.ndarray | None],
                sparse_form: str) -> None:
    """Orders 2..K as copies of `node` without bias, summed into `node`'s original output
    (Add for a dense order, ScatterElements(add) for a compact one)."""
    out = node.outputs[0]
    uses = list(out.uses())
    graph_outputs = [i for i, v in enumerate(graph.outputs) if v is out]
    original_name = out.name
    out.name = names.value(f"{original_name}/order1")
    total, new_nodes = out, []
    for k, (dq, channels) in enumerate(zip(dqs, compact), 2):
        prefix = f"{lp.name}/order{k}"
        x = node.inputs[0]
        attrs = [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()]
        shape = out.shape
        if channels is not None:
            shape, x, attrs, gather = _compact_inputs(graph, node, x, attrs, channels, names,
                                                      prefix)
            new_nodes += gather
        branch_out = ir.Value(name=names.value(f"{original_name}/order{k}"), shape=shape,
                              type=out.type)
        branch = ir.Node(node.domain, node.op_type, [x, dq.outputs[0]], attrs,
                         outputs=[branch_out], name=names.node(prefix))
        tag(branch, lp.name, f"order{k}")
        last = k == len(dqs) + 1
        sum_out = ir.Value(name=original_name if last else names.value(f"{original_name}/sum{k}"),
                           shape=out.shape, type=out.type)
        if channels is None:
            combine = [ir.Node("", "Add", [total, branch_out], outputs=[sum_out],
                               name=names.node(f"{lp.name}/sum{k}"))]
        else:
            place = _scatter_add if sparse_form == "compact" else _gather_add
            combine = place(graph, node, total, branch_out, sum_out, channels, names,
                            f"{lp.name}/sum{k}")
        for n in combine:
            tag(n, lp.name, "sum")
        new_nodes += [branch] + combine
        total = sum_out
    graph.insert_after(node, new_nodes)
    for user, index in uses:
        user.replace_input_with(index, total)
    for i in graph_outputs:
        graph.outputs[i] = total


def _compact_inputs(graph: ir.Graph, node: ir.Node, x: ir.Value, attrs: list, channels,
                    names: UniqueNames, prefix: str):
    """(branch output shape, branch input, attributes, extra nodes) for a compact order: a
    depthwise Conv reads only its kept input channels (Gather) and has `group` = kept."""
    out = node.outputs[0]
    axis = _output_channel_axis(node, len(out.shape))
    dims = list(out.shape)
    dims[axis] = len(channels)
    extra = []
    if node.op_type == "Conv" and node.attributes.get_int("group", 1) != 1:
        idx = add_initializer(graph, names, f"{prefix}/channels", np.asarray(channels, np.int64))
        in_dims = list(x.shape) if x.shape is not None else None
        if in_dims is not None:
            in_dims[1] = len(channels)
        gathered = ir.Value(name=names.value(f"{prefix}/input"), type=x.type,
                            shape=None if in_dims is None else ir.Shape(in_dims))
        gather = ir.Node("", "Gather", [x, idx], [ir.AttrInt64("axis", 1)],
                         outputs=[gathered], name=names.node(f"{prefix}/gather"))
        tag(gather, prefix.rsplit("/order", 1)[0], "gather")
        extra.append(gather)
        x = gathered
        attrs = [a for a in attrs if a.name != "group"] + [ir.AttrInt64("group", len(channels))]
    return ir.Shape(dims), x, attrs, extra


def _gather_add(graph: ir.Graph, node: ir.Node, total: ir.Value, part: ir.Value,
                result: ir.Value, channels, names: UniqueNames, prefix: str) -> list[ir.Node]:
    """result = total + Gather(Concat(part, 0), map): `map` sends each kept channel to its
    column of `part` and every other channel to an all-zero column."""
    rank = len(node.outputs[0].shape)
    axis = _output_channel_axis(node, rank)
    count = node.outputs[0].shape[axis]
    mapping = np.full(count, len(channels), np.int64)
    mapping[np.asarray(channels, np.int64)] = np.arange(len(channels))
    map_value = add_initializer(graph, names, f"{prefix}/map", mapping)
    starts = add_initializer(graph, names, f"{prefix}/start", np.array([0], np.int64))
    ends = add_initializer(graph, names, f"{prefix}/end", np.array([1], np.int64))
    axes = add_initializer(graph, names, f"{prefix}/axis", np.array([axis], np.int64))

    def value(base, dims=None):
        return ir.Value(name=names.value(f"{prefix}/{base}"), type=part.type,
                        shape=None if dims is None else ir.Shape(dims))

    one = list(part.shape)
    one[axis] = 1
    wide = list(part.shape)
    wide[axis] = len(channels) + 1
    first, zero, padded, full = value("first", one), value("zero", one), value("padded", wide), \
        value("full", list(node.outputs[0].shape))
    return [
        ir.Node("", "Slice", [part, starts, ends, axes], outputs=[first],
                name=names.node(f"{prefix}/first")),
        ir.Node("", "Sub", [first, first], outputs=[zero], name=names.node(f"{prefix}/zero")),
        ir.Node("", "Concat", [part, zero], [ir.AttrInt64("axis", axis)], outputs=[padded],
                name=names.node(f"{prefix}/pad")),
        ir.Node("", "Gather", [padded, map_value], [ir.AttrInt64("axis", axis)],
                outputs=[full], name=names.node(f"{prefix}/place")),
        ir.Node("", "Add", [total, full], outputs=[result], name=names.node(prefix)),
    ]


def _scatter_add(graph: ir.Graph, node: ir.Node, total: ir.Value, part: ir.Value,
                 result: ir.Value, channels, names: UniqueNames, prefix: str) -> list[ir.Node]:
    """result = total with `part` added into `channels` along the channel axis."""
    rank = len(node.outputs[0].shape)
    axis = _output_channel_axis(node, rank)
    index_shape = [1] * rank
    index_shape[axis] = len(channels)
    idx = add_initializer(graph, names, f"{prefix}/index",
                          np.asarray(channels, np.int64).reshape(index_shape))
    shape = ir.Value(name=names.value(f"{prefix}/shape"), type=ir.TensorType(ir.DataType.INT64),
                     shape=ir.Shape([rank]))
    expanded = ir.Value(name=names.value(f"{prefix}/indices"),
                        type=ir.TensorType(ir.DataType.INT64), shape=part.shape)
    return [
        ir.Node("", "Shape", [part], outputs=[shape], name=names.node(f"{prefix}/shape")),
        ir.Node("", "Expand", [idx, shape], outputs=[expanded],
                name=names.node(f"{prefix}/expand")),
        ir.Node("", "ScatterElements", [total, expanded, part],
                [ir.AttrInt64("axis", axis), ir.AttrString("reduction", "add")],
                outputs=[result], name=names.node(prefix)),
    ]


def _shift_bias(graph: ir.Graph, node: ir.Node, lp: LayerPlan, names: UniqueNames) -> None:
    """Subtract the plan's bias_shift [Cout] from the layer's bias (creating one if needed)."""
    add_to_bias(graph, node, lp.name, -np.asarray(lp.bias_shift, np.float64).ravel(), names)


def add_to_bias(graph: ir.Graph, node: ir.Node, layer: str, delta: np.ndarray,
                names: UniqueNames) -> None:
    """bias += delta [Cout] for the layer whose order-1 (or only) node is `node`: a Conv/Gemm's
    bias input (created if missing; a Gemm adds beta * C), else a MatMul's bias Add (created if
    missing) after the layer's summed output. Used by QuantizeWeightsPass (data-free bias
    correction) and CenterActivationsPass (the centring shift)."""
    dtype = numpy_dtype(value_dtype(node.inputs[_WEIGHT_INPUT]))
    delta = np.asarray(delta, np.float64).ravel()
    if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
        if node.op_type == "Gemm":
            delta = delta / node.attributes.get_float("beta", 1.0)
        bias = node.inputs[_BIAS_INPUT] if len(node.inputs) > _BIAS_INPUT else None
        old = np.zeros(delta.shape) if bias is None else const_array(bias).astype(np.float64)
        new = add_initializer(graph, names, f"{layer}/bias", (old + delta).astype(dtype))
        if len(node.inputs) <= _BIAS_INPUT:
            node.resize_inputs(_BIAS_INPUT + 1)
        node.replace_input_with(_BIAS_INPUT, new)
        if bias is not None:
            _drop_if_unused(graph, bias)
        return
    out = layer_output(node)
    match = matmul_bias(out, delta.size)
    if match is not None:
        add, index = match
        old = const_array(add.inputs[index])
        new_array = (old.astype(np.float64) + delta.reshape(old.shape)).astype(old.dtype)
        old_value = add.inputs[index]
        add.replace_input_with(index, add_initializer(graph, names, f"{layer}/bias", new_array))
        _drop_if_unused(graph, old_value)
        tag(add, layer, "bias")
        return
    append_constant_add(graph, out, layer, delta.astype(dtype), "bias", names)


def append_constant_add(graph: ir.Graph, out: ir.Value, layer: str, array: np.ndarray,
                        role: str, names: UniqueNames) -> None:
    """out -> Add(out, array), the Add tagged (layer, role): it takes over out's uses, graph
    outputs and name (out becomes '<name>/no_<role>'). A MatMul's missing bias ("bias"), a
    centred input's border correction after a padded Conv ("border")."""
    uses = list(out.uses())
    graph_outputs = [i for i, v in enumerate(graph.outputs) if v is out]
    original_name = out.name
    out.name = names.value(f"{original_name}/no_{role}")
    constant = add_initializer(graph, names, f"{layer}/{role}", array)
    result = ir.Value(name=original_name, shape=out.shape, type=out.type)
    add = ir.Node("", "Add", [out, constant], outputs=[result],
                  name=names.node(f"{layer}/{role}_add"))
    tag(add, layer, role)
    graph.insert_after(out.producer(), [add])
    for user, index in uses:
        user.replace_input_with(index, result)
    for i in graph_outputs:
        graph.outputs[i] = result


def _claim_bias_add(node: ir.Node, lp: LayerPlan) -> None:
    """Tag a MatMul's existing bias Add as part of the layer (residual detection needs it)."""
    out = layer_output(node)
    channels = lp.orders[0].codes.shape[-1]
    match = matmul_bias(out, channels)
    if match is not None:
        tag(match[0], lp.name, "bias")


def layer_output(node: ir.Node) -> ir.Value:
    """The value holding the layer's (summed) result: order 1's output, or the last Add's that
    sums its orders or its split diagonal (rexdeploy/passes/split_identity.py)."""
    out = node.outputs[0]
    layer = layer_of(node)[0]
    while True:
        uses = list(out.uses())
        sums = [u for u, _ in uses if layer_of(u) in ((layer, "sum"), (layer, "diagonal"))]
        if not sums:
            return out
        out = sums[0].outputs[0]


def _out_channels(node: ir.Node, weight: np.ndarray) -> int:
    return weight.shape[_out_axis(node)]


def _weight_dq_problem(weight: ir.Value | None) -> str | None:
    dq = weight.producer() if weight is not None else None
    if dq is None or dq.op_type != "DequantizeLinear":
        return "weight does not come from DequantizeLinear"
    codes = dq.inputs[0]
    if const_array(codes) is None or codes.dtype not in (ir.DataType.INT8, ir.DataType.INT4):
        return "DequantizeLinear codes are not a constant int8/int4 tensor"
    if not dq_zero_point_is_zero(dq):
        return "weight zero point is not 0"
    return None


def _drop_if_unused(graph: ir.Graph, value: ir.Value) -> None:
    """Remove an initializer (or the Constant node producing it) that nothing reads any more."""
    if len(value.uses()) or value.is_graph_output():
        return
    if value.is_initializer() and value.name in graph.initializers:
        del graph.initializers[value.name]
        return
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant":
        graph.remove(producer, safe=True)
