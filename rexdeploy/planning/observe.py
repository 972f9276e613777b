"""Observe intermediate tensors of the float graph on given inputs (ONNX Runtime, CPU).

Used where data-free statistics cannot reach a tensor (ops without a moment rule, LayerNorm-fed
tensors in transformers) and for `--ranges synthetic|zeroq`: the inputs are synthetic (Gaussian,
uniform within `--input-range`, random token ids, or BN-matched images), never user data here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from rexdeploy.planning.stats import Extremes


@dataclass(frozen=True, eq=False)
class Observed(Extremes):
    """Running statistics of one tensor over all samples."""

    lo: float
    hi: float
    channel_mean: np.ndarray  # [C], channel axis 1 (rank 3: last axis)
    channel_absmax: np.ndarray | None = None  # [C] max |x| per channel, same axis
    natural: bool = False  # observed on natural synthetic images (1/f noise, natural colour):
    # their channel means are fit for the data-free bias correction, white noise's are not


def observe(model: ir.Model, names: list[str], samples: list[dict[str, np.ndarray]],
            threads: int | None = None, natural: bool = False) -> dict[str, Observed]:
    """Min/max and per-channel means of the named float tensors over `samples` (natural: they
    are natural synthetic images, Observed.natural)."""
    from rexdeploy.ort_session import session as ort_session
    from rexdeploy.ort_session import with_outputs

    if not names or not samples:
        return {}
    proto = with_outputs(ir.to_proto(model), names, copy=False)
    session = ort_session(proto.SerializeToString(), "the float model with its tensors marked",
                          threads=threads)
    acc: dict[str, list] = {n: [np.inf, -np.inf, None, 0, None] for n in names}
    for feeds in samples:
        outs = session.run(names, feeds)
        for name, x in zip(names, outs):
            a = acc[name]
            a[0] = min(a[0], float(x.min()))
            a[1] = max(a[1], float(x.max()))
            cm = _channel_mean(x)
            a[2] = cm if a[2] is None else a[2] + cm
            a[3] += 1
            cmax = _channel_absmax(x)
            a[4] = cmax if a[4] is None else np.maximum(a[4], cmax)
    return {n: Observed(a[0], a[1], a[2] / a[3], a[4], natural) for n, a in acc.items()}


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
