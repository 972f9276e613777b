"""Decide the QuantPlan: weights through calib_free, activation ranges from data-free statistics.

This is the bridge between the graph (onnx_ir, names) and the math (calib_free, tensors): it reads
weights and statistics, calls calib_free, and freezes the result. The lowering applies the plan
and never re-decides it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from calib_free.plan import ActivationPlan, LayerPlan, QuantPlan, SkippedLayer, WeightOrder
from rexdeploy.passes.qdq_nodes import layer_of
from rexdeploy.planning.analyze import LayerInfo
from rexdeploy.config import CALIB_RANGES, QuantConfig
from rexdeploy.planning.observe import Observed
from rexdeploy.planning.stats import TensorStats
from rexdeploy.resolve import weight_granularity

if TYPE_CHECKING:
    import torch


def activation_tensors(model: ir.Model, layers: list[LayerInfo]) -> list[str]:
    """Tensors that need a range: quantized layers' inputs and residual skip inputs.

    A residual Add whose one input is a quantized layer's output gets Q/DQ on its other (skip)
    input, so Conv+Add fuse in int8 (TensorRT's rule).
    """
    outputs = {layer.output for layer in layers}
    needed = list(dict.fromkeys(layer.input for layer in layers))
    order = {}
    for i, node in enumerate(model.graph):
        for out in node.outputs:
            order[out.name] = i
    for node in model.graph:
        if node.op_type != "Add" or len(node.inputs) != 2 or layer_of(node) is not None:
            continue  # (a layer's own Add: its split diagonal, rexdeploy/passes/split_identity.py)
        a, b = node.inputs
        if a is None or b is None or a.const_value is not None or b.const_value is not None:
            continue
        if a.name not in outputs and b.name not in outputs:
            continue
        # The skip is the operand that is not a quantized layer's output; when both are, the
        # one computed earlier (the residual stream), so the later conv fuses with the Add.
        if a.name in outputs and b.name in outputs:
            skip = a if order.get(a.name, -1) < order.get(b.name, -1) else b
        else:
            skip = b if a.name in outputs else a
        if skip.name not in needed:
            needed.append(skip.name)
    return needed


def use_stats(s: TensorStats | None, mode: str) -> bool:
    """Whether the data-free moments of a tensor are trusted under range mode `mode`. Under
    `calib` (the user's --calib data) only those a BatchNorm re-anchored: they gave better
    ranges than real samples' extremes or tail quantiles on both depthwise CNNs (MobileNetV2 on
    the photos: 20.5 dB against 16.2 from 20 of the photos' extremes and 19.8 from their 1e-4
    tail quantiles; EfficientNet-Lite0 23.7 against 23.5 and 23.7), while moments carried from
    an input's declared or assumed range are a guess the samples beat."""
    if s is None or mode in ("synthetic", "zeroq"):
        return False
    if mode == "calib" and not ("bn" in s.roots and s.roots <= {"bn", "input"}
                                and not s.through_conv):
        return False
    if mode == "stats":
        return True
    # auto: LayerNorm moments miss outliers; moments pushed through a convolution with no
    # BatchNorm after it to re-anchor them (a folded-BatchNorm export, a model without
    # BatchNorm, the layers after a network's one unfolded BatchNorm) lose the pixels'
    # correlations: EfficientNet-Lite0 from torch.onnx.export 12.3 dB with them, 22.5 dB
    # observed on natural synthetic images (docs/benchmarks.md, "Ranges without BatchNorm");
    # the PP-OCRv4 recogniser's backbone, carried from its stem's BatchNorm through 20
    # convolutions, reached 61 on text lines where its moments said 0.9
    return "ln" not in s.roots and not s.through_conv


def make_plan(layers: list[LayerInfo], skipped: list[SkippedLayer], tensors: list[str],
              stats: dict[str, TensorStats], observed: dict[str, Observed],
              config: QuantConfig, allow_unsigned: bool, sensitivity=None,
              floors: dict[str, float] | None = None) -> QuantPlan:
    """The frozen plan for `layers` (BN already folded) and activation `tensors`.
    floors: tensor -> its hard lower bound (rexdeploy.planning.bounds.zero_point_floors), for the
    tensors that may take a uint8 grid with a zero point (the target runs one); None: none may.
    sensitivity (rexdeploy.planning.sensitivity.Sensitivity): steers the --budget allocation and the
    --mixed-precision raises (rexdeploy.planning.mixed); None: the plain allocation."""
    from rexdeploy.planning.cost_models import describe as describe_cost

    excluded = set(config.exclude)
    kept = [layer for layer in layers if layer.name not in excluded]
    skipped = list(skipped) + [SkippedLayer(layer.name, layer.op, "excluded by --exclude")
                               for layer in layers if layer.name in excluded]
    activations: list[ActivationPlan] = []
    floors = floors or {}
    smooth = _smoothing(kept, tensors, stats, observed, config)
    if config.activations == "int8":
        wanted = set(layer.input for layer in kept)
        depthwise = depthwise_inputs(kept) if config.activation_scales == "depthwise" else {}
        for tensor in tensors:
            if tensor in wanted or tensor not in {layer.input for layer in layers}:
                args = (tensor, stats.get(tensor), observed.get(tensor), config,
                        allow_unsigned, smooth.get(tensor))
                floor = floors.get(tensor) if tensor in wanted else None
                act = _activation(*args, None if tensor in depthwise else floor)
                if act is not None and tensor in depthwise:
                    act = channel_scales(act, depthwise[tensor], stats.get(tensor),
                                         observed.get(tensor), config)
                    if act.channel_scale is None and floor is not None:
                        act = _activation(*args, floor)  # per-channel scales first, else this
                if act is not None:
                    activations.append(act)
    quantized = {a.tensor for a in activations}
    balance = _balancing(kept, quantized, config)
    expansions = [_expand(layer, stats, observed, config, smooth.get(layer.input),
                          balance.get(layer.name)) for layer in kept]
    if sensitivity is not None and config.budget is not None:  # rexdeploy/planning/mixed.py
        from rexdeploy.planning import mixed

        cfg8 = config.with_(weights="int8", orders=1, budget=None, budget_from=1)
        alloc, eights = mixed.allocate(
            expansions, config, sensitivity, quantized,
            lambda e: _expand(e.layer, stats, observed, cfg8, smooth.get(e.layer.input)))

        def plan_for(e: _Expansion) -> LayerPlan:
            raised = e.layer.name in alloc.raised_weights
            cfg, kept = (cfg8, None) if raised else (config, alloc.kept.get(e.layer.name))
            e = eights[e.layer.name] if raised else e
            if e.layer.input in alloc.float_activations and smooth.get(e.layer.input) is not None:
                e = _expand(e.layer, stats, observed, cfg)  # a float input is not migrated
            return _layer(e, kept, cfg)

        plans = mixed.finish([plan_for(e) for e in expansions], alloc, sensitivity, config,
                             {e.layer.name: e.layer for e in expansions})
        activations = [a for a in activations if a.tensor not in alloc.float_activations]
    else:
        kept_channels = _select_channels(expansions, config)
        plans = [_layer(e, kept_channels.get(e.layer.name), config) for e in expansions]
    return QuantPlan(tuple(plans), tuple(activations), tuple(skipped),
                     config={"weights": config.weights, "activations": config.activations,
                             "operator": config.operator,
                             "orders": config.max_orders, "sparsity": config.sparsity,
                             "budget": config.budget, "ranges": config.ranges,
                             "range_sigma": config.range_sigma,
                             "smooth": config.smooth, "smooth_alpha": config.smooth_alpha,
                             "activation_scales": config.activation_scales,
                             "bias_correction": config.bias_correction,
                             "int8_isa": config.int8_isa,
                             "int8_saturates": config.int8_saturates,
                             "overflow_fix": config.overflow_fix,
                             "weight_balance": config.weight_balance,
                             "pair_limit": config.pair_limit}
                     | (describe_cost(config.budget_cost) if config.budget is not None else {})
                     | ({"sensitivity": "on", "mixed_precision": config.mixed_precision}
                        if sensitivity is not None and config.budget is not None else {})
                     | ({"budget_from": config.budget_from} if config.budget_from > 1 else {}))


@dataclass(frozen=True, eq=False)
class _Expansion:
    """One layer's dense expansion to the highest order, before channels are chosen."""

    layer: LayerInfo
    w: "torch.Tensor"
    orders: list               # [(codes, scale)] K pairs, dense
    axis: int | None
    errors: "torch.Tensor"     # [K, Cout] error proxy when a channel stops at order k
    signal: "torch.Tensor"     # [Cout] E[y^2]
    mean_in: np.ndarray | None
    stops: list | None = None  # [(codes, scale)] K pairs: each order as a last order
                               # (calib_free.weights.expansion.stop_orders); None: as `orders`
    input_scale: np.ndarray | None = None  # float32 [Cin]: balanced columns (LayerPlan's)


# --smooth auto migrates a tensor when its largest channel maximum is at least this many times
# the median channel's. MiniLM's FFN inputs measure 5.6-24.5, its attention inputs 2.7-6.0; a
# Gaussian tensor about 1.3. On MiniLM W8A8 (mean cosine over fortunes quotes 0-199, alpha 0.7):
# threshold 3 0.9944, 4 0.9955, 5 0.9950, 8 0.9928, every tensor 0.9942, none 0.9777; on the
# held-out quotes 200-399 threshold 4 gives 0.9952 (none 0.9764).
OUTLIER_RATIO = 4.0


def outlier_ratio(channel_absmax: np.ndarray) -> float:
    """Largest channel maximum over the median channel's."""
    return float(channel_absmax.max() / max(float(np.median(channel_absmax)), 1e-12))


def _smoothing(kept: list[LayerInfo], tensors: list[str], stats: dict[str, TensorStats],
               observed: dict[str, Observed], config: QuantConfig) -> dict[str, "torch.Tensor"]:
    """Scale-migration factors s [C] per activation tensor (calib_free.activations.smooth), for the
    tensors read only by MatMul/Gemm layers (channels on the last axis) whose ranges come from
    synthetic inputs; under --smooth auto only those with outlier channels (OUTLIER_RATIO). Off for
    weight-only builds and ensembles (--refine reconstructs against the migrated inputs)."""
    if config.smooth == "off" or config.activations != "int8" or config.ensemble:
        return {}
    import torch

    from calib_free.activations.smooth import smoothing_factors, weight_input_absmax

    readers: dict[str, list[LayerInfo]] = {}
    for layer in kept:
        readers.setdefault(layer.input, []).append(layer)
    factors = {}
    for tensor in tensors:
        group = readers.get(tensor, [])
        o = observed.get(tensor)
        if not group or any(l.op not in ("MatMul", "Gemm") for l in group) or o is None \
                or o.channel_absmax is None or use_stats(stats.get(tensor), config.ranges):
            continue
        channels = {l.in_channels for l in group}
        if len(channels) != 1 or o.channel_absmax.size != channels.pop():
            continue
        if config.smooth == "auto" and outlier_ratio(o.channel_absmax) < OUTLIER_RATIO:
            continue
        w_max = torch.stack([weight_input_absmax(torch.from_numpy(
            np.asarray(l.weight_array, np.float32)), l.in_axis) for l in group]).amax(0)
        factors[tensor] = smoothing_factors(torch.from_numpy(o.channel_absmax), w_max,
                                            config.smooth_alpha)
    return factors


def _balancing(kept: list[LayerInfo], quantized: set[str], config: QuantConfig
               ) -> dict[str, "torch.Tensor"]:
    """layer -> c [Cin], its balanced weight columns (calib_free.weights.balance), for the
    MatMul/Gemm layers whose input stays float, where the config balances weights."""
    if not config.balances_weights:
        return {}
    import torch

    from calib_free.weights.balance import column_scales

    return {layer.name: column_scales(torch.from_numpy(np.asarray(layer.weight_array,
                                                                  np.float32)), layer.in_axis)
            for layer in kept
            if layer.op in ("MatMul", "Gemm") and layer.input not in quantized}


def _expand(layer: LayerInfo, stats: dict[str, TensorStats], observed: dict[str, Observed],
            config: QuantConfig, smooth: "torch.Tensor | None" = None,
            balance: "torch.Tensor | None" = None) -> _Expansion:
    """The layer's expansion to config.max_orders. smooth: the layer reads x / smooth (a
    migrated quantized input); balance: it reads x * balance (a float input in front of
    balanced weight columns). Either way it computes with W scaled by the inverse."""
    import torch

    from calib_free.weights.expansion import expand_uniform
    from calib_free.weights.sparse import channel_errors, signal_power

    config = layer_weights(layer, config)

    s, o = stats.get(layer.input), observed.get(layer.input)
    w = torch.from_numpy(np.ascontiguousarray(layer.weight_array, np.float32))
    if balance is not None:
        smooth = 1.0 / balance
    if smooth is not None:  # the layer reads x / s: it computes with s * W
        from calib_free.activations.smooth import scale_input_channels

        w = scale_input_channels(w, smooth, layer.in_axis)
    block = config.granularity == "block"
    axis = layer.in_axis if block else layer.out_axis
    power = _input_power(s, config, layer.in_channels)
    if config.operator == "power":
        from calib_free.weights.power import expand_power

        orders = expand_power(w, config.weight_bits, config.max_orders, config.granularity,
                              axis, config.block_size if block else None)
    else:
        orders = expand_uniform(w, config.weight_bits, config.max_orders, config.granularity,
                                axis, config.block_size if block else None, config.clip_search,
                                sum_dims=_kernel_dims(layer, w, config),
                                pairs=pair_limit(layer, config), power=power)
    stops = _stop_orders(layer, w, orders, axis, config, power)
    groups = layer.groups if layer.op == "Conv" else 1
    approx = torch.zeros_like(w, dtype=torch.float64)
    errors = []  # errors[k]: a channel's error when its expansion stops at order k + 1
    for (codes, scale), stop in zip(orders, stops or orders):
        stopped = approx + _dequantize(*stop, axis, config).double()
        errors.append(channel_errors(w, stopped, layer.out_axis, power, layer.in_axis, groups))
        approx = approx + _dequantize(codes, scale, axis, config).double()
    signal = _output_power(stats.get(layer.output), layer.out_channels)
    if signal is None:
        signal = signal_power(w, layer.out_axis, power, layer.in_axis, groups)
    mean_in = _input_mean(s, o, config, layer.in_channels)
    if mean_in is not None and smooth is not None:
        mean_in = mean_in / smooth.numpy()
    return _Expansion(layer, w, orders, axis if config.granularity != "tensor" else None,
                      torch.stack(errors), signal, mean_in, stops,
                      None if balance is None else balance.numpy().astype(np.float32))


def layer_weights(layer: LayerInfo, config: QuantConfig) -> QuantConfig:
    """The config one layer's weights are quantized under. Per-block scales apply to the 2-D
    4-bit weights of MatMul/Gemm: a convolution keeps per-channel scales (OpenVINO's ONNX
    frontend refuses a blocked DequantizeLinear on a convolution's weight, and TensorRT takes
    INT4 blocks on MatMul/Gemm weights alone), and so do 8-bit weights (a layer --mixed-precision
    raised: TensorRT takes block quantization with INT4 only). "auto" (a config no build
    resolved) as the build resolves it for a target that keeps no INT4 beside int8 inputs."""
    resolved = weight_granularity(config)
    if resolved:
        config = config.with_(**resolved)
    if config.granularity == "block" and (layer.op not in ("MatMul", "Gemm") or
                                          layer.weight_array.ndim != 2 or config.weight_bits > 4):
        return config.with_(granularity="channel", block_size=None)
    return config


def pair_limit(layer: LayerInfo, config: QuantConfig):
    """The pair limit (calib_free.weights.saturation.PairLimit) of a layer whose int8 kernel on the
    target adds pairs of products in saturating int16 (QuantConfig.pair_limit: a pre-VNNI x86
    CPU), None where nothing can overflow: float inputs, weights below 8 bits, a depthwise
    convolution (one input channel per group), PowerQuant codes (they run in float)."""
    if config.pair_limit is None or config.activations != "int8" or config.weight_bits < 8 \
            or config.operator != "uniform" or config.granularity == "block":
        return None
    if layer.weight_array.shape[layer.in_axis] < 2:  # e.g. depthwise: no pair to add
        return None
    from calib_free.weights.saturation import PairLimit

    return PairLimit(layer.in_axis, layer.out_axis, config.pair_limit)


def _stop_orders(layer: LayerInfo, w, orders: list, axis: int, config: QuantConfig,
                 power=None) -> list | None:
    """calib_free.weights.expansion.stop_orders for an expansion whose last order has a quantizer of
    its own (--rounding dc on a convolution kernel, --clip-search) and may stop early for some
    channels (--budget, --sparsity); None when every order rounds alike or scales are not per
    output channel."""
    import functools

    from calib_free.weights.expansion import stop_orders
    from calib_free.weights.quantizer import quantize_weight

    sum_dims = _kernel_dims(layer, w, config)
    if len(orders) < 2 or config.operator == "power" or config.granularity != "channel" \
            or not (sum_dims or config.clip_search):
        return None
    final = functools.partial(quantize_weight, bits=config.weight_bits, granularity="channel",
                              axis=axis, clip_search=config.clip_search, sum_dims=sum_dims,
                              pairs=pair_limit(layer, config), power=power)
    return stop_orders(w, orders, final, lambda c, sc: _dequantize(c, sc, axis, config))


def _kernel_dims(layer: LayerInfo, w, config: QuantConfig) -> tuple[int, ...] | None:
    """The spatial axes of a convolution kernel with more than one tap, under --rounding dc
    (ONNX Conv/ConvTranspose weights: [C, C', k1, k2, ...])."""
    if config.rounding_mode != "dc" or layer.op not in ("Conv", "ConvTranspose") or w.ndim < 3:
        return None
    dims = tuple(range(2, w.ndim))
    return dims if int(np.prod([w.shape[d] for d in dims])) > 1 else None


def _dequantize(codes, scale, axis, config: QuantConfig):
    from calib_free.weights.power import PowerScale, dequantize_power
    from calib_free.weights.quantizer import dequantize

    block = config.block_size if config.granularity == "block" else None
    if isinstance(scale, PowerScale):
        return dequantize_power(codes, scale, config.weight_bits, axis=axis, block_size=block)
    return dequantize(codes, scale, axis=axis, block_size=block)


def _order_arrays(scale, bits: int) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """(float32 scale, lookup table or None, exponent or None) of one order for WeightOrder:
    a PowerQuant order's scale is its clip, its table the power levels."""
    from calib_free.weights.power import PowerScale, levels

    if isinstance(scale, PowerScale):
        return (scale.clip.numpy().astype(np.float32),
                levels(bits, scale.exponent).numpy(), float(scale.exponent))
    return scale.numpy().astype(np.float32), None, None


def _input_power(s: TensorStats | None, config: QuantConfig, channels: int):
    """E[x_j^2] per input channel from the data-free moments, None when unknown."""
    import torch

    if not use_stats(s, config.ranges) or s.mean.size != channels:
        return None
    return torch.from_numpy(np.asarray(s.mean, np.float64) ** 2 + np.asarray(s.var, np.float64))


def _output_power(s: TensorStats | None, channels: int):
    import torch

    if s is None or s.mean.size != channels:
        return None
    return torch.from_numpy(np.asarray(s.mean, np.float64) ** 2 + np.asarray(s.var, np.float64))


def _select_channels(expansions: list[_Expansion], config: QuantConfig) -> dict[str, list]:
    """Kept output channels of orders 2..K per layer: all (dense), the fraction --sparsity
    with the largest error, or the greedy --budget allocation (whole layers where the sparse
    orders run as dense zero-row kernels). Missing key: dense."""
    from calib_free.weights.sparse import allocate_budget, uniform_channels
    from rexdeploy.planning import cost_models

    if config.max_orders < 2:
        return {}
    if config.sparsity is not None:
        return {e.layer.name: uniform_channels(list(e.errors[:-1]), config.sparsity)
                for e in expansions}
    if config.budget is not None:
        costs = [e.layer.cost(e.errors, config.weight_bits, config.activation_bits)
                 for e in expansions]
        return allocate_budget(costs, config.budget, config.budget_whole_layers,
                               cost_models.get(config.budget_cost)).kept
    return {}


def _top_orders(kept: list | None, orders: int, channels: int) -> np.ndarray:
    """[C] each output channel's last order, 0-based (kept: the channels of orders 2..K, nested;
    None: dense, every channel has all `orders`)."""
    if kept is None:
        return np.full(channels, orders - 1)
    top = np.zeros(channels, np.int64)
    for k, idx in enumerate(kept, 1):
        idx = np.asarray(idx, np.int64)
        if idx.size == 0:
            break
        top[idx] = k
    return top


def _stop_where(mask: np.ndarray, order: tuple, stop: tuple, out_axis: int) -> tuple:
    """(codes, scale) of one order with the channels in `mask` in their stop form."""
    import torch

    codes, scale = order
    m = torch.from_numpy(mask)
    shape = [1] * codes.ndim
    shape[out_axis] = -1
    codes = torch.where(m.reshape(shape), stop[0], codes)
    scale = torch.where(m.reshape(-1), stop[1].reshape(-1), scale.reshape(-1)).reshape(scale.shape)
    return codes, scale


def _layer(e: _Expansion, kept: list | None, config: QuantConfig) -> LayerPlan:
    import torch

    from calib_free.weights.expansion import weight_error

    layer, w = e.layer, e.w
    config = layer_weights(layer, config)
    top = _top_orders(kept, len(e.orders), layer.out_channels)
    plan_orders = []
    for k, (codes, scale) in enumerate(e.orders):
        channels = None
        if e.stops is not None and k < len(e.orders) - 1 and bool((top == k).any()):
            codes, scale = _stop_where(top == k, (codes, scale), e.stops[k], layer.out_axis)
        codes = codes.numpy().astype(np.int8)
        if k >= 1 and kept is not None:
            idx = kept[k - 1].numpy().astype(np.int64)
            if idx.size == 0:
                break  # no channel has this order (nor the ones after)
            if idx.size < layer.out_channels:
                channels = idx
                mask = np.zeros(layer.out_channels, bool)
                mask[idx] = True
                shape = [1] * codes.ndim
                shape[layer.out_axis] = -1
                codes = np.where(mask.reshape(shape), codes, 0).astype(np.int8)
        scale, table, exponent = _order_arrays(scale, config.weight_bits)
        plan_orders.append(WeightOrder(codes, scale, config.weight_bits, e.axis,
                                       config.block_size if config.granularity == "block"
                                       else None, channels, table, exponent))
    plan_orders = tuple(plan_orders)
    w_hat = sum(torch.from_numpy(o_.dequantize()) for o_ in plan_orders)
    first = torch.from_numpy(plan_orders[0].dequantize())
    fractions = [o_.kept_fraction(layer.out_channels) for o_ in plan_orders[1:]]
    from calib_free.weights.sparse import layer_bops
    from rexdeploy.planning import cost_models

    final = e.errors[0].clone()  # each channel's error proxy at its highest order
    for k, o_ in enumerate(plan_orders[1:], 1):
        idx = torch.arange(layer.out_channels) if o_.channels is None else \
            torch.from_numpy(o_.channels)
        final[idx] = e.errors[k][idx]
    signal = e.signal.clamp_min(1e-30)

    metrics = {"macs": int(layer.macs), "orders": len(plan_orders),
               "kept_fraction": [round(f, 4) for f in fractions],
               "bops": layer_bops(layer.macs, config.weight_bits, config.activation_bits,
                                  fractions),
               "bops_order1": layer_bops(layer.macs, config.weight_bits,
                                         config.activation_bits, []),
               **(cost_models.layer_metrics(layer, config.budget_cost, config.weight_bits,
                                            config.activation_bits, fractions)
                  if config.budget is not None else {}),
               "error_order1": _rounded(weight_error(w, first)),
               "error": _rounded(weight_error(w, w_hat)),
               # output noise-to-signal proxy (docs/algorithms.md 2.1): order 1 and final
               "output_nsr_order1": float(f"{float((e.errors[0] / signal).mean()):.6g}"),
               "output_nsr": float(f"{float((final / signal).mean()):.6g}")}
    pairs = pair_limit(layer, config)
    if pairs is not None:
        metrics["overflow_fix"] = _overflow_metrics(w, plan_orders[0], pairs, config.weight_bits)
    if any(o_.table is not None for o_ in plan_orders):
        metrics["exponents"] = [round(float(o_.exponent), 6) for o_ in plan_orders]
    shift = None
    if config.bias_correction and e.mean_in is not None:
        shift = _bias_shift(layer, (w_hat - w), e.mean_in)
        metrics["bias_shift_max"] = round(float(np.abs(shift).max()), 6)
    if e.input_scale is not None:
        metrics["balanced"] = {"spread": round(float(e.input_scale.max() / e.input_scale.min()),
                                               3)}
    return LayerPlan(layer.name, layer.op, layer.weight, layer.input, plan_orders, shift, metrics,
                     e.input_scale)


def _overflow_metrics(w, order, pairs, bits: int) -> dict:
    """What the pair limit did to order 1: its limit, the output channels whose scale grew past
    max-abs for it, the mean bits those gave up (log2 of the growth), and the largest |pair
    sum| left (<= limit)."""
    import torch

    from calib_free.weights.quantizer import choose_scale, qmax
    from calib_free.weights.saturation import pair_sums

    plain = choose_scale(w, bits, "channel", pairs.out_axis).reshape(-1).double()
    scale = torch.from_numpy(np.asarray(order.scale, np.float64)).reshape(-1)
    moved = scale > plain * (1 + 1e-6)
    pos, neg = pair_sums(torch.from_numpy(order.codes), pairs)
    return {"limit": pairs.limit, "channels_rescaled": int(moved.sum()),
            "bits_given_up": round(float(torch.log2(scale[moved] / plain[moved]).mean()), 4)
            if bool(moved.any()) else 0.0,
            "max_pair_sum": int(max(int(pos.max()), -int(neg.min()))),
            "qmax": qmax(bits)}


def _activation(tensor: str, s: TensorStats | None, o: Observed | None, config: QuantConfig,
                allow_unsigned: bool, smooth: "torch.Tensor | None" = None,
                floor: float | None = None) -> ActivationPlan | None:
    """The tensor's plan from its statistics or observed range (floor: its hard lower bound,
    where the target takes a zero point)."""
    factor = None
    if use_stats(s, config.ranges):
        bound, nonneg, source, hi = s.bound, s.nonneg, s.source, s.hi
    elif o is not None and smooth is not None:
        # the range of x / s, channel by channel, over the same synthetic inputs
        factor = (1.0 / smooth.numpy()).astype(np.float32)
        bound = float((o.channel_absmax * factor).max())
        nonneg, source, hi = o.nonneg, f"observed:{config.ranges}+smooth", None
    elif o is not None:
        bound, nonneg, source, hi = o.bound, o.nonneg, f"observed:{config.ranges}", o.hi
    else:
        return None
    from calib_free.activations.ranges import scale_from_clip

    if floor is not None and hi is not None and not nonneg and -floor < hi:
        return _with_zero_point(tensor, floor, float(hi), source)
    signed = not (allow_unsigned and config.unsigned_activations and nonneg)
    bound = max(bound, 1e-8)
    step = dict(config.input_grid).get(tensor)
    if step is not None and factor is None and s is not None:
        from calib_free.weights.quantizer import qmax

        q = qmax(8, signed)
        if _on_grid(s, step, q, signed):
            # the input's values are integer multiples of step (pixels): scale = step keeps
            # each one exact (at most the top pixel saturates by one step: 255 - 127 = 128)
            return ActivationPlan(tensor, float(step), 8, signed, f"{source}+pixel-grid",
                                  float(step * q), factor)
    return ActivationPlan(tensor, float(scale_from_clip(bound, 8, signed)), 8, signed, source,
                          float(bound), factor)


def _with_zero_point(tensor: str, floor: float, hi: float, source: str) -> ActivationPlan:
    """uint8 over [floor, hi] with the zero point that puts 0.0 on a code: about half the step
    of int8 over [-hi, hi] where the floor is small (a swish output's -0.278)."""
    scale = (hi - floor) / 255.0
    zero = int(round(-floor / scale))
    return ActivationPlan(tensor, float(scale), 8, False, f"{source}+zero-point", hi,
                          zero_point=zero)


# Per-channel ranges on depthwise inputs (channel_scales). One channel's range, estimated without
# data, misses its real range by more than the tensor's does (the tensor's is the largest of
# many): BatchNorm statistics put some of EfficientNet-Lite0's channels 2-4x under what real
# photos reach, and clipping 0.05 % of the values there cost 5 dB at the output. So each
# channel's range is CHANNEL_MARGIN times its estimate, within [CHANNEL_FLOOR, 1] times the
# tensor's range. Measured (docs/algorithms.md section 3.0), ONNX Runtime
# reference, EfficientNet-Lite0 logits on 50 photos / PP-OCRv4 detector text-mask IoU on 20
# images: per tensor 23.71 dB / 0.796 (6.6 dB); margin 1, floor 1/4: 18.87 dB / 0.881; margin 2,
# floor 1/8: 23.63 / 0.909; margin 3, floor 1/8: 23.69 / 0.913; margin 3, floor 1/16: 23.69 /
# 0.914 (11.4 dB; real per-channel maxima, no margin: 11.6 dB); margin 4: 23.75 / 0.905.
CHANNEL_MARGIN = 3.0
CHANNEL_FLOOR = 1.0 / 16
# Per-channel scales only where the channels differ: the tensor's range at least this many times
# the median channel's estimate. EfficientNet-Lite0's ReLU6 inputs measure 1.0-1.8 (per channel
# there: 23.6 dB on OpenVINO against 23.8 per tensor), PP-OCRv4's detector 2.3-9.4 on all but one.
CHANNEL_SPREAD = 2.0


def depthwise_inputs(layers: list[LayerInfo]) -> dict[str, int]:
    """tensor -> channels, for the activations every planned reader of which is a depthwise
    convolution (one input channel per group): per-channel scales there fold into each output
    channel's weight scale."""
    readers: dict[str, list[LayerInfo]] = {}
    for layer in layers:
        readers.setdefault(layer.input, []).append(layer)
    return {t: ls[0].in_channels for t, ls in readers.items()
            if all(lr.op == "Conv" and lr.groups > 1 and lr.groups == lr.in_channels
                   and lr.in_channels == ls[0].in_channels for lr in ls)}


def channel_scales(act: ActivationPlan, channels: int, s: TensorStats | None,
                   o: Observed | None, config: QuantConfig) -> ActivationPlan:
    """`act` with one scale per channel, from the same source as its per-tensor range: the
    statistics' mean_c +- sigma * std_c within the tensor's extent, or the observed channel
    maxima, times CHANNEL_MARGIN, within [CHANNEL_FLOOR, 1] of the tensor's. `act` unchanged where
    the source has no per-channel figures, where a scale migration or pixel grid sets the scale,
    where the channels' ranges are alike (CHANNEL_SPREAD), and on a ReLU/ReLU6 output observed
    on synthetic inputs (Observed.rectified)."""
    if act.smooth is not None or act.source.endswith("pixel-grid"):
        return act
    if use_stats(s, config.ranges):
        if np.size(s.mean) != channels:
            return act
        bounds = s.channel_bounds(config.range_sigma)
    elif o is not None and o.channel_absmax is not None and np.size(o.channel_absmax) == channels:
        if o.rectified and config.ranges != CALIB_RANGES:
            # A ReLU6 output observed on synthetic images: EfficientNet-Lite0 from
            # torch.onnx.export (BatchNorm folded) fell from 22.5 to 5.3 dB on the photos with
            # these channel maxima, channels the images barely drive reaching 6 on the photos
            return act
        bounds = np.asarray(o.channel_absmax, np.float64)
    else:
        return act
    if act.range < CHANNEL_SPREAD * float(np.median(bounds)):
        return act  # channels alike: little to gain, a channel's clipping to lose
    bounds = np.clip(bounds * CHANNEL_MARGIN, act.range * CHANNEL_FLOOR, act.range)
    scales = (bounds / act.qmax).astype(np.float32)  # calib_free.activations.ranges.scale_from_clip
    return replace(act, channel_scale=scales, scale=float(scales.max()))


def _on_grid(s: TensorStats, step: float, q: int, signed: bool) -> bool:
    """Do the codes of an input in [s.lo, s.hi] on a grid of `step` fit the int8/uint8 range
    [-q, q] / [0, q], give or take the one step that saturates?"""
    low = -(q + 1) if signed else 0
    return s.lo / step >= low - 1e-3 and s.hi / step <= q + 1 + 1e-3


def _input_mean(s: TensorStats | None, o: Observed | None, config: QuantConfig,
                channels: int) -> np.ndarray | None:
    if use_stats(s, config.ranges) and s.mean.size == channels:
        return s.mean
    if o is not None and o.channel_mean.size == channels and (observed_means(config)
                                                               or o.natural):
        return o.channel_mean
    return None


def observed_means(config: QuantConfig) -> bool:
    """Whether bias correction may use input means observed on synthetic inputs. Only when the
    user chose synthetic ranges: under `auto` the means of tensors the statistics do not reach
    would come from Gaussian images or random tokens, and correcting towards those measured
    worse than not correcting (MiniLM W4 K=2 mean cosine 0.99883 with, 0.99908 without)."""
    return config.ranges in ("synthetic", "zeroq", "calib")


def _bias_shift(layer: LayerInfo, delta: "torch.Tensor", mean_in: np.ndarray) -> np.ndarray:
    import torch

    from calib_free.refine.bias_correction import expected_output_shift

    if layer.out_axis == 1:
        delta = delta.transpose(0, 1)  # [Cin, Cout, ...] -> [Cout, Cin, ...]
    shift = expected_output_shift(delta.double(), torch.from_numpy(mean_in).double(),
                                  groups=layer.groups if layer.op == "Conv" else 1)
    if layer.op == "ConvTranspose":  # an output position meets kernel / strides taps on average
        shift = shift / float(np.prod(layer.strides or (1,)))
    return shift.numpy().astype(np.float32)


def _rounded(d: dict) -> dict:
    return {k: (round(float(v), 6) if np.isfinite(v) else float(v)) for k, v in d.items()}


def truncate_layer(lp: LayerPlan, layer: LayerInfo, orders: int, mean_in: np.ndarray | None
                   ) -> LayerPlan:
    """`lp` with only its first `orders` orders, its bias shift moved by what the dropped orders
    contributed to the data-free correction. Any other part of the shift (a refinement's: ERQ
    solves for the shift on its calibration data) is kept; for a plain plan the result is the
    data-free correction of the kept orders (the shift is linear in the weights)."""
    import torch

    if orders >= len(lp.orders):
        return lp
    kept = lp.orders[:orders]
    shift = lp.bias_shift
    if shift is not None and mean_in is not None:
        dropped = sum(torch.from_numpy(o.dequantize()) for o in lp.orders[orders:])
        shift = (np.asarray(shift, np.float64).reshape(-1)
                 + _bias_shift(layer, -dropped, mean_in).astype(np.float64).reshape(-1)
                 ).astype(np.float32).reshape(np.shape(lp.bias_shift))
    metrics = dict(lp.metrics, orders=orders, kept_fraction=[],
                   bops=lp.metrics.get("bops_order1"))
    return replace(lp, orders=kept, bias_shift=shift, metrics=metrics)


def ensemble_plans(plan: QuantPlan, layers: list[LayerInfo], stats: dict[str, TensorStats],
                   observed: dict[str, Observed], config: QuantConfig
                   ) -> tuple[list[QuantPlan], list[list[str]]]:
    """[base, member 1..M] plans of the layer-partition ensemble and the member layer groups.

    The base keeps order 1 everywhere; member m adds the higher orders of its group's layers.
    """
    from calib_free.weights.ensemble import partition_layers

    infos = {layer.name: layer for layer in layers}
    expanded = [lp for lp in plan.layers if len(lp.orders) > 1]
    bops = [float(lp.metrics.get("bops", 0.0)) - float(lp.metrics.get("bops_order1", 0.0))
            for lp in expanded]
    gain = [float(lp.metrics.get("output_nsr_order1", 0.0)) - float(lp.metrics.get("output_nsr",
                                                                                  0.0))
            for lp in expanded]
    groups = partition_layers(bops, gain, config.ensemble, config.ensemble_partition)
    members = [[lp.name for lp, g in zip(expanded, groups) if g == m]
               for m in range(config.ensemble)]
    means = {lp.name: _input_mean(stats.get(lp.input), observed.get(lp.input), config,
                                  infos[lp.name].in_channels) if config.bias_correction else None
             for lp in plan.layers}

    def member(keep: set[str]) -> QuantPlan:
        rows = tuple(lp if lp.name in keep else
                     truncate_layer(lp, infos[lp.name], 1, means[lp.name]) for lp in plan.layers)
        return QuantPlan(rows, plan.activations, plan.skipped, dict(plan.config),
                         recurrent=plan.recurrent, attention=plan.attention)

    return [member(set())] + [member(set(names)) for names in members], members
