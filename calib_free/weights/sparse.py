"""Group-sparse REx orders and the bit-operation budget (docs/algorithms.md section 2.1).

An order k >= 2 need not cover every output channel (neuron). Which channels it covers is a
nested choice (a channel gets order k only if it has order k - 1), made either uniformly per layer
(`uniform_channels`: the fraction gamma with the largest residual error) or globally under a
budget (`allocate_budget`: greedily, by output-error reduction per bit-operation).

Cost of a layer with M MACs, weight bits b_w, activation bits b_a and kept fractions gamma_k:

    BOPs = M * b_w * b_a * (1 + gamma_2 + ... + gamma_K)

or, with a runtime's CostModel, that plus what the runtime pays per weight and per output
element (memory traffic, the f32 output of a further order and the sum of the orders), which
BOPs leave out; `CostModel` below.

Error proxy of output channel i after k orders (inputs taken as independent):

    e_k[i] = sum_j (W - W_hat_k)[i, j]^2 * E[x_j^2]          (x: the layer's input)

Taking order k for channel i reduces it by e_{k-1}[i] - e_k[i]. The greedy score is that drop
as a share of the layer's whole order-1 error (sum_i e_1[i]), divided by the channel's BOPs:
every layer counts alike, relative to its own error. Measured on EfficientNet-Lite0 W8A8 at
`--budget 1.25` (docs/benchmarks.md): 25.2 dB logits SQNR, against 24.7 dB when the drop is
divided by the channel's signal power E[y_i^2] instead (an output noise-to-signal drop, which
starves the expand convolutions), 24.7 dB for the raw drop and 25.1 dB for a uniform gamma.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import torch


def channel_errors(w: torch.Tensor, w_hat: torch.Tensor, out_axis: int,
                   in_power: torch.Tensor | None = None, in_axis: int | None = None,
                   groups: int = 1) -> torch.Tensor:
    """e[i] = sum over the other axes of (w - w_hat)^2, weighted by the input power E[x_j^2]
    along `in_axis` when given. w: the weight in its layout; returns float64 [C_out]."""
    err = (w.double() - w_hat.double()).square()
    if in_power is not None and in_axis is not None:
        err = err * _along(_power_per_weight_input(in_power, err.shape[in_axis], groups,
                                                   err.shape[out_axis]), err, in_axis, out_axis)
    dims = [d for d in range(err.ndim) if d != out_axis]
    return err.sum(dim=dims) if dims else err


def signal_power(w: torch.Tensor, out_axis: int, in_power: torch.Tensor | None = None,
                 in_axis: int | None = None, groups: int = 1) -> torch.Tensor:
    """E[y_i^2] estimated as sum_j W[i, j]^2 E[x_j^2] (independent inputs): float64 [C_out]."""
    return channel_errors(w, torch.zeros_like(w), out_axis, in_power, in_axis, groups)


def _power_per_weight_input(in_power: torch.Tensor, width: int, groups: int,
                            out_channels: int) -> torch.Tensor:
    """The input power as the weight sees it: [width] for a dense layer; for a grouped Conv
    ([Cout, Cin/g, ...]) a [Cout, Cin/g] table, since output i reads the inputs of its group."""
    p = in_power.double().flatten()
    if groups == 1:
        return p if p.numel() == width else p.mean().expand(width)
    if p.numel() != width * groups:
        return p.mean().expand(width)
    per_group = out_channels // groups
    table = p.reshape(groups, width)  # [g, Cin/g]
    return table.repeat_interleave(per_group, dim=0)  # [Cout, Cin/g]


def _along(p: torch.Tensor, like: torch.Tensor, in_axis: int, out_axis: int) -> torch.Tensor:
    """Reshape the per-input power `p` ([Cin] or [Cout, Cin]) to broadcast against `like`."""
    shape = [1] * like.ndim
    shape[in_axis] = like.shape[in_axis]
    if p.ndim == 2:
        shape[out_axis] = like.shape[out_axis]
        if out_axis > in_axis:
            p = p.T
    return p.reshape(shape)


def keep_count(fraction: float, channels: int) -> int:
    """Channels an order with kept fraction `fraction` covers (at least one)."""
    return max(1, min(channels, math.ceil(fraction * channels - 1e-9)))


def uniform_channels(errors: list[torch.Tensor], fraction: float) -> list[torch.Tensor]:
    """Kept channels of orders 2..K for one layer, the fraction `fraction` each.

    errors: [e_1, ..., e_{K-1}], e_k the per-channel error after k orders ([C] each). Order k
    keeps, among the channels order k-1 kept, the ones with the largest e_{k-1}. Returns K-1
    sorted int64 index tensors (nested)."""
    kept: list[torch.Tensor] = []
    among = torch.arange(errors[0].numel()) if errors else torch.arange(0)
    for e in errors:
        n = min(keep_count(fraction, e.numel()), among.numel())
        top = torch.topk(e[among], n).indices
        among = torch.sort(among[top]).values
        kept.append(among)
    return kept


@dataclass(frozen=True)
class LayerCost:
    """What the budget allocator knows of one layer.

    errors: [K, C] float64, row k-1 = per-channel error proxy after k orders (k = 1..K).
    macs: MACs at batch 1; bits_w / bits_a: weight / activation bits of the cost model.
    weights / outputs / inputs: its weight count, output and input elements at batch 1 (a
    CostModel prices them; 0 when unknown).
    """

    name: str
    errors: torch.Tensor
    macs: int
    bits_w: int
    bits_a: int
    weights: int = 0
    outputs: int = 0
    inputs: int = 0

    @property
    def channels(self) -> int:
        return int(self.errors.shape[1])

    @property
    def bops(self) -> float:
        """BOPs of order 1 (the whole layer once)."""
        return float(self.macs) * self.bits_w * self.bits_a

    def gain(self, channel: int, order: int) -> float:
        """Share of the layer's order-1 error removed when `channel` gets `order` (2..K)."""
        drop = float(self.errors[order - 2, channel] - self.errors[order - 1, channel])
        return drop / max(float(self.errors[0].sum()), 1e-30)


@dataclass(frozen=True)
class CostModel:
    """A layer's cost in BOP units, as a runtime pays it:

        order 1:          M * b_w' * b_a' + 64 * (per_weight * weights * b_w / 8
                                                  + per_output * outputs)
        each more order:  M * b_w' * b_a' + 64 * (per_weight * weights * b_w / 8
                                                  + per_extra_output * outputs)

    with b' = max(b, min_bits) (a runtime computes narrower codes in min_bits kernels), the
    weights priced by their bytes, and the per-element terms in int8-MAC equivalents (64 BOPs
    each). A layer reading a float activation (b_a >= 16) also pays per_float_input per input
    element, once (the float tensor written and read, and its conversion for the readers that
    stay integer). BOPS, all
    terms 0, is the plain bit-operation count of docs/algorithms.md section 2.1. A runtime's own
    numbers are measured (rexdeploy/planning/cost_models.py): a further order there also writes its
    output in float and adds it to the others, so per_extra_output > per_output. Sparse orders
    pay the per-element terms in proportion to the channels they keep, as they pay the MACs."""

    name: str = "bops"
    per_weight: float = 0.0
    per_output: float = 0.0
    per_extra_output: float = 0.0
    per_float_input: float = 0.0
    min_bits: int = 1

    def compute(self, layer: LayerCost, bits_w: int, bits_a: int) -> float:
        return float(layer.macs) * max(bits_w, self.min_bits) * max(bits_a, self.min_bits)

    def order1(self, layer: LayerCost, bits_w: int | None = None,
               bits_a: int | None = None) -> float:
        """The layer once, at its own bits unless given."""
        bits_w = layer.bits_w if bits_w is None else bits_w
        bits_a = layer.bits_a if bits_a is None else bits_a
        float_in = self.per_float_input * layer.inputs if bits_a >= 16 else 0.0
        return self.compute(layer, bits_w, bits_a) + 64.0 * (
            self.per_weight * layer.weights * bits_w / 8 + self.per_output * layer.outputs
            + float_in)

    def extra_order(self, layer: LayerCost, bits_w: int | None = None,
                    bits_a: int | None = None) -> float:
        """One further order of the whole layer."""
        bits_w = layer.bits_w if bits_w is None else bits_w
        return self.compute(layer, bits_w, layer.bits_a if bits_a is None else bits_a) + 64.0 * (
            self.per_weight * layer.weights * bits_w / 8 + self.per_extra_output * layer.outputs)

    def layer(self, layer: LayerCost, bits_w: int, bits_a: int, extra: float) -> float:
        """The layer with `extra` further orders' worth of channels (sum of kept fractions)."""
        return self.order1(layer, bits_w, bits_a) + extra * self.extra_order(layer, bits_w,
                                                                             bits_a)


BOPS = CostModel()


@dataclass(frozen=True)
class Allocation:
    """Kept channels per layer and order, and the cost spent (in the cost model's units: BOPs
    for BOPS)."""

    kept: dict[str, list[torch.Tensor]]  # layer -> [orders 2..K] sorted int64 indices
    base_bops: float
    total_bops: float
    budget: float

    @property
    def ratio(self) -> float:
        return self.total_bops / self.base_bops if self.base_bops else 1.0


def allocate_budget(layers: list[LayerCost], budget: float,
                    whole_layers: bool = False, cost_model: CostModel = BOPS) -> Allocation:
    """Greedy: give orders >= 2 to (layer, channel) pairs by error share per unit of cost (BOPs
    unless a cost_model says otherwise) until the total reaches `budget` x the order-1 cost.
    Order k of a channel becomes a candidate once the channel has order k - 1. Ties break by
    layer order, then channel (deterministic).

    whole_layers: the unit is a layer's whole order k (every channel), at the whole layer's
    BOPs. That is what a runtime pays when it runs a sparse order as a dense kernel with zero
    rows (OpenVINO's and TensorRT's lowering, `--sparse-form dense`): one kept channel costs the
    full second branch there, so a per-channel budget would buy K=2's runtime at a fraction of
    its fidelity.

    cost_model: what the budget counts (default BOPS: bit-operations); the budget is then
    `budget` x the order-1 model's cost in that model."""
    if budget < 1.0:
        raise ValueError(f"budget {budget}: must be >= 1 (1 = order 1 only)")
    if whole_layers:
        return _allocate_layers(layers, budget, cost_model)
    base = sum(cost_model.order1(layer) for layer in layers)
    limit = budget * base
    spent = base
    heap: list[tuple[float, int, int, int]] = []
    for li, layer in enumerate(layers):
        if layer.errors.shape[0] < 2 or layer.macs <= 0:
            continue
        for c in range(layer.channels):
            _push(heap, layer, li, c, 2, cost_model.extra_order(layer) / layer.channels)
    chosen: list[list[list[int]]] = [[[] for _ in range(max(0, l.errors.shape[0] - 1))]
                                     for l in layers]
    while heap:
        neg_score, li, c, order = heapq.heappop(heap)
        layer = layers[li]
        cost = cost_model.extra_order(layer) / layer.channels
        if spent + cost > limit * (1 + 1e-12):
            continue  # a cheaper candidate may still fit
        spent += cost
        chosen[li][order - 2].append(c)
        if order < layer.errors.shape[0]:
            _push(heap, layer, li, c, order + 1, cost)
    kept = {layer.name: [torch.tensor(sorted(cs), dtype=torch.int64) for cs in chosen[li]]
            for li, layer in enumerate(layers)}
    return Allocation(kept, base, spent, budget)


def _allocate_layers(layers: list[LayerCost], budget: float,
                     cost_model: CostModel) -> Allocation:
    """allocate_budget with whole layers: candidate (layer, order k) removes the layer's
    error share sum_c gain(c, k) at the cost of the layer's whole further order."""
    base = sum(cost_model.order1(layer) for layer in layers)
    limit = budget * base * (1 + 1e-12)
    spent = base
    heap: list[tuple[float, int, int]] = []

    def push(li: int, order: int) -> None:
        layer = layers[li]
        gain = sum(layer.gain(c, order) for c in range(layer.channels))
        if gain > 0:
            heapq.heappush(heap, (-gain / cost_model.extra_order(layer), li, order))

    for li, layer in enumerate(layers):
        if layer.errors.shape[0] >= 2 and layer.macs > 0:
            push(li, 2)
    top = [1] * len(layers)
    while heap:
        _, li, order = heapq.heappop(heap)
        layer = layers[li]
        cost = cost_model.extra_order(layer)
        if spent + cost > limit:
            continue  # a cheaper layer may still fit
        spent += cost
        top[li] = order
        if order < layer.errors.shape[0]:
            push(li, order + 1)
    kept = {layer.name: [torch.arange(layer.channels) if k <= top[li]
                         else torch.zeros(0, dtype=torch.int64)
                         for k in range(2, layer.errors.shape[0] + 1)]
            for li, layer in enumerate(layers)}
    return Allocation(kept, base, spent, budget)


def _push(heap: list, layer: LayerCost, li: int, channel: int, order: int,
          cost: float) -> None:
    gain = layer.gain(channel, order)
    if gain <= 0:
        return
    score = gain / cost
    heapq.heappush(heap, (-score, li, channel, order))


def layer_bops(macs: int, bits_w: int, bits_a: int, kept_fractions: list[float]) -> float:
    """BOPs = M * b_w * b_a * (1 + sum of the kept fractions of orders 2..K)."""
    return float(macs) * bits_w * bits_a * (1.0 + sum(kept_fractions))
