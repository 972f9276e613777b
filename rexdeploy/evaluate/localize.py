"""First-bad-layer localisation: per-layer fidelity of the Q/DQ model against the float model.

    localize(float_onnx, qdq_onnx, samples, threshold_db=20.0, top=5) -> dict

What Polygraphy's `--onnx-outputs mark all` does for TensorRT: both ONNX models run side by side in
ONNX Runtime (graph optimisations off: the Q/DQ graph's own semantics) on the same inputs with
every quantized layer's output marked as a graph output, and each layer's output is compared in
topological order. Two numbers per layer:

  sqnr_db        the quantized model's layer output vs the float model's: the error accumulated
                 by this layer and everything before it (where the damage shows up).
  local_sqnr_db  the layer's own Q/DQ subgraph (input Q/DQ, weight orders, bias) run on the float
                 model's input to that layer, vs the float output: its own quantization error in
                 isolation (which layer to keep in higher precision).

and one number per quantized input tensor, on the first IMPACT_SAMPLES samples:

  output_sqnr_if_float_db  the network's output SQNR (its floating-point outputs pooled) with
                 that tensor's Q/DQ bypassed and everything else as built: what keeping it float
                 (`--mixed-precision activations`, `--exclude` of its readers) would buy. A
                 layer's own error (local SQNR) and its share of the output error differ: on
                 MobileNetV2 the worst local SQNR (6 dB, late in the net) is worth +0.1 dB at
                 the output, the first depthwise input (41 dB locally) +1.1 dB.

A layer is matched by its output tensor: the lowering keeps the original output name of every
planned layer (the sum of its REx orders `<layer>/order<K>`, after the bias Add of a MatMul), and
BatchNorm is folded in both models (float.onnx is saved after folding).
Metrics are streamed (pooled sums per layer), so no activation is kept beyond one sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calib_free.metrics import power_db
from rexdeploy.errors import UserError
from rexdeploy.evaluate.fidelity import _fmt

DEFAULT_THRESHOLD_DB = 20.0
DEFAULT_TOP = 5
IMPACT_SAMPLES = 16  # samples the output impact of each quantized input is measured on


@dataclass(frozen=True)
class LayerTap:
    """A quantized layer as both graphs hold it: node name, op, input and output tensor names."""

    name: str
    op: str
    input: str
    output: str


class _Pooled:
    """Running pooled SQNR and per-sample cosine of one tensor over the samples."""

    def __init__(self):
        self.signal = 0.0
        self.noise = 0.0
        self.cosines: list[float] = []

    def add(self, ref: np.ndarray, test: np.ndarray) -> None:
        from rexdeploy.evaluate.fidelity import cosine

        r, t = np.asarray(ref, np.float64), np.asarray(test, np.float64)
        if r.shape != t.shape:
            raise UserError(f"layer output shapes differ: float {r.shape} vs quantized {t.shape}")
        self.signal += float(np.sum(r * r))
        self.noise += float(np.sum((t - r) ** 2))
        self.cosines.append(float(cosine(r.reshape(1, -1), t.reshape(1, -1))[0]))

    def sqnr_db(self) -> float | None:
        return power_db(self.signal, self.noise) if self.cosines else None

    def cosine_mean(self) -> float | None:
        return float(np.mean(self.cosines)) if self.cosines else None

    def cosine_min(self) -> float | None:
        return float(np.min(self.cosines)) if self.cosines else None


def quantized_layers(float_model, qdq_model) -> list[LayerTap]:
    """The planned layers of `qdq_model` (tagged by the lowering), in the float graph's
    topological order, whose input and output tensors exist in both models (onnx_ir models)."""
    from rexdeploy.planning.analyze import find_layers
    from rexdeploy.passes.qdq_nodes import layer_of

    planned = {tag[0] for node in qdq_model.graph if (tag := layer_of(node))}
    qdq_values = _value_names(qdq_model.graph)
    float_values = _value_names(float_model.graph)
    layers, _ = find_layers(float_model)
    taps = [LayerTap(layer.name, layer.op, layer.input, layer.output) for layer in layers
            if layer.name in planned]
    taps += _recurrent_taps(float_model, qdq_model) + _attention_taps(float_model, qdq_model)
    order = {node.name: i for i, node in enumerate(float_model.graph)}
    return sorted((t for t in taps if {t.input, t.output} <= qdq_values & float_values),
                  key=lambda t: order.get(t.name, 0))


def _recurrent_taps(float_model, qdq_model) -> list[LayerTap]:
    """The int8 LSTM/GRU layers (their W read through a DequantizeLinear in `qdq_model`), their
    output the hidden states (rexdeploy.planning.recurrent.state_output)."""
    from rexdeploy.planning.recurrent import RECURRENT_OPS, state_output

    quantized = {node.name for node in qdq_model.graph if node.op_type in RECURRENT_OPS
                 and len(node.inputs) > 1 and node.inputs[1] is not None
                 and (p := node.inputs[1].producer()) is not None
                 and p.op_type == "DequantizeLinear"}
    return [LayerTap(node.name, node.op_type, node.inputs[0].name, out.name)
            for node in float_model.graph
            if node.name in quantized and (out := state_output(node)) is not None]


def _attention_taps(float_model, qdq_model) -> list[LayerTap]:
    """The int8 attention MatMuls (rexdeploy.planning.attention: both inputs activations, both
    read through a DequantizeLinear in `qdq_model`); tapped at their first input (their local
    subgraph needs both, so they get no local SQNR)."""
    from rexdeploy.planning.attention import candidates

    quantized = {node.name for node in qdq_model.graph if node.op_type == "MatMul"
                 and all(v is not None and (p := v.producer()) is not None
                         and p.op_type == "DequantizeLinear" for v in node.inputs)}
    return [LayerTap(node.name, "MatMul", node.inputs[0].name, node.outputs[0].name)
            for node in candidates(float_model) if node.name in quantized]


def _value_names(graph) -> set[str]:
    names = {v.name for v in graph.inputs}
    for node in graph:
        names.update(v.name for v in node.outputs if v is not None)
    return names


def localize(float_onnx: str, qdq_onnx: str, samples: list[tuple[str, dict]], *,
             threshold_db: float = DEFAULT_THRESHOLD_DB, top: int = DEFAULT_TOP,
             local: bool = True, progress=None, device=None,
             device_tolerance_db: float = 1.0) -> dict:
    """Per-layer SQNR/cosine of `qdq_onnx` against `float_onnx` on `samples` ([(id, feeds)]).

    Returns {"threshold_db", "samples", "runtime", "layers": [per-layer rows in topological
    order], "first_bad": the first row whose accumulated sqnr_db < threshold_db (or None),
    "first_bad_local": same on local_sqnr_db, "worst": the `top` rows of lowest local SQNR
    (accumulated SQNR when local is unavailable), "worst_by"}. Rows: index, name, op, output,
    sqnr_db, cosine_mean, cosine_min, local_sqnr_db, local_cosine_mean (None where a layer's
    subgraph could not be cut out on its own). progress: called as progress(done, total).

    device: (name, factory) where factory(path of a Q/DQ ONNX) gives a runner (a context manager
    with `infer`) of the target device: the same marked Q/DQ model then also runs there, and each
    row gains device_sqnr_db (the device's layer output vs the float model's) and
    device_vs_reference_db (vs ONNX Runtime's); "first_device_loss" is the first row where the
    device loses more than `device_tolerance_db` against ONNX Runtime (rexdeploy.evaluate.fidelity.
    device_loss_db): where the runtime departs from what the plan means.
    """
    import onnx_ir as ir
    import onnxruntime as ort

    from rexdeploy.passes.center_activations import shifts

    if not samples:
        raise UserError("no samples for the per-layer comparison")
    if top < 1:
        raise UserError(f"--top {top} must be at least 1")
    float_ir, qdq_ir = ir.load(float_onnx), ir.load(qdq_onnx)
    taps = quantized_layers(float_ir, qdq_ir)
    if not taps:
        raise UserError("the artifact has no quantized layer to compare layer by layer")
    float_proto, qdq_proto = ir.to_proto(float_ir), ir.to_proto(qdq_ir)
    inputs = {v.name for v in float_ir.graph.inputs}
    float_marks = [t.output for t in taps] + [t.input for t in taps if t.input not in inputs]
    float_session = _session(_with_outputs(float_proto, float_marks), "float.onnx")
    qdq_session = _session(_with_outputs(qdq_proto, [t.output for t in taps]), "model.onnx")
    locals_ = _local_sessions(qdq_proto, taps, float_proto) if local else {}
    in_shift, out_shift = shifts(qdq_ir)  # centred activations (--target trt)
    kept = _ImpactSamples([o.name for o in float_proto.graph.output])
    acc = {t.name: _Pooled() for t in taps}
    loc = {t.name: _Pooled() for t in taps}
    dev = {t.name: (_Pooled(), _Pooled()) for t in taps} if device else {}
    with _device_runner(device, qdq_proto, [t.output for t in taps]) as on_device:
        for i, (_sid, feeds) in enumerate(samples):
            ref = _run(float_session, feeds)
            test = _run(qdq_session, feeds)
            ref.update({k: v for k, v in feeds.items() if k in inputs})
            if on_device is not None:
                got = on_device.infer(feeds)
                for t in taps:
                    shift = out_shift.get(t.name, 0.0)
                    y = np.asarray(got[t.output], np.float64) - shift
                    dev[t.name][0].add(ref[t.output], y)
                    dev[t.name][1].add(test[t.output].astype(np.float64) - shift, y)
            _accumulate(taps, ref, test, acc, loc, locals_, in_shift, out_shift)
            kept.add(feeds, ref, test)
            if progress:
                progress(i + 1, len(samples))
    impact = _input_impact(qdq_proto, taps, kept)
    overflow = _bias_overflow(qdq_proto, taps)
    rows = [_row(i, t, acc[t.name], loc[t.name]) | {"bias_int32_overflow": overflow.get(t.name),
                                                   "output_sqnr_if_float_db": impact.get(t.input)}
            | _device_row(dev.get(t.name)) for i, t in enumerate(taps)]
    result = summarize_layers(rows, threshold_db, top) | {
        "samples": len(samples), "impact_samples": len(kept.samples),
        "output_sqnr_db": kept.base.sqnr_db() if impact else None,
        "runtime": f"onnxruntime {ort.__version__} (no graph optimisation, CPU)"}
    result["costliest"] = _costliest(rows, top) if impact else []
    if device:
        result["device"] = device[0]
        result["device_tolerance_db"] = device_tolerance_db
        result["first_device_loss"] = next(
            (r for r in rows if _device_loses(r, device_tolerance_db)), None)
    return result


def _accumulate(taps, ref: dict, test: dict, acc: dict, loc: dict, locals_: dict,
                in_shift: dict, out_shift: dict) -> None:
    """One sample's accumulated and local errors into the pooled sums of every layer."""
    for t in taps:
        shift = out_shift.get(t.name, 0.0)
        acc[t.name].add(ref[t.output], test[t.output].astype(np.float64) - shift)
        session = locals_.get(t.name)
        if session is not None:
            x = ref[t.input].astype(np.float64) + in_shift.get(t.input, 0.0)
            feed = session.get_inputs()[0]
            out = session.run(None, {feed.name: x.astype(_NUMPY.get(feed.type, np.float32))})[0]
            loc[t.name].add(ref[t.output], out.astype(np.float64) - shift)


def _float_outputs(values: dict, names: list[str]) -> list[np.ndarray]:
    """The floating-point graph outputs among `values`, in `names` order."""
    return [np.asarray(values[n], np.float64) for n in names
            if n in values and np.issubdtype(np.asarray(values[n]).dtype, np.floating)]


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0)


class _ImpactSamples:
    """The first IMPACT_SAMPLES samples' feeds and float outputs (the floating-point graph
    outputs), and the network's output error as built on them."""

    def __init__(self, outputs: list[str]):
        self.outputs = outputs
        self.samples: list[tuple[dict, list[np.ndarray]]] = []
        self.base = _Pooled()

    def add(self, feeds: dict, ref: dict, test: dict) -> None:
        if len(self.samples) < IMPACT_SAMPLES:
            floats = _float_outputs(ref, self.outputs)
            self.samples.append((feeds, floats))
            self.base.add(_flat(floats), _flat(_float_outputs(test, self.outputs)))


def _input_impact(qdq_proto, taps: list[LayerTap], kept: _ImpactSamples) -> dict[str, float]:
    """tensor -> the network's output SQNR on the kept samples with that tensor's Q/DQ bypassed
    (every reader of its DequantizeLinear reads the QuantizeLinear's input instead: the tensor,
    or x / s where it is scale-migrated). Tensors with no Q/DQ of their own are left out."""
    import onnx

    if not kept.samples or not kept.samples[0][1]:
        return {}
    producers = {out: node for node in qdq_proto.graph.node for out in node.output}
    dequantizers: dict[str, list[str]] = {}  # a QuantizeLinear's output -> its DQs' outputs
    for node in qdq_proto.graph.node:
        if node.op_type == "DequantizeLinear":
            dequantizers.setdefault(node.input[0], []).append(node.output[0])
    quantized: dict[str, list] = {}  # tensor -> its QuantizeLinears (after its migration Mul)
    for q in qdq_proto.graph.node:
        if q.op_type == "QuantizeLinear":
            p = producers.get(q.input[0])
            x = p.input[0] if p is not None and p.op_type == "Mul" else q.input[0]
            quantized.setdefault(q.input[0], []).append(q)
            if x != q.input[0]:
                quantized.setdefault(x, []).append(q)
    found = {}
    for tensor in dict.fromkeys(t.input for t in taps):
        bypass = {dq: q.input[0] for q in quantized.get(tensor, [])
                  for dq in dequantizers.get(q.output[0], [])}
        if not bypass:
            continue
        if any(out.name in bypass for out in qdq_proto.graph.output):
            continue  # a DQ output that is a graph output: not re-wired
        variant = onnx.ModelProto()
        variant.CopyFrom(qdq_proto)
        for node in variant.graph.node:
            for i, name in enumerate(node.input):
                if name in bypass:
                    node.input[i] = bypass[name]
        session = _session(variant.SerializeToString(), f"model.onnx with {tensor} float")
        pooled = _Pooled()
        for feeds, floats in kept.samples:
            pooled.add(_flat(floats), _flat(_float_outputs(_run(session, feeds), kept.outputs)))
        found[tensor] = pooled.sqnr_db()
    return found


def _costliest(rows: list[dict], top: int) -> list[dict]:
    """The `top` rows whose input, kept float, would raise the output SQNR the most (one row per
    input tensor, the first layer reading it)."""
    seen, out = set(), []
    ranked = sorted((r for r in rows if r.get("output_sqnr_if_float_db") is not None),
                    key=lambda r: -r["output_sqnr_if_float_db"])
    for r in ranked:
        if r["input"] not in seen:
            seen.add(r["input"])
            out.append(r)
    return out[:top]


def _device_loses(row: dict, tolerance_db: float) -> bool:
    """Whether the device loses more than tolerance_db against ONNX Runtime at this layer
    (rexdeploy.evaluate.fidelity.device_loss_db)."""
    from rexdeploy.evaluate.fidelity import device_loss_db

    if row["sqnr_db"] is None or row.get("device_vs_reference_db") is None:
        return False
    return device_loss_db(row["sqnr_db"], row["device_sqnr_db"],
                          row["device_vs_reference_db"]) > tolerance_db


def _device_row(pooled) -> dict:
    if pooled is None:
        return {}
    return {"device_sqnr_db": pooled[0].sqnr_db(), "device_vs_reference_db": pooled[1].sqnr_db()}


def _device_runner(device, qdq_proto, marks: list[str]):
    """The device's runner over the Q/DQ model with `marks` as outputs (a temporary ONNX file
    the factory compiles), or a null context without a device."""
    import contextlib
    import os
    import tempfile

    if not device:
        return contextlib.nullcontext(None)

    # a runtime may rename an output tensor it fused (OpenVINO names it after another of the
    # tensor's names): outputs are matched by position, graph outputs first, then the marks
    names = [o.name for o in qdq_proto.graph.output]
    names += [n for n in dict.fromkeys(marks) if n not in names]

    class Positional:
        def __init__(self, runner):
            self.runner = runner

        def infer(self, feeds: dict) -> dict:
            got = self.runner.infer(feeds)
            if len(got) != len(names):
                raise UserError(f"the device returned {len(got)} outputs of the marked model, "
                                f"{len(names)} were marked")
            return dict(zip(names, got.values()))

    @contextlib.contextmanager
    def run():
        with tempfile.TemporaryDirectory(prefix="rexdeploy-layers-") as tmp:
            path = os.path.join(tmp, "marked.onnx")
            with open(path, "wb") as f:
                f.write(_with_outputs(qdq_proto, marks))
            with device[1](path) as runner:
                yield Positional(runner)

    return run()


def summarize_layers(rows: list[dict], threshold_db: float, top: int) -> dict:
    """First-bad and worst layers of per-layer `rows` (topological order)."""
    def first_below(key: str) -> dict | None:
        return next((r for r in rows if r[key] is not None and r[key] < threshold_db), None)

    have_local = any(r["local_sqnr_db"] is not None for r in rows)
    key = "local_sqnr_db" if have_local else "sqnr_db"
    ranked = sorted(rows, key=lambda r: (r[key] is None, r[key] if r[key] is not None else 0.0,
                                         r["sqnr_db"]))
    return {"threshold_db": threshold_db, "layers": rows,
            "first_bad": first_below("sqnr_db"), "first_bad_local": first_below("local_sqnr_db"),
            "worst": ranked[:top], "worst_by": key}


INT32_MAX = 2 ** 31 - 1


def _bias_overflow(qdq, taps: list[LayerTap]) -> dict[str, int]:
    """layer name -> how many output channels have a bias that int32 cannot hold at the scale
    input_scale * weight_scale (order 1), the bias integer kernels use (ORT's QLinearConv,
    TensorRT): those runtimes saturate it. Only Conv/Gemm layers with an input Q/DQ and a bias."""
    from onnx import numpy_helper

    inits = {t.name: t for t in qdq.graph.initializer}
    producers = {out: node for node in qdq.graph.node for out in node.output}
    wanted = {t.name for t in taps}
    found = {}
    for node in qdq.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        name = props.get("rexdeploy.layer")
        if name not in wanted or props.get("rexdeploy.role") != "order1" or \
                node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        x_dq, w_dq = producers.get(node.input[0]), producers.get(node.input[1])
        if x_dq is None or w_dq is None or "DequantizeLinear" not in (x_dq.op_type, w_dq.op_type)\
                or x_dq.op_type != w_dq.op_type or node.input[2] not in inits:
            continue
        try:
            x_scale = numpy_helper.to_array(inits[x_dq.input[1]]).astype(np.float64).reshape(-1)
            w_scale = numpy_helper.to_array(inits[w_dq.input[1]]).astype(np.float64).reshape(-1)
            bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64).reshape(-1)
        except KeyError:
            continue
        if w_scale.size not in (1, bias.size) or bias.size % x_scale.size:
            continue
        # a per-channel input (depthwise): channel c feeds output channels c*m .. c*m + m - 1
        x_scale = np.repeat(x_scale, bias.size // x_scale.size)
        found[name] = int(np.sum(np.abs(bias) / (x_scale * w_scale) > INT32_MAX))
    return found


def _row(index: int, tap: LayerTap, acc: _Pooled, loc: _Pooled) -> dict:
    return {"index": index, "name": tap.name, "op": tap.op, "input": tap.input,
            "output": tap.output,
            "sqnr_db": acc.sqnr_db(), "cosine_mean": acc.cosine_mean(),
            "cosine_min": acc.cosine_min(), "local_sqnr_db": loc.sqnr_db(),
            "local_cosine_mean": loc.cosine_mean()}


# -- ONNX plumbing -----------------------------------------------------------------------------
def _session(model_bytes: bytes, what: str):
    """No graph optimisation (rexdeploy.ort_session, "none"): every Q/DQ and float Conv runs as
    written, so a marked layer in the whole model and the same layer cut out alone compute the
    same thing."""
    from rexdeploy.ort_session import session

    return session(model_bytes, f"{what} with the layer outputs marked", "none")


def _run(session, feeds: dict) -> dict:
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    return dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in wanted})))


_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
          "tensor(double)": np.float64}


def _elem_types(model) -> dict[str, int]:
    """Element type of every typed value of an onnx ModelProto (shape inference fills gaps)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is a convenience here: untyped values default to float
        inferred = model
    g = inferred.graph
    return {vi.name: vi.type.tensor_type.elem_type
            for vi in list(g.value_info) + list(g.input) + list(g.output)
            if vi.type.HasField("tensor_type")}


def _with_outputs(model, names: list[str]) -> bytes:
    """`model` (ModelProto) with `names` appended to its graph outputs, typed, serialised."""
    from rexdeploy.ort_session import with_outputs

    return with_outputs(model, names, _elem_types(model)).SerializeToString()


def _local_sessions(qdq, taps: list[LayerTap], float_model) -> dict:
    """layer name -> an ORT session of that layer's Q/DQ subgraph alone (its input tensor ->
    its output tensor); layers whose subgraph reaches another graph input are left out."""
    import onnx
    from onnx import helper

    producers = {out: node for node in qdq.graph.node for out in node.output}
    order = {id(node): i for i, node in enumerate(qdq.graph.node)}
    inits = {t.name: t for t in qdq.graph.initializer}
    types = _elem_types(float_model)
    qtypes = _elem_types(qdq)  # a float16 graph (--target trt) has f16 layer inputs/outputs
    sessions = {}
    for tap in taps:
        nodes = _cut(producers, inits, tap.input, tap.output)
        if nodes is None:
            continue
        nodes.sort(key=lambda n: order[id(n)])
        used = {name for n in nodes for name in n.input}
        elem = qtypes.get(tap.input, types.get(tap.input, onnx.TensorProto.FLOAT))
        graph = helper.make_graph(
            nodes, f"layer:{tap.name}",
            [helper.make_tensor_value_info(tap.input, elem, None)],
            [helper.make_tensor_value_info(tap.output, qtypes.get(tap.output, elem), None)],
            initializer=[inits[n] for n in sorted(used) if n in inits])
        model = helper.make_model(graph, opset_imports=list(qdq.opset_import),
                                  ir_version=qdq.ir_version)
        sessions[tap.name] = _session(model.SerializeToString(), f"layer {tap.name}")
    return sessions


def _cut(producers: dict, inits: dict, start: str, end: str) -> list | None:
    """The nodes computing `end` from `start` and constants; None if more inputs are needed."""
    nodes, seen, stack = {}, set(), [end]
    while stack:
        name = stack.pop()
        if not name or name == start or name in inits or name in seen:
            continue
        seen.add(name)
        node = producers.get(name)
        if node is None:
            return None  # another graph input: not this layer's own computation
        if id(node) not in nodes:
            nodes[id(node)] = node
            stack.extend(node.input)
    return list(nodes.values())


# -- rendering ---------------------------------------------------------------------------------
def summary_lines(result: dict) -> list[str]:
    """Plain-text verdict: the first bad layer (accumulated and local) and the worst layers."""
    thr = result["threshold_db"]
    lines = []
    for key, col, what in (("first_bad", "sqnr_db", "accumulated"),
                           ("first_bad_local", "local_sqnr_db", "local")):
        row = result.get(key)
        if row is None:
            lines.append(f"no layer below {thr:g} dB ({what} SQNR)")
        else:
            lines.append(f"first layer below {thr:g} dB ({what} SQNR): #{row['index']} "
                         f"{row['name']} ({row['op']}) at {_fmt(row[col], '.1f')} dB")
    by = "local" if result["worst_by"] == "local_sqnr_db" else "accumulated"
    worst = ", ".join(f"{r['name']} ({_fmt(r[result['worst_by']], '.1f')} dB)"
                      for r in result["worst"])
    lines.append(f"worst {len(result['worst'])} by {by} SQNR: {worst}")
    if result.get("costliest"):
        base = result["output_sqnr_db"]
        best = ", ".join(f"{r['name']} ({r['output_sqnr_if_float_db'] - base:+.1f} dB)"
                         for r in result["costliest"])
        lines.append(f"output {_fmt(base, '.1f')} dB on {result['impact_samples']} samples; "
                     f"keeping one layer's input float raises it most at: {best}")
    if "device" in result:
        row = result.get("first_device_loss")
        lines.append(f"the device ({result['device']}) keeps within "
                     f"{result['device_tolerance_db']:g} dB of ONNX Runtime at every layer"
                     if row is None else
                     f"first layer where the device ({result['device']}) loses more than "
                     f"{result['device_tolerance_db']:g} dB against ONNX Runtime: #{row['index']} "
                     f"{row['name']} ({row['op']}): device {_fmt(row['device_sqnr_db'], '.1f')} "
                     f"dB, reference {_fmt(row['sqnr_db'], '.1f')} dB, device vs reference "
                     f"{_fmt(row['device_vs_reference_db'], '.1f')} dB")
    over = [r for r in result["layers"] if r.get("bias_int32_overflow")]
    if over:
        named = ", ".join(f"{r['name']} ({r['bias_int32_overflow']} channels)"
                          for r in over[:3]) + (", ..." if len(over) > 3 else "")
        lines.append(f"{len(over)} layers have a bias beyond int32 at input scale x weight scale "
                     f"in {sum(r['bias_int32_overflow'] for r in over)} channels (runtimes that "
                     f"quantize the bias, as ORT's QLinearConv and TensorRT, saturate it): "
                     f"{named}")
    return lines


def render_per_layer(result: dict):
    """A rich Table: one row per quantized layer in topological order; bad rows in red."""
    from rich.table import Table

    thr = result["threshold_db"]
    on_device = "device" in result
    title = f"per layer, {result['samples']} samples, {result['runtime']}"
    table = Table(title=title + (f"; device: {result['device']}" if on_device else ""))
    impact = any(r.get("output_sqnr_if_float_db") is not None for r in result["layers"])
    cols = ("#", "layer", "op", "SQNR dB", "cosine mean", "local SQNR dB", "local cosine") + \
        (("output dB, input float",) if impact else ()) + \
        (("device SQNR dB", "device vs ref dB") if on_device else ())
    for col in cols:
        table.add_column(col, justify="left" if col in ("layer", "op") else "right")
    worst = {r["name"] for r in result["worst"]}
    tol = result.get("device_tolerance_db", 1.0)
    for r in result["layers"]:
        bad = (r["sqnr_db"] is not None and r["sqnr_db"] < thr) or \
            (r["local_sqnr_db"] is not None and r["local_sqnr_db"] < thr) or \
            (on_device and _device_loses(r, tol))
        style = "red" if bad else ("yellow" if r["name"] in worst else None)
        extra = (_fmt(r["device_sqnr_db"], ".1f"), _fmt(r["device_vs_reference_db"], ".1f")) \
            if on_device else ()
        gain = (_fmt(r.get("output_sqnr_if_float_db"), ".1f"),) if impact else ()
        table.add_row(str(r["index"]), r["name"], r["op"], _fmt(r["sqnr_db"], ".1f"),
                      _fmt(r["cosine_mean"], ".5f"), _fmt(r["local_sqnr_db"], ".1f"),
                      _fmt(r["local_cosine_mean"], ".5f"), *gain, *extra, style=style)
    table.caption = "\n".join(summary_lines(result))
    return table
