"""Per-layer localisation (`compare --per-layer`): a deliberately damaged layer is found."""

import json
import shutil

import onnx
import pytest
import torch
from click.testing import CliRunner

import rexdeploy
from rexdeploy.artifact import sha256_file
from rexdeploy.inputs import synthetic_inputs
from rexdeploy.evaluate.localize import (localize, quantized_layers, summarize_layers,
                                         summary_lines)
from tiny_models import tiny_cnn, tiny_mlp

DAMAGED = "/block/body/1/0/Conv"  # the depthwise conv in the middle of the residual block


@pytest.fixture(scope="module")
def cnn_artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("localize")
    path = root / "tiny_cnn.pt"
    torch.jit.save(torch.jit.trace(tiny_cnn(), torch.randn(1, 3, 32, 32)), str(path))
    return rexdeploy.build(str(path), ["input:1x3x32x32"], target="reference",
                           output=str(root / "tiny.reference"), quiet=True)


def _damage(src: str, dst: str, layer: str, factor: float) -> None:
    """Scale one layer's weight scales by `factor`: its weights come out `factor` times too big."""
    model = onnx.load(src)
    hits = [t for t in model.graph.initializer if t.name.startswith(f"{layer}/order")
            and t.name.endswith("weight_scale")]
    assert hits, f"no weight scale of {layer}"
    for t in hits:
        t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) * factor, t.name))
    onnx.save(model, dst)


def _samples(art, n=8):
    return synthetic_inputs(art.manifest["inputs"], n, 7)


def test_healthy_build_has_no_bad_layer(cnn_artifact):
    result = localize(cnn_artifact.file("float_onnx"), cnn_artifact.file("onnx"),
                      _samples(cnn_artifact))
    names = [r["name"] for r in result["layers"]]
    assert names == [layer["name"] for layer in cnn_artifact.report()["layers"]]
    assert result["first_bad"] is None and result["first_bad_local"] is None
    for r in result["layers"]:
        assert 25 < r["local_sqnr_db"] < 60 and 25 < r["sqnr_db"] < 60, r
        assert r["cosine_mean"] > 0.99


def test_damaged_layer_is_first_bad_and_worst_local(cnn_artifact, tmp_path):
    damaged = str(tmp_path / "model.onnx")
    _damage(cnn_artifact.file("onnx"), damaged, DAMAGED, 1.5)
    result = localize(cnn_artifact.file("float_onnx"), damaged, _samples(cnn_artifact), top=3)
    rows = {r["name"]: r for r in result["layers"]}
    assert result["first_bad"]["name"] == DAMAGED
    assert result["first_bad_local"]["name"] == DAMAGED
    assert result["worst_by"] == "local_sqnr_db"
    assert result["worst"][0]["name"] == DAMAGED and len(result["worst"]) == 3
    # weights 1.5x too big: noise = 0.5 W x against W x + b; without the (folded BN) bias that
    # is 20 log10(2) = 6 dB, the bias adds signal but no noise
    assert 6.0 < rows[DAMAGED]["local_sqnr_db"] < 15.0
    # the layers after it inherit the damage (accumulated) but their own error stays small
    after = [r for r in result["layers"] if r["index"] > rows[DAMAGED]["index"]]
    assert after and all(r["local_sqnr_db"] > 25 for r in after)
    assert all(r["sqnr_db"] < r["local_sqnr_db"] - 5 for r in after)
    before = [r for r in result["layers"] if r["index"] < rows[DAMAGED]["index"]]
    assert before and all(r["sqnr_db"] > 25 for r in before)


def test_output_impact_names_the_input_whose_range_hurts(cnn_artifact, tmp_path):
    """One activation's int8 range cut to a tenth (its values clip): bypassing that tensor's
    Q/DQ recovers the output, so its reader heads the costliest list; bypassing any other
    input changes the output little. Every row carries the output SQNR with its input float."""
    result = localize(cnn_artifact.file("float_onnx"), cnn_artifact.file("onnx"),
                      _samples(cnn_artifact))
    reader = next(r for r in result["layers"] if r["name"] == DAMAGED)
    model = onnx.load(cnn_artifact.file("onnx"))
    q = next(n for n in model.graph.node
             if n.op_type == "QuantizeLinear" and n.input[0] == reader["input"])
    scale = next(t for t in model.graph.initializer if t.name == q.input[1])
    scale.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(scale) * 0.05,
                                                scale.name))
    damaged = str(tmp_path / "model.onnx")
    onnx.save(model, damaged)
    hurt = localize(cnn_artifact.file("float_onnx"), damaged, _samples(cnn_artifact), top=2)
    assert hurt["impact_samples"] == 8 and hurt["output_sqnr_db"] < result["output_sqnr_db"] - 8
    assert all(r["output_sqnr_if_float_db"] is not None for r in hurt["layers"])
    first, second = hurt["costliest"]
    assert first["input"] == reader["input"]
    assert first["output_sqnr_if_float_db"] > hurt["output_sqnr_db"] + 8
    assert second["output_sqnr_if_float_db"] < hurt["output_sqnr_db"] + 2
    assert "keeping one layer's input float raises it most at: " + first["name"] in \
        " ".join(" ".join(summary_lines(hurt)).split())


def test_compare_per_layer_api_and_cli(cnn_artifact, tmp_path):
    art = tmp_path / "damaged.reference"
    shutil.copytree(cnn_artifact.path, art)
    _damage(str(art / "model.onnx"), str(art / "model.onnx"), DAMAGED, 1.5)
    manifest = json.loads((art / "manifest.json").read_text())  # as if it had been built so
    manifest["files"]["onnx"]["sha256"] = sha256_file(str(art / "model.onnx"))
    from rexdeploy.artifact import DIGEST, manifest_digest

    manifest[DIGEST] = manifest_digest(manifest)
    (art / "manifest.json").write_text(json.dumps(manifest))

    result = rexdeploy.compare(str(art), synthetic=6, per_layer=True, quiet=True)
    assert result["per_layer"]["first_bad"]["name"] == DAMAGED
    assert result["per_layer"]["samples"] == 6

    from rexdeploy.cli import cli

    runner = CliRunner()
    out = runner.invoke(cli, ["compare", str(art), "--synthetic", "4", "--per-layer",
                              "--threshold", "15", "--top", "2", "--json"])
    assert out.exit_code == 0, out.output
    per_layer = json.loads(out.output)["per_layer"]
    assert per_layer["threshold_db"] == 15 and len(per_layer["worst"]) == 2
    assert per_layer["first_bad"]["name"] == DAMAGED
    saved = tmp_path / "c.json"
    out = runner.invoke(cli, ["compare", str(art), "--synthetic", "4", "--per-layer", "--save",
                              str(saved), "-q"])
    assert out.exit_code == 0, out.output
    assert f"first layer below 20 dB (accumulated SQNR): #4 {DAMAGED}" in \
        " ".join(out.output.split())
    assert json.loads(saved.read_text())["per_layer"]["first_bad"]["name"] == DAMAGED
    plain = runner.invoke(cli, ["compare", str(art), "--synthetic", "4", "-q", "--json"])
    assert "per_layer" not in json.loads(plain.output)


def test_rex_orders_and_matmul_layers_are_matched(tmp_path):
    """K=2 layers (two order branches summed) and MatMul+bias layers are found in both graphs."""
    torch.manual_seed(0)
    path = tmp_path / "mlp.pt"
    torch.jit.save(torch.jit.trace(tiny_mlp(), torch.randn(1, 4, 32)), str(path))
    k1: dict[str, float] = {}  # order 1's per-layer SQNR, which order 2 must beat
    for orders in (1, 2):
        cfg = rexdeploy.BuildConfig(quant=rexdeploy.QuantConfig(orders=orders))
        art = rexdeploy.build(str(path), ["x:1x4x32"], target="reference", config=cfg,
                              output=str(tmp_path / f"k{orders}"), quiet=True)
        result = localize(art.file("float_onnx"), art.file("onnx"), _samples(art, 4))
        assert [r["op"] for r in result["layers"]] == ["MatMul", "MatMul"]
        assert all(r["local_sqnr_db"] is not None and r["local_sqnr_db"] > 25
                   for r in result["layers"])
        if orders == 2:
            assert all(r["sqnr_db"] > k1[r["name"]] for r in result["layers"])
        k1 = {r["name"]: r["sqnr_db"] for r in result["layers"]}


def test_summarize_layers_ranks_and_thresholds():
    def row(i, acc, loc):
        return {"index": i, "name": f"l{i}", "op": "Conv", "output": f"y{i}", "sqnr_db": acc,
                "cosine_mean": 1.0, "cosine_min": 1.0, "local_sqnr_db": loc,
                "local_cosine_mean": 1.0}

    rows = [row(0, 40.0, 40.0), row(1, 30.0, 35.0), row(2, 19.0, 38.0), row(3, 12.0, 15.0),
            row(4, 11.0, None)]
    out = summarize_layers(rows, 20.0, 2)
    assert out["first_bad"]["name"] == "l2" and out["first_bad_local"]["name"] == "l3"
    assert [r["name"] for r in out["worst"]] == ["l3", "l1"]  # local SQNR; None ranks last
    no_local = [dict(r, local_sqnr_db=None) for r in rows]
    out = summarize_layers(no_local, 35.0, 3)
    assert out["worst_by"] == "sqnr_db" and out["first_bad_local"] is None
    assert [r["name"] for r in out["worst"]] == ["l4", "l3", "l2"]
    assert out["first_bad"]["name"] == "l1"


def test_quantized_layers_skip_excluded(tmp_path):
    path = tmp_path / "cnn.pt"
    torch.jit.save(torch.jit.trace(tiny_cnn(), torch.randn(1, 3, 32, 32)), str(path))
    cfg = rexdeploy.BuildConfig(quant=rexdeploy.QuantConfig(exclude=(DAMAGED,)))
    art = rexdeploy.build(str(path), ["input:1x3x32x32"], target="reference", config=cfg,
                          output=str(tmp_path / "a"), quiet=True)
    import onnx_ir as ir

    taps = quantized_layers(ir.load(art.file("float_onnx")), ir.load(art.file("onnx")))
    assert DAMAGED not in [t.name for t in taps] and len(taps) == 7


def test_bias_beyond_int32_is_flagged(cnn_artifact, tmp_path):
    """A near-dead channel (tiny weight scale) with a bias: bias / (s_x * s_w) overflows int32."""
    model = onnx.load(cnn_artifact.file("onnx"))
    scale = next(t for t in model.graph.initializer
                 if t.name == f"{DAMAGED}/order1/weight_scale")
    array = onnx.numpy_helper.to_array(scale).copy()
    array[:2] = 1e-14
    scale.CopyFrom(onnx.numpy_helper.from_array(array, scale.name))
    onnx.save(model, str(tmp_path / "m.onnx"))
    result = localize(cnn_artifact.file("float_onnx"), str(tmp_path / "m.onnx"),
                      _samples(cnn_artifact, 2), local=False)
    flagged = {r["name"]: r["bias_int32_overflow"] for r in result["layers"]}
    assert flagged[DAMAGED] == 2
    assert all(v == 0 for k, v in flagged.items() if k != DAMAGED and v is not None)
    assert flagged["/fc/Gemm"] is not None  # Gemm with an input Q/DQ and a bias is checked
    from rexdeploy.evaluate.localize import summary_lines

    assert "1 layers have a bias beyond int32" in summary_lines(result)[-1]
    assert f"{DAMAGED} (2 channels)" in summary_lines(result)[-1]


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_trt_graphs_with_centred_activations_compare_layer_by_layer(tmp_path, precision):
    """A --target trt build moves some layer outputs and Q inputs by the centring shift and may
    be a float16 graph: the per-layer comparison undoes the shifts (node metadata) and feeds the
    local subgraphs in the graph's own type, so it reads like the OpenVINO build's (the shifted
    producer outputs used to read as ~3 dB, and f16 graphs failed to load)."""
    config = rexdeploy.BuildConfig(target="trt", float_precision=precision)
    art = rexdeploy.build(tiny_cnn(), ["input:1x3x32x32"], output=str(tmp_path / "trt"),
                          config=config, quiet=True)
    assert art.report()["summary"]["centred_activations"] > 0
    result = localize(art.file("float_onnx"), art.file("onnx"), _samples(art))
    assert result["first_bad"] is None and result["first_bad_local"] is None
    for r in result["layers"]:
        assert 25 < r["sqnr_db"] < 70 and 25 < r["local_sqnr_db"] < 70, r
