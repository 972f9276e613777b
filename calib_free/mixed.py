"""Auto mixed precision under a bit-operation budget, steered by measured output sensitivity.

The plain budget allocator (calib_free.weights.sparse.allocate_budget) scores a channel's order k by
the share of its layer's own order-1 weight error it removes, so every layer counts alike. Here each
layer also carries what its quantization costs the network output, measured without data
(rexdeploy/planning/sensitivity.py): the output noise-to-signal ratio when only that layer is
quantized,

    nsr_w[L] = ||f(x; W_L -> Q(W_L)) - f(x)||^2 / ||f(x)||^2      (order-1 weights of L only)
    nsr_a[T] = ||f(x; T -> Q(T)) - f(x)||^2 / ||f(x)||^2          (activation tensor T only)

on the build's synthetic inputs x. Every candidate is then scored in one currency, the expected
drop of the output NSR per bit-operation (output noise of independent layers adds up):

    order k of channel i of L:       nsr_w[L] * (e_{k-1}[i] - e_k[i]) / sum_i e_1[i]
    L's weights raised to 8 bits:    nsr_w[L] * (share now - share at 8 bits)   (layer-wide)
    T kept in float (no Q/DQ):       nsr_a[T]

with the cost model of docs/algorithms.md section 2.1, BOPs = M * b_w * b_a * (1 + sum of gammas):
raising L's weights costs M * b_a * (8 (1 + its gammas: orders end) - b_w (1 + its gammas));
keeping T float costs, over the layers reading it, M * b_w * (32 - 8) * (1 + their gammas).
A runtime's calib_free.weights.sparse.CostModel adds its per-weight and per-output terms to each.
The greedy is lazy: a candidate's score is recomputed when popped (the state of its layer may
have changed since it was pushed) and pushed back when it dropped. Raising a layer's weights
replaces its higher orders (their BOPs are refunded). Pure torch math; no ONNX.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import torch

from calib_free.metrics import noise_ratio
from calib_free.weights.sparse import BOPS, CostModel, LayerCost

# A layer's order gains are weighted by nsr_w ** SENSITIVITY_POWER (0: every layer alike, as
# calib_free.weights.sparse.allocate_budget; 1: the measured NSR as is, i.e. the expected output-NSR
# drop). 0.25 and 0.5 were tried on EfficientNet-Lite0 (docs/benchmarks.md): no better than 1
# where the signal is measured on 1/f noise; 1 is the one the model above justifies.
SENSITIVITY_POWER = 1.0
FLOAT_BITS = 32  # a float activation in the BOPs model (QuantConfig.activation_bits)
RAISED_WEIGHT_BITS = 8


def output_nsr(ref: list[torch.Tensor], test: list[torch.Tensor]) -> float:
    """Noise-to-signal energy ratio of `test` against `ref` (lists of matching tensors)."""
    noise = sum(float((t.double() - r.double()).square().sum()) for r, t in zip(ref, test))
    signal = sum(float(r.double().square().sum()) for r in ref)
    return noise_ratio(signal, noise)


@dataclass(frozen=True)
class MixedLayer:
    """What the mixed allocator knows of one layer beyond its LayerCost.

    cost: the layer at its build precision (cost.errors [K, C], weight bits, activation bits);
    nsr_w: measured output NSR of its order-1 weights (None: not measured, weight 1);
    errors8: [C] per-channel error proxy of its weights rounded at 8 bits (None: no raise);
    act: the activation tensor it reads (None: not quantized).
    """

    cost: LayerCost
    nsr_w: float | None = None
    errors8: torch.Tensor | None = None
    act: str | None = None


@dataclass(frozen=True)
class MixedAllocation:
    kept: dict[str, list[torch.Tensor]]         # layer -> orders 2..K kept channels
    raised_weights: dict[str, dict] = field(default_factory=dict)  # layer -> why/cost
    float_activations: dict[str, dict] = field(default_factory=dict)  # tensor -> why/cost
    base_bops: float = 0.0
    total_bops: float = 0.0
    budget: float = 1.0

    @property
    def ratio(self) -> float:
        return self.total_bops / self.base_bops if self.base_bops else 1.0


WHOLE = -1  # the channel of an "order" candidate that stands for the whole layer


class _State:
    def __init__(self, layers: list[MixedLayer], model: CostModel, floor: int = 1):
        self.layers = layers
        self.model = model
        self.kept = [[[] for _ in range(max(0, l.cost.errors.shape[0] - 1))] for l in layers]
        self.order = [torch.ones(l.cost.channels, dtype=torch.int64) for l in layers]
        for li, l in enumerate(layers):  # each layer starts at `floor` orders (or all it has)
            top = min(floor, l.cost.errors.shape[0]) if l.cost.macs > 0 else 1
            self.order[li][:] = top
            for k in range(2, top + 1):
                self.kept[li][k - 2].extend(range(l.cost.channels))
        self.raised = [False] * len(layers)
        self.float_act = [False] * len(layers)

    def bits(self, li: int) -> tuple[int, int]:
        c = self.layers[li].cost
        return (RAISED_WEIGHT_BITS if self.raised[li] else c.bits_w,
                FLOAT_BITS if self.float_act[li] else c.bits_a)

    def layer_cost(self, li: int, model: CostModel | None = None) -> float:
        """The layer's cost now, in `model` (default: the allocation's)."""
        c = self.layers[li].cost
        bw, ba = self.bits(li)
        extra = 0.0 if self.raised[li] else float(self.order[li].sum() - c.channels) / c.channels
        return (model or self.model).layer(c, bw, ba, extra)

    def share(self, li: int) -> float:
        """The layer's weight-error proxy now, as a share of its order-1 error."""
        c = self.layers[li].cost
        e1 = max(float(c.errors[0].sum()), 1e-30)
        if self.raised[li]:
            return float(self.layers[li].errors8.sum()) / e1
        idx = (self.order[li] - 1).clamp_max(c.errors.shape[0] - 1)
        return float(c.errors.gather(0, idx.unsqueeze(0)).sum()) / e1


def allocate_mixed(layers: list[MixedLayer], budget: float,
                   act_nsr: dict[str, float] | None = None,
                   raise_weights: bool = False, float_activations: bool = False,
                   whole_layers: bool = False, cost_model: CostModel = BOPS,
                   floor: int = 1) -> MixedAllocation:
    """Greedy allocation of orders, 8-bit weights and float activations under
    total BOPs <= budget x the order-1 BOPs, by expected output-NSR drop per BOP.

    floor: every layer starts with this many orders (REx K=floor everywhere, or all the orders
    it has), and the budget counts from that build's cost, not order 1's: budget x the cost at
    `floor` orders. Candidates are then the orders above it, raises and float activations.

    act_nsr: measured output NSR per activation tensor (needed for float_activations).
    Layers without nsr_w weigh their order gains by 1 (as allocate_budget does).
    whole_layers: orders go to whole layers (every channel) at the layer's full BOPs, as a
    runtime running sparse orders as dense zero-row kernels pays them
    (calib_free.weights.sparse.allocate_budget).
    cost_model: what the budget counts (default: BOPs); the scores are per unit of it. The
    bops_delta of each raise in the result stays in BOPs."""
    if budget < 1.0:
        raise ValueError(f"budget {budget}: must be >= 1 (1 = order 1 only)")
    if floor < 1:
        raise ValueError(f"floor {floor}: must be >= 1 (1 = the budget counts from order 1)")
    greedy = _Greedy(layers, act_nsr or {}, cost_model, floor)
    base = greedy.spent
    for li, l in enumerate(layers):
        if l.cost.macs <= 0:
            continue
        nxt = int(greedy.st.order[li][0]) + 1
        if nxt <= l.cost.errors.shape[0]:
            for c in [WHOLE] if whole_layers else range(l.cost.channels):
                greedy.push(("order", li, c, nxt))
        if raise_weights and l.errors8 is not None and l.cost.bits_w < RAISED_WEIGHT_BITS:
            greedy.push(("weights", li, 0, 0))
    if float_activations:
        for tensor in greedy.readers:
            if tensor in greedy.act_nsr:
                greedy.push(("act", tensor, 0, 0))
    greedy.run(budget * base * (1 + 1e-12))
    return greedy.result(base, budget)


class _Greedy:
    """The allocation's state and its heap of candidates (kind, key, channel, order): "order"
    (layer index, channel or WHOLE, order k), "weights" (layer index), "act" (tensor), each
    scored by expected output-NSR drop per unit of the cost model, re-scored when stale."""

    def __init__(self, layers: list[MixedLayer], act_nsr: dict[str, float], cost_model,
                 floor: int = 1):
        self.layers, self.act_nsr, self.cost_model = layers, act_nsr, cost_model
        self.st = _State(layers, cost_model, floor)
        self.spent = sum(self.st.layer_cost(li) for li in range(len(layers)))
        self.readers: dict[str, list[int]] = {}
        for li, l in enumerate(layers):
            if l.act is not None:
                self.readers.setdefault(l.act, []).append(li)
        self.heap: list = []
        self.tick = 0
        self.why_w: dict[str, dict] = {}
        self.why_a: dict[str, dict] = {}

    def weight(self, li: int) -> float:
        w = self.layers[li].nsr_w
        return 1.0 if w is None else max(w, 0.0) ** SENSITIVITY_POWER

    def evaluate(self, cand) -> tuple[float, float] | None:
        """(gain, cost) of a candidate in the current state; None when no longer possible."""
        kind, key, c, k = cand
        st, layers = self.st, self.layers
        if kind == "order":
            li = key
            bw, ba = st.bits(li)
            lc = layers[li].cost
            if c == WHOLE:
                if st.raised[li] or bool((st.order[li] != k - 1).any()):
                    return None
                gain = sum(lc.gain(ch, k) for ch in range(lc.channels))
                return self.weight(li) * gain, self.cost_model.extra_order(lc, bw, ba)
            if st.raised[li] or int(st.order[li][c]) != k - 1:
                return None
            return (self.weight(li) * lc.gain(c, k),
                    self.cost_model.extra_order(lc, bw, ba) / lc.channels)
        if kind == "weights":
            li = key
            if st.raised[li]:
                return None
            before = st.layer_cost(li)
            share_now = st.share(li)
            st.raised[li] = True
            gain = self.weight(li) * (share_now - st.share(li))
            cost = st.layer_cost(li) - before
            st.raised[li] = False
            return gain, cost
        lis = self.readers[key]  # kind == "act"
        if any(st.float_act[li] for li in lis):
            return None
        before = sum(st.layer_cost(li) for li in lis)
        for li in lis:
            st.float_act[li] = True
        cost = sum(st.layer_cost(li) for li in lis) - before
        for li in lis:
            st.float_act[li] = False
        return self.act_nsr[key], cost

    def push(self, cand) -> None:
        ev = self.evaluate(cand)
        if ev is None or ev[0] <= 0:
            return
        gain, cost = ev
        score = float("inf") if cost <= 0 else gain / cost
        heapq.heappush(self.heap, (-score, self.tick, cand))
        self.tick += 1

    def run(self, limit: float) -> None:
        """Buy the best-scoring candidate that still fits under `limit`, until none is left."""
        while self.heap:
            neg, _, cand = heapq.heappop(self.heap)
            ev = self.evaluate(cand)
            if ev is None or ev[0] <= 0:
                continue
            gain, cost = ev
            score = float("inf") if cost <= 0 else gain / cost
            if score < -neg * (1 - 1e-9):
                self.push(cand)  # stale: its layer changed since; compete again at the new score
                continue
            if self.spent + cost > limit:
                continue
            self.spent += cost
            self.apply(cand, gain, cost)

    def apply(self, cand, gain: float, cost: float) -> None:
        kind, key, c, k = cand
        st, layers = self.st, self.layers
        if kind == "order":
            if c == WHOLE:
                st.kept[key][k - 2].extend(range(layers[key].cost.channels))
                st.order[key][:] = k
            else:
                st.kept[key][k - 2].append(c)
                st.order[key][c] = k
            if k < layers[key].cost.errors.shape[0]:
                self.push(("order", key, c, k + 1))
            return
        if kind == "weights":
            st.raised[key] = True
            self.why_w[layers[key].cost.name] = {
                "bits": RAISED_WEIGHT_BITS, "from_bits": layers[key].cost.bits_w,
                "nsr_w": layers[key].nsr_w, "expected_nsr_drop": gain, "bops_delta": cost}
            return
        for li in self.readers[key]:
            st.float_act[li] = True
        self.why_a[key] = {"layers": [layers[li].cost.name for li in self.readers[key]],
                           "nsr_a": self.act_nsr[key], "expected_nsr_drop": gain,
                           "bops_delta": cost}

    def result(self, base: float, budget: float) -> MixedAllocation:
        st, layers = self.st, self.layers
        # the BOPs (whatever the cost model) each choice adds over the order-1 model, in the
        # final state (a raise bought after some orders refunded them at the time; what it
        # costs in the end is this)
        index = {l.cost.name: li for li, l in enumerate(layers)}
        for name, r in self.why_w.items():
            c = layers[index[name]].cost
            r["bops_delta"] = float(c.macs) * (RAISED_WEIGHT_BITS - c.bits_w) * c.bits_a
        for tensor, r in self.why_a.items():
            r["bops_delta"] = 0.0
            for li in self.readers[tensor]:
                now = st.layer_cost(li, BOPS)
                r["bops_delta"] += now - now * layers[li].cost.bits_a / FLOAT_BITS
        kept = {}
        for li, l in enumerate(layers):
            kept[l.cost.name] = [] if st.raised[li] else \
                [torch.tensor(sorted(cs), dtype=torch.int64) for cs in st.kept[li]]
        total = sum(st.layer_cost(li) for li in range(len(layers)))
        return MixedAllocation(kept, self.why_w, self.why_a, base, total, budget)
