"""What a --budget counts: calib_free.weights.sparse.CostModel (BOPs, or a runtime's time per weight
and per output element), the allocators under it, the layer sizes it reads from the graph, the
target's model chosen at build time and recorded in plan, report and summary."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from calib_free.mixed import MixedLayer, allocate_mixed
from calib_free.weights.sparse import BOPS, CostModel, LayerCost, allocate_budget
from conftest import int8_saturates

TIME = CostModel("time", per_weight=10.0, per_output=20.0, per_extra_output=50.0,
                 per_float_input=30.0, min_bits=8)


def _layer(name, macs, weights, outputs, inputs=0, bits_w=8, channels=4):
    e1 = torch.ones(channels, dtype=torch.float64)
    return LayerCost(name, torch.stack([e1, e1 / 100]), macs, bits_w, 8, weights, outputs, inputs)


def test_cost_model_arithmetic():
    layer = _layer("l", macs=1000, weights=100, outputs=10, inputs=40, bits_w=4)
    assert BOPS.order1(layer) == layer.bops == 1000 * 4 * 8
    assert BOPS.layer(layer, 4, 8, 0.5) == pytest.approx(1.5 * 1000 * 4 * 8)
    # int4 codes computed in int8 kernels (min_bits); weight bytes and outputs in int8-MAC units
    assert TIME.order1(layer) == 1000 * 64 + 64 * (10 * 100 / 2 + 20 * 10)
    assert TIME.extra_order(layer) == 1000 * 64 + 64 * (10 * 100 / 2 + 50 * 10)
    assert TIME.layer(layer, 4, 8, 1.0) == TIME.order1(layer) + TIME.extra_order(layer)
    # a float input: compute at 32 bits and its elements converted, once (not per order)
    assert TIME.order1(layer, 8, 32) == 1000 * 8 * 32 + 64 * (10 * 100 + 20 * 10 + 30 * 40)
    assert TIME.extra_order(layer, 8, 32) == 1000 * 8 * 32 + 64 * (10 * 100 + 50 * 10)


def test_time_model_moves_the_order_to_the_layer_with_few_outputs():
    """Same MACs, same error drop: BOPs cannot tell the layers apart (the first wins the tie);
    the time model buys the one writing fewer outputs (a deep 1x1 convolution rather than a
    depthwise one), and the budget holds in the model's own units."""
    dw = _layer("dw", macs=9000, weights=90, outputs=1000)
    deep = _layer("deep", macs=9000, weights=900, outputs=10)
    plain = allocate_budget([dw, deep], 2.0 - 1e-6, whole_layers=True)
    assert plain.kept["dw"][0].numel() == 4 and plain.kept["deep"][0].numel() == 0
    timed = allocate_budget([dw, deep], 1.5, whole_layers=True, cost_model=TIME)
    assert timed.kept["deep"][0].numel() == 4 and timed.kept["dw"][0].numel() == 0
    assert timed.total_bops <= 1.5 * timed.base_bops
    assert timed.base_bops == pytest.approx(TIME.order1(dw) + TIME.order1(deep))
    # per channel as well
    chans = allocate_budget([dw, deep], 1.4, cost_model=TIME)
    assert chans.kept["deep"][0].numel() == 4 and chans.kept["dw"][0].numel() < 4


def test_time_model_prices_a_float_input_by_its_elements():
    """Keeping an activation float: BOPs see a 4x layer; the time model also sees the tensor
    converted. With a large input and few MACs (a depthwise layer), the order elsewhere wins."""
    reader = LayerCost("reader", torch.ones(1, 4, dtype=torch.float64), 1000, 8, 8, 10, 100,
                       4000)  # order 1 only: its one candidate is the float input
    other = _layer("other", macs=8000, weights=80, outputs=10)
    rows = [MixedLayer(reader, 1e-3, act="t"), MixedLayer(other, 1e-3)]
    act = {"t": 1e-3}
    # BOPs: the float input (1000 x 8 x 24) outscores the order (8000 x 64) and fits
    bops = allocate_mixed(rows, 1.0 + 1000 * 8 * 24 / (9000 * 64), act,
                          float_activations=True, whole_layers=True)
    assert "t" in bops.float_activations and bops.kept["other"][0].numel() == 0
    # time: the float input costs its 4000 elements converted, more than the whole budget
    budget = 1.0 + TIME.extra_order(other) / (TIME.order1(reader) + TIME.order1(other))
    timed = allocate_mixed(rows, budget + 1e-9, act, float_activations=True,
                           whole_layers=True, cost_model=TIME)
    assert "t" not in timed.float_activations and timed.kept["other"][0].numel() == 4
    assert timed.total_bops <= (budget + 1e-9) * timed.base_bops


def test_time_model_raises_low_bit_weights_for_their_bytes():
    """int4 convolution codes run in int8 kernels: raising them to int8 costs their bytes
    only (10 weights x 4 bits more), not the BOPs' doubled compute."""
    w4 = _layer("w4", macs=1000, weights=10, outputs=10, bits_w=4)
    row = MixedLayer(w4, 1e-3, errors8=w4.errors[0] / 300)
    budget = 1.0 + 64 * 10 * 10 * 4 / 8 / TIME.order1(w4) + 1e-9
    alloc = allocate_mixed([row], budget, raise_weights=True, cost_model=TIME)
    assert "w4" in alloc.raised_weights
    assert alloc.raised_weights["w4"]["bops_delta"] == 1000 * 8 * (8 - 4)  # reported in BOPs
    assert not allocate_mixed([row], budget, raise_weights=True).raised_weights  # BOPs: no room


def test_resolve():
    from rexdeploy.planning.cost_models import OPENVINO_CPU, resolve
    from rexdeploy.errors import UserError

    assert resolve("auto", "openvino") == OPENVINO_CPU.name == "openvino-cpu"
    assert resolve("time", "openvino", "CPU") == "openvino-cpu"
    assert resolve("auto", "openvino", "GPU") == "bops"  # no model measured there
    assert resolve("auto", "trt") == resolve("auto", "reference") == "bops"
    assert resolve("bops", "openvino") == "bops"
    assert resolve("openvino-cpu", "openvino") == "openvino-cpu"  # an artifact's resolved name
    # the time model follows the int8 ISA: fitted on pre-VNNI kernels for a CPU without VNNI
    assert resolve("auto", "openvino", "CPU", True) == "openvino-cpu-avx2"
    assert resolve("time", "openvino", "CPU", False) == "openvino-cpu"
    assert resolve("auto", "trt", "GPU", True) == "bops"
    with pytest.raises(UserError, match="no time model"):
        resolve("time", "trt")


def test_layer_sizes_from_the_graph():
    import onnx_ir as ir

    from rexdeploy.planning.analyze import find_layers
    from rexdeploy.frontend import LoadedModel, export_onnx
    from rexdeploy.inputspec import parse_input_specs

    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Flatten(),
                          nn.Linear(8 * 8 * 8, 10)).eval()
    onnx_model, _ = export_onnx(LoadedModel("module", model, "Sequential", ""),
                                parse_input_specs(["x:1x3x16x16"]))
    layers, _ = find_layers(onnx_model)
    conv, dw, fc = layers
    assert (conv.outputs, conv.inputs, conv.weight_array.size) == (8 * 64, 3 * 256, 8 * 27)
    assert (dw.outputs, dw.inputs) == (8 * 64, 8 * 64)
    assert (fc.outputs, fc.inputs) == (10, 512)
    cost = fc.cost(None, 8, 8)
    assert (cost.macs, cost.weights, cost.outputs, cost.inputs) == (5120, 5120, 10, 512)
    assert isinstance(onnx_model, ir.Model)


@pytest.fixture(scope="module")
def budget_builds(tmp_path_factory):
    import rexdeploy
    from rexdeploy.config import BuildConfig, QuantConfig
    from tiny_models import tiny_cnn

    tmp = tmp_path_factory.mktemp("cost")
    model = tiny_cnn()
    out = {}
    for target, cost in (("openvino", "auto"), ("openvino", "bops"), ("reference", "auto")):
        cfg = BuildConfig(quant=QuantConfig(budget=1.2, budget_cost=cost))
        out[target, cost] = rexdeploy.build(model, ["input:1x3x32x32"], target=target,
                                            config=cfg, quiet=True,
                                            output=str(tmp / f"{target}-{cost}"))
    return out


def test_build_records_the_cost_model(budget_builds):
    timed = budget_builds["openvino", "auto"]
    name = "openvino-cpu-avx2" if int8_saturates() else "openvino-cpu"  # the ISA's time model
    with open(timed.file("plan")) as f:
        assert json.load(f)["config"]["budget_cost"] == name
    s = timed.report()["summary"]
    assert 1.0 <= s["cost_ratio"] <= 1.2 + 1e-9
    rows = timed.report()["layers"]
    assert all(r["cost"] >= r["cost_order1"] > r["macs"] * 64 for r in rows)  # + its elements
    from click.testing import CliRunner

    from rexdeploy.cli import cli

    shown = CliRunner().invoke(cli, ["inspect", timed.path]).output
    assert f"budget 1.2 in the {name} time model" in " ".join(shown.split())
    shown = CliRunner().invoke(cli, ["inspect", timed.path, "--layers"]).output
    assert "time x K=1" in shown
    plain = CliRunner().invoke(cli, ["inspect", budget_builds["openvino", "bops"].path,
                                     "--layers"]).output
    assert "time x" not in plain and "GBOPs" in plain
    for key in (("openvino", "bops"), ("reference", "auto")):
        art = budget_builds[key]
        with open(art.file("plan")) as f:
            assert json.load(f)["config"]["budget_cost"] == "bops"
        s = art.report()["summary"]
        assert "cost_ratio" not in s and s["bops_ratio"] <= 1.2 + 1e-9
        assert all("cost" not in r for r in art.report()["layers"])


def test_cli_budget_cost(tmp_path):
    from click.testing import CliRunner

    from rexdeploy.cli import cli

    result = CliRunner().invoke(cli, ["build", "--help"])
    assert "--budget-cost" in result.output
    result = CliRunner().invoke(cli, ["build", "m.onnx", "--budget-cost", "cycles"])
    assert result.exit_code == 2 and "cycles" in result.output


def test_budget_cost_without_a_budget_is_refused():
    from rexdeploy.config import QuantConfig
    from rexdeploy.errors import UserError

    with pytest.raises(UserError, match="no --budget was given"):
        QuantConfig(budget_cost="time", auto_budget=False).validate()  # --budget off
    QuantConfig().validate()  # auto without a budget: nothing to say
    QuantConfig(budget_cost="bops").validate()  # it counts the default budget (--budget auto)


def test_time_budget_without_a_model_is_refused_before_any_work(tmp_path):
    import rexdeploy
    from rexdeploy.config import BuildConfig, QuantConfig
    from rexdeploy.errors import UserError
    from tiny_models import tiny_cnn

    cfg = BuildConfig(quant=QuantConfig(budget=1.2, budget_cost="time"))
    with pytest.raises(UserError, match="no time model is measured for target reference"):
        rexdeploy.build(tiny_cnn(), ["input:1x3x32x32"], target="reference", config=cfg,
                        quiet=True, output=str(tmp_path / "refused"))
    assert not (tmp_path / "refused").exists()


def test_cost_model_file(tmp_path, budget_builds):
    """--budget-cost FILE.json: a model fitted elsewhere (tools/bench/cost_model.py --write),
    checked when read, recorded with its coefficients in plan.json; bad files refused."""
    import rexdeploy
    from rexdeploy.config import BuildConfig, QuantConfig
    from rexdeploy.planning.cost_models import load, resolve
    from rexdeploy.errors import UserError
    from tiny_models import tiny_cnn

    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", "per_weight": 5, "per_output": 10,
                                "per_extra_output": 30, "per_float_input": 10, "min_bits": 8,
                                "fitted": {"cpu": "test"}}))
    assert load(str(path)) == CostModel("mine", 5, 10, 30, 10, 8)
    assert resolve(str(path), "trt") == str(path)  # any target: the user measured it
    cfg = BuildConfig(quant=QuantConfig(budget=1.2, budget_cost=str(path)))
    art = rexdeploy.build(tiny_cnn(), ["input:1x3x32x32"], target="openvino", config=cfg,
                          quiet=True, output=str(tmp_path / "mine.openvino"))
    with open(art.file("plan")) as f:
        recorded = json.load(f)["config"]
    assert recorded["budget_cost"] == str(path)
    assert recorded["budget_cost_model"]["per_extra_output"] == 30
    assert 1.0 <= art.report()["summary"]["cost_ratio"] <= 1.2 + 1e-9
    for text, why in (("{", "cannot read"), ('{"per_weight": -1}', "per_weight"),
                      ('{"speed": 1}', "unknown"), ('{"min_bits": 2.5}', "min_bits"),
                      ("[1, 2]", "not a cost model")):
        bad = tmp_path / f"bad{len(why)}{len(text)}.json"
        bad.write_text(text)
        with pytest.raises(UserError, match=why):
            load(str(bad))
    with pytest.raises(UserError, match="cannot read"):
        resolve(str(tmp_path / "missing.json"), "openvino")


def test_the_fitting_tool_writes_what_build_reads(tmp_path):
    """tools/bench/cost_model.py --write and --budget-cost FILE.json agree on the format."""
    import cost_model as tool  # tools/bench/ is on pytest's pythonpath

    from rexdeploy.planning.cost_models import load

    path = str(tmp_path / "fitted.json")
    tool._write(path, {"per_weight": 15.04, "per_output": 41.0, "per_extra_output": 113.0,
                       "per_float_input": -3.0})  # a negative fit is clipped to 0
    model = load(path)
    assert (model.per_weight, model.per_extra_output, model.per_float_input) == (15.0, 113.0, 0.0)
    assert model.min_bits == 8 and model.name.startswith("openvino-cpu fitted on")
    assert tool._range("input:-1,1") == ("input", -1.0, 1.0)
