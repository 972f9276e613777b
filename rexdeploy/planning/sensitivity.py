"""Data-free per-layer output sensitivity, measured at build time (calib_free.mixed uses it).

For every planned layer L, the float (BN-folded) graph runs with only L's weights replaced by
their order-1 quantization (and its bias correction); for every quantized activation tensor T
read by planned layers, with only T fake-quantized at its planned scale. The score is the
network output's noise-to-signal ratio against the float run, on the build's own synthetic
inputs (images: 1/f noise in the `--input-range`, three-channel ones with a natural image's
colour statistics; other inputs as the build draws them, e.g. random token ids; the user's
`--calib` data when given). No backend: ONNX Runtime on CPU runs the float graph, as for the
observed ranges.

One session serves every measurement: the replaced weights and biases are initializers made
overridable graph inputs, and each activation T gets `T + m_T * (DQ(Q(T)) - T)` in front of its
planned readers with the scalar m_T an overridable initializer (0 = float, 1 = quantized). So the
cost is (layers + activations + 1) x samples forward passes at batch 1 (EfficientNet-Lite0: 50
layers, 50 tensors, 4 samples: about 400 passes).

An output made by a Sigmoid or a Softmax (through layout ops only) is measured at that head's
input, its logits: a detector's probability map is almost 0 everywhere on synthetic images, so its
NSR there measures only how far noise lifts an empty map, and it ranked the PP-OCRv4 text
detector's tensors differently from one draw of 4 images to the next (text-mask IoU on real pages
0.92-0.96 by draw); on the logits the same tensors come first on every draw
(docs/benchmarks.md, "The sensitivity on the logits").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

SAMPLES = 4  # synthetic inputs the sensitivity is measured on (the first of the build's)


@dataclass(frozen=True)
class Sensitivity:
    """Output NSR per layer (its order-1 weights only) and per activation tensor (only it)."""

    weights: dict[str, float] = field(default_factory=dict)
    activations: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    seconds: float = 0.0
    logits: dict[str, tuple[str, str]] = field(default_factory=dict)  # output -> (head, its input)

    def ranking(self) -> list[tuple[str, str, float]]:
        """(kind, name, nsr) worst first; kind 'weights' (a layer) or 'activation' (a tensor)."""
        rows = [("weights", n, v) for n, v in self.weights.items()] + \
            [("activation", n, v) for n, v in self.activations.items()]
        return sorted(rows, key=lambda r: -r[2])


def measure_sensitivity(float_model, layers, draft, samples: list[dict], log=None,
                        activations: bool = True, weights: bool = True,
                        max_samples: int = SAMPLES) -> Sensitivity:
    """Sensitivity of the layers (unless not `weights`) and, when `activations`, of the
    activation tensors of `draft` (an order-1 QuantPlan of `float_model`) over the first
    `max_samples` of `samples` (feed dicts at batch 1). `layers` (LayerInfo) is only read for
    the weights."""
    from rexdeploy.ort_session import session as ort_session
    import onnx_ir as ir

    start = time.perf_counter()
    samples = samples[:max_samples]
    infos = {info.name: info for info in layers}
    proto = ir.to_proto(float_model)
    inits = {t.name: t for t in proto.graph.initializer}
    overrides = _weight_overrides(draft, infos, inits) if weights else {}
    acts = _activation_switches(proto, draft) if activations else {}
    _expose(proto, list({n for o in overrides.values() for n in o}) + list(acts.values()), inits)
    logits = measure_at_logits(proto)
    session = ort_session(proto.SerializeToString(), "the float model with its switches")
    outputs = [o.name for o in session.get_outputs()]
    ref = [_run(session, outputs, feeds, {}) for feeds in samples]
    jobs = [("w", name, extra) for name, extra in overrides.items()] + \
        [("a", tensor, {switch: np.ones((), np.float32)}) for tensor, switch in acts.items()]
    weights, activations = {}, {}
    from rexdeploy.planning.refine import progress_bar

    bar = progress_bar(log, "sensitivity", len(jobs)) if log is not None else None
    with (bar if bar is not None else _null()) as advance:
        for kind, name, extra in jobs:
            test = [_run(session, outputs, feeds, extra) for feeds in samples]
            (weights if kind == "w" else activations)[name] = _nsr(ref, test)
            advance()
    return Sensitivity(weights, activations, len(samples), time.perf_counter() - start, logits)


def measure_at_logits(proto) -> dict[str, tuple[str, str]]:
    """Make each graph output that a Sigmoid or Softmax makes (through layout ops only) the
    head's input instead; returns output -> (the head's op, the tensor measured in its place)."""
    from onnx import TensorProto, helper

    from rexdeploy.evaluate.fidelity import output_heads

    heads = output_heads(proto.graph)
    measured = {o.name for o in proto.graph.output}  # a head whose logits are an output already
    known = {v.name: v for v in proto.graph.value_info}  # is measured there, once
    outputs = []
    for out in proto.graph.output:
        head = heads.get(out.name)
        if head is None:
            outputs.append(out)
        elif head[1] not in measured:
            measured.add(head[1])
            outputs.append(known.get(head[1]) or
                           helper.make_tensor_value_info(head[1], TensorProto.FLOAT, None))
    del proto.graph.output[:]
    proto.graph.output.extend(outputs)
    return heads


def sensitivity_samples(samples: list[dict], input_ranges: dict, seed: int = 0,
                        grids: dict | None = None, count: int = SAMPLES, edges: bool = False
                        ) -> tuple[list[dict], str]:
    """The first `count` of the build's synthetic `samples`, with every image-like input (float,
    [1, C, H, W], H and W >= 16) replaced by 1/f noise in its --input-range
    (calib_free.synthetic.pink_noise_images; three channels: RGB with luminance at every scale and
    colour only at coarse ones): white noise misranks CNN layers, and so does colour noise at
    every scale (the stem's colour-opponent filters). edges: every second image is a
    dead-leaves image instead (calib_free.synthetic.dead_leaves_images: sharp edges at full
    contrast, which Gaussian 1/f noise lacks; what the sensitivity is measured on, not the
    ranges). An input with a pixel grid (`grids`, QuantConfig.input_grid) gets its noise on that
    grid, as real pixels are: its int8 Q/DQ then costs nothing, as on real images. Returns the
    samples and what they are, for the build log."""
    from calib_free.synthetic import dead_leaves_images, pink_noise_images

    samples = [dict(s) for s in samples[:count]]
    images = image_inputs(samples)
    for name in images:
        x = samples[0][name]
        noise = pink_noise_images(x.shape, len(samples), seed, input_ranges.get(name)).numpy()
        if edges and len(samples) > 1:
            noise[1::2] = dead_leaves_images(x.shape, len(samples) // 2, seed,
                                             input_ranges.get(name)).numpy()
        step = (grids or {}).get(name)
        if step and name in input_ranges:
            from rexdeploy.inputs import on_grid

            noise = on_grid(noise, step, input_ranges[name])
        for i, feeds in enumerate(samples):
            feeds[name] = noise[i:i + 1].astype(x.dtype)
    colour = any(samples[0][name].shape[1] == 3 for name in images)
    kinds = f"1/f noise{', natural colour' if colour else ''}" + \
        (" and dead leaves" if edges and len(samples) > 1 else "")
    what = "synthetic inputs" + (f" (images: {kinds})" if images else "")
    return samples, what


def image_inputs(samples: list[dict]) -> list[str]:
    """The image-like inputs (float, [1, C, H, W], H and W >= 16) of the samples."""
    return [name for name, x in samples[0].items() if _image_like(x)] if samples else []


def _image_like(x) -> bool:
    x = np.asarray(x)
    return np.issubdtype(x.dtype, np.floating) and x.ndim == 4 and x.shape[0] == 1 and \
        x.shape[2] >= 16 and x.shape[3] >= 16


def _null():
    import contextlib

    return contextlib.nullcontext(lambda n=1: None)


def _nsr(ref: list[list[np.ndarray]], test: list[list[np.ndarray]]) -> float:
    import torch

    from calib_free.mixed import output_nsr

    flat = lambda runs: [torch.from_numpy(np.asarray(x, np.float64)) for r in runs for x in r]
    return output_nsr(flat(ref), flat(test))


def _run(session, outputs, feeds, extra) -> list[np.ndarray]:
    outs = session.run(outputs, {**feeds, **extra})
    return [o for o in outs if np.issubdtype(np.asarray(o).dtype, np.floating)]


def _weight_overrides(draft, infos, inits) -> dict[str, dict[str, np.ndarray]]:
    """layer -> {initializer name: the array it runs with}: the order-1 weights (in the float
    input domain when the input is smoothed) and the corrected bias."""
    acts = {a.tensor: a for a in draft.activations}
    out = {}
    for lp in draft.layers:
        info = infos[lp.name]
        if lp.weight not in inits:
            continue  # not an initializer (shared constant node): not measured
        w = lp.orders[0].dequantize().astype(np.float32)
        act = acts.get(lp.input)
        factor = act.smooth if act is not None and act.smooth is not None else lp.input_scale
        if factor is not None:  # plan weights carry 1 / factor (migrated or balanced input)
            shape = [1] * w.ndim
            shape[info.in_axis] = -1
            w = w * np.asarray(factor, np.float32).reshape(shape)
        feeds = {lp.weight: w.reshape(info.weight_array.shape)}
        if lp.bias_shift is not None and info.bias in inits and info.bias_array is not None:
            from onnx import numpy_helper

            b = numpy_helper.to_array(inits[info.bias]).astype(np.float32)
            if b.size == lp.bias_shift.size:
                # Gemm: C is scaled by beta in bias_array; the shift is in output units
                beta = float(info.bias_array.ravel()[0] / b.ravel()[0]) \
                    if info.op == "Gemm" and b.ravel()[0] != 0 else 1.0
                feeds[info.bias] = (b - lp.bias_shift.reshape(b.shape) / beta).astype(b.dtype)
        out[lp.name] = feeds
    return out


def _activation_switches(proto, draft) -> dict[str, str]:
    """Insert T' = T + m_T * (DQ(Q(T)) - T) before the planned readers of each activation T
    (smoothed: Q/DQ of T * factor, divided back); returns tensor -> the switch's name."""
    from onnx import helper, numpy_helper

    readers: dict[str, list[str]] = {}
    for lp in draft.layers:
        readers.setdefault(lp.input, []).append(lp.name)
    nodes = {n.name: n for n in proto.graph.node}
    switches = {}
    new_nodes = []
    for i, act in enumerate(draft.activations):
        names = [n for n in readers.get(act.tensor, []) if n in nodes]
        if not names:
            continue  # a residual skip input: no planned layer reads it
        p = f"_sens{i}_"
        zp_dtype = np.int8 if act.signed else np.uint8
        scale = act.qdq_scale.astype(np.float32)
        axis = {} if act.channel_scale is None else {"axis": 1}
        proto.graph.initializer.extend([
            numpy_helper.from_array(scale, p + "scale"),
            numpy_helper.from_array(np.full(scale.shape, act.zero_point, zp_dtype), p + "zp"),
            numpy_helper.from_array(np.zeros((), np.float32), p + "switch")])
        x = act.tensor
        if act.smooth is not None:
            proto.graph.initializer.append(
                numpy_helper.from_array(np.asarray(act.smooth, np.float32), p + "factor"))
            new_nodes.append(helper.make_node("Mul", [x, p + "factor"], [p + "scaled"]))
            x = p + "scaled"
        new_nodes.append(helper.make_node("QuantizeLinear", [x, p + "scale", p + "zp"],
                                          [p + "q"], **axis))
        new_nodes.append(helper.make_node("DequantizeLinear", [p + "q", p + "scale", p + "zp"],
                                          [p + "dq"], **axis))
        dq = p + "dq"
        if act.smooth is not None:
            new_nodes.append(helper.make_node("Div", [dq, p + "factor"], [p + "unscaled"]))
            dq = p + "unscaled"
        new_nodes += [helper.make_node("Sub", [dq, act.tensor], [p + "noise"]),
                      helper.make_node("Mul", [p + "noise", p + "switch"], [p + "gated"]),
                      helper.make_node("Add", [act.tensor, p + "gated"], [p + "out"])]
        for name in names:
            node = nodes[name]
            node.input[0] = p + "out"
        switches[act.tensor] = p + "switch"
    if new_nodes:
        # keep topological order: put the new nodes right after their tensor's producer
        _insert_after_producers(proto, new_nodes)
    return switches


def _insert_after_producers(proto, new_nodes) -> None:
    produced_by = {}
    for i, n in enumerate(proto.graph.node):
        for o in n.output:
            produced_by[o] = i
    groups: dict[int, list] = {}
    pending: list = []
    for n in new_nodes:
        pending.append(n)
        if n.op_type == "Add" and n.output[0].endswith("_out"):
            src = n.input[0]
            groups.setdefault(produced_by.get(src, -1), []).extend(pending)
            pending = []
    old = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(groups.get(-1, []))
    for i, n in enumerate(old):
        proto.graph.node.append(n)
        proto.graph.node.extend(groups.get(i, []))


def _expose(proto, names: list[str], inits) -> None:
    """Make these initializers graph inputs, so a feed overrides them."""
    from onnx import helper

    declared = {i.name for i in proto.graph.input}
    by_name = {t.name: t for t in proto.graph.initializer}
    for name in names:
        if name in declared or name not in by_name:
            continue
        t = by_name[name]
        proto.graph.input.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
