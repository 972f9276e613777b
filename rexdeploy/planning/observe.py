"""Observe intermediate tensors of the float graph on given inputs (ONNX Runtime, CPU).

Used where data-free statistics cannot reach a tensor (ops without a moment rule, LayerNorm-fed
tensors in transformers) and for `--ranges synthetic|zeroq`: the inputs are synthetic (Gaussian,
uniform within `--input-range`, random token ids, or BN-matched images), or the user's real
samples (`--calib`: tail quantiles, TAIL, in place of the extremes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from rexdeploy.planning.analyze import COMPUTE_OPS
from rexdeploy.planning.bounds import hard_bounds
from rexdeploy.planning.stats import Extremes


@dataclass(frozen=True, eq=False)
class Observed(Extremes):
    """Running statistics of one tensor over all samples: its extremes (widened by
    NATURAL_MARGIN on natural synthetic images), channel means and channel maxima."""

    lo: float
    hi: float
    channel_mean: np.ndarray  # [C], channel axis 1 (rank 3: last axis)
    channel_absmax: np.ndarray | None = None  # [C] max |x| per channel, same axis
    # observed on natural synthetic images (1/f noise, natural colour), as a compute op made it
    # of them: its channel means are fit for the data-free bias correction (white noise's are
    # not, nor are the images' own means, which are the generator's and not the data's: the
    # Fashion-MNIST CNN's first convolution corrected with them read 34.4 dB, without 36.7)
    natural: bool = False
    # the output of a ReLU or Clip (ReLU6): synthetic inputs leave some of its channels near 0
    # that real inputs drive to the bound, so its channel maxima are no range estimate
    rectified: bool = False
    # (min, max) over the samples where lo/hi are tail quantiles (observe(tail=...)), else None
    extremes: tuple[float, float] | None = None

    def at_extremes(self) -> "Observed":
        """The same observation with its extremes as lo/hi."""
        from dataclasses import replace

        return self if self.extremes is None else replace(self, lo=self.extremes[0],
                                                          hi=self.extremes[1], extremes=None)


# Natural synthetic images (1/f noise in natural colour) reach less far than real inputs: the
# observed extremes (lo, hi and the channel maxima) of what a compute op made of them are
# widened by this factor (the input itself, moved and rescaled, spans its range already).
# Swept over 1, 1.125, 1.25, 1.5 (and 1.75, 2 on the first): logits SQNR / task metric in the
# ONNX Runtime reference (docs/benchmarks.md, "Ranges from natural images, widened"):
#   Fashion-MNIST CNN from torch.onnx.export  29.2 / 31.1 / 35.7 / 37.6 dB (TorchScript: 36.8)
#   EfficientNet-Lite0 from torch.onnx.export 22.5 / 23.0 / 22.6 / 21.5 dB
#   PP-OCRv4 detector, text-mask IoU          0.914 / 0.886 / 0.923 / 0.883
#   PP-OCRv4 recogniser, CTC exact match      0.156 / 0.169 / 0.195 / 0.195
#   ddddocr detector, detections kept         0.86 / 0.88 / 0.96 / 0.96
#   ddddocr recogniser, CTC exact match       0.623 / 0.675 / 0.766 / 0.597
# (swept with the input's own range widened too; leaving it out cost the ddddocr detector two of
# its 50 detections, 0.96 -> 0.92, and gave the Fashion CNN as TorchScript back its 34.4 dB,
# 30.5 widened)
NATURAL_MARGIN = 1.25

# ...but not past TYPICAL_SPREAD times the median over the images of each image's largest |x|:
# a deep CNN's activations are heavy-tailed across images too, and one image's outlier set the
# range. MobileNetV2 from torch.onnx.export: the stream after block 16 reached 22.0 on one of
# the 64 images, 2.1 on the median one (the 50 real photos: 34.1 and 1.9; its BatchNorm
# statistics say 2.5), and the logits read 17.3 dB on the photos (TorchScript, with its
# BatchNorm: 20.5). Capped at 1.5 / 2 / 2.5 / 3 / 4 times the median: 19.8 / 20.0 / 19.7 /
# 19.5 / 19.2 dB, EfficientNet-Lite0 from torch.onnx.export 23.1 / 23.7 (none capped, as at
# any factor from 2) (docs/benchmarks.md, "Ranges from natural images: within the op's bounds
# and the typical image")
TYPICAL_SPREAD = 2.0

# A user's real samples (--calib) give each tensor's extremes as the quantiles at TAIL and
# 1 - TAIL of all its values over the samples, not the min and max: a deep CNN's activations
# are heavy-tailed (MobileNetV2's stream after block 16: median channel kurtosis 55), and ranges
# that reach the rarest values leave every other value a coarse grid. The clipped outliers cost
# less at the output. MobileNetV2 exported with BatchNorm folded, calibrated on 20 photos and
# measured on the 50 (Q/DQ ONNX in ONNX Runtime): min/max 16.2 dB, quantiles 1e-3 16.6, 1e-4
# 18.6, 1e-5 17.5; EfficientNet-Lite0 23.5 / -, 23.7, 23.9 (its data-free ranges: 23.7). Not
# everywhere: the build also tries the extremes and keeps what the samples' output prefers
# (rexdeploy/planning/stage.py, _user_ranges).
TAIL = 1e-4


def observe(model: ir.Model, names: list[str], samples: list[dict[str, np.ndarray]],
            threads: int | None = None, natural: bool = False,
            tail: float | None = None) -> dict[str, Observed]:
    """Min/max and per-channel means of the named float tensors over `samples` (natural: they
    are natural synthetic images; then what a compute op made of them is Observed.natural and
    its extremes are widened by NATURAL_MARGIN; tail: lo and hi are the quantiles at tail and
    1 - tail of all the values instead, TAIL for a user's real samples, and the extremes are
    kept beside them, Observed.extremes)."""
    from rexdeploy.ort_session import session as ort_session
    from rexdeploy.ort_session import with_outputs

    if not names or not samples:
        return {}
    proto = with_outputs(ir.to_proto(model), names, copy=False)
    session = ort_session(proto.SerializeToString(), "the float model with its tensors marked",
                          threads=threads)
    acc: dict[str, list] = {n: [np.inf, -np.inf, None, 0, None, []] for n in names}
    tails = {n: _Tails(tail, len(samples)) for n in names} if tail else {}
    for feeds in samples:
        outs = session.run(names, feeds)
        kept = attended_positions(feeds)
        for name, x in zip(names, outs):
            x = _unpadded(x, kept)
            if tails:
                tails[name].add(x)
            a = acc[name]
            a[0] = min(a[0], float(x.min()))
            a[1] = max(a[1], float(x.max()))
            cm = _channel_mean(x)
            a[2] = cm if a[2] is None else a[2] + cm
            a[3] += 1
            cmax = _channel_absmax(x)
            a[4] = cmax if a[4] is None else np.maximum(a[4], cmax)
            a[5].append(float(np.abs(x).max()))
    return _observed(model, acc, tails, natural)


def _observed(model: ir.Model, acc: dict[str, list], tails: dict, natural: bool
              ) -> dict[str, Observed]:
    """observe()'s accumulators as Observed: natural images' extremes widened, within the
    op's hard bounds and, where one image reached far past the others, TYPICAL_SPREAD times
    the median image's maximum."""
    rectified = {v.name for node in model.graph if node.op_type in RECTIFIERS
                 for v in node.outputs if v is not None}
    deep = _after_compute(model) if natural else set()
    bounds = hard_bounds(model)
    out = {}
    for n, a in acc.items():
        m = NATURAL_MARGIN if n in deep else 1.0  # the input's own range the images span
        lo, hi = tails[n].quantiles() if tails else (a[0], a[1])
        # never widened past what the op can produce (a ReLU6 output's 6): EfficientNet-Lite0
        # from torch.onnx.export had 31 ReLU6 outputs at range 7.5, 25 % coarser for nothing
        b = bounds.get(n, (-np.inf, np.inf))
        if n in deep:
            cap = TYPICAL_SPREAD * float(np.median(a[5]))
            b = (max(b[0], -cap), min(b[1], cap))
        out[n] = Observed(*_within((lo * m, hi * m), b), a[2] / a[3],
                          None if a[4] is None else np.minimum(a[4] * m, max(map(abs, b))),
                          n in deep, n in rectified,
                          _within((a[0] * m, a[1] * m), b) if tails else None)
    return out


def _within(pair: tuple[float, float], bounds: tuple[float, float]) -> tuple[float, float]:
    return (float(np.clip(pair[0], *bounds)), float(np.clip(pair[1], *bounds)))


class _Tails:
    """The quantiles at `tail` and 1 - `tail` of all the values one tensor takes over `count`
    samples, streamed: each sample keeps only its k smallest and k largest values, k what the
    quantile needs over `count` samples of its size (exact where the samples have one size; a
    near value where they differ, as token tensors with their padding left out do)."""

    def __init__(self, tail: float, count: int):
        self.tail, self.count = tail, max(count, 1)
        self.low: list[np.ndarray] = []
        self.high: list[np.ndarray] = []
        self.size = 0

    def add(self, x: np.ndarray) -> None:
        flat = np.asarray(x, np.float64).reshape(-1)
        if flat.size == 0:
            return
        k = min(flat.size, int(np.ceil(self.tail * flat.size * self.count)) + 1)
        self.low.append(np.partition(flat, k - 1)[:k])
        self.high.append(np.partition(flat, flat.size - k)[flat.size - k:])
        self.size += flat.size

    def quantiles(self) -> tuple[float, float]:
        low, high = np.concatenate(self.low), np.concatenate(self.high)
        k = min(int(np.floor(self.tail * self.size)), low.size - 1)
        return float(np.partition(low, k)[k]), float(-np.partition(-high, k)[k])


def _after_compute(model: ir.Model) -> set[str]:
    """Names of the values computed through at least one compute op (Conv, Gemm, MatMul, ...);
    the others are the inputs' values moved and rescaled, whose range the images span."""
    deep: set[str] = set()
    for node in model.graph:  # topological order
        if node.op_type in COMPUTE_OPS or any(v is not None and v.name in deep
                                          for v in node.inputs):
            deep.update(v.name for v in node.outputs if v is not None)
    return deep


RECTIFIERS = ("Relu", "Clip")


def integer_input_ranges(model: ir.Model) -> dict[str, tuple[int, int]]:
    """Half-open value ranges [lo, hi) for integer inputs, as `synthetic_inputs` draws them:
    token ids feeding a Gather get [0, vocab) (the table's rows), masks get [1, 2) (all
    tokens attended), other integer inputs [0, 2)."""
    ranges: dict[str, tuple[int, int]] = {}
    for value in model.graph.inputs:
        if value.dtype is None or value.dtype.is_floating_point():
            continue
        if "mask" in value.name.lower():
            ranges[value.name] = (1, 2)
            continue
        for use in value.uses():
            node = use.node
            if node.op_type == "Gather" and use.idx == 1:
                table = node.inputs[0]
                if table is not None and table.shape is not None and \
                        isinstance(table.shape[0], int):
                    ranges[value.name] = (0, table.shape[0])
        ranges.setdefault(value.name, (0, 2))
    return ranges


def attended_positions(feeds: dict) -> np.ndarray | None:
    """The positions [L] an attention mask (an integer or boolean input [1, L] named *mask*)
    marks as tokens in a sample, or None where the sample has no such input."""
    for name, value in feeds.items():
        m = np.asarray(value)
        if "mask" in name.lower() and m.ndim == 2 and m.shape[0] == 1 and \
                not np.issubdtype(m.dtype, np.floating):
            return m[0] != 0
    return None


def _unpadded(x: np.ndarray, kept: np.ndarray | None) -> np.ndarray:
    """A token tensor [1, L, C] without the padded positions (a user's sentences padded to the
    build's length: the padding is most of the positions of a short quote, and its values are
    none the model's output reads, so they must not set ranges, means or migration factors:
    all-MiniLM-L6-v2 W4A8 calibrated on 16 padded quotes read 0.810 mean cosine, on the same
    tokens without padding 0.870, data-free 0.853); other tensors as they are."""
    if kept is None or x.ndim != 3 or x.shape[0] != 1 or x.shape[1] != kept.size:
        return x
    return x[:, kept, :]


def _other_axes(x: np.ndarray) -> tuple[int, ...] | None:
    """Every axis but the channel one (1; the last for rank 3); None: x has no channel axis."""
    if x.ndim <= 1:
        return None
    axis = x.ndim - 1 if x.ndim == 3 else 1
    return tuple(i for i in range(x.ndim) if i != axis)


def _channel_absmax(x: np.ndarray) -> np.ndarray:
    return np.atleast_1d(np.abs(x).max(axis=_other_axes(x))).astype(np.float64)


def _channel_mean(x: np.ndarray) -> np.ndarray:
    return np.atleast_1d(x.astype(np.float64).mean(axis=_other_axes(x)))
