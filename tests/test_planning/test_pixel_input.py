"""An image input's range and int8 scale from --preprocess: the pixels' range where --input-range
does not give it, and a scale on the pixel grid so that quantizing the input loses nothing (for
a per-channel std, on the grid the input alignment moves it to)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import rexdeploy
from rexdeploy.inputs import parse_preprocess
from tiny_models import tiny_cnn

PIXEL = "mean=127,std=128"  # (p - 127) / 128: EfficientNet-Lite0's
IMAGENET = "mean=123.675/116.28/103.53,std=58.395/57.12/57.375"


@pytest.mark.parametrize("spec, lo, hi, step", [
    (PIXEL, -127 / 128, 1.0, 1 / 128),
    ("mean=128,std=128", -1.0, 127 / 128, 1 / 128),
    ("scale=1/255", 0.0, 1.0, 1 / 255),
    ("mean=127.5,std=127.5", -1.0, 1.0, None),  # codes p - 127.5: off the integers
    ("mean=123.675/116.28/103.53,std=58.395/57.12/57.375",  # ImageNet: one std per channel
     (0 - 123.675) / 58.395, (255 - 103.53) / 57.375, None),
    ("mean=124/116/104,std=58", -124 / 58, (255 - 104) / 58, 1 / 58),
])
def test_value_range_and_pixel_step(spec, lo, hi, step):
    pre = parse_preprocess(spec)
    assert pre.value_range() == pytest.approx((lo, hi))
    assert pre.pixel_step() == (None if step is None else pytest.approx(step))


def _input_activation(art) -> dict:
    return next(a for a in art.report()["activations"] if a["tensor"] == "input")


def _input_qdq(art) -> tuple[float, int]:
    graph = ir.load(art.file("onnx")).graph
    reads = {"input"} | {n.outputs[0].name for n in graph  # trt's f16 graph casts it first
                         if n.op_type == "Cast" and n.inputs[0].name == "input"}
    q = next(n for n in graph if n.op_type == "QuantizeLinear" and n.inputs[0].name in reads)
    return float(q.inputs[1].const_value.numpy()), int(q.inputs[2].const_value.numpy())


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    tmp, model = tmp_path_factory.mktemp("pixel"), tiny_cnn()

    def build(name, preprocess=None, target="openvino", **quant):
        # every activation int8 (no default budget), so that the input's grid alone differs
        config = rexdeploy.BuildConfig(quant=rexdeploy.QuantConfig(auto_budget=False, **quant))
        return rexdeploy.build(model, ["input:1x3x32x32"], target=target,
                               output=str(tmp / name), config=config, quiet=True,
                               preprocess=preprocess)

    return {
        "pixel": build("pixel", PIXEL),
        "pixel_trt": build("pixel_trt", PIXEL, target="trt"),
        "given": build("given", PIXEL, input_ranges=(("input", -1.0, 1.0),)),
        "wider": build("wider", PIXEL, input_ranges=(("input", -3.0, 3.0),)),
        "imagenet": build("imagenet", IMAGENET),
        "imagenet_trt": build("imagenet_trt", IMAGENET, target="trt"),
        "imagenet_off": build("imagenet_off", IMAGENET, align_input=False),
        "half": build("half", "mean=127.5,std=127.5"),
        "unit": build("unit", "scale=1/255"),
        "none": build("none"),
    }


def test_pixel_grid_scale_quantizes_every_pixel_exactly(builds):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    pixels = np.arange(256, dtype=np.float32)
    x = ((pixels - 127) / 128).reshape(1, 1, 16, 16)
    for key in ("pixel", "pixel_trt", "given"):
        scale, zero = _input_qdq(builds[key])
        assert (scale, zero) == (pytest.approx(1 / 128), 0), key
        assert _input_activation(builds[key])["source"] == "input+pixel-grid"
        # the lowered Q/DQ pair itself, run by ONNX Runtime on all 256 pixel values
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
        graph = helper.make_graph(
            nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)],
            [helper.make_tensor("s", TensorProto.FLOAT, [], [scale]),
             helper.make_tensor("z", TensorProto.INT8, [], [zero])])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
        session = ort.InferenceSession(proto.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        y = session.run(None, {"x": x})[0].reshape(-1)
        err = np.abs(y - x.reshape(-1))
        assert err[:255].max() == 0.0  # pixels 0..254 exact
        assert err[255] == pytest.approx(1 / 128)  # 255 -> code 128 saturates to 127


def test_range_comes_from_preprocess_when_not_given(builds):
    quant = builds["pixel"].config.quant.activation
    assert quant.input_ranges == (("input", -127 / 128, 1.0),)
    assert quant.input_grid == (("input", 1 / 128),)
    assert not any("assumed N(0, 1)" in n for n in builds["pixel"].report()["notes"])
    # ImageNet mean/std, not aligned: no common grid, but the range comes from the pixels
    scale, _ = _input_qdq(builds["imagenet_off"])
    assert scale == pytest.approx((255 - 103.53) / 57.375 / 127)
    assert builds["imagenet_off"].config.quant.activation.input_grid == ()
    # [0, 1] pixels on OpenVINO: uint8 at 1/255, the pixels' own grid
    unit = _input_activation(builds["unit"])
    assert (unit["dtype"], unit["scale"]) == ("uint8", pytest.approx(1 / 255))
    # without --preprocess nothing changes: N(0, 1) assumed, and said
    assert builds["none"].config.quant.activation.input_ranges == ()
    assert any("assumed N(0, 1)" in n for n in builds["none"].report()["notes"])


def _aligned_qdq(art) -> tuple[str, float, int]:
    graph = ir.load(art.file("onnx")).graph
    q = next(n for n in graph if n.op_type == "QuantizeLinear"
             and n.inputs[0].name.endswith("/pixels"))
    return (q.inputs[0].name, float(q.inputs[1].const_value.numpy()),
            int(q.inputs[2].const_value.numpy()))


def _pixel_images(n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    mean = np.array([123.675, 116.28, 103.53]).reshape(1, 3, 1, 1)
    std = np.array([58.395, 57.12, 57.375]).reshape(1, 3, 1, 1)
    return [((rng.integers(0, 256, (1, 3, 32, 32)) - mean) / std).astype(np.float32)
            for _ in range(n)]


@pytest.mark.parametrize("key", ["imagenet", "imagenet_trt"])
def test_a_per_channel_std_is_aligned_onto_one_exact_grid(builds, key):
    """ImageNet's per-channel std: the first convolution reads the input moved onto one int8
    grid (rexdeploy/passes/align_input.py), so every pixel is an exact code, on OpenVINO and in
    TensorRT's rules; the note says so, and the float graph computes what it did."""
    from backends.trt_rules import check_trt_rules
    from rexdeploy.ort_session import session, with_outputs
    from rexdeploy.passes.align_input import ZERO

    art = builds[key]
    name, scale, zero = _aligned_qdq(art)
    act = next(a for a in art.report()["activations"] if a["tensor"] == name)
    assert (act["dtype"], act["source"], zero) == ("int8", "input+pixel-grid", 0)
    assert any(n.startswith("input alignment:") for n in art.report()["notes"])
    x = _pixel_images()[0]
    # the aligned tensor, as the float graph computes it: pixel p is code p - ZERO
    proto = with_outputs(ir.to_proto(ir.load(art.file("float_onnx"))), [name], copy=False)
    got = session(proto.SerializeToString(), "test").run([name], {"input": x})[0] / scale
    inner = got[..., 1:-1, 1:-1]  # the padding ring is x = 0, the mean pixel: not a pixel
    # each pixel within a hair of its code (TensorRT's scales are float16: 1e-4 relative)
    np.testing.assert_allclose(inner, np.round(inner), atol=0.05)
    assert inner.min() >= -ZERO - 0.05 and inner.max() <= 255 - ZERO + 0.05
    if key == "imagenet_trt":
        check = check_trt_rules(art.file("onnx"))
        assert check.ok, check.to_dict()


def test_alignment_brings_the_output_closer_to_float(builds):
    """The same CNN on pixel images: aligned, closer to float than with one scale rounding
    every pixel; with --no-align-input, or a mean between pixel levels and one std (which
    alignment would take x = 0 off the grid for), nothing is aligned."""
    import onnxruntime as ort

    from rexdeploy.api import artifact_runner
    from rexdeploy.evaluate.fidelity import sqnr_db

    images = _pixel_images(8)
    flt = ort.InferenceSession(builds["imagenet"].file("float_onnx"),
                               providers=["CPUExecutionProvider"])
    ref = np.concatenate([flt.run(None, {"input": x})[0] for x in images])
    got = {}
    for key in ("imagenet", "imagenet_off"):
        with artifact_runner(builds[key], "reference") as r:
            got[key] = np.concatenate([next(iter(r.infer({"input": x}).values()))
                                       for x in images])
    assert sqnr_db(ref, got["imagenet"]) > sqnr_db(ref, got["imagenet_off"]) + 0.3
    assert builds["half"].config.quant.activation.input_pixels == ()
    for key in ("imagenet_off", "half"):
        assert not any(n.startswith("input alignment:") for n in builds[key].report()["notes"])


def test_a_wider_given_range_keeps_its_own_scale(builds):
    """--input-range wider than the pixels says the input holds other values too."""
    assert _input_qdq(builds["wider"])[0] == pytest.approx(3.0 / 127)
    assert _input_activation(builds["wider"])["source"] == "input"


@pytest.mark.parametrize("step", [0.0, -1 / 128, float("nan")])
def test_grid_step_is_validated(step):
    from rexdeploy.errors import UserError

    with pytest.raises(UserError, match="grid step"):
        rexdeploy.QuantConfig(input_grid=(("input", step),)).validate()
