"""`--refine flexround|erq`: refine a plan's codes and scales on calibration data.

How the blocks run in torch: every quantized layer is a Conv/Gemm/MatMul with a constant weight,
so its float block is y = x W^T + b in matrix form (calib_free.refine.reconstruction). ONNX Runtime
runs the float (BN-folded) ONNX graph once per calibration sample and hands back each layer's input;
here a Conv input is unfolded into patches (im2col, with the node's pads, strides, dilations and
groups) and a Linear input is taken row by row (padding tokens dropped by the attention mask), a
seeded subset of rows is kept, and the layer's activation fake-quantization from the plan gives
the quantized rows. calib_free then sees tensors only: the float weights, the plan's orders in
matrix form, and the rows. A block is one layer, reconstructed against the float layer's
output for the float model's input. Its own input is, by default (--refine-inputs quantized),
what the quantized model refined so far gives it (sequential reconstruction,
rexdeploy/planning/refine_sequential.py: the same row positions, taken from the lowered Q/DQ model);
with --refine-inputs float, the float model's input (every layer independently). A migrated
input (--smooth) enters as x * f with the weights W / f, as the lowered model computes it.

The result is a plan with the same structure (orders, channels, scale shapes): lowering does not
change. Each layer's metrics gain `refine`: the output error before/after (relative to the float
output energy on the calibration rows), whether the refinement was kept, and seconds.
"""

from __future__ import annotations

import contextlib
import math
import time
import zlib
from dataclasses import replace

import numpy as np

from calib_free.plan import LayerPlan, QuantPlan, WeightOrder

MAX_ROWS = 4096  # calibration rows kept per layer (QR-reduced to D + 1 + O when more)


@contextlib.contextmanager
def progress_bar(log, description: str, total: int):
    """A rich progress bar on the build's console; yields advance(n)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("  {task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                        console=log.console, transient=True, disable=log.console.quiet)
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def refine_plan(plan: QuantPlan, layers, float_model, samples: list[dict], config, means: dict,
                log, source: str = "") -> tuple[QuantPlan, dict]:
    """(refined plan, summary) for config.refine in {flexround, erq}.

    layers: the LayerInfo list; means: layer name -> the input mean [Cin] the plan's bias
    correction used (or None, before any scale migration).
    config.refine_inputs: "quantized" (sequential: each layer on the inputs the quantized model,
    refined so far, gives it; rexdeploy.planning.refine_sequential) or "float" (each layer on the
    float
    model's inputs, independently).
    """
    method = config.refine
    sequential = getattr(config, "refine_inputs", "quantized") == "quantized"
    infos = {layer.name: layer for layer in layers}
    nodes = {node.name: node for node in float_model.graph}
    targets = [lp for lp in plan.layers if _eligible(lp, infos[lp.name], method,
                                                     plan.activation(lp.input))]
    start = time.perf_counter()
    rows, picks = _capture(float_model, [infos[lp.name] for lp in targets], nodes, samples,
                           config.seed)
    capture_s = time.perf_counter() - start
    steps = sum(config.refine_iters * len(lp.orders) for lp in targets) \
        if method == "flexround" else len(targets)
    by_name = {lp.name: lp for lp in targets}
    if sequential and targets:
        from rexdeploy.planning.refine_sequential import levels

        groups = levels(float_model, list(by_name), {lp.name: lp.input for lp in targets})
    else:
        groups = [list(by_name)]
    refined: dict[str, LayerPlan] = {}
    with progress_bar(log, f"{method} on {len(targets)} layers", steps) as advance:
        for group in groups:
            quantized = {}
            if sequential:
                t0 = time.perf_counter()
                current = QuantPlan(tuple(refined.get(lp.name, lp) for lp in plan.layers),
                                    plan.activations, plan.skipped, plan.config)
                quantized = _capture_quantized(float_model, current,
                                               [infos[n] for n in group], nodes, samples, picks)
                capture_s += time.perf_counter() - t0
            for name in group:
                lp = by_name[name]
                x = rows.pop(name)
                refined[name] = _refine_layer(lp, infos[name], nodes[name], x,
                                              quantized.pop(name, x), plan.activation(lp.input),
                                              means.get(name), config, advance)
    new_layers = tuple(refined.get(lp.name, lp) for lp in plan.layers)
    kept = [r.metrics["refine"] for r in refined.values()]
    summary = {"method": method, "calibration": source, "samples": len(samples),
               "inputs": "quantized" if sequential else "float", "levels": len(groups),
               "layers": len(targets), "improved": sum(k["kept"] for k in kept),
               "capture_s": round(capture_s, 2),
               "seconds": round(time.perf_counter() - start, 2),
               "skipped": len(plan.layers) - len(targets)}
    config_dict = dict(plan.config, refine=method, calib=source,
                       refine_inputs=summary["inputs"])
    return QuantPlan(new_layers, plan.activations, plan.skipped, config_dict), summary


def end_to_end_db(float_model, plans: list[QuantPlan], samples: list[dict]) -> list[float]:
    """Each plan's network output SQNR (dB) against the float model on `samples`: the plan
    lowered to its Q/DQ ONNX and run, with the float model, in ONNX Runtime (no graph
    optimisation); per output pooled over the samples, then the mean over outputs."""
    import onnx_ir as ir

    from rexdeploy.evaluate.fidelity import sqnr_db
    from rexdeploy.evaluate.localize import _run, _session
    from rexdeploy.lower import lower

    def outputs(model, what: str) -> dict[str, np.ndarray]:
        session = _session(ir.to_proto(model).SerializeToString(), what)
        runs = [_run(session, feeds) for feeds in samples]
        return {name: np.concatenate([r[name].ravel() for r in runs]) for name in runs[0]}

    ref = outputs(float_model, "the float model")
    scores = []
    for plan in plans:
        test = outputs(lower(float_model, plan), "a candidate plan")
        scores.append(float(np.mean([min(sqnr_db(ref[n], test[n]), 120.0) for n in ref])))
    return scores


def _eligible(lp: LayerPlan, info, method: str, act=None) -> bool:
    """FlexRound: every Conv (1-D/2-D) and Linear; ERQ: Linear layers (Gemm, MatMul, and 1x1
    convolutions without groups, which are a Linear per pixel). A migrated (smoothed) input
    must be a Linear's (the factor scales its last axis). A ConvTranspose keeps its data-free
    rounding (no im2col form for it here)."""
    if info.op == "ConvTranspose":
        return False
    if act is not None and act.smooth is not None and \
            (info.op == "Conv" or np.asarray(act.smooth).size != info.in_channels):
        return False
    if info.op == "Conv":
        if len(info.kernel_shape) not in (1, 2) or any(o.block_size for o in lp.orders):
            return False
        if method == "erq":
            return info.groups == 1 and all(k == 1 for k in info.kernel_shape)
    return True


# -- capture -----------------------------------------------------------------------------------
def _capture(model, infos: list, nodes: dict, samples: list[dict], seed: int,
             picks: dict | None = None) -> tuple[dict, dict]:
    """(layer name -> float32 rows [G, R, D] of its input, at most MAX_ROWS per layer; the row
    positions taken per layer and sample). model: an ir.Model, or an ONNX proto whose outputs
    are the inputs of `infos`; picks: positions to take (from an earlier capture: the same rows
    of another model), else drawn here."""
    import torch

    if not infos:
        return {}, {}
    from rexdeploy.ort_session import session as ort_session
    from rexdeploy.planning.observe import attended_positions

    names = list(dict.fromkeys(info.input for info in infos))
    if not hasattr(model, "SerializeToString"):
        import onnx_ir as ir

        from rexdeploy.ort_session import with_outputs

        model = with_outputs(ir.to_proto(model), names, copy=False)
    # a Q/DQ model (picks given): every Q/DQ runs as written (as rexdeploy.evaluate.localize does;
    # ORT's
    # basic level already fuses Q/DQ into integer kernels, some of which fail)
    session = ort_session(model.SerializeToString(), "the model with its layer inputs marked",
                          "none" if picks is not None else "all")
    wanted = {i.name for i in session.get_inputs()}
    # one generator per layer: a layer's rows do not depend on which other layers are refined
    gens = {info.name: torch.Generator().manual_seed(seed + zlib.crc32(info.name.encode()))
            for info in infos}
    per_sample = max(1, math.ceil(MAX_ROWS / len(samples)))
    parts: dict[str, list] = {info.name: [] for info in infos}
    taken: dict[str, list] = {info.name: [] for info in infos}
    for i, feeds in enumerate(samples):
        outs = dict(zip(names, session.run(names, {k: v for k, v in feeds.items()
                                                   if k in wanted})))
        mask = attended_positions(feeds)
        for info in infos:
            x = torch.from_numpy(np.asarray(outs[info.input], np.float32))
            rows = _rows(info, nodes[info.name], x, mask)  # [G, L, D]
            if picks is not None:
                pick = picks[info.name][i]
            elif rows.shape[1] > per_sample:
                pick = torch.randperm(rows.shape[1], generator=gens[info.name])[:per_sample]
            else:
                pick = None
            if pick is not None:
                rows = rows[:, pick]
            parts[info.name].append(rows)
            taken[info.name].append(pick)
    return {name: torch.cat(p, dim=1) for name, p in parts.items()}, taken


def _capture_quantized(float_model, plan: QuantPlan, infos: list, nodes: dict,
                       samples: list[dict], picks: dict) -> dict:
    """layer name -> rows of its input in the Q/DQ model of `plan` (before the layer's own
    activation quantization), at the positions `picks` took from the float model. A layer that
    reads a graph input is missing (its input is the float one)."""
    from rexdeploy.planning.refine_sequential import quantized_model

    graph_inputs = {v.name for v in float_model.graph.inputs}
    inner = [info for info in infos if info.input not in graph_inputs]
    proto = quantized_model(float_model, plan, [info.input for info in inner]) if inner else None
    if proto is None:
        return {}
    rows, _ = _capture(proto, inner, nodes, samples, 0, picks)
    return rows


def _rows(info, node, x, mask):
    """A layer input as matrix rows [G, L, D] (Conv: im2col patches)."""
    import torch

    if info.op != "Conv":
        if mask is not None and x.ndim == 3 and x.shape[0] == 1 and x.shape[1] == mask.size:
            x = x[0][torch.from_numpy(mask)]
        return x.reshape(1, -1, x.shape[-1])
    return _patches(info, node, x)


def _patches(info, node, x):
    import torch.nn.functional as F

    k = info.kernel_shape
    nd = len(k)
    attr = node.attributes
    strides = tuple(attr.get_ints("strides", [1] * nd))
    dilations = tuple(attr.get_ints("dilations", [1] * nd))
    pads = list(attr.get_ints("pads", [0] * 2 * nd))
    auto_pad = attr.get_string("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        pads = _same_pads(x.shape[2:], k, strides, dilations, auto_pad)
    if nd == 1:  # as a 2-D conv of height 1
        x, k = x[:, :, None, :], (1, k[0])
        strides, dilations, pads = (1, strides[0]), (1, dilations[0]), [0, pads[0], 0, pads[1]]
    # ONNX pads [top, left, bottom, right]; F.pad wants (left, right, top, bottom)
    x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
    cols = F.unfold(x, k, dilation=dilations, stride=strides)  # [N, C * kk, L]
    n, cd, length = cols.shape
    g = info.groups
    cols = cols.reshape(n, g, cd // g, length).permute(1, 0, 3, 2)  # [G, N, L, Dg]
    return cols.reshape(g, n * length, cd // g)


def _same_pads(spatial, k, strides, dilations, mode) -> list[int]:
    begin, end = [], []
    for size, kk, s, d in zip(spatial, k, strides, dilations):
        out = math.ceil(size / s)
        total = max(0, (out - 1) * s + (kk - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else big)
        end.append(big if mode == "SAME_UPPER" else small)
    return begin + end


# -- one layer ---------------------------------------------------------------------------------
def _refine_layer(lp: LayerPlan, info, node, x, x_quantized, act, mean_in, config,
                  advance) -> LayerPlan:
    """x: the float model's input rows; x_quantized: the rows the layer gets in the quantized
    model before its own activation Q/DQ (x itself under --refine-inputs float)."""
    import torch

    from calib_free.refine.erq import erq
    from calib_free.refine.flexround import dequantize_orders, flexround, rtn_order
    from calib_free.refine.reconstruction import (centered_shift, layer_data, optimal_shift,
                                                  output_error, relative)

    start = time.perf_counter()
    w = _matrix(info, torch.from_numpy(np.ascontiguousarray(info.weight_array, np.float32)))
    d = w.shape[-1]
    factor = None if act is None or act.smooth is None else \
        torch.from_numpy(np.asarray(act.smooth, np.float32))
    if factor is not None:  # scale migration: the layer reads x * f and computes with W / f
        x, x_quantized = x * factor, x_quantized * factor
        w = (w.double() / factor.double()).float()
    xq = _fake_quant(x_quantized, act)
    data = layer_data(x, xq, w)
    block = lp.orders[0].block_size
    orders = [(_matrix(info, torch.from_numpy(o.codes)), _compact_scale(info, o))
              for o in lp.orders]
    masks = [_mask(info, o) for o in lp.orders]
    if mean_in is not None and factor is not None:
        mean_in = np.asarray(mean_in, np.float64) * factor.double().numpy()
    mean = None if mean_in is None or lp.bias_shift is None else _mean_columns(info, mean_in)
    old_shift = None if lp.bias_shift is None else \
        torch.from_numpy(lp.bias_shift.astype(np.float64)).reshape(w.shape[0], w.shape[1])
    w64 = w.double()
    before = float(output_error(data, w64 - dequantize_orders(orders, d, block), old_shift))
    granularity = _granularity(lp.orders[0])
    held = None  # ERQ: (before, after, energy) on held-out rows
    if config.refine == "flexround":
        kernel = int(np.prod(info.kernel_shape)) if info.op == "Conv" else 0
        res = flexround(w, orders, lp.orders[0].bits, data, granularity=granularity,
                        block_size=block, masks=masks, mean=mean, kernel_elems=kernel,
                        iters=config.refine_iters, progress=advance)
        new_orders = res.orders
        delta = w64 - dequantize_orders(new_orders, d, block)
        shift = centered_shift(delta, mean)
    else:
        def solve(d_):  # ERQ on these rows: order 1, higher orders round Aqer's residual
            res = erq(d_, w, lp.orders[0].bits, granularity=granularity, block_size=block)
            new = [(res.codes, res.scale)]
            for k in range(1, len(orders)):
                residual = res.w_updated - dequantize_orders(new, d, block)
                new.append(rtn_order(residual, lp.orders[k].bits, granularity, block, masks[k]))
            dl = w64 - dequantize_orders(new, d, block)
            return new, dl, optimal_shift(d_, dl)

        held = _held_out(x, xq, w, solve, w64 - dequantize_orders(orders, d, block), old_shift)
        new_orders, delta, shift = solve(data)
        advance(1)
    after = float(output_error(data, delta, shift))
    kept = after < before and (held is None or held[1] < held[0])
    seconds = time.perf_counter() - start
    record = {"method": config.refine, "rows": data.rows,
              "error_before": _sig(relative(before, data)),
              "error_after": _sig(relative(after if kept else before, data)),
              "kept": kept, "seconds": round(seconds, 3)}
    if held is not None:  # ERQ: kept only if it also lowers the error on rows it did not see
        record["held_out_error_before"], record["held_out_error_after"] = \
            _sig(held[0] / held[2]), _sig(held[1] / held[2])
    if not kept:
        return replace(lp, metrics=dict(lp.metrics, refine=record))
    plan_orders = tuple(_to_order(info, old, codes, scale)
                        for old, (codes, scale) in zip(lp.orders, new_orders))
    new_shift = None if shift is None else \
        shift.reshape(-1).numpy().astype(np.float32)
    return replace(lp, orders=plan_orders, bias_shift=new_shift,
                   metrics=_metrics(lp, info, plan_orders, record, factor))


def _held_out(x, xq, w, solve, delta_before, shift_before) -> tuple[float, float, float] | None:
    """(error before, error after, output energy) on the last quarter of the calibration rows
    (the last samples: rows come sample by sample) for `solve` fitted on the other rows; None
    with fewer than 8 rows. ERQ's ridge update fits few rows exactly where a layer has more
    columns than rows (8 synthetic samples: EfficientNet's classifier, 8 rows for 1280 columns),
    lowering every layer's own error while the model gets worse; rows it did not see catch that.
    """
    from calib_free.refine.reconstruction import layer_data, output_error

    rows = x.shape[1]
    if rows < 8:
        return None
    cut = rows - max(1, rows // 4)
    fit = layer_data(x[:, :cut], xq[:, :cut], w)
    test = layer_data(x[:, cut:], xq[:, cut:], w)
    _, delta, shift = solve(fit)
    return (float(output_error(test, delta_before, shift_before)),
            float(output_error(test, delta, shift)), max(test.signal, 1e-30))


def _metrics(lp: LayerPlan, info, orders, record, factor=None) -> dict:
    import torch

    from calib_free.weights.expansion import weight_error

    w = torch.from_numpy(np.ascontiguousarray(info.weight_array, np.float32))
    if factor is not None:  # the migrated weights W / f the orders approximate
        from calib_free.activations.smooth import scale_input_channels

        w = scale_input_channels(w, 1.0 / factor.double(), info.in_axis)
    first = torch.from_numpy(orders[0].dequantize())
    total = sum(torch.from_numpy(o.dequantize()) for o in orders)
    rnd = lambda d: {k: (round(float(v), 6) if np.isfinite(v) else float(v))  # noqa: E731
                     for k, v in d.items()}
    return dict(lp.metrics, error_order1=rnd(weight_error(w, first)),
                error=rnd(weight_error(w, total)), refine=record)


def _sig(v: float) -> float:
    return float(f"{v:.6g}")


def _fake_quant(x, act):
    """The activation Q/DQ of the plan (per tensor or per channel; a uint8 zero point moves the
    codes' window), or x when float."""
    import torch

    if act is None:
        return x
    lo = -(act.qmax + 1) if act.signed else 0  # ONNX int8 saturates at -128
    scale = act.scale
    if act.channel_scale is not None:  # per channel, axis 1
        scale = torch.from_numpy(act.qdq_scale).to(x.dtype).reshape([1, -1] + [1] * (x.ndim - 2))
    z = act.zero_point
    return torch.clamp(torch.round(x / scale), lo - z, act.qmax - z) * scale


def _matrix(info, t):
    """ONNX layout -> [G, O, D]."""
    if info.op == "Conv":
        return t.reshape(info.groups, t.shape[0] // info.groups, -1)
    return (t if info.out_axis == 0 else t.T).reshape(1, info.out_channels, -1)


def _from_matrix(info, m, shape):
    if info.op == "Conv":
        return m.reshape(shape)
    m = m.reshape(info.out_channels, -1)
    return m if info.out_axis == 0 else m.T


def _compact_scale(info, order: WeightOrder):
    import torch

    s = torch.from_numpy(np.asarray(order.scale, np.float32))
    if order.block_size:  # Gemm/MatMul: blocks along the input axis
        return (s if info.out_axis == 0 else s.T).reshape(1, info.out_channels, -1)
    if s.ndim == 0:
        return s.reshape(1, 1, 1)
    g = info.groups if info.op == "Conv" else 1
    return s.reshape(g, -1, 1)


def _to_order(info, old: WeightOrder, codes, scale) -> WeightOrder:
    import torch

    new_codes = _from_matrix(info, codes.to(torch.int8), old.codes.shape).numpy()
    s = scale.float()
    if old.block_size:
        s = s.reshape(info.out_channels, -1)
        s = s if info.out_axis == 0 else s.T
    s = s.reshape(old.scale.shape).numpy().astype(np.float32)
    return WeightOrder(new_codes.astype(np.int8), s, old.bits, old.axis, old.block_size,
                       old.channels)


def _mask(info, order: WeightOrder):
    import torch

    if order.channels is None:
        return None
    m = torch.zeros(info.out_channels, dtype=torch.bool)
    m[torch.from_numpy(np.asarray(order.channels, np.int64))] = True
    g = info.groups if info.op == "Conv" else 1
    return m.reshape(g, -1, 1)


def _mean_columns(info, mean_in):
    """[Cin] input mean -> [G, D] per matrix column."""
    import torch

    m = torch.from_numpy(np.asarray(mean_in, np.float64))
    if info.op != "Conv":
        return m.reshape(1, -1)
    kk = int(np.prod(info.kernel_shape))
    return m.reshape(info.groups, -1).repeat_interleave(kk, dim=-1)


def _granularity(order: WeightOrder) -> str:
    if order.block_size:
        return "block"
    return "tensor" if np.asarray(order.scale).ndim == 0 else "channel"
