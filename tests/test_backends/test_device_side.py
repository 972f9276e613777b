"""The device side: what a Jetson (or any board) runs with the core install only, no torch and
no onnx-ir, on Python 3.10 to 3.12: inspect --verify, profile, compare against the artifact's
float.onnx, finishing a deferred TensorRT build (a clear error where TensorRT is missing), and a
clear error when asked to build from a model.

tools/test.sh runs this file again in a fresh Python 3.10 venv with only `pip install
-e .[openvino,test]` (REXDEPLOY_DEVICE_SIDE=1), on artifacts the build venv made
(REXDEPLOY_DEVICE_FIXTURES, tests/device_fixtures.py). In the build venv the same tests run on
artifacts made here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

DEVICE_SIDE = os.environ.get("REXDEPLOY_DEVICE_SIDE") == "1"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.openvino


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict[str, str]:
    given = os.environ.get("REXDEPLOY_DEVICE_FIXTURES")
    if given:
        return {"openvino": os.path.join(given, "tiny.openvino"),
                "trt": os.path.join(given, "tiny.trt"), "images": os.path.join(given, "images")}
    if DEVICE_SIDE:
        pytest.fail("REXDEPLOY_DEVICE_SIDE=1 needs REXDEPLOY_DEVICE_FIXTURES (tools/test.sh "
                    "builds them with tests/device_fixtures.py)")
    import device_fixtures

    return device_fixtures.build(str(tmp_path_factory.mktemp("device")))


def rexdeploy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rexdeploy.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


@pytest.mark.skipif(not DEVICE_SIDE, reason="only in the device-side venv (tools/test.sh)")
def test_the_device_side_has_no_torch_and_no_onnx_ir():
    import importlib.util

    assert importlib.util.find_spec("torch") is None
    assert importlib.util.find_spec("onnx_ir") is None
    assert sys.version_info[:2] >= (3, 10)


def test_inspect_verify(fixtures):
    for key in ("openvino", "trt"):
        proc = rexdeploy("inspect", "--verify", fixtures[key])
        assert proc.returncode == 0, proc.stderr
        assert "verified:" in proc.stdout
    deferred = rexdeploy("inspect", fixtures["trt"]).stdout
    assert "deferred" in deferred and "int8 coverage 0/0" not in deferred


def test_profile_an_openvino_artifact(fixtures, tmp_path):
    out = tmp_path / "profile.json"
    proc = rexdeploy("profile", fixtures["openvino"], "--duration", "0.2", "--rounds", "1",
                     "--no-layers", "--save", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["variants"][0]["latency_ms"]["median"] > 0


def test_compare_against_float_onnx(fixtures):
    proc = rexdeploy("compare", fixtures["openvino"], "--inputs", fixtures["images"], "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["reference"] == "float ONNX (onnxruntime)"  # no torch: the artifact's float
    assert result["samples"] == 6 and result["sqnr_db"] > 20
    assert result["device_check"]["agrees"]


def test_finish_deferred_says_tensorrt_is_missing_and_writes_nothing(fixtures, tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt imports here: the engine tests (marker tensorrt) cover it")
    art = tmp_path / "tiny.trt"
    shutil.copytree(fixtures["trt"], art)
    before = sorted(p.name for p in art.iterdir())
    proc = rexdeploy("build", "--from-deferred", str(art))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "TensorRT is not installed" in proc.stderr and "nothing was written" in proc.stderr
    assert sorted(p.name for p in art.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_the_engine_build_spec_reads_the_onnx_without_onnx_ir(fixtures):
    """What --from-deferred hands TensorRT is worked out from the Q/DQ ONNX with the core
    install's `onnx` (a Jetson has no onnx-ir)."""
    from backends.base import BuildOptions
    from backends.tensorrt import build_spec

    spec = build_spec(os.path.join(fixtures["trt"], "model.onnx"), fixtures["trt"],
                      BuildOptions(device="GPU"))
    assert spec.onnx == "model.onnx" and spec.int4 is False and spec.dla_core is None


def test_the_tensorrt_rules_check_runs_without_onnx_ir(fixtures):
    """Finishing a deferred artifact checks its Q/DQ ONNX against TensorRT's rules first, on
    the device (a Jetson has no onnx-ir), and `inspect --check trt` does the same."""
    from backends.trt_rules import check_trt_rules

    check = check_trt_rules(os.path.join(fixtures["trt"], "model.onnx"))
    assert check.ok, check.to_dict()
    proc = rexdeploy("inspect", "--check", "trt", os.path.join(fixtures["trt"], "model.onnx"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.skipif(not DEVICE_SIDE, reason="only in the device-side venv (tools/test.sh)")
def test_building_from_a_model_needs_the_build_extra(fixtures, tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(os.path.join(fixtures["openvino"], "float.onnx"), model)
    proc = rexdeploy("build", str(model), "-o", str(tmp_path / "out"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "needs the build extra" in proc.stderr and "rexdeploy[build]" in proc.stderr
    assert not (tmp_path / "out").exists()
