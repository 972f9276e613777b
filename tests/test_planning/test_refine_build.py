"""--calib and --refine through the build: calibration data, ranges from the user's data,
FlexRound and ERQ plans, clear errors. Tiny models, reference (ONNX Runtime) target."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import rexdeploy
from calib_free.synthetic import bn_matched_inputs, random_token_lengths
from refine_helpers import build, outlier_calib_data, outputs, sqnr
from rexdeploy.planning.calib_data import parse_calib
from rexdeploy.config import BuildConfig, QuantConfig
from rexdeploy.errors import UserError
from tiny_models import bn_stats_cnn, tiny_cnn, tiny_mlp

CNN_IN = ["input:1x3x32x32"]
MLP_IN = ["x:1x8x32"]


def _plan(art):
    from calib_free.plan import QuantPlan

    return QuantPlan.load(art.path)


def _plain_mlp():
    """Linear-GELU-Linear on [1, 8, 32] (MatMul + Add): no residual to hide the layers' error."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16)).eval()


@pytest.fixture(scope="module")
def mlp_data(tmp_path_factory):
    """A stacked .npz of 24 MLP inputs with a few large channels, and the float outputs."""
    return outlier_calib_data(_plain_mlp, 24, tmp_path_factory.mktemp("calib") / "mlp.npz")


def test_bn_matched_synthetic_data_reproduces_the_batchnorm_statistics():
    """Within tolerance on a CNN whose statistics come from an input distribution (as a trained
    network's do): every BN layer's batch mean within 0.05 running std of the running mean and
    batch std within 5 % (measured after 80 steps: <= 0.001 for both; Gaussian inputs: 2.2 and
    0.8)."""
    model = bn_stats_cnn(realizable=True)
    x = bn_matched_inputs(model, (1, 3, 16, 16), n=16, steps=80, seed=0)
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((m, i[0])))
             for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert len(seen) == 2
    for bn, h in seen:
        mean, std = h.mean((0, 2, 3)), h.std((0, 2, 3), unbiased=False)
        run_std = bn.running_var.sqrt()
        assert float(((mean - bn.running_mean).abs() / run_std).max()) < 0.05
        assert float(((std - run_std).abs() / run_std).max()) < 0.05


def test_token_lengths_are_sentence_like_and_seeded():
    n = random_token_lengths(1000, 128, seed=3)
    assert n.dtype == torch.int64 and int(n.min()) >= 4 and int(n.max()) <= 128
    assert 18 <= float(n.double().median()) <= 30
    assert torch.equal(n, random_token_lengths(1000, 128, seed=3))
    assert int(random_token_lengths(50, 6).max()) <= 6


@pytest.mark.parametrize("text, message", [
    ("synthetic:0", "N must be 1.."), ("synthetic:x", "whole number"),
    ("no/such/dir", "no such file or folder")])
def test_parse_calib_errors(text, message):
    with pytest.raises(UserError, match=message):
        parse_calib(text)
    assert parse_calib("synthetic:8").count == 8 and parse_calib("synthetic").count == 32


def test_flexround_build_never_worse_per_layer_and_reported(tmp_path):
    art = build(tiny_cnn(), CNN_IN, tmp_path / "flex", weights="int4", refine="flexround",
                calib="synthetic:4", zeroq_steps=5, refine_iters=15)
    rows = art.report()["layers"]
    assert len(rows) == 8
    for row in rows:
        r = row["refine"]
        assert r["method"] == "flexround" and r["rows"] > 0 and r["seconds"] >= 0
        assert r["error_after"] <= r["error_before"]
    assert sum(row["refine"]["kept"] for row in rows) >= 4  # it does improve most layers
    plan = _plan(art)
    assert plan.config["refine"] == "flexround" and "BatchNorm" in plan.config["calib"]
    for lp in plan.layers:  # still ordinary codes within the 4-bit grid
        assert int(np.abs(lp.orders[0].codes).max()) <= 7
    assert np.isfinite(outputs(art, [{"input": np.zeros((1, 3, 32, 32), np.float32)}])).all()


def test_user_calibration_data_sets_the_ranges_and_erq_beats_rtn_on_it(tmp_path, mlp_data):
    path, samples, ref = mlp_data
    # scale migration off: --refine turns it off, and the comparison is rounding against rounding
    rtn = build(_plain_mlp(), MLP_IN, tmp_path / "rtn", weights="int4", smooth="off")
    ranged = build(_plain_mlp(), MLP_IN, tmp_path / "ranged", weights="int4", calib=path,
                   smooth="off")
    # (its GELU output takes a zero point on OpenVINO: "+zero-point", the range still the data's)
    sources = {a.source.removesuffix("+zero-point") for a in _plan(ranged).activations}
    assert sources == {"observed:calib"} and _plan(ranged).config["ranges"] == "calib"
    erq = build(_plain_mlp(), MLP_IN, tmp_path / "erq", weights="int4", calib=path,
                refine="erq")
    refined = [row["refine"] for row in erq.report()["layers"]]
    assert len(refined) == 2 and all(r["method"] == "erq" for r in refined)
    assert all(r["error_after"] <= r["error_before"] for r in refined)
    sq = {name: sqnr(ref, outputs(a, samples))
          for name, a in (("rtn", rtn), ("ranged", ranged), ("erq", erq))}
    assert sq["erq"] > sq["ranged"] + 1.0, sq
    assert sq["ranged"] > sq["rtn"], sq


def test_flexround_with_rex_orders_and_user_arrays(tmp_path, mlp_data):
    path, samples, ref = mlp_data
    art = build(_plain_mlp(), MLP_IN, tmp_path / "k2", weights="int4", orders=2, calib=path,
                refine="flexround", refine_iters=20)
    plan = _plan(art)
    assert all(len(lp.orders) == 2 for lp in plan.layers)
    base = build(_plain_mlp(), MLP_IN, tmp_path / "k2rtn", weights="int4", orders=2, calib=path,
                 smooth="off")  # as under --refine
    assert sqnr(ref, outputs(art, samples)) >= sqnr(ref, outputs(base, samples)) - 0.05


def test_calibration_errors_are_clear(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 40), (120, 30, 200)).save(images / "a.png")
    with pytest.raises(UserError, match="preprocess"):
        build(tiny_cnn(), CNN_IN, tmp_path / "a", calib=str(images))
    text = tmp_path / "s.txt"
    text.write_text("hello world\n")
    with pytest.raises(UserError, match="tokenizer"):
        build(tiny_mlp(), MLP_IN, tmp_path / "b", calib=str(text), refine="erq")
    bad = tmp_path / "bad.npz"
    np.savez(bad, y=np.zeros((2, 1, 8, 32), np.float32))
    with pytest.raises(UserError, match="no array for input"):
        build(tiny_mlp(), MLP_IN, tmp_path / "c", calib=str(bad))
    with pytest.raises(UserError, match="--refine"):
        QuantConfig(refine="adaround").validate()


def test_image_calibration_folder_with_preprocess(tmp_path):
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
            images / f"{i}.png")
    cfg = BuildConfig(quant=QuantConfig(calib=str(images), refine="erq"))
    art = rexdeploy.build(tiny_cnn(), CNN_IN, target="reference", output=str(tmp_path / "o"),
                          config=cfg, quiet=True, preprocess="resize=36,crop=32,mean=127,std=128")
    assert "3 samples" in _plan(art).config["calib"]
    # the model input observed on the images, its scale on the pixel grid --preprocess gives;
    # every other range from BatchNorm statistics, which reach all of them here (they beat real
    # samples on depthwise CNNs; the MLP tests below observe theirs on the samples)
    sources = {a.tensor: a.source.removesuffix("+smooth") for a in _plan(art).activations}
    assert sources.pop("input") == "observed:calib+pixel-grid"
    assert set(sources.values()) == {"bn"}


@pytest.mark.e2e
def test_cli_build_with_refine(tmp_path):
    onnx_path = tmp_path / "mlp.onnx"
    torch.onnx.export(tiny_mlp(), (torch.randn(1, 8, 32),), str(onnx_path), input_names=["x"],
                      dynamo=False)
    out = subprocess.run([sys.executable, "-m", "rexdeploy.cli", "build", str(onnx_path),
                          "--input", "x:1x8x32", "--target", "reference", "--weights", "int4",
                          "--refine", "flexround", "--calib", "synthetic:4", "--refine-iters",
                          "5", "-o", str(tmp_path / "art"), "--quiet"],
                         capture_output=True, text=True, cwd=os.path.dirname(__file__))
    assert out.returncode == 0, out.stderr
    import json

    with open(tmp_path / "art" / "report.json") as f:
        report = json.load(f)
    assert all(row["refine"]["method"] == "flexround" for row in report["layers"])
    bad = subprocess.run([sys.executable, "-m", "rexdeploy.cli", "build", str(onnx_path),
                          "--input", "x:1x8x32", "--calib", "synthetic:0"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "N must be" in bad.stderr


class _TinyEncoder(nn.Module):
    """Token ids + attention mask -> masked mean of Linear(Embedding(ids))."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, 16)
        self.fc = nn.Linear(16, 16)

    def forward(self, input_ids, attention_mask):
        h = self.fc(self.emb(input_ids))
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def test_synthetic_token_calibration_has_sentence_lengths_and_masks(tmp_path):
    from rexdeploy.planning.calib_data import CalibSpec, calibration_data

    art = build(_TinyEncoder().eval(), ["input_ids:1x64:int64", "attention_mask:1x64:int64"],
                tmp_path / "tok", refine="erq", calib="synthetic:6")
    assert "random token sequences" in _plan(art).config["calib"]
    assert [row["refine"]["method"] for row in art.report()["layers"]] == ["erq"]
    import onnx_ir as ir

    from rexdeploy.inputspec import parse_input_specs

    cfg = BuildConfig(inputs=parse_input_specs(["input_ids:1x64:int64",
                                                "attention_mask:1x64:int64"]))
    data = calibration_data(CalibSpec("synthetic", 6), ir.load(art.file("float_onnx")), cfg,
                            None, None)
    assert len(data.samples) == 6 and not data.user
    for feeds in data.samples:
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        n = int(mask.sum())
        assert ids.shape == (1, 64) and 4 <= n <= 64 and mask[0, :n].all()
        assert int(ids.max()) < 50 and not ids[0, n:].any()  # padding after the sentence


# -- the end-to-end check: a refinement that loses is dropped ----------------------------------
@pytest.mark.e2e
def test_a_refinement_is_judged_end_to_end_and_its_verdict_recorded(tmp_path):
    torch.manual_seed(0)
    art = build(tiny_cnn(), CNN_IN, tmp_path / "k", weights="int4", refine="flexround",
                refine_iters=20)
    verdict = _plan(art).config["refine_end_to_end"]
    assert len(verdict["checks"]) == 2 and "held-out" in verdict["checks"][0]["inputs"]
    assert "half amplitude" in verdict["checks"][1]["inputs"]
    assert verdict["kept"] == all(c["refined_db"] >= c["plain_db"] for c in verdict["checks"])
    assert _plan(art).config["refine"] == "flexround"


@pytest.mark.e2e
def test_a_refinement_that_loses_end_to_end_falls_back_to_round_to_nearest(tmp_path,
                                                                          monkeypatch):
    """A refinement whose scales all came out 30 % too large (a stand-in for one that fits its
    calibration data and nothing else): the build measures it losing and keeps the plain plan,
    byte for byte."""
    from dataclasses import replace

    import rexdeploy.planning.refine as refine

    real = refine.refine_plan

    def damaged(plan, *args, **kwargs):
        refined, summary = real(plan, *args, **kwargs)
        layers = tuple(replace(lp, orders=tuple(replace(o, scale=o.scale * np.float32(1.3))
                                                for o in lp.orders)) for lp in refined.layers)
        return replace(refined, layers=layers), summary

    torch.manual_seed(0)
    model = tiny_cnn()
    plain = build(model, CNN_IN, tmp_path / "plain", weights="int4")
    monkeypatch.setattr(refine, "refine_plan", damaged)
    art = build(model, CNN_IN, tmp_path / "r", weights="int4", refine="flexround",
                refine_iters=5)
    verdict = _plan(art).config["refine_end_to_end"]
    assert verdict["kept"] is False
    assert all(c["refined_db"] < c["plain_db"] for c in verdict["checks"])
    with open(plain.file("onnx"), "rb") as a, open(art.file("onnx"), "rb") as b:
        assert a.read() == b.read()  # the round-to-nearest model, unchanged
    assert any("keeps round-to-nearest" in n for n in art.report()["notes"])


def test_calib_ranges_are_a_valid_resolved_value_only_with_user_data(tmp_path):
    """A build whose ranges came from the user's --calib data records ranges "calib"; that
    resolved config validates, and without user data the value is refused, never a silent
    fallback."""
    from rexdeploy.config import CALIB_RANGES, QuantConfig
    from rexdeploy.errors import UserError

    QuantConfig(ranges=CALIB_RANGES, calib=str(tmp_path)).validate()
    for calib in (None, "synthetic:8"):
        with pytest.raises(UserError, match="come from --calib DATA"):
            QuantConfig(ranges=CALIB_RANGES, calib=calib).validate()


@pytest.mark.parametrize("spikes_carry_the_output", [True, False])
def test_user_ranges_are_judged_on_the_users_samples(tmp_path, spikes_carry_the_output):
    """The samples' tail quantiles or their extremes, whichever the network output on the
    samples prefers. Each sample has one rare large value; when those values are what the model
    computes with (a sparse feature), clipping them at the tail quantile loses and the extremes
    are kept; when they are noise in a channel the model ignores, the tail quantiles keep the
    bulk's resolution and win."""
    torch.manual_seed(0)
    model = nn.Linear(256, 16).eval()
    with torch.no_grad():
        model.weight[:, 0] = 0.0 if not spikes_carry_the_output else model.weight[:, 0] * 40
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (16, 1, 64, 256)).astype(np.float32)
    x[np.arange(16), 0, rng.integers(0, 64, 16), 0] = 60.0  # one spike a sample, channel 0
    path = tmp_path / "spikes.npz"
    np.savez(path, x=x)
    art = build(model, ["x:1x64x256"], tmp_path / "a", calib=str(path), smooth="off")
    act = next(a for a in _plan(art).activations if a.tensor == "x")
    bound = act.scale * 127
    if spikes_carry_the_output:
        assert bound == pytest.approx(60.0, rel=1e-3)  # the extremes
    else:
        assert bound < 10.0  # the tail quantile, far inside the spikes
    ref = np.concatenate([model(torch.from_numpy(s)).detach().numpy() for s in x])
    assert sqnr(ref, outputs(art, [{"x": s} for s in x])) > 25
