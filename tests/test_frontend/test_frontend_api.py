"""The frontend's public API is pinned, and importing it pulls in nothing heavy."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys

import rexdeploy.frontend as frontend


def test_public_api_is_pinned():
    assert frontend.__all__ == ["LoadedModel", "export_onnx", "load_model"]
    assert str(inspect.signature(frontend.load_model)) == (
        "(source: 'str', *, trust_pickle: 'bool' = False, factory_weights: 'str | None' = None)"
        " -> 'LoadedModel'")
    assert list(inspect.signature(frontend.export_onnx).parameters) == ["loaded", "specs",
                                                                         "opset"]
    assert inspect.signature(frontend.export_onnx).parameters["opset"].default == 21
    assert [f.name for f in dataclasses.fields(frontend.LoadedModel)] == [
        "kind", "obj", "path", "sha256"]
    assert frontend.LoadedModel.__dataclass_params__.frozen


def test_importing_the_frontend_imports_no_heavy_package():
    code = ("import sys, rexdeploy.frontend; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'onnx', 'onnx_ir', 'onnxruntime', 'onnxscript', 'numpy', 'openvino'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_build_takes_the_target_from_the_config_when_not_given(tmp_path):
    """rexdeploy.build(..., config=BuildConfig(target="trt")) builds for TensorRT; an explicit
    target= argument still wins."""
    import torch

    import rexdeploy
    from rexdeploy.config import BuildConfig
    from tiny_models import tiny_cnn

    path = tmp_path / "cnn.pt"
    torch.jit.save(torch.jit.trace(tiny_cnn(), torch.randn(1, 3, 32, 32)), str(path))
    art = rexdeploy.build(str(path), ["input:1x3x32x32"], output=str(tmp_path / "a"),
                          config=BuildConfig(target="trt"), quiet=True)
    assert art.manifest["config"]["target"] == "trt"
    art = rexdeploy.build(str(path), ["input:1x3x32x32"], target="openvino",
                          output=str(tmp_path / "b"), config=BuildConfig(target="trt"),
                          quiet=True)
    assert art.manifest["config"]["target"] == "openvino"
