"""Models as users bring them: names with ":", subgraphs, recurrent layers, a folded BatchNorm,
a wrong declared shape. Every compute op is quantized or listed with its reason and its
multiply-adds, the build log holds no traceback, and the ranges say where they came from."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from torch import nn

import rexdeploy
from rexdeploy.config import BuildConfig, QuantConfig
from rexdeploy.inputspec import parse_input_spec

pytestmark = pytest.mark.openvino


def _export(module: nn.Module, x: torch.Tensor, path, names=("input",), fold=True) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), str(path), dynamo=False, opset_version=17,
                          do_constant_folding=fold, input_names=list(names))
    return str(path)


def _build(model, inputs, out, **quant) -> rexdeploy.Artifact:
    return rexdeploy.build(str(model), inputs, output=str(out), quiet=True,
                           config=BuildConfig(quant=QuantConfig(**quant)))


# -- names ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, name, shape, dtype", [
    ("input:0:1x3x8x8", "input:0", (1, 3, 8, 8), "float32"),
    ("input:0:Bx16:int64", "input:0", ("B", 16), "int64"),
    ("serving_default_x:0:1x4:fp16", "serving_default_x:0", (1, 4), "float16"),
    ("x:1x3", "x", (1, 3), "float32"),
])
def test_input_names_may_hold_colons(text, name, shape, dtype):
    spec = parse_input_spec(text)
    assert (spec.name, spec.shape, spec.dtype) == (name, shape, dtype)


def test_a_colon_named_input_builds_end_to_end(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    path = _export(model, torch.randn(1, 3, 16, 16), tmp_path / "tf.onnx", names=("input:0",))
    art = _build(path, ["input:0:1x3x16x16"], tmp_path / "tf.openvino",
                 input_ranges=(("input:0", -1.0, 1.0),))
    assert art.manifest["summary"]["quantized_layers"] == 2
    result = rexdeploy.compare(art.path, synthetic=2, quiet=True)
    assert result["sqnr_db"] > 25


# -- subgraphs -----------------------------------------------------------------------------------
def _if_model(path) -> str:
    """conv -> If(mean > 0: a 1x1 conv in the then-branch; else Identity) -> Relu."""
    rng = np.random.default_rng(0)
    shape = [1, 8, 16, 16]
    then_g = h.make_graph([h.make_node("Conv", ["y", "W2"], ["t_out"], name="then_conv")],
                          "then", [], [h.make_tensor_value_info("t_out", T.FLOAT, shape)])
    else_g = h.make_graph([h.make_node("Identity", ["y"], ["e_out"], name="else_id")], "else",
                          [], [h.make_tensor_value_info("e_out", T.FLOAT, shape)])
    nodes = [h.make_node("Conv", ["x", "W1"], ["y"], pads=[1, 1, 1, 1], name="conv1"),
             h.make_node("ReduceMean", ["y"], ["m"], keepdims=0, name="mean"),
             h.make_node("Greater", ["m", "zero"], ["c"], name="gt"),
             h.make_node("If", ["c"], ["z"], then_branch=then_g, else_branch=else_g, name="if"),
             h.make_node("Relu", ["z"], ["out"], name="relu")]
    inits = [nh.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "W1"),
             nh.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32), "W2"),
             nh.from_array(np.array(0.0, np.float32), "zero")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 16, 16])],
                         [h.make_tensor_value_info("out", T.FLOAT, shape)], inits)
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), str(path))
    return str(path)


def test_a_model_with_subgraphs_builds_its_main_graph(tmp_path, capfd):
    art = _build(_if_model(tmp_path / "if.onnx"), ["x:1x3x16x16"], tmp_path / "if.openvino",
                 input_ranges=(("x", -1.0, 1.0),))
    out = capfd.readouterr()
    assert "Traceback" not in out.out + out.err and "is not produced" not in out.out + out.err
    report = art.report()
    assert [r["name"] for r in report["layers"]] == ["conv1"]
    inner = {r["name"]: r for r in report["skipped"]}
    assert "then_conv" in inner and "subgraph of If if" in inner["then_conv"]["reason"]
    result = rexdeploy.compare(art.path, synthetic=4, quiet=True)
    assert result["sqnr_db"] > 25  # the branch logic survives the lowering


# -- recurrent layers and coverage by multiply-adds ------------------------------------------------
class ConvGRU(nn.Module):
    """A user's audio model: 1-D convolutions over features, a GRU over time, a classifier."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(16, 32, 3, padding=1), nn.ReLU(),
                                  nn.Conv1d(32, 32, 3, padding=1), nn.ReLU())
        self.gru = nn.GRU(32, 64, batch_first=True)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):  # x: [1, 16, T]
        y, _ = self.gru(self.conv(x).transpose(1, 2))
        return self.fc(y[:, -1])


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_a_float_gru_is_listed_and_counted_by_multiply_adds(tmp_path, kind):
    torch.manual_seed(0)
    model, x = ConvGRU().eval(), torch.randn(1, 16, 50)
    if kind == "onnx":
        path = _export(model, x, tmp_path / "gru.onnx")
    else:
        path = str(tmp_path / "gru.pt")
        torch.jit.save(torch.jit.trace(model, x), path)
    art = _build(path, ["input:1x16x50"], tmp_path / f"gru_{kind}.openvino")
    s, report = art.manifest["summary"], art.report()
    gru = [r for r in report["skipped"] if r["op"] == "GRU"]
    assert len(gru) == 1 and "recurrent" in gru[0]["reason"]
    # 50 steps x 3 gates x 64 hidden x (32 inputs + 64 hidden)
    assert gru[0]["macs"] == 50 * 3 * 64 * (32 + 64)
    assert s["quantized_layers"] == 3 and s["macs_float"] == gru[0]["macs"]
    total = s["macs"] + s["macs_float"]
    assert s["int8_coverage_macs"] == pytest.approx((s["macs"]) / total, abs=1e-3)
    assert s["int8_coverage_macs"] < 0.8  # the GRU holds most of the work
    # the compiled model's GRU counts among its compute layers, and it is not int8 (the
    # default budget may add a second order: a fourth int8 layer)
    assert s["runtime_compute_layers"] > s["runtime_int8_layers"] >= 3
    assert any(r["type"] in ("RNNSeq", "GRUSequence") and not r["int8"]
               for r in report["runtime_layers"])


# -- upsampling ------------------------------------------------------------------------------------
class Decoder(nn.Module):
    """A segmentation-style decoder: strided Conv-BN-ReLU down, ConvTranspose-BN-ReLU up (kernel
    = stride, and kernel 4 / stride 2 whose taps overlap), a 1x1 head."""

    def __init__(self, groups: int = 1):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(32, 16, 2, 2, groups=groups),
                                nn.BatchNorm2d(16), nn.ReLU(),
                                nn.ConvTranspose2d(16, 8, 4, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                nn.Conv2d(8, 2, 1))
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.3, 0.3)

    def forward(self, x):
        return self.up(self.down(x))


@pytest.mark.parametrize("target", ["openvino", "trt"])
def test_conv_transpose_is_quantized_and_runs_int8(tmp_path, target):
    torch.manual_seed(0)
    art = rexdeploy.build(Decoder().eval(), ["x:1x3x32x32"], target=target, quiet=True,
                          output=str(tmp_path / f"decoder.{target}"),
                          config=BuildConfig(quant=QuantConfig(input_ranges=(("x", -1.0, 1.0),),
                                                               auto_budget=False)))
    report = art.report()  # every input int8 (no default budget): all of it runs int8
    rows = {r["name"]: r for r in report["layers"]}
    up = [r for r in rows.values() if r["op"] == "ConvTranspose"]
    assert len(up) == 2 and not report["skipped"]
    # every input element meets Cout x kernel weights: 32 x 8 x 8 inputs x 16 x 2 x 2, and
    # 16 x 16 x 16 inputs x 8 x 4 x 4
    assert sorted(r["macs"] for r in up) == [32 * 64 * 16 * 4, 16 * 256 * 8 * 16]
    if target == "trt":  # the Q/DQ ONNX passes TensorRT's rules (the build checks them too)
        from backends.trt_rules import check_trt_rules

        check = check_trt_rules(str(Path(art.path) / "model.onnx"))
        assert check.ok and not check.warnings, check.to_dict()
        return
    assert all(r["runs_int8"] for r in up), up
    assert report["summary"]["int8_coverage_macs"] == 1.0
    check = report["device_check"]
    assert check["agrees"] and check["outputs"]["output"]["reference_db"] > 28, check
    result = rexdeploy.compare(art.path, synthetic=4, quiet=True)
    assert result["sqnr_db"] > 28


def test_grouped_conv_transpose_is_listed_float(tmp_path):
    torch.manual_seed(0)
    art = rexdeploy.build(Decoder(groups=2).eval(), ["x:1x3x32x32"], quiet=True,
                          output=str(tmp_path / "grouped.openvino"))
    skipped = art.report()["skipped"]
    assert [r["op"] for r in skipped] == ["ConvTranspose"], skipped
    assert "grouped ConvTranspose" in skipped[0]["reason"] and skipped[0]["macs"] > 0


# -- ranges without BatchNorm ---------------------------------------------------------------------
class BnNet(nn.Module):
    """Conv-BN-ReLU6 x 3 (one depthwise), BatchNorm statistics made non-trivial."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
            nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
            nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        return self.body(x)


def _calibrated_bnnet() -> nn.Module:
    """BnNet whose BatchNorm statistics are those of the data it sees (smooth images), as after
    training: run in train mode over such images, then eval."""
    from calib_free.synthetic import pink_noise_images

    torch.manual_seed(0)
    model = BnNet()
    model.train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None  # cumulative average
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        for seed in range(8):
            model(pink_noise_images((1, 3, 64, 64), 16, seed, (-1.0, 1.0)).float())
    return model.eval()


def test_folded_batchnorm_ranges_are_observed_not_guessed(tmp_path):
    model, x = _calibrated_bnnet(), torch.rand(1, 3, 64, 64) * 2 - 1
    folded = _export(model, x, tmp_path / "folded.onnx", fold=True)
    assert not any(n.op_type == "BatchNormalization" for n in onnx.load(folded).graph.node)
    ts = str(tmp_path / "bn.pt")
    torch.jit.save(torch.jit.trace(model, x), ts)
    ranges = (("input", -1.0, 1.0),)
    a = _build(folded, ["input:1x3x64x64"], tmp_path / "folded.openvino", input_ranges=ranges)
    b = _build(ts, ["input:1x3x64x64"], tmp_path / "bn.openvino", input_ranges=ranges)
    sources = {act["source"] for act in a.report()["activations"]}
    assert sources <= {"input", "observed:auto"}, sources  # no propagated guess past the input
    assert any("observed on 64 synthetic inputs (images: 1/f noise, natural colour)" in n
               for n in a.report()["notes"])
    assert {act["source"] for act in b.report()["activations"]} <= {"bn", "input"}
    # judged on images like the ones the BatchNorm statistics were gathered on (other seeds)
    from calib_free.synthetic import pink_noise_images

    data = tmp_path / "images.npz"
    np.savez(data, input=pink_noise_images((1, 3, 64, 64), 16, 100, (-1.0, 1.0))
             .numpy().astype(np.float32))
    fa = rexdeploy.compare(a.path, str(data), quiet=True, reference="onnx")["sqnr_db"]
    fb = rexdeploy.compare(b.path, str(data), quiet=True, reference="onnx")["sqnr_db"]
    assert fa > fb - 1, (fa, fb)  # measured: 43.8 vs 41.2 dB


# -- a declared shape that contradicts the graph ---------------------------------------------------
def test_a_wrong_declared_output_shape_is_one_note(tmp_path, capfd):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten())
    path = _export(model, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    proto = onnx.load(path)
    out = proto.graph.output[0]
    del out.type.tensor_type.shape.dim[:]  # declare [1, 8, 8, 8] where it computes [1, 512]
    for d in (1, 8, 8, 8):
        out.type.tensor_type.shape.dim.add().dim_value = d
    onnx.save(proto, path)
    art = rexdeploy.build(path, ["input:1x3x8x8"], output=str(tmp_path / "m.openvino"),
                          config=BuildConfig(quant=QuantConfig(
                              input_ranges=(("input", -1.0, 1.0),))))
    err = capfd.readouterr()
    text = err.out + err.err
    assert "Traceback" not in text and "Shape inference failed" not in text
    assert "ONNX shape inference stops on this model" in text
    assert art.manifest["summary"]["macs_unknown_layers"] == 0



# -- dynamic widths, sequences, output slices ------------------------------------------------
class LineReader(nn.Module):
    """A tiny CTC-style recogniser: grey 1x1x16xW -> [1, W/2, 12] class probabilities."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(32 * 8, 12)

    def forward(self, x):
        y = self.conv(x)                      # [1, 32, 8, W/2]
        y = y.flatten(1, 2).transpose(1, 2)   # [1, W/2, 256]
        return torch.softmax(self.fc(y), -1)


def _line_model(tmp_path) -> str:
    path = str(tmp_path / "reader.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(LineReader().eval(), (torch.rand(1, 1, 16, 64),), path, dynamo=False,
                          opset_version=17, input_names=["line"], output_names=["probs"],
                          dynamic_axes={"line": {3: "W"}, "probs": {1: "T"}})
    return path


def test_dynamic_width_builds_compares_and_profiles_at_typical_sizes(tmp_path):
    art = rexdeploy.build(_line_model(tmp_path), ["line:1x1x16xW"], quiet=True,
                          output=str(tmp_path / "reader.openvino"),
                          config=BuildConfig(quant=QuantConfig(input_ranges=(("line", 0.0, 1.0),)),
                                             dims=(("W", 96),)))
    s = art.manifest["summary"]
    assert s["macs_unknown_layers"] == 0
    # 16 x 16 x 96 outputs x 9, 32 x 8 x 48 x 144, 48 x 12 x 256: counted at W=96
    assert s["macs"] == 16 * 16 * 96 * 9 + 32 * 8 * 48 * 144 + 48 * 12 * 256
    data = tmp_path / "lines"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i, w in enumerate((40, 64, 64, 120)):
        np.save(data / f"line{i}.npy", rng.random((1, 1, 16, w), dtype=np.float32))
    result = rexdeploy.compare(art.path, str(data), quiet=True, reference="onnx")
    probs = result["outputs"]["probs"]
    assert probs["shapes"] == ["(1, 20, 12)", "(1, 32, 12)", "(1, 60, 12)"]
    assert probs["position_top1"] > 0.9 and probs["sqnr_db"] > 20
    assert result["device_check"]["agrees"]
    doc = rexdeploy.profile(art.path, duration=0.2, rounds=1, quiet=True, layers=False,
                            throughput=False)
    assert doc["settings"]["dims"] == {"W": 96}
    doc = rexdeploy.profile(art.path, duration=0.2, rounds=1, quiet=True, layers=False,
                            throughput=False, dims=(("W", 200),))
    assert doc["settings"]["dims"] == {"W": 200}
    with pytest.raises(rexdeploy.UserError, match="no dynamic dim of that name"):
        rexdeploy.profile(art.path, quiet=True, dims=(("H", 3),))


def test_a_dim_that_names_nothing_is_refused(tmp_path):
    from rexdeploy.errors import UserError

    with pytest.raises(UserError, match="--dim H: no input has a dynamic dim of that name"):
        rexdeploy.build(_line_model(tmp_path), ["line:1x1x16xW"], quiet=True,
                        output=str(tmp_path / "bad.openvino"),
                        config=BuildConfig(dims=(("H", 3),)))
    assert not (tmp_path / "bad.openvino").exists()


def test_output_slices_have_rows_of_their_own(tmp_path):
    """A head concatenating boxes (4) and a class score (1): the slices say which part
    suffers, the whole output's SQNR alone would hide it."""
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
            self.box = nn.Conv2d(16, 4, 1)
            self.cls = nn.Conv2d(16, 1, 1)

        def forward(self, x):
            y = self.body(x)
            out = torch.cat((self.box(y) * 50, torch.sigmoid(self.cls(y))), 1)
            return out.flatten(2).transpose(1, 2)  # [1, H*W, 5]

    path = _export(Head(), torch.rand(1, 3, 16, 16), tmp_path / "head.onnx")
    art = _build(path, ["input:1x3x16x16"], tmp_path / "head.openvino",
                 input_ranges=(("input", 0.0, 1.0),))
    out_name = art.manifest["outputs"][0]
    result = rexdeploy.compare(art.path, synthetic=4, quiet=True,
                               output_slices=(f"{out_name}:2:0:4=boxes",
                                              f"{out_name}:2:4:5=score"))
    rows = result["outputs"]
    assert set(rows) == {out_name, "boxes", "score"}
    assert rows["boxes"]["slice_of"] == out_name
    assert rows["score"]["sqnr_db"] != rows[out_name]["sqnr_db"]
    from rexdeploy.errors import UserError

    with pytest.raises(UserError, match="outside axis 2"):
        rexdeploy.compare(art.path, synthetic=2, quiet=True,
                          output_slices=(f"{out_name}:2:4:9",))


# -- structural fixes: squeeze-and-excitation gates, depthwise range equalization ----------------
class SEBlock(nn.Module):
    """conv -> SE (pool, 1x1, ReLU, 1x1, hard sigmoid) gating the feature map -> 1x1."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU())
        self.squeeze = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(32, 8, 1), nn.ReLU(),
                                     nn.Conv2d(8, 32, 1), nn.Hardsigmoid())
        self.out = nn.Conv2d(32, 16, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.out(y * self.squeeze(y))


def test_squeeze_excite_gates_stay_float_and_are_listed(tmp_path):
    path = _export(SEBlock(), torch.rand(1, 3, 16, 16), tmp_path / "se.onnx")
    art = _build(path, ["input:1x3x16x16"], tmp_path / "se.openvino",
                 input_ranges=(("input", 0.0, 1.0),))
    skipped = art.report()["skipped"]
    assert len(skipped) == 2 and all("squeeze-and-excitation" in r["reason"] for r in skipped)
    assert all(r["macs"] > 0 for r in skipped)  # 1x1 on a pooled 32-vector: 256 each
    assert art.manifest["summary"]["quantized_layers"] == 2


class DepthwiseNet(nn.Module):
    """conv -> BN -> ReLU -> depthwise conv: the BN makes the depthwise input's channels span
    two orders of magnitude (the case cross-layer equalization is for)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 8, 1))
        bn = self.body[1]
        with torch.no_grad():
            bn.weight.copy_(torch.logspace(-2, 0, 16))  # channel spreads 0.01 .. 1
            bn.bias.copy_(0.5 * bn.weight)
            bn.running_var.fill_(1.0)
        self.eval()

    def forward(self, x):
        return self.body(x)


def test_depthwise_inputs_are_equalized_exactly_through_a_batchnormed_conv(tmp_path):
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    path = str(tmp_path / "dw.pt")
    torch.jit.save(torch.jit.trace(DepthwiseNet(), x), path)
    ranges = (("input", -1.0, 1.0),)
    # per-tensor depthwise inputs: equalization alone (per-channel scales would do its work)
    eq = _build(path, ["input:1x3x16x16"], tmp_path / "eq.openvino", input_ranges=ranges,
                activation_scales="tensor")
    off = _build(path, ["input:1x3x16x16"], tmp_path / "off.openvino", input_ranges=ranges,
                 equalize="off", activation_scales="tensor")
    assert any(n.startswith("range equalization: 1 depthwise") for n in eq.report()["notes"])
    assert not any("range equalization" in n for n in off.report()["notes"])
    # the float model the artifact keeps (equalized) computes what the original does
    import onnxruntime as ort

    got = ort.InferenceSession(eq.file("float_onnx")).run(None, {"input": x.numpy()})[0]
    want = DepthwiseNet()(x).detach().numpy()
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()
    fe = rexdeploy.compare(eq.path, synthetic=8, quiet=True, reference="onnx")["sqnr_db"]
    fo = rexdeploy.compare(off.path, synthetic=8, quiet=True, reference="onnx")["sqnr_db"]
    assert fe > fo + 1, (fe, fo)  # measured: 34.2 against 33.0 dB


class HardSwishDepthwiseNet(nn.Module):
    """conv -> HardSwish -> depthwise conv -> 1x1 conv: the conv's output channels span two
    orders of magnitude and HardSwish (not positive homogeneous) rules out equalization, as on
    PP-OCRv4's detector."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.act = nn.Hardswish()
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 8, 1)
        with torch.no_grad():
            self.conv.weight.mul_(torch.logspace(-2, 1, 16).reshape(-1, 1, 1, 1))
            self.conv.bias.mul_(torch.logspace(-2, 1, 16))
            # the depthwise kernel brings the channels back to one range
            self.dw.weight.div_(torch.logspace(-2, 1, 16).reshape(-1, 1, 1, 1))
        self.eval()

    def forward(self, x):
        return self.pw(self.dw(self.act(self.conv(x))))


def _dw_model(tmp_path) -> str:
    path = str(tmp_path / "hsdw.pt")
    torch.jit.save(torch.jit.trace(HardSwishDepthwiseNet(), torch.zeros(1, 3, 16, 16)), path)
    return path


@pytest.mark.parametrize("target", ["openvino", "reference"])
def test_depthwise_inputs_get_a_scale_per_channel_and_run_int8(tmp_path, target):
    path = _dw_model(tmp_path)
    ranges = (("input", -1.0, 1.0),)
    spec = ["input:1x3x16x16"]
    ch = rexdeploy.build(path, spec, output=str(tmp_path / "ch"), quiet=True,
                         config=BuildConfig(target=target,
                                            quant=QuantConfig(input_ranges=ranges)))
    pt = rexdeploy.build(path, spec, output=str(tmp_path / "pt"), quiet=True,
                         config=BuildConfig(target=target, quant=QuantConfig(
                             input_ranges=ranges, activation_scales="tensor")))
    from calib_free.plan import QuantPlan

    assert QuantPlan.load(ch.path).config["activation_scales"] == "depthwise"
    assert QuantPlan.load(pt.path).config["activation_scales"] == "tensor"
    rows = {r["tensor"]: r for r in ch.report()["activations"]}
    per_channel = [r for r in rows.values() if r.get("per_channel")]
    assert len(per_channel) == 1 and per_channel[0]["channels"] == 16
    assert per_channel[0]["scale_min"] < per_channel[0]["scale"]
    assert not any(r.get("per_channel") for r in pt.report()["activations"])
    # the Q/DQ ONNX: one per-channel (axis 1) Q/DQ pair, read by the depthwise Conv alone
    model = onnx.load(ch.file("onnx"))
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    quantized = {q.output[0] for q in model.graph.node if q.op_type == "QuantizeLinear"}
    per_axis = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                and any(a.name == "axis" for a in n.attribute) and n.input[0] in quantized]
    assert len(per_axis) == 1
    readers = consumers[per_axis[0].output[0]]
    assert [r.op_type for r in readers] == ["Conv"]
    assert any(a.name == "group" and a.i == 16 for a in readers[0].attribute)
    # every layer still runs int8 where it runs, and the per-channel scales pay off
    layers = ch.report()["layers"]
    if target == "openvino":
        assert all(r["runs_int8"] for r in layers), [(r["name"], r["runtime"]) for r in layers]
        check = ch.report()["device_check"]
        assert check["loss_db"] < 0.5, check  # the device computes what the reference does
    fc = rexdeploy.compare(ch.path, synthetic=8, quiet=True, reference="onnx")["sqnr_db"]
    fp = rexdeploy.compare(pt.path, synthetic=8, quiet=True, reference="onnx")["sqnr_db"]
    assert fc > fp + 3, (fc, fp)  # measured: 23.8 against 14.3 dB


def test_per_channel_activations_are_refused_where_the_target_has_none(tmp_path):
    with pytest.raises(rexdeploy.UserError, match="per tensor only"):
        rexdeploy.build(_dw_model(tmp_path), ["input:1x3x16x16"], output=str(tmp_path / "t"),
                        quiet=True, config=BuildConfig(target="trt", quant=QuantConfig(
                            activation_scales="depthwise")))
