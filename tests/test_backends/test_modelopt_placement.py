"""Our Q/DQ placement against NVIDIA ModelOpt's ONNX int8 PTQ on the same residual CNN.

ModelOpt (nvidia-modelopt, core package installed --no-deps by tools/setup.sh, CPU calibration
on its random data) is what a TensorRT user would run instead. The differences asserted here
are explained one by one in docs/tensorrt.md; a change on either side fails this test.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import onnx_ir as ir
import pytest

from rexdeploy.lower import lower
from rexdeploy.passes.center_activations import CenterActivationsPass
from backends.trt_rules import check_trt_rules
from lowering_helpers import CNN_INPUT, export, make_plan, random_inputs
import peers
from tiny_models import tiny_cnn

# never imported here: importing ModelOpt's ONNX quantization patches ONNX Runtime's quantizer
# classes for the whole process (the peer benchmark's quantize_static then fails)
pytestmark = pytest.mark.skipif(importlib.util.find_spec("modelopt") is None,
                                reason="nvidia-modelopt (core, --no-deps) is not installed")


def placement(model: ir.Model) -> set[tuple[str, str, int, str]]:
    """(op, node, input index, weight|act) for every non-Q/DQ input fed by DequantizeLinear.
    A weight is a DQ of constant codes (ours) or of a QuantizeLinear of a constant (ModelOpt's
    fake-quantized float weights)."""
    out = set()
    for node in model.graph:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, value in enumerate(node.inputs):
            dq = value.producer() if value is not None else None
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            src = dq.inputs[0]
            q = src.producer()
            if q is not None and q.op_type == "QuantizeLinear":
                src = q.inputs[0]
            const = src.const_value is not None or (src.producer() is not None and
                                                    src.producer().op_type == "Constant")
            out.add((node.op_type, node.name, i, "weight" if const else "act"))
    return out


@pytest.mark.e2e
def test_placement_matches_modelopt_except_the_documented_differences(tmp_path):
    model = export(tiny_cnn(), CNN_INPUT)
    plan = make_plan(model, random_inputs(CNN_INPUT))
    plan = dataclasses.replace(plan, activations=tuple(  # TensorRT's: signed int8 only
        dataclasses.replace(a, signed=True, scale=a.range / 127) for a in plan.activations))
    ours = lower(model, plan)
    centring = CenterActivationsPass(plan)  # as a trt build does: no Q/DQ moves
    centring(ours)
    assert centring.stats["centred"] >= 3
    src = str(tmp_path / "float.onnx")
    ir.save(model, src)
    # in a child process, as the peer benchmark runs it: ModelOpt patches ONNX Runtime's
    # quantizer classes in the process that runs it, and later quantize_static calls then fail
    theirs = ir.load(peers.modelopt_quantize(src, str(tmp_path), None, method="max"))
    a, b = placement(ours), placement(theirs)
    convs = {n.name for n in model.graph if n.op_type == "Conv"}
    assert {(op, n, i, k) for op, n, i, k in a & b if op == "Conv"} == \
        {("Conv", n, 0, "act") for n in convs} | {("Conv", n, 1, "weight") for n in convs}
    assert {x for x in a & b if x[0] != "Conv"} == {("Add", "/block/Add", 0, "act")}  # skip
    assert a - b == {("Gemm", "/fc/Gemm", 0, "act"), ("Gemm", "/fc/Gemm", 1, "weight")}
    assert b - a == {("GlobalAveragePool", "/pool/GlobalAveragePool", 0, "act"),
                     ("Flatten", "/Flatten", 0, "act")}
    # both graphs follow TensorRT's rules
    assert check_trt_rules(ours).ok and check_trt_rules(theirs).ok, \
        (check_trt_rules(ours).to_dict(), check_trt_rules(theirs).to_dict())
