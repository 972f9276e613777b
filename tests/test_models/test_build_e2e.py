"""End to end on tiny models: TorchScript -> data-free int8 OpenVINO artifact -> compare ->
profile -> inspect, through the Python API and the CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import rexdeploy
from rexdeploy.errors import UserError
from tiny_models import tiny_cnn, tiny_mlp

pytestmark = pytest.mark.openvino
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny_cnn.pt"
    m = tiny_cnn()
    torch.jit.save(torch.jit.trace(m, torch.randn(1, 3, 32, 32)), str(path))
    return str(path)


@pytest.fixture(scope="module")
def cnn_artifact(cnn_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "tiny.openvino"
    return rexdeploy.build(cnn_file, ["input:1x3x32x32"], target="openvino", output=str(out),
                           quiet=True)


def test_build_writes_complete_artifact(cnn_artifact):
    files = set(os.listdir(cnn_artifact.path))
    assert {"manifest.json", "model.onnx", "float.onnx", "plan.json", "plan.npz", "model.xml",
            "model.bin", "report.json"} <= files
    report = cnn_artifact.report()
    s = report["summary"]
    assert s["quantized_layers"] == 8 and s["skipped_layers"] == 0
    assert s["int8_coverage"] >= 0.85, report["runtime_layers"]
    for row in report["layers"]:
        assert row["weight_error"]["sqnr_db"] > 35
        # every input int8 but those the default budget keeps float, each with its reason
        float_input = "activation" in (row.get("mixed") or {})
        assert (row["activation"] is None) == float_input, row
        if float_input:
            assert row["mixed"]["activation"]["precision"] == "float"
            assert "alone costs the output" in row["mixed"]["activation"]["why"]


def test_compare_synthetic(cnn_artifact):
    result = rexdeploy.compare(cnn_artifact.path, synthetic=8, quiet=True)
    assert result["reference"].startswith("torch")
    assert result["sqnr_db"] > 15
    assert result["cosine_mean"] > 0.97
    assert result["top1_agreement"] is not None


def test_compare_reference_backend_agrees_with_openvino(cnn_artifact):
    ov = rexdeploy.compare(cnn_artifact.path, synthetic=4, quiet=True)
    ort = rexdeploy.compare(cnn_artifact.path, synthetic=4, backend="reference", quiet=True)
    assert abs(ov["sqnr_db"] - ort["sqnr_db"]) < 6


@pytest.mark.e2e
def test_compare_ten_crop_cli(cnn_artifact, tmp_path):
    """--ten-crop: ten views per image, ids NAME@TAG, the agreement's interval narrows."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png")
    run = lambda *a: subprocess.run([sys.executable, "-m", "rexdeploy.cli", "compare",  # noqa
                                     cnn_artifact.path, "--inputs", str(tmp_path), "--preprocess",
                                     "resize=36,crop=32,mean=127,std=128", "--json", *a],
                                    capture_output=True, text=True, cwd=ROOT, timeout=300)
    one, ten = run(), run("--ten-crop")
    assert one.returncode == 0 and ten.returncode == 0, one.stderr + ten.stderr
    one, ten = json.loads(one.stdout), json.loads(ten.stdout)
    assert (one["samples"], ten["samples"]) == (3, 30)
    assert ten["inputs"].endswith("ten crops each")
    assert {w["id"].split("@")[0] for w in ten["worst_samples"]} <= {"0", "1", "2"}
    width = lambda r: r["top1_agreement_ci"][1] - r["top1_agreement_ci"][0]  # noqa: E731
    assert width(ten) < width(one)
    bad = subprocess.run([sys.executable, "-m", "rexdeploy.cli", "compare", cnn_artifact.path,
                          "--synthetic", "4", "--ten-crop"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert bad.returncode == 1 and "--ten-crop" in bad.stderr and "Traceback" not in bad.stderr


def test_profile_runs_with_baselines(cnn_artifact):
    result = rexdeploy.profile(cnn_artifact.path, duration=0.2, rounds=1, compare=True,
                               quiet=True)
    labels = [v["label"] for v in result["variants"]]
    assert len(labels) == 3
    for v in result["variants"]:
        assert v["latency_ms"]["median"] > 0


def test_reproducible_build(cnn_file, tmp_path):
    a = rexdeploy.build(cnn_file, ["input:1x3x32x32"], output=str(tmp_path / "a"), quiet=True)
    b = rexdeploy.build(cnn_file, ["input:1x3x32x32"], output=str(tmp_path / "b"), quiet=True)
    for role in ("onnx", "plan", "plan_arrays", "ir_xml", "ir_bin", "float_onnx"):
        assert a.manifest["files"][role]["sha256"] == b.manifest["files"][role]["sha256"], role


def test_existing_output_needs_force(cnn_file, cnn_artifact):
    with pytest.raises(UserError, match="already exists"):
        rexdeploy.build(cnn_file, ["input:1x3x32x32"], output=cnn_artifact.path, quiet=True)


@pytest.mark.cpuid_kernels
def test_weight_only_and_orders(cnn_file, tmp_path):
    a = rexdeploy.build(cnn_file, ["input:1x3x32x32"], output=str(tmp_path / "w"), quiet=True,
                        config=rexdeploy.api.BuildConfig(
                            quant=rexdeploy.api.QuantConfig(activations="none", orders=2)))
    report = a.report()
    assert report["activations"] == []
    assert all(row["orders"] == 2 for row in report["layers"])


def test_mlp_transformer_block(tmp_path):
    path = tmp_path / "mlp.pt"
    torch.jit.save(torch.jit.trace(tiny_mlp(), torch.randn(1, 8, 32)), str(path))
    art = rexdeploy.build(str(path), ["x:1x8x32"], output=str(tmp_path / "mlp"), quiet=True)
    s = art.report()["summary"]
    assert s["quantized_layers"] == 2
    result = rexdeploy.compare(art.path, synthetic=4, quiet=True)
    assert result["cosine_mean"] > 0.98


@pytest.mark.e2e
def test_cli_round_trip(cnn_file, tmp_path):
    out = str(tmp_path / "cli.openvino")
    run = lambda *a: subprocess.run([sys.executable, "-m", "rexdeploy.cli", *a],  # noqa: E731
                                    capture_output=True, text=True, cwd=ROOT, timeout=300)
    r = run("build", cnn_file, "--input", "input:1x3x32x32", "-o", out, "--json", "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["int8_coverage"] > 0.8
    r = run("compare", out, "--synthetic", "4", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["sqnr_db"] > 15
    r = run("inspect", out, "--layers")
    assert r.returncode == 0 and "int8 coverage" in r.stdout, r.stderr
    r = run("build", cnn_file, "--input", "input:1x3x32x32", "-o", out)
    assert r.returncode == 1 and "already exists" in r.stderr


def test_report_maps_every_expansion_branch(cnn_file, tmp_path):
    a = rexdeploy.build(cnn_file, ["input:1x3x32x32"], output=str(tmp_path / "k2"), quiet=True,
                        config=rexdeploy.api.BuildConfig(  # exactly K=2, int8 inputs
                            quant=rexdeploy.api.QuantConfig(orders=2, auto_budget=False)))
    for row in a.report()["layers"]:
        assert len(row["runtime"]) == 2, row
        assert row["runs_int8"], row


class _TwoConvAdd(torch.nn.Module):
    """Add of two conv outputs: one of them must get Q/DQ as the skip input."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = self.a(x)
        return y + self.b(torch.relu(y))


def test_add_of_two_layer_outputs_gets_skip_qdq(tmp_path):
    from rexdeploy.lower import summarize

    path = tmp_path / "two.pt"
    torch.manual_seed(0)
    torch.jit.save(torch.jit.trace(_TwoConvAdd().eval(), torch.randn(1, 3, 16, 16)), str(path))
    art = rexdeploy.build(str(path), ["x:1x3x16x16"], output=str(tmp_path / "o"), quiet=True)
    import onnx_ir as ir

    adds = summarize(ir.load(art.file("onnx")))["residual_adds"]
    assert len(adds) == 1 and "DQ" in adds[0], adds


def test_keep_intermediates_dumps_each_stage(cnn_file, tmp_path):
    a = rexdeploy.build(cnn_file, ["input:1x3x32x32"], output=str(tmp_path / "i"), quiet=True,
                        config=rexdeploy.api.BuildConfig(keep_intermediates=True))
    stage_files = sorted(os.listdir(os.path.join(a.path, "intermediates")))
    assert stage_files == ["00_float.onnx", "10_plan.json", "10_plan.npz", "20_qdq.onnx"], stage_files


@pytest.mark.cpuid_kernels
@pytest.mark.parametrize("weights, orders", [("int4", 2), ("int6", 1), ("int2", 3)])
def test_low_bit_weights(cnn_file, tmp_path, weights, orders):
    import onnx

    cfg = rexdeploy.api.BuildConfig(quant=rexdeploy.api.QuantConfig(  # exactly K orders
        weights=weights, orders=orders, auto_budget=False))
    a = rexdeploy.build(cnn_file, ["input:1x3x32x32"], output=str(tmp_path / weights), quiet=True,
                        config=cfg)
    bits = int(weights[3:])
    report = a.report()
    convs = [r for r in report["layers"] if r["op"] == "Conv"]
    assert all(r["bits"] == [bits] * orders and r["runs_int8"] for r in convs), convs
    dtypes = {i.data_type for i in onnx.load(a.file("onnx")).graph.initializer
              if i.name.endswith(("_q", "codes")) or "order" in i.name or i.data_type in (3, 22)}
    if bits <= 4:
        assert onnx.TensorProto.INT4 in dtypes  # the Gemm's codes are real INT4 tensors
