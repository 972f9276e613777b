"""Reproducible builds: the same model and options give the same files, byte for byte.

Nothing run-dependent goes into a hashed file (stage timings, paths and versions live in the
manifest only), seeds are fixed and outputs sorted. One build runs in this process and one in a
subprocess with another PYTHONHASHSEED, so an order that depends on set/dict hashing of strings
would show. The slow test checks the real example: two consecutive builds of EfficientNet-Lite0
record the same sha256 for every file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.openvino
BYTE_IDENTICAL = ("model.onnx", "plan.json", "model.xml", "model.bin")


def _hashes(artifact: str) -> dict[str, str]:
    with open(os.path.join(artifact, "manifest.json")) as f:
        return {role: f["sha256"] for role, f in json.load(f)["files"].items()}


def _cli_in_process(argv: list[str]) -> None:
    from click.testing import CliRunner

    from rexdeploy.cli import cli

    result = CliRunner().invoke(cli, argv, prog_name="rexdeploy")
    assert result.exit_code == 0, (result.stderr, result.exception)


def _cli_subprocess(argv: list[str], hash_seed: str) -> None:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    done = subprocess.run([sys.executable, "-m", "rexdeploy.cli", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr


@pytest.mark.e2e
def test_tiny_model_builds_byte_identical(tmp_path):
    import torch

    from tiny_models import tiny_cnn

    model = tmp_path / "cnn.pt"
    torch.jit.save(torch.jit.trace(tiny_cnn(), torch.randn(1, 3, 32, 32)), str(model))
    args = [str(model), "--input", "input:1x3x32x32", "--input-range", "input:-1,1",
            "--orders", "2", "-q"]
    a, b = str(tmp_path / "a.openvino"), str(tmp_path / "b.openvino")
    _cli_in_process(["build", *args, "-o", a])
    seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    _cli_subprocess(["build", *args, "-o", b], hash_seed=seed)
    for name in BYTE_IDENTICAL:
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            assert fa.read() == fb.read(), f"{name} differs between two builds"
    ha, hb = _hashes(a), _hashes(b)
    assert set(ha) >= {"onnx", "plan", "plan_arrays", "ir_xml", "ir_bin", "float_onnx",
                       "report"}
    with open(os.path.join(a, "report.json")) as fa, open(os.path.join(b, "report.json")) as fb:
        ra, rb = json.load(fa), json.load(fb)
    assert ra == rb, _differences(ra, rb)
    assert ha == hb, {role: (ha[role], hb.get(role)) for role in ha if ha[role] != hb.get(role)}


def _differences(a, b, path: str = "") -> list[str]:
    """Where two JSON values differ (paths and both values), for a readable failure."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in _differences(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_names_the_runtime_made_up_do_not_reach_the_report():
    """OpenVINO names a node of its own "Multiply_" and a counter that grows in the process:
    two builds in one process would record different names (seen under the AVX2 lane)."""
    from rexdeploy.report import _stable_names

    runtime = [{"name": "Multiply_607152", "original": []},
               {"name": "Conv_12", "original": ["Conv_12"]},  # a source node of that name
               {"name": "/fc/Gemm", "original": []},
               {"name": "Add_9", "original": []}]
    _stable_names(runtime)
    assert [r["name"] for r in runtime] == ["Multiply#0", "Conv_12", "/fc/Gemm", "Add#1"]


def _effnet_file(tmp_path) -> str:
    cached = os.path.join(ROOT, ".cache", "models", "efficientnet_lite0.pt")
    if os.path.isfile(cached):
        return cached
    if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
        pytest.skip("EfficientNet-Lite0 is not cached and its package is missing: run "
                    "bash tools/setup.sh && .venv/bin/python tools/fetch_example.py")
    import examples

    return str(examples.export_effnet(tmp_path / "model")[0])


@pytest.mark.slow
def test_effnet_two_builds_record_identical_hashes(tmp_path):
    """The quick start's build command (tools/quickstart.sh), twice in a row."""
    model = _effnet_file(tmp_path)
    args = [model, "--input", "input:1x3x224x224", "--input-range", "input:-1,1",
            "--preprocess", "resize=256,crop=224,mean=127,std=128", "-q"]
    a, b = str(tmp_path / "a.openvino"), str(tmp_path / "b.openvino")
    _cli_in_process(["build", *args, "-o", a])
    _cli_in_process(["build", *args, "-o", b])
    ha, hb = _hashes(a), _hashes(b)
    assert len(ha) >= 7
    assert ha == hb, {role: (ha[role], hb.get(role)) for role in ha if ha[role] != hb.get(role)}
