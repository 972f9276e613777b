"""Reference backend (ONNX Runtime CPU) on tiny models built with onnx.helper."""

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import backends
from backends.base import BuildOptions, RunOptions
from rexdeploy.errors import UserError

W = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
B = np.arange(4, dtype=np.float32)


@pytest.fixture
def affine(tmp_path):
    """y = x @ W + b, x: [batch (dynamic), 8]."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"], name="mm"),
         helper.make_node("Add", ["xw", "b"], ["y"], name="add")], "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    path = tmp_path / "affine.onnx"
    onnx.save(model, str(path))
    return str(path)


def test_available():
    ok, why = backends.get("reference").available()
    assert ok and why.startswith("onnxruntime")


def test_build_validates_and_points_at_the_onnx(affine, tmp_path):
    result = backends.get("reference").build(affine, str(tmp_path), BuildOptions())
    assert result.files == {"onnx": "affine.onnx"} and result.layers == ()
    assert result.int8_coverage == 0.0 and result.info["device"] == "CPU"
    out = tmp_path / "out"
    out.mkdir()
    rel = backends.get("reference").build(affine, str(out), BuildOptions()).files["onnx"]
    assert os.path.normpath(os.path.join(out, rel)) == os.path.normpath(affine)


def test_runner_matches_numpy(affine, tmp_path):
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    with backends.get("reference").runner(str(tmp_path), {"onnx": "affine.onnx"},
                                          RunOptions(threads=1)) as r:
        out = r.infer({"x": x})
        assert r.timings() == []
        completed, elapsed = r.throughput({"x": x}, 0.05)
    assert list(out) == ["y"]
    np.testing.assert_allclose(out["y"], x @ W + B, rtol=1e-5, atol=1e-5)
    assert completed > 0 and elapsed >= 0.05


def test_user_errors(affine, tmp_path):
    ref = backends.get("reference")
    with pytest.raises(UserError, match="no ONNX file"):
        ref.build(str(tmp_path / "missing.onnx"), str(tmp_path), BuildOptions())
    with pytest.raises(UserError, match="CPU only"):
        ref.build(affine, str(tmp_path), BuildOptions(device="GPU"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot load"):
        ref.build(str(bad), str(tmp_path), BuildOptions())
    with pytest.raises(UserError, match="missing"):
        ref.runner(str(tmp_path), {"onnx": "gone.onnx"}, RunOptions())
    with pytest.raises(UserError, match="no ONNX"):
        ref.runner(str(tmp_path), {"ir_xml": "model.xml"}, RunOptions())
    with ref.runner(str(tmp_path), {"onnx": "affine.onnx"}, RunOptions()) as r:
        with pytest.raises(UserError, match="expects \\?x8"):
            r.infer({"x": np.zeros((2, 5), np.float32)})
        with pytest.raises(UserError, match="do not match"):
            r.infer({})
        with pytest.raises(UserError, match="float64, the model expects float32"):
            r.infer({"x": np.zeros((2, 8))})


def test_inactive_runner_is_a_bug_not_a_user_error(tmp_path, affine):
    r = backends.get("reference").runner(str(tmp_path), {"onnx": "affine.onnx"}, RunOptions())
    with pytest.raises(RuntimeError, match="not active"):
        r.infer({"x": np.zeros((1, 8), np.float32)})
