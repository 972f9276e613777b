"""uint8 activations with a zero point (rexdeploy/planning/bounds.py, planning/quantize.py): the
hard lower bounds of gated activations, whatever form their export takes, and a build whose
swish, hard-swish and GELU outputs take [floor, hi] instead of [-hi, hi] on OpenVINO: a finer
grid, run as u8 by the device and faithful to the reference, never on TensorRT."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import rexdeploy
from rexdeploy.planning.bounds import hard_bounds, zero_point_floors
from tiny_models import randomize_bn

SWISH_MIN = -0.27846454
HARD_SWISH_MIN = -0.375
GELU_MIN = -0.16997120


def _gated_model() -> ir.Model:
    """One Conv output x through the forms exporters write: swish, Paddle2ONNX's hard-swish
    x * Clip(x + 3, 0, 6) / 6 and a learnable scale and shift of it, the HardSwish op, torch's
    GELU (erf form), and a LeakyReLU (unbounded below)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (4, 1, 1, 1)).astype(np.float32), "w")]
    for name, v in (("three", 3.0), ("zero", 0.0), ("six", 6.0), ("half", 0.5),
                    ("one", 1.0), ("sqrt2", 2.0 ** 0.5), ("two", 2.0), ("shift", -0.1)):
        inits.append(numpy_helper.from_array(np.array(v, np.float32), name))
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["conv"]),
             n("Sigmoid", ["conv"], ["sig"]), n("Mul", ["conv", "sig"], ["swish"]),
             n("Add", ["conv", "three"], ["p3"]), n("Clip", ["p3", "zero", "six"], ["c6"]),
             n("Mul", ["conv", "c6"], ["xc"]), n("Div", ["xc", "six"], ["hswish"]),
             n("Mul", ["hswish", "two"], ["scaled"]), n("Add", ["scaled", "shift"], ["lab"]),
             n("HardSwish", ["conv"], ["hs_op"]),
             n("Div", ["conv", "sqrt2"], ["xs"]), n("Erf", ["xs"], ["erf"]),
             n("Add", ["erf", "one"], ["erf1"]), n("Mul", ["conv", "half"], ["xhalf"]),
             n("Mul", ["xhalf", "erf1"], ["gelu"]),
             n("LeakyRelu", ["conv"], ["leaky"], alpha=0.1)]
    outs = ["swish", "lab", "hs_op", "gelu", "leaky"]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs], inits)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_gated_activations_are_bounded_below_whatever_their_form():
    bounds = hard_bounds(_gated_model())
    assert bounds["swish"] == pytest.approx((SWISH_MIN, np.inf), abs=1e-5)
    assert bounds["hswish"] == pytest.approx((HARD_SWISH_MIN, np.inf), abs=1e-5)
    assert bounds["lab"] == pytest.approx((2 * HARD_SWISH_MIN - 0.1, np.inf), abs=1e-5)
    assert bounds["hs_op"] == pytest.approx((HARD_SWISH_MIN, np.inf), abs=1e-5)
    assert bounds["gelu"] == pytest.approx((GELU_MIN, np.inf), abs=1e-5)
    assert bounds["c6"] == (0.0, 6.0) and bounds["sig"] == (0.0, 1.0)
    assert "leaky" not in bounds and "conv" not in bounds  # unbounded either side
    floors = zero_point_floors(_gated_model())
    assert set(floors) == {"swish", "xc", "hswish", "scaled", "lab", "hs_op", "gelu", "erf"}


class _Gated(nn.Module):
    """Conv-BN blocks through SiLU, Hardswish and GELU, each read by a pointwise convolution."""

    def __init__(self):
        super().__init__()
        acts = (nn.SiLU(), nn.Hardswish(), nn.GELU(), nn.SiLU())
        chans = (3, 16, 16, 16, 16)
        self.blocks = nn.Sequential(*[nn.Sequential(
            nn.Conv2d(chans[i], chans[i + 1], 3 if i == 0 else 1, padding=1 if i == 0 else 0),
            nn.BatchNorm2d(chans[i + 1]), act) for i, act in enumerate(acts)])
        self.head = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.head(self.blocks(x))


def _gated(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(_Gated(), seed).eval()


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    tmp, model = tmp_path_factory.mktemp("zero_points"), _gated()
    spec = ["input:1x3x16x16"]

    def build(name, target="openvino", **quant):
        config = rexdeploy.BuildConfig(quant=rexdeploy.QuantConfig(
            input_ranges=(("input", -1.0, 1.0),), **quant))
        return rexdeploy.build(model, spec, target=target, output=str(tmp / name),
                               config=config, quiet=True)

    return model, {"on": build("on"), "off": build("off", zero_points=False),
                   "trt": build("trt", target="trt")}


def _zero_points(art) -> dict[str, int]:
    graph = ir.load(art.file("onnx")).graph
    out = {}
    for node in graph:
        if node.op_type == "QuantizeLinear" and len(node.inputs) > 2:
            zp = node.inputs[2].const_value.numpy()
            if zp.size == 1 and zp.dtype == np.uint8 and int(zp) != 0:
                out[node.inputs[0].name] = int(zp)
    return out


def _sqnr(model, art, backend) -> float:
    from rexdeploy.api import artifact_runner
    from rexdeploy.evaluate.fidelity import sqnr_db

    rng = np.random.default_rng(3)
    xs = [rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32) for _ in range(8)]
    with torch.no_grad():
        ref = np.concatenate([model(torch.from_numpy(x)).numpy().ravel() for x in xs])
    with artifact_runner(art, backend) as r:
        got = np.concatenate([next(iter(r.infer({"input": x}).values())).ravel() for x in xs])
    return sqnr_db(ref, got)


@pytest.mark.openvino
def test_gated_outputs_take_a_zero_point_on_openvino_and_run_u8(builds):
    model, arts = builds
    zps = _zero_points(arts["on"])
    acts = {a["tensor"]: a for a in arts["on"].report()["activations"]}
    assert len(zps) == 4  # the four activations' outputs, each read by a pointwise conv
    for tensor, zp in zps.items():
        a = acts[tensor]
        assert a["dtype"] == "uint8" and a["zero_point"] == zp and "zero-point" in a["source"]
        floor = -zp * a["scale"]  # the grid's low end sits on the function's minimum
        assert min(abs(floor - m) for m in (SWISH_MIN, HARD_SWISH_MIN, GELU_MIN)) < a["scale"]
    assert not _zero_points(arts["off"]) and not _zero_points(arts["trt"])
    assert any("zero point" in n for n in arts["on"].report()["notes"])
    # every planned layer runs int8 on the device, which agrees with the reference
    summary = arts["on"].manifest["summary"]
    assert summary["int8_coverage"] == pytest.approx(1.0)
    check = arts["on"].report()["device_check"]
    assert check["loss_db"] < 0.5
    # a finer grid: closer to float in ONNX Runtime and on the device
    on, off = _sqnr(model, arts["on"], "reference"), _sqnr(model, arts["off"], "reference")
    assert on > off + 1.5, (on, off)
    assert _sqnr(model, arts["on"], None) > off + 1.0


@pytest.mark.openvino
def test_budget_and_refinement_measure_the_zero_point_grid(tmp_path):
    """The budget's sensitivity switches and the refinement's fake quantization use the same
    uint8 grid as the Q/DQ: both builds run, keep zero points, and stay as close to float."""
    model = _gated()

    def build(name, **quant):
        config = rexdeploy.BuildConfig(quant=rexdeploy.QuantConfig(
            input_ranges=(("input", -1.0, 1.0),), **quant))
        return rexdeploy.build(model, ["input:1x3x16x16"], output=str(tmp_path / name),
                               config=config, quiet=True)

    plain = build("plain")
    budget = build("budget", budget=1.25, mixed_precision="activations")
    refined = build("refined", weights="int4", refine="flexround", calib="synthetic:4",
                    refine_iters=15)
    for art in (budget, refined):
        assert _zero_points(art), art.path
    assert any("mixed precision" in n for n in budget.report()["notes"])
    assert _sqnr(model, budget, "reference") >= _sqnr(model, plain, "reference") - 0.5
    rows = [row["refine"] for row in refined.report()["layers"] if row.get("refine")]
    assert rows and all(r["error_after"] <= r["error_before"] for r in rows)
