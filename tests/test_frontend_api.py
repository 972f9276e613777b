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
