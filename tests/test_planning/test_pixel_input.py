"""An image input's range and int8 scale from --preprocess: the pixels' range where --input-range
does not give it, and a scale on the pixel grid so that quantizing the input loses nothing."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import rexdeploy
from rexdeploy.inputs import parse_preprocess
from tiny_models import tiny_cnn

PIXEL = "mean=127,std=128"  # (p - 127) / 128: EfficientNet-Lite0's


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
        config = rexdeploy.BuildConfig(quant=rexdeploy.QuantConfig(**quant))
        return rexdeploy.build(model, ["input:1x3x32x32"], target=target,
                               output=str(tmp / name), config=config, quiet=True,
                               preprocess=preprocess)

    return {
        "pixel": build("pixel", PIXEL),
        "pixel_trt": build("pixel_trt", PIXEL, target="trt"),
        "given": build("given", PIXEL, input_ranges=(("input", -1.0, 1.0),)),
        "wider": build("wider", PIXEL, input_ranges=(("input", -3.0, 3.0),)),
        "imagenet": build("imagenet", "mean=123.675/116.28/103.53,std=58.395/57.12/57.375"),
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
    # ImageNet mean/std: no common grid, but the range still comes from the pixels
    scale, _ = _input_qdq(builds["imagenet"])
    assert scale == pytest.approx((255 - 103.53) / 57.375 / 127)
    assert builds["imagenet"].config.quant.activation.input_grid == ()
    # [0, 1] pixels on OpenVINO: uint8 at 1/255, the pixels' own grid
    unit = _input_activation(builds["unit"])
    assert (unit["dtype"], unit["scale"]) == ("uint8", pytest.approx(1 / 255))
    # without --preprocess nothing changes: N(0, 1) assumed, and said
    assert builds["none"].config.quant.activation.input_ranges == ()
    assert any("assumed N(0, 1)" in n for n in builds["none"].report()["notes"])


def test_a_wider_given_range_keeps_its_own_scale(builds):
    """--input-range wider than the pixels says the input holds other values too."""
    assert _input_qdq(builds["wider"])[0] == pytest.approx(3.0 / 127)
    assert _input_activation(builds["wider"])["source"] == "input"


@pytest.mark.parametrize("step", [0.0, -1 / 128, float("nan")])
def test_grid_step_is_validated(step):
    from rexdeploy.errors import UserError

    with pytest.raises(UserError, match="grid step"):
        rexdeploy.QuantConfig(input_grid=(("input", step),)).validate()
