"""OpenVINO runs the lowered Q/DQ ONNX with int8 kernels (the only proof is the runtime model).

Each compiled layer's rt_info says what runs: `layerType`, `runtimePrecision` and
`primitiveType` (e.g. brgconv_avx512_1x1_I8, brgemm_avx512_i8). f32 inference precision is
pinned: on CPUs with bf16 the default would hide a float fallback behind bf16 kernels.
"""

from __future__ import annotations

import onnx_ir as ir
import pytest

from lowering_helpers import (CNN_INPUT, MLP_INPUT, export, make_plan, random_inputs, run_ort,
                              sqnr_db)
from rexdeploy.lower import lower
from tiny_models import tiny_cnn, tiny_mlp

pytestmark = pytest.mark.openvino
COMPUTE = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul")


@pytest.fixture(scope="module")
def cnn():
    return export(tiny_cnn(), CNN_INPUT), random_inputs(CNN_INPUT)


@pytest.fixture(scope="module")
def mlp():
    return export(tiny_mlp(), MLP_INPUT), random_inputs(MLP_INPUT)


def pair_limited(plan, model: ir.Model):
    """`plan` with every int8 weight order's codes kept within the pair limit where this run's
    int8 kernels saturate (a pre-VNNI ISA: calib_free.weights.saturation), unchanged elsewhere:
    these tests check the lowering against ONNX Runtime, not the saturation
    (tests/test_backends/test_int8_isa.py)."""
    from dataclasses import replace

    import torch

    from calib_free.weights.saturation import PairLimit, limit_pairs
    from conftest import int8_saturates
    from rexdeploy.planning.analyze import find_layers

    if not int8_saturates():
        return plan
    infos = {l.name: l for l in find_layers(model)[0]}
    rows = []
    for lp in plan.layers:
        info = infos[lp.name]
        if info.op == "Conv" and info.weight_array.shape[1] < 2:
            rows.append(lp)
            continue
        rule = PairLimit(info.in_axis, info.out_axis)
        orders = tuple(replace(o, codes=limit_pairs(
            torch.from_numpy(o.codes).float(), torch.from_numpy(o.codes).float(), 127,
            rule).numpy().astype("int8")) for o in lp.orders)
        rows.append(replace(lp, orders=orders))
    return replace(plan, layers=tuple(rows))


def compile_cpu(model: ir.Model, tmp_path):
    import openvino as ov

    path = str(tmp_path / "model.onnx")
    ir.save(model, path)
    return ov.Core().compile_model(ov.convert_model(path), "CPU",
                                   {"INFERENCE_PRECISION_HINT": "f32"})


def runtime_layers(compiled) -> list[dict]:
    """The compute layers of the compiled model: name, type, precision, kernel."""
    rows = []
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        kind = rt["layerType"].astype(str)
        if kind in COMPUTE:
            rows.append({"name": op.get_friendly_name(), "type": kind,
                         "precision": rt["runtimePrecision"].astype(str),
                         "kernel": rt["primitiveType"].astype(str)})
    return rows


def is_int8(layer: dict) -> bool:
    return layer["kernel"].lower().endswith("_i8") or layer["precision"] in ("u8", "i8")


@pytest.mark.parametrize("orders", [1, 2])
def test_tiny_cnn_runs_int8_kernels(cnn, orders, tmp_path):
    cnn, cnn_inputs = cnn
    lowered = lower(cnn, pair_limited(make_plan(cnn, cnn_inputs, orders=orders), cnn))
    compiled = compile_cpu(lowered, tmp_path)
    layers = runtime_layers(compiled)
    convs = [l for l in layers if l["type"] in ("Convolution", "GroupConvolution")]
    fcs = [l for l in layers if l["type"] == "FullyConnected"]
    assert len(convs) == 7 * orders and len(fcs) == orders  # every order its own int8 layer
    assert [l for l in layers if not is_int8(l)] == []
    # the stem (3 input channels) included: on AVX-512 VNNI it is brgconv_avx512_I8
    assert any(l["name"].startswith("/stem/stem.0/Conv") and is_int8(l) for l in convs)
    x = cnn_inputs[0]
    got = compiled({0: x})[0]
    assert sqnr_db(run_ort(lowered, x), got) >= 30  # same Q/DQ semantics as the oracle


def test_tiny_mlp_matmuls_run_int8(mlp, tmp_path):
    mlp, mlp_inputs = mlp
    lowered = lower(mlp, make_plan(mlp, mlp_inputs, orders=2))
    layers = runtime_layers(compile_cpu(lowered, tmp_path))
    assert len(layers) == 4 and all(l["type"] == "FullyConnected" and is_int8(l)
                                    for l in layers)


@pytest.mark.cpuid_kernels
def test_int4_matmul_weights_stay_compressed(mlp, tmp_path):
    mlp, mlp_inputs = mlp
    lowered = lower(mlp, make_plan(mlp, mlp_inputs, bits=4, activations=False), int4_matmul=True)
    layers = runtime_layers(compile_cpu(lowered, tmp_path))
    assert len(layers) == 2 and all(l["precision"] == "i4" for l in layers), layers
