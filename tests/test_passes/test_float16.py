"""The float16 pass (rexdeploy/passes/float16.py) and --float-precision / --activations fp16 on
--target trt: strongly typed TensorRT takes fp16 only where the ONNX says fp16."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import rexdeploy
from rexdeploy.passes.float16 import F16_MIN_NORMAL, F16_MIN_SUBNORMAL, Float16Pass
from tiny_models import tiny_mlp

F16 = TensorProto.FLOAT16


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    ref, out = ref.astype(np.float64), out.astype(np.float64)
    return float(10 * np.log10((ref ** 2).sum() / max(((ref - out) ** 2).sum(), 1e-30)))


def _ort(path_or_bytes, feeds: dict) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path_or_bytes, options,
                                providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _typed(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value after strict ONNX type inference."""
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    g = inferred.graph
    out = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    out.update({t.name: t.data_type for t in g.initializer})
    return out


# -- the pass on a graph written by hand --------------------------------------------------------
def _hand_graph() -> onnx.ModelProto:
    """x -> Q/DQ (a tiny scale) -> Conv (DQ weights, one channel's scale below 2^-24) + bias
    (one value below f16's range)
    -> Add(1e6) -> Mul(scales) -> Cast(to float) -> Resize(the same scales) -> y."""
    rng = np.random.default_rng(0)
    codes = rng.integers(-127, 128, (4, 4, 3, 3)).astype(np.int8)
    w_scale = np.array([0.01, 0.02, 0.005, 1e-9], np.float32)
    inits = [
        numpy_helper.from_array(np.array(1e-6, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "zp"),
        numpy_helper.from_array(codes, "w_codes"),
        numpy_helper.from_array(w_scale, "w_scale"),
        numpy_helper.from_array(np.array([1e-9, 0.5, -0.25, 1.0], np.float32), "bias"),
        numpy_helper.from_array(np.array(1e6, np.float32), "big"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "zp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w_codes", "w_scale"], ["w"], axis=0),
        helper.make_node("Conv", ["xd", "w", "bias"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "big"], ["a"]),
        helper.make_node("Mul", ["a", "scales"], ["m"]),
        helper.make_node("Cast", ["m"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Resize", ["f", "", "scales"], ["y"], mode="nearest"),
    ]
    graph = helper.make_graph(
        nodes, "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def test_pass_types_every_float_tensor_f16_but_io_and_resize_scales():
    model = ir.serde.deserialize_model(_hand_graph())
    to_half = Float16Pass()
    to_half(model)
    proto = ir.serde.serialize_model(model)
    types = _typed(proto)  # strict inference: the graph type-checks
    assert types["x"] == TensorProto.FLOAT and types["y"] == TensorProto.FLOAT  # I/O kept
    for name in ("x_scale", "w_scale", "bias", "big", "xd", "w", "c", "a", "m"):
        assert types[name] == F16, name
    resize = next(n for n in proto.graph.node if n.op_type == "Resize")
    assert types[resize.input[2]] == TensorProto.FLOAT  # ONNX: Resize scales are float only
    mul = next(n for n in proto.graph.node if n.op_type == "Mul")
    assert types[mul.input[1]] == F16  # the shared initializer was split, not left f32
    # the Cast to float became a Cast to float16 of an f16 value: removed
    assert to_half.stats["casts_removed"] == 1
    assert [n.op_type for n in proto.graph.node].count("Cast") == 2  # the I/O casts
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert float(inits["x_scale"]) == F16_MIN_NORMAL
    assert float(inits["w_scale"][3]) == F16_MIN_SUBNORMAL
    assert float(inits["big"]) == 65504.0
    assert inits["w_scale"][0] == np.float16(0.01)  # others only rounded to f16
    assert to_half.stats["activation_scales_raised"] == 1
    assert to_half.stats["weight_scales_raised"] == 1
    assert to_half.stats["values_clamped"] == 1
    assert to_half.stats["values_flushed"] == 1 and inits["bias"][0] == 0  # 1e-9


def test_pass_leaves_the_model_it_was_cloned_from_alone():
    """lower() clones the float model for every ensemble member; a clone shares value types,
    so the pass must replace them, not edit them."""
    model = ir.serde.deserialize_model(_hand_graph())
    from onnx_ir.passes.common import ShapeInferencePass

    ShapeInferencePass()(model)
    before = {v.name: v.dtype for v in model.graph.initializers.values()}
    before.update({v.name: v.dtype for n in model.graph for v in n.outputs})
    Float16Pass()(model.clone())
    after = {v.name: v.dtype for v in model.graph.initializers.values()}
    after.update({v.name: v.dtype for n in model.graph for v in n.outputs})
    assert after == before and ir.DataType.FLOAT16 not in after.values()


def test_pass_keeps_the_numbers_of_a_benign_graph():
    """Without clamping, the f16 graph computes what the f32 graph does, to f16 rounding."""
    src = _hand_graph()
    for t in src.graph.initializer:
        if t.name == "x_scale":
            t.CopyFrom(numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"))
        if t.name == "big":
            t.CopyFrom(numpy_helper.from_array(np.array(3.0, np.float32), "big"))
        if t.name == "w_scale":
            t.CopyFrom(numpy_helper.from_array(np.array([0.01, 0.02, 0.005, 0.01], np.float32),
                                               "w_scale"))
    model = ir.serde.deserialize_model(src)
    Float16Pass()(model)
    x = np.random.default_rng(1).uniform(-1, 1, (1, 4, 4, 4)).astype(np.float32)
    ref = _ort(src.SerializeToString(), {"x": x})
    half = _ort(ir.serde.serialize_model(model).SerializeToString(), {"x": x})
    assert half.dtype == np.float32
    assert _sqnr(ref, half) > 40


# -- builds ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cnn_builds(cnn_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    arts = {}
    for precision in ("auto", "fp32"):
        # centring off: this compares the float16 pass alone (with centring, the f16 graph
        # meets f16's own floor near 40 dB on this model:
        # tests/test_passes/test_center_activations.py)
        config = rexdeploy.BuildConfig(target="trt", float_precision=precision,
                                       centering="off")
        arts[precision] = rexdeploy.build(cnn_file, ["input:1x3x32x32"], output=str(
            out / f"{precision}.trt"), config=config, quiet=True)
    return arts


def test_trt_build_is_float16_by_default(cnn_builds):
    art = cnn_builds["auto"]
    report = art.report()
    assert report["summary"]["float_precision"] == "fp16"
    assert any(n.startswith("float parts written as float16") for n in report["notes"])
    assert report["backend"]["trt_check"]["ok"]
    model = onnx.load(art.file("onnx"))
    types = _typed(model)
    assert types["input"] == TensorProto.FLOAT and types[model.graph.output[0].name] == 1
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert convs and all(types[n.input[0]] == F16 and types[n.input[1]] == F16 for n in convs)
    assert not [t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT]
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert q and all(types[n.input[1]] == F16 for n in q)  # f16 scales: f16 Q/DQ
    fp32 = cnn_builds["fp32"].report()
    assert fp32["summary"]["float_precision"] == "fp32"
    assert not any(t.data_type == F16 for t in onnx.load(cnn_builds["fp32"].file("onnx"))
                   .graph.initializer)


def test_float16_build_is_as_faithful_as_the_float32_one(cnn_builds):
    compared = {p: rexdeploy.compare(a.path, synthetic=4, quiet=True)
                for p, a in cnn_builds.items()}
    assert compared["auto"]["sqnr_db"] > 20
    assert abs(compared["auto"]["sqnr_db"] - compared["fp32"]["sqnr_db"]) < 1.0


@pytest.mark.openvino
def test_float16_qdq_graph_still_runs_int8_in_openvino(cnn_builds, tmp_path):
    """A real runtime still finds the int8 Q/DQ pattern in the f16 graph (runtime precision)."""
    from backends.base import BuildOptions
    from backends.openvino import OpenVINOBackend

    result = OpenVINOBackend().build(cnn_builds["auto"].file("onnx"), str(tmp_path),
                                     BuildOptions(device="CPU"))
    assert result.layers and all(layer.is_int8 for layer in result.layers)


def test_weight_only_fp16_for_trt(tmp_path):
    model = tiny_mlp()
    outs = {}
    for activations in ("fp16", "none"):
        quant = rexdeploy.QuantConfig(weights="int4", activations=activations,
                                      granularity="block", block_size=8)
        precision = "auto" if activations == "fp16" else "fp32"
        art = rexdeploy.build(model, ["input:1x8x32"], output=str(tmp_path / activations),
                              config=rexdeploy.BuildConfig(target="trt", quant=quant,
                                                           float_precision=precision), quiet=True)
        assert art.report()["backend"]["trt_check"]["ok"]
        outs[activations] = art
    proto = onnx.load(outs["fp16"].file("onnx"))
    types = _typed(proto)
    dqs = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert dqs and all(types[n.input[0]] == TensorProto.INT4 and types[n.input[1]] == F16
                       for n in dqs)
    x = np.random.default_rng(0).normal(size=(1, 8, 32)).astype(np.float32)
    half, full = (_ort(outs[a].file("onnx"), {"input": x}) for a in ("fp16", "none"))
    assert _sqnr(full, half) > 40  # weight-only: f16 rounding is all that differs


def test_cli_float_precision_on_openvino_is_one_clear_error(cnn_file, tmp_path):
    r = subprocess.run([sys.executable, "-m", "rexdeploy.cli", "build", cnn_file, "--input",
                        "input:1x3x32x32", "--float-precision", "fp16", "-o",
                        str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 1 and "applies to --target trt only" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "x").exists()
