"""Fuse a zero constant Pad into the Conv it feeds.

Requires: nothing; a Pad whose pads are not (yet) constant is left alone, so run
`ConstantFoldPass` first.
Ensures: no Pad with mode "constant", value 0 and constant non-negative pads on the spatial
dims only is the sole feeder of a Conv's data input. TensorRT forbids Q/DQ between Pad and Conv,
and OpenVINO fuses a padded Conv better than a separate Pad.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from rexdeploy.constants import const_array as _const


class FusePadIntoConvPass(ir.passes.InPlacePass):
    """Pad(constant 0) -> Conv  ==>  Conv(pads += pad's spatial pads)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for pad in list(model.graph):
            match = _match(pad)
            if match is None:
                continue
            conv, begin, end = match
            old = conv.attributes.get_ints("pads", [0] * (2 * len(begin)))
            spatial = len(begin)
            pads = ([a + b for a, b in zip(old[:spatial], begin)]
                    + [a + b for a, b in zip(old[spatial:], end)])
            conv.attributes["pads"] = ir.AttrInt64s("pads", pads)
            conv.replace_input_with(0, pad.inputs[0])
            model.graph.remove(pad, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified)

    def ensures(self, model: ir.Model) -> None:
        left = [node.name for node in model.graph if _match(node) is not None]
        if left:
            raise ir.passes.PostconditionError(f"zero Pad still feeds a Conv: {left}")


def _match(pad: ir.Node) -> tuple[ir.Node, list[int], list[int]] | None:
    """(conv, spatial pads begin, spatial pads end) when `pad` can be fused, else None."""
    if pad.op_type != "Pad" or pad.domain != "" or len(pad.inputs) < 2:
        return None
    if pad.attributes.get_string("mode", "constant") != "constant":
        return None
    out = pad.outputs[0]
    uses = list(out.uses())
    if out.is_graph_output() or len(uses) != 1:
        return None
    conv, index = uses[0]
    if conv.op_type != "Conv" or conv.domain != "" or index != 0:
        return None
    if conv.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    if not _is_zero(pad.inputs[2] if len(pad.inputs) > 2 else None):
        return None
    pads = _const(pad.inputs[1])
    rank = _rank(conv.inputs[1]) or _rank(pad.inputs[0])
    if pads is None or rank is None:
        return None
    full = _full_pads(pads, pad.inputs[3] if len(pad.inputs) > 3 else None, rank)
    if full is None or (full < 0).any() or full[[0, 1, rank, rank + 1]].any():
        return None  # negative pads crop; batch/channel pads change the tensor's meaning
    return conv, full[2:rank].tolist(), full[rank + 2:].tolist()


def _full_pads(pads: np.ndarray, axes_value: ir.Value | None, rank: int) -> np.ndarray | None:
    """Pads as [begin of every axis..., end of every axis...] for a tensor of `rank` dims."""
    pads = pads.astype(np.int64).ravel()
    if axes_value is None:
        return pads if pads.size == 2 * rank else None
    axes = _const(axes_value)
    if axes is None or pads.size != 2 * axes.size:
        return None
    full = np.zeros(2 * rank, np.int64)
    for i, axis in enumerate(int(a) % rank for a in axes.ravel()):
        full[axis], full[rank + axis] = pads[i], pads[axes.size + i]
    return full


def _rank(value: ir.Value | None) -> int | None:
    if value is None:
        return None
    if value.shape is not None:
        return value.shape.rank()
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else len(tensor.shape)


def _is_zero(value: ir.Value | None) -> bool:
    if value is None:
        return True  # the default constant_value is 0
    array = _const(value)
    return array is not None and (array.size == 0 or not array.any())
