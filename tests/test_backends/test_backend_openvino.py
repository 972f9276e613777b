"""OpenVINO backend on tiny models built in code: what precision really runs, runner numerics
against ONNX Runtime, per-layer timings, throughput, and the user errors."""

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import backends
from backends.base import BuildOptions, RunOptions
from rexdeploy.evaluate.fidelity import sqnr_db
from rexdeploy.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QDQ_COMPUTE = ("conv1", "dwconv", "conv2", "fc")  # the ONNX nodes that must run int8


def _quantize_weight(w: np.ndarray):
    """Per-output-channel symmetric int8 (axis 0), clamped to [-127, 127]."""
    s = np.abs(w).reshape(len(w), -1).max(axis=1) / 127
    q = np.clip(np.round(w / s.reshape(-1, *[1] * (w.ndim - 1))), -127, 127)
    return q.astype(np.int8), s.astype(np.float32)


def make_qdq_model(path, act_dtype=np.int8, seed=0) -> str:
    """x[1,3,16,16] -> Conv3x3(+bias) -> Relu -> depthwise Conv3x3 -> Relu -> Conv1x1 -> GAP ->
    Flatten -> Gemm -> logits[1,10]; Q/DQ on every compute input (weights per channel, int8;
    activations per tensor, `act_dtype`, zero-point 0), opset 21 as the lowering writes it."""
    rng = np.random.default_rng(seed)
    weights = {"conv1": rng.standard_normal((16, 3, 3, 3)) * 0.3,
               "dwconv": rng.standard_normal((16, 1, 3, 3)) * 0.3,
               "conv2": rng.standard_normal((8, 16, 1, 1)) * 0.3,
               "fc": rng.standard_normal((10, 8)) * 0.3}
    inits, nodes = [], []
    for name, w in weights.items():
        q, s = _quantize_weight(w.astype(np.float32))
        inits += [numpy_helper.from_array(q, f"{name}.wq"),
                  numpy_helper.from_array(s, f"{name}.ws")]
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}.wq", f"{name}.ws"],
                                      [f"{name}.w"], axis=0, name=f"{name}.dq_w"))
    inits += [numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) * 0.1, "conv1.b"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc.b")]

    def qdq(tensor, scale):
        inits.extend([numpy_helper.from_array(np.array(scale, np.float32), f"{tensor}.s"),
                      numpy_helper.from_array(np.array(0, act_dtype), f"{tensor}.zp")])
        nodes.append(helper.make_node("QuantizeLinear", [tensor, f"{tensor}.s", f"{tensor}.zp"],
                                      [f"{tensor}.q"], name=f"{tensor}.quant"))
        nodes.append(helper.make_node("DequantizeLinear", [f"{tensor}.q", f"{tensor}.s",
                                                          f"{tensor}.zp"], [f"{tensor}.dq"],
                                      name=f"{tensor}.dequant"))
        return f"{tensor}.dq"

    qmax = 127 if act_dtype == np.int8 else 255
    nodes.append(helper.make_node("Conv", [qdq("x", 4 / qmax), "conv1.w", "conv1.b"], ["c1"],
                                  pads=[1, 1, 1, 1], name="conv1"))
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"], name="relu1"))
    nodes.append(helper.make_node("Conv", [qdq("r1", 3 / qmax), "dwconv.w"], ["c2"],
                                  pads=[1, 1, 1, 1], group=16, name="dwconv"))
    nodes.append(helper.make_node("Relu", ["c2"], ["r2"], name="relu2"))
    nodes.append(helper.make_node("Conv", [qdq("r2", 3 / qmax), "conv2.w"], ["c3"], name="conv2"))
    nodes.append(helper.make_node("GlobalAveragePool", ["c3"], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    nodes.append(helper.make_node("Gemm", [qdq("flat", 2 / 127 if act_dtype == np.int8 else
                                                    2 / 255), "fc.w", "fc.b"],
                                  ["logits"], transB=1, name="fc"))
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def make_float_model(path) -> str:
    """Conv+BatchNorm+ReLU (folded by the exporter), depthwise conv, Linear; torch-exported."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                          nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    bn = model[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2)
    model.eval()
    torch.onnx.export(model, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False,
                      input_names=["x"], output_names=["logits"], opset_version=17)
    return str(path)


def feeds(n=4, seed=1):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("ov_models")
    return {"float": make_float_model(d / "float.onnx"),
            "qdq_s8": make_qdq_model(d / "qdq_s8.onnx", np.int8),
            "qdq_u8": make_qdq_model(d / "qdq_u8.onnx", np.uint8)}


@pytest.fixture(scope="module")
def built(models, tmp_path_factory):
    ov = backends.get("openvino")
    out = {}
    for name, path in models.items():
        d = tmp_path_factory.mktemp(f"ov_{name}")
        out[name] = (str(d), ov.build(path, str(d), BuildOptions()))
    return out


def run_all(runner, samples):
    return np.stack([runner.infer(f)["logits"] for f in samples])


def test_lazy_imports():
    """Importing the backends and the compare/profile modules pulls in no runtime."""
    code = ("import sys, backends, backends.openvino, backends.reference, rexdeploy.inputs, "
            "rexdeploy.evaluate.fidelity, rexdeploy.profiling.timing, rexdeploy.devinfo; "
            "heavy = [m for m in ('openvino', 'onnxruntime', 'torch', 'onnx') "
            "if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.openvino
def test_available_names_version_and_devices():
    ok, why = backends.get("openvino").available()
    assert ok and why.startswith("openvino 20") and "CPU" in why


@pytest.mark.openvino
@pytest.mark.parametrize("name", ["qdq_s8", "qdq_u8"])
def test_qdq_model_runs_int8_kernels(built, name):
    out_dir, result = built[name]
    assert result.files == {"ir_xml": "model.xml", "ir_bin": "model.bin"}
    assert all(os.path.isfile(os.path.join(out_dir, f)) for f in result.files.values())
    assert len(result.layers) == 4, result.layers
    assert result.int8_coverage == 1.0, result.layers
    for layer in result.layers:
        assert layer.kernel.upper().endswith("_I8"), layer
    assert {t for l in result.layers for t in [l.type]} >= {"Convolution", "FullyConnected"}
    # every runtime layer maps back to its ONNX node, whatever name OpenVINO gave it
    originals = {n for l in result.layers for n in l.original_names}
    assert set(QDQ_COMPUTE) <= originals, [(l.name, l.original_names) for l in result.layers]
    assert result.info["inference_precision"] == "f32"
    assert result.info["device"] == "CPU" and result.info["openvino"]


@pytest.mark.openvino
def test_float_model_runs_f32(built, models):
    _, result = built["float"]
    assert len(result.layers) == 3  # BN folded into the conv; depthwise conv; Linear
    assert result.int8_coverage == 0.0
    assert {l.precision for l in result.layers} == {"f32"}
    names = {n.name for n in onnx.load(models["float"]).graph.node
             if n.op_type in ("Conv", "Gemm", "MatMul")}
    assert names <= {n for l in result.layers for n in l.original_names}


@pytest.mark.openvino
@pytest.mark.parametrize("name,floor", [("float", 30.0), ("qdq_s8", 20.0), ("qdq_u8", 20.0)])
def test_openvino_agrees_with_onnxruntime(built, models, name, floor):
    out_dir, result = built[name]
    samples = feeds()
    with backends.get("openvino").runner(out_dir, result.files, RunOptions()) as r:
        ov_out = run_all(r, samples)
    ref = backends.get("reference")
    with ref.runner(os.path.dirname(models[name]), {"onnx": os.path.basename(models[name])},
                    RunOptions()) as r:
        ort_out = run_all(r, samples)
    assert ov_out.shape == ort_out.shape == (4, 1, 10)
    assert sqnr_db(ort_out, ov_out) > floor


@pytest.mark.openvino
def test_runner_accepts_plain_onnx(models):
    path = models["float"]
    with backends.get("openvino").runner(os.path.dirname(path), {"onnx": "float.onnx"},
                                         RunOptions()) as r:
        out = r.infer(feeds(1)[0])
    assert list(out) == ["logits"] and out["logits"].shape == (1, 10)



@pytest.mark.openvino
def test_runner_names_outputs_as_the_model_declares_them(tmp_path):
    """An output made by Identity(Div) (as torch.onnx.export writes a returned tensor that
    another output also reads) compiles to one port named both "/div_out" and "461": the runner
    still calls it "461" (paraphrase-MiniLM-L3-v2 as shipped had its embedding renamed)."""
    nodes = [helper.make_node("Div", ["x", "two"], ["/div_out"], name="div"),
             helper.make_node("Identity", ["/div_out"], ["461"], name="id"),
             helper.make_node("Relu", ["/div_out"], ["relu_out"], name="relu")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("relu_out", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("461", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array(2, np.float32), "two")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "m.onnx"))
    x = np.arange(-2, 2, dtype=np.float32).reshape(1, 4)
    with backends.get("openvino").runner(str(tmp_path), {"onnx": "m.onnx"}, RunOptions()) as r:
        out = r.infer({"x": x})
    assert list(out) == ["relu_out", "461"]
    np.testing.assert_allclose(out["461"], x / 2)

@pytest.mark.openvino
def test_outputs_are_copies(built):
    out_dir, result = built["float"]
    a, b = feeds(2)
    with backends.get("openvino").runner(out_dir, result.files, RunOptions()) as r:
        first = r.infer(a)["logits"]
        kept = first.copy()
        r.infer(b)
    np.testing.assert_array_equal(first, kept)


@pytest.mark.cpuid_kernels
@pytest.mark.openvino
def test_precision_default_reports_what_the_device_uses(built):
    import openvino as ov

    out_dir, result = built["float"]
    device_default = ov.Core().compile_model(os.path.join(out_dir, "model.xml"), "CPU") \
        .get_property("INFERENCE_PRECISION_HINT").get_type_name()
    b = backends.get("openvino")
    with b.runner(out_dir, result.files, RunOptions(precision="default")) as r:
        assert r.info["inference_precision"] == device_default
        assert r.info["inference_precision"] in ("bf16", "f32", "f16")
        out_default = run_all(r, feeds())
    with b.runner(out_dir, result.files, RunOptions(precision="f32")) as r:
        assert r.info["inference_precision"] == "f32"
        out_f32 = run_all(r, feeds())
    assert sqnr_db(out_f32, out_default) > 15  # bf16 is close, not equal


@pytest.mark.openvino
def test_timings_cover_every_executed_compute_layer(built):
    from backends.openvino import is_compute, runtime_layers

    out_dir, result = built["qdq_u8"]
    with backends.get("openvino").runner(out_dir, result.files,
                                         RunOptions(perf_count=True)) as r:
        r.infer(feeds(1)[0])
        timings = r.timings()
        layers = runtime_layers(r.compiled)
    assert timings and all(t.time_ms >= 0 for t in timings)
    timed = {t.name: t for t in timings}
    for layer in layers:
        assert layer.name in timed, (layer.name, sorted(timed))
        assert timed[layer.name].kernel.upper().endswith("_I8")
        assert timed[layer.name].precision == layer.precision
    assert sum(is_compute(t.type) for t in timings) == len(layers)


@pytest.mark.openvino
def test_timings_empty_without_perf_count(built):
    out_dir, result = built["float"]
    with backends.get("openvino").runner(out_dir, result.files, RunOptions()) as r:
        r.infer(feeds(1)[0])
        assert r.timings() == []


@pytest.mark.openvino
@pytest.mark.parametrize("mode", ["latency", "throughput"])
def test_throughput_completes_requests(built, mode):
    out_dir, result = built["qdq_s8"]
    with backends.get("openvino").runner(out_dir, result.files, RunOptions(mode=mode)) as r:
        completed, elapsed = r.throughput(feeds(1)[0], 0.2)
        assert r.info["performance_hint"] == mode.upper()
    assert completed > 0 and 0.2 <= elapsed < 5


@pytest.mark.openvino
def test_streams_and_threads_are_applied(built):
    out_dir, result = built["float"]
    opts = RunOptions(mode="throughput", streams=1, threads=1)
    with backends.get("openvino").runner(out_dir, result.files, opts) as r:
        assert r.info["streams"] == 1 and r.info["threads"] == 1


@pytest.mark.openvino
def test_runner_user_errors(built, tmp_path):
    b = backends.get("openvino")
    out_dir, result = built["float"]
    with b.runner(out_dir, result.files, RunOptions()) as r:
        with pytest.raises(UserError, match="do not match"):
            r.infer({"y": np.zeros((1, 3, 16, 16), np.float32)})
        with pytest.raises(UserError, match="1x3x16x16"):
            r.infer({"x": np.zeros((1, 3, 8, 8), np.float32)})
        with pytest.raises(UserError, match="float64, the model expects float32"):
            r.infer({"x": np.zeros((1, 3, 16, 16))})
    with pytest.raises(UserError, match="missing"):
        b.runner(str(tmp_path), {"ir_xml": "model.xml"}, RunOptions())
    with pytest.raises(UserError, match="precision"):
        b.runner(out_dir, result.files, RunOptions(precision="int3"))
    with pytest.raises(UserError, match="mode"):
        b.runner(out_dir, result.files, RunOptions(mode="fast"))
    with pytest.raises(UserError, match="not available"):
        with b.runner(out_dir, result.files, RunOptions(device="NPU")):
            pass


@pytest.mark.openvino
def test_build_user_errors(tmp_path):
    b = backends.get("openvino")
    with pytest.raises(UserError, match="no ONNX file"):
        b.build(str(tmp_path / "nope.onnx"), str(tmp_path), BuildOptions())
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(UserError, match="cannot convert"):
        b.build(str(bad), str(tmp_path), BuildOptions())


def test_registry_lists_both_backends():
    assert {"openvino", "reference"} <= set(backends.names())
    rows = {name: ok for name, ok, _ in backends.status()}
    assert rows["reference"] is True


def test_build_sends_no_telemetry(models, tmp_path):
    """OpenVINO's converter reports to Google Analytics from a forked process unless
    openvino_telemetry is out of its reach: a build must neither phone home nor hang on a
    machine without network (a forked sender did, in getaddrinfo)."""
    script = f"""
import sys
import backends
from backends.base import BuildOptions
backends.get("openvino").build({models["qdq_s8"]!r}, {str(tmp_path)!r}, BuildOptions())
from openvino.tools.ovc import convert_impl, telemetry_utils
assert sys.modules["openvino_telemetry"] is None
assert convert_impl.tm.__name__ == telemetry_utils.tm.__name__ == \
    "openvino.tools.ovc.telemetry_stub"
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    # in a process that loaded openvino first, the converter is switched to the stub
    from backends.openvino import telemetry_off
    from openvino.tools.ovc import convert_impl, telemetry_utils

    telemetry_off()
    assert convert_impl.tm.__name__ == telemetry_utils.tm.__name__ == \
        "openvino.tools.ovc.telemetry_stub"
