"""The real example: EfficientNet-Lite0 with its ImageNet weights, built without data.

Acceptance of the foundation issue: >= 95 % of its Conv/MatMul layers run int8 kernels at
runtime (read from the compiled model), and the int8 model stays close to the float one on the
20 labelled ImageNet photos that ship with foolbox (the full 50-photo benchmark is
tools/bench/fidelity.py).
"""

import importlib.util
import os

import numpy as np
import pytest

import rexdeploy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = [pytest.mark.slow, pytest.mark.openvino]


@pytest.fixture(scope="module")
def effnet_model(tmp_path_factory) -> str:
    """EfficientNet-Lite0 as TorchScript (BatchNorm kept)."""
    if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
        pytest.skip("example model packages missing: run bash tools/setup.sh")
    import examples

    path, _, _ = examples.export_effnet(tmp_path_factory.mktemp("model"))
    return str(path)


@pytest.fixture(scope="module")
def effnet(effnet_model, tmp_path_factory):
    import examples

    out = tmp_path_factory.mktemp("out") / "effnet.openvino"
    art = rexdeploy.build(effnet_model, ["input:1x3x224x224"], output=str(out), quiet=True,
                          preprocess=examples.EFFNET_PREPROCESS,
                          config=rexdeploy.api.BuildConfig(quant=rexdeploy.api.QuantConfig(
                              input_ranges=(("input", -1.0, 1.0),))))
    return art


def test_runtime_int8_coverage(effnet):
    s = effnet.report()["summary"]
    assert s["quantized_layers"] == 50 and s["skipped_layers"] == 0
    assert s["int8_coverage"] >= 0.95, s
    kernels = {r["kernel"] for r in effnet.report()["runtime_layers"]}
    assert any(k.endswith("_I8") for k in kernels), kernels


def test_ranges_come_from_batchnorm(effnet):
    sources = {a["source"] for a in effnet.report()["activations"]}
    assert sources <= {"bn", "input", "bn+input", "input+pixel-grid"}, sources


def test_fidelity_on_labelled_photos(effnet, tmp_path):
    spec = importlib.util.find_spec("foolbox")
    if spec is None:
        pytest.skip("foolbox (labelled photos) not installed")
    data = os.path.join(spec.submodule_search_locations[0], "data")
    photos = sorted(f for f in os.listdir(data) if f.startswith("imagenet_"))
    assert len(photos) == 20
    for f in photos:
        os.symlink(os.path.join(data, f), tmp_path / f)
    result = rexdeploy.compare(effnet.path, str(tmp_path), quiet=True)
    assert result["reference"].startswith("torch")
    assert result["sqnr_db"] >= 18.0, result
    assert result["top1_agreement"] >= 0.95, result
    labels = np.array([int(f.rsplit("_", 1)[1].split(".")[0]) for f in photos])
    assert len(labels) == 20


def _link_photos(folder) -> None:
    """foolbox's 20 labelled ImageNet photos, linked into `folder` (skip without foolbox)."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None:
        pytest.skip("foolbox (labelled photos) not installed")
    data = os.path.join(spec.submodule_search_locations[0], "data")
    for f in sorted(os.listdir(data)):
        if f.startswith("imagenet_"):
            os.symlink(os.path.join(data, f), folder / f)


def _photos_against_reference(effnet, tmp_path) -> dict:
    _link_photos(tmp_path)
    return rexdeploy.compare(effnet.path, str(tmp_path), quiet=True)


@pytest.mark.int8_isa("vnni")
def test_vnni_build_is_unchanged_and_faithful(effnet, tmp_path):
    """Where int8 accumulates in int32 nothing is pair-limited, and the device matches its
    reference on the 20 labelled photos (OpenVINO within 0.5 dB of ONNX Runtime, both >= 22 dB:
    a figure only these kernels reach; the pair-limited build keeps 21.9 dB on them)."""
    s = effnet.report()["summary"]
    assert s["overflow_fix"]["pair_limit"] is None and s["overflow_fix"]["layers"] == 0
    result = _photos_against_reference(effnet, tmp_path)
    out = result["device_check"]["outputs"]["output"]
    assert result["device_check"]["agrees"] and out["loss_db"] <= 0.5, out
    assert out["reference_db"] >= 22 and out["device_db"] >= 22, out


@pytest.mark.int8_isa("saturating")
def test_pre_vnni_build_is_pair_limited_and_faithful(effnet, tmp_path):
    """Where int8 pairs saturate (AVX2, AVX-512 without VNNI) the build limits the pairs of
    its pointwise and fully connected layers (not the depthwise ones), the build's own device
    check agrees, and on the 20 labelled photos OpenVINO keeps within 1 dB of its reference and
    >= 21 dB (21.9 measured; without the fix: 7.5 dB)."""
    s = effnet.report()["summary"]
    assert s["int8_isa"]["saturates"] and s["overflow_fix"]["pair_limit"] == 128
    assert 30 <= s["overflow_fix"]["layers"] <= 34, s["overflow_fix"]  # 17 depthwise excluded
    assert effnet.report()["device_check"]["agrees"]
    result = _photos_against_reference(effnet, tmp_path)
    out = result["device_check"]["outputs"]["output"]
    assert out["loss_db"] <= 1.0 and out["device_db"] >= 21, out
    assert result["top1_agreement"] >= 0.95


def test_colour_sensitivity_images_see_the_first_depthwise_input(effnet, effnet_model,
                                                                 tmp_path):
    """The data-free sensitivity's images must rate the tensor real photos rate worst: the first
    depthwise convolution's input (half the default build's output noise on photos). Independent
    RGB noise rated it 10x too low; 1/f noise in natural colour (calib_free.synthetic) does not."""
    _link_photos(tmp_path)
    import examples
    import sensitivity_inputs

    first = "/_swish/Clip_output_0"
    # the default budget keeps that tensor float: the order-1 plan quantizes every activation
    from calib_free.plan import QuantPlan

    assert first not in {a.tensor for a in QuantPlan.load(effnet.path).activations}
    plain = rexdeploy.build(effnet_model, ["input:1x3x224x224"], quiet=True,
                            output=str(tmp_path / "plain"), preprocess=examples.EFFNET_PREPROCESS,
                            config=rexdeploy.api.BuildConfig(quant=rexdeploy.api.QuantConfig(
                                input_ranges=(("input", -1.0, 1.0),), auto_budget=False)))
    nsr = sensitivity_inputs.measure(plain.path, str(tmp_path), n=4, tensors=[first],
                                     progress=False)
    photos = (nsr["photos 1st half"][first] + nsr["photos 2nd half"][first]) / 2
    assert nsr["1/f colour"][first] > 5 * nsr["1/f independent"][first], nsr
    assert photos / 4 < nsr["1/f colour"][first] < 4 * photos, nsr


def test_folded_batchnorm_export_stays_close_to_the_torchscript_build(effnet, effnet_model,
                                                                     tmp_path):
    """The same model from torch.onnx.export (BatchNorm folded into the convolutions: ranges
    observed on natural synthetic images, no statistics) keeps within 1 dB of the TorchScript
    build on the 20 labelled photos (0.1 dB apart on the 50 photos; 1.1 dB while its ReLU6
    outputs were widened past 6). Per-channel scales from the images' channel maxima on its
    ReLU6 outputs once took it to 5.3 dB: none are used, and no ReLU6 range passes 6."""
    import warnings

    import torch

    (tmp_path / "photos").mkdir()
    _link_photos(tmp_path / "photos")
    path = tmp_path / "effnet_export.onnx"
    module = torch.jit.load(effnet_model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.rand(1, 3, 224, 224),), str(path), dynamo=False,
                          opset_version=17, input_names=["input"])
    import examples

    art = rexdeploy.build(str(path), ["input:1x3x224x224"], output=str(tmp_path / "x.openvino"),
                          quiet=True, preprocess=examples.EFFNET_PREPROCESS,
                          config=rexdeploy.api.BuildConfig(quant=rexdeploy.api.QuantConfig(
                              input_ranges=(("input", -1.0, 1.0),))))
    report = art.report()
    relu6 = [a for a in report["activations"] if "Clip" in a["tensor"]]
    assert relu6 and not any(a.get("per_channel") for a in relu6), relu6
    assert max(a["range"] for a in relu6) <= 6.0, relu6
    folded = rexdeploy.compare(art.path, str(tmp_path / "photos"), quiet=True)["sqnr_db"]
    script = rexdeploy.compare(effnet.path, str(tmp_path / "photos"), quiet=True)["sqnr_db"]
    assert folded >= script - 1.0 and folded >= 20, (folded, script)
