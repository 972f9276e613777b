"""QuantPlan: the frozen, serialisable decision of what is quantized how.

The lowering applies a plan and never re-decides it. Arrays are numpy (codes int8, scales
float32); `save`/`load` write `plan.json` (everything readable) and `plan.npz` (the arrays).
Pure Python + numpy: no ONNX or backend import.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

PLAN_VERSION = 1


@dataclass(frozen=True, eq=False)
class WeightOrder:
    """One order of a (possibly expanded) weight: W_k = scale * codes.

    codes: int8 array in the ONNX weight layout (Conv [Cout, Cin/g, kh, kw]; Gemm as stored,
    i.e. [Cout, Cin] when transB=1 else [Cin, Cout]; MatMul [Cin, Cout]).
    scale: float32; shape [] (per tensor), [C] along `axis` (per channel), or the codes' shape with
    the blocked axis divided by `block_size` (per block, ONNX DequantizeLinear blocked layout).
    bits: the code width (codes lie in [-(2^(b-1)-1), 2^(b-1)-1]).
    channels: for a group-sparse order, the sorted output-channel indices it covers (int64);
    the codes of the other channels are 0. None: every channel (dense).
    table: for a non-uniform (PowerQuant) order, the float32 lookup table of 2 qmax + 1 levels,
    entry q + qmax for code q; then W_k = scale * table[codes + qmax] (scale = the group's
    clip). exponent: the power operator's a that made the table (informational).
    """

    codes: np.ndarray
    scale: np.ndarray
    bits: int
    axis: int | None = 0
    block_size: int | None = None
    channels: np.ndarray | None = None
    table: np.ndarray | None = None
    exponent: float | None = None

    def kept_fraction(self, out_channels: int) -> float:
        return 1.0 if self.channels is None else len(self.channels) / max(out_channels, 1)

    def dequantize(self) -> np.ndarray:
        s = self.scale
        if self.block_size:
            s = np.repeat(s, self.block_size, axis=self.axis)
            s = s[tuple(slice(0, n) for n in self.codes.shape)]
        elif s.ndim == 1 and self.axis is not None:
            shape = [1] * self.codes.ndim
            shape[self.axis] = -1
            s = s.reshape(shape)
        if self.table is None:
            values = self.codes.astype(np.float32)
        else:
            offset = 2 ** (self.bits - 1) - 1  # code -qmax is entry 0
            values = np.asarray(self.table, np.float32)[self.codes.astype(np.int64) + offset]
        return values * s.astype(np.float32)


@dataclass(frozen=True, eq=False)
class LayerPlan:
    """A quantized Conv/Gemm/MatMul: its weight orders, activation input and bias fix."""

    name: str                      # ONNX node name
    op: str                        # Conv | Gemm | MatMul
    weight: str                    # initializer name of the float weight it replaces
    input: str                     # value name of the activation input
    orders: tuple[WeightOrder, ...]
    bias_shift: np.ndarray | None = None  # float32 [Cout]: subtract from the bias (correction)
    metrics: dict = field(default_factory=dict)  # weight error before/after, MACs, ...
    # float32 [Cin] or None: the layer's input is multiplied by this per channel (last axis) in
    # front of its orders, whose codes quantize W / input_scale (balanced weight columns,
    # calib_free.weights.balance); only on layers whose input stays float
    input_scale: np.ndarray | None = None


@dataclass(frozen=True)
class ActivationPlan:
    """Activation quantization: symmetric (zero-point 0) per tensor, or per channel on the inputs
    of depthwise convolutions (`channel_scale`); or, per tensor, uint8 with a zero point
    (`zero_point`) for a tensor bounded below by a small negative value."""

    tensor: str        # ONNX value name
    scale: float       # real units per code step
    bits: int = 8
    signed: bool = True  # False: uint8 [0, 255] (non-negative tensors, or with a zero point)
    source: str = ""     # where the range came from: bn, ln, propagated, synthetic, input-range
    range: float = 0.0   # the clip value the scale was derived from
    # float32 [C] or None: the tensor is multiplied by this per channel (last axis) before it is
    # quantized: 1 / s, the migration factors s of calib_free.activations.smooth, so the layer reads
    # x / s; the layers reading it carry s in their weights
    smooth: np.ndarray | None = field(default=None, compare=False)
    # float32 [C] or None: one scale per channel (axis 1, NCHW) instead of `scale`, which is then
    # their largest; only on tensors read by depthwise convolutions alone, where channel c feeds
    # output channel c and the runtime folds the input's scale into that channel's weight scale
    channel_scale: np.ndarray | None = field(default=None, compare=False)
    # the uint8 code of 0.0 (signed False, per tensor): the grid covers [-zero_point * scale,
    # (255 - zero_point) * scale], e.g. a swish output's [-0.278, range]; 0: symmetric or [0, ..]
    zero_point: int = 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - (1 if self.signed else 0)) - 1

    @property
    def qdq_scale(self) -> np.ndarray:
        """The scale the Q/DQ pair uses: [C] per channel (axis 1), or a scalar (its dtype as
        stored: the caller casts to the graph's float type)."""
        return np.asarray(self.scale if self.channel_scale is None else self.channel_scale)


@dataclass(frozen=True, eq=False)
class RecurrentPlan:
    """A quantized LSTM/GRU (calib_free.weights.recurrent): int8 codes of its input weights W and
    recurrent weights R with one scale per (direction, gate row) shared by both; its input X is
    quantized by the plan's ActivationPlan for `input`."""

    name: str                # ONNX node name
    op: str                  # LSTM | GRU
    input: str               # value name of X
    weights: tuple[str, str]  # initializer names of W and R
    w_codes: np.ndarray      # int8 [D, G*H, I]
    r_codes: np.ndarray      # int8 [D, G*H, H]
    scale: np.ndarray        # float32 [D, G*H]
    metrics: dict = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class AttentionPlan:
    """An int8 MatMul whose two inputs are activations (attention scores Q x K^T and their
    weighted sum P x V): both inputs are quantized by the plan's ActivationPlans for `inputs`;
    it has no weight of its own."""

    name: str                # ONNX node name
    inputs: tuple[str, str]  # value names of its two inputs
    metrics: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SkippedLayer:
    """A layer kept in float, and why (listed in the build report, never silent)."""

    name: str
    op: str
    reason: str
    macs: int = 0      # multiply-adds at batch 1 it does in float (0 where unknown)


@dataclass(frozen=True, eq=False)
class QuantPlan:
    layers: tuple[LayerPlan, ...]
    activations: tuple[ActivationPlan, ...]
    skipped: tuple[SkippedLayer, ...] = ()
    config: dict = field(default_factory=dict)
    version: int = PLAN_VERSION
    recurrent: tuple[RecurrentPlan, ...] = ()
    attention: tuple[AttentionPlan, ...] = ()

    def layer(self, name: str) -> LayerPlan:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def activation(self, tensor: str) -> ActivationPlan | None:
        for act in self.activations:
            if act.tensor == tensor:
                return act
        return None

    # -- serialisation -------------------------------------------------------------------
    def to_json_dict(self) -> dict:
        layers = []
        for layer in self.layers:
            layers.append({
                "name": layer.name, "op": layer.op, "weight": layer.weight, "input": layer.input,
                "orders": [{"bits": o.bits, "axis": o.axis, "block_size": o.block_size,
                            "shape": list(o.codes.shape),
                            "channels": None if o.channels is None else len(o.channels)}
                           | ({} if o.table is None else {"exponent": o.exponent})
                           for o in layer.orders],
                "bias_shift": layer.bias_shift is not None,
                "metrics": layer.metrics,
            } | ({"input_scale": True} if layer.input_scale is not None else {}))
        return {
            "version": self.version,
            "config": self.config,
            "layers": layers,
            "activations": [{k: v for k, v in vars(a).items()
                             if k not in ("smooth", "channel_scale")
                             and not (k == "zero_point" and v == 0)} |
                            ({"smooth": True} if a.smooth is not None else {}) |
                            ({"channel_scale": True} if a.channel_scale is not None else {})
                            for a in self.activations],
            "skipped": [vars(s) | {} for s in self.skipped],
        } | ({"recurrent": [{"name": r.name, "op": r.op, "input": r.input,
                             "weights": list(r.weights), "shape_w": list(r.w_codes.shape),
                             "shape_r": list(r.r_codes.shape), "metrics": r.metrics}
                            for r in self.recurrent]} if self.recurrent else {}) \
            | ({"attention": [{"name": a.name, "inputs": list(a.inputs), "metrics": a.metrics}
                              for a in self.attention]} if self.attention else {})

    def save(self, directory: str) -> tuple[str, str]:
        """Write plan.json and plan.npz into `directory`; returns both paths."""
        arrays: dict[str, np.ndarray] = {}
        for i, layer in enumerate(self.layers):
            for k, order in enumerate(layer.orders):
                arrays[f"l{i}.o{k}.codes"] = order.codes
                arrays[f"l{i}.o{k}.scale"] = order.scale
                if order.table is not None:
                    arrays[f"l{i}.o{k}.table"] = np.asarray(order.table, np.float32)
                if order.channels is not None:
                    arrays[f"l{i}.o{k}.channels"] = np.asarray(order.channels, np.int64)
            if layer.bias_shift is not None:
                arrays[f"l{i}.bias_shift"] = layer.bias_shift
            if layer.input_scale is not None:
                arrays[f"l{i}.input_scale"] = np.asarray(layer.input_scale, np.float32)
        for i, act in enumerate(self.activations):
            if act.smooth is not None:
                arrays[f"a{i}.smooth"] = np.asarray(act.smooth, np.float32)
            if act.channel_scale is not None:
                arrays[f"a{i}.channel_scale"] = np.asarray(act.channel_scale, np.float32)
        for i, rec in enumerate(self.recurrent):
            arrays |= {f"r{i}.w": rec.w_codes, f"r{i}.r": rec.r_codes, f"r{i}.scale": rec.scale}
        json_path = os.path.join(directory, "plan.json")
        npz_path = os.path.join(directory, "plan.npz")
        with open(json_path, "w") as f:
            json.dump(self.to_json_dict(), f, indent=1, sort_keys=True)
            f.write("\n")
        _save_npz_deterministic(npz_path, arrays)
        return json_path, npz_path

    @classmethod
    def load(cls, directory: str) -> "QuantPlan":
        with open(os.path.join(directory, "plan.json")) as f:
            d = json.load(f)
        if d.get("version", 0) > PLAN_VERSION:
            raise ValueError(f"plan version {d['version']} is newer than this code ({PLAN_VERSION})")
        with np.load(os.path.join(directory, "plan.npz")) as npz:
            arrays = {k: npz[k] for k in npz.files}
        layers = []
        for i, ld in enumerate(d["layers"]):
            orders = tuple(
                WeightOrder(arrays[f"l{i}.o{k}.codes"], arrays[f"l{i}.o{k}.scale"], od["bits"],
                            od["axis"], od["block_size"], arrays.get(f"l{i}.o{k}.channels"),
                            arrays.get(f"l{i}.o{k}.table"), od.get("exponent"))
                for k, od in enumerate(ld["orders"]))
            layers.append(LayerPlan(ld["name"], ld["op"], ld["weight"], ld["input"], orders,
                                    arrays.get(f"l{i}.bias_shift"), ld.get("metrics", {}),
                                    arrays.get(f"l{i}.input_scale")))
        acts = tuple(ActivationPlan(**(a | {key: arrays.get(f"a{i}.{key}") if a.get(key) else None
                                            for key in ("smooth", "channel_scale")}))
                     for i, a in enumerate(d["activations"]))
        recurrent = tuple(
            RecurrentPlan(r["name"], r["op"], r["input"], tuple(r["weights"]), arrays[f"r{i}.w"],
                          arrays[f"r{i}.r"], arrays[f"r{i}.scale"], r.get("metrics", {}))
            for i, r in enumerate(d.get("recurrent", [])))
        attention = tuple(AttentionPlan(a["name"], tuple(a["inputs"]), a.get("metrics", {}))
                          for a in d.get("attention", []))
        return cls(tuple(layers), acts,
                   tuple(SkippedLayer(**s) for s in d["skipped"]), d.get("config", {}),
                   d["version"], recurrent, attention)


def _save_npz_deterministic(path: str, arrays: dict[str, np.ndarray]) -> None:
    """np.savez writes zip entries with the current time; fix it so equal plans hash equal."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue())
