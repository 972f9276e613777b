"""--budget auto, the default: a build with int8 activations for OpenVINO CPU spends AUTO_BUDGET
with --mixed-precision activations (the few activations that hurt most stay float, each listed
with its reason); with --orders K every layer keeps K orders and the budget counts from there; a
build that chose its own cost or one for a target without a measured time model gets none;
--budget off is exactly --orders with every activation int8."""

import json

import pytest

import rexdeploy
from rexdeploy.config import AUTO_BUDGET, BuildConfig, QuantConfig
from rexdeploy.errors import UserError
from rexdeploy.resolve import for_target
from tiny_models import tiny_cnn


def _resolved(target="openvino", **quant):
    return for_target(BuildConfig(quant=QuantConfig(**quant)), ["x:1x3x8x8"], target).config.quant


def test_the_default_budget_goes_to_plain_w8a8_builds_for_openvino_cpu():
    q = _resolved()
    assert (q.budget, q.mixed_precision, q.auto_budget) == (AUTO_BUDGET, "activations", True)
    assert q.dynamic_quantization == 0  # a float-input MatMul stays float on the device
    assert _resolved(dynamic_quantization=32).dynamic_quantization == 32
    assert _resolved(budget=1.5, mixed_precision="all").dynamic_quantization == 0
    assert _resolved(budget=1.5).dynamic_quantization is None  # no float inputs
    assert _resolved(weights="int4", budget=1.5, mixed_precision="all").dynamic_quantization \
        is None  # 4-bit MatMuls run compressed with int8 activations: the runtime's choice
    assert _resolved("trt", budget=1.5, mixed_precision="all").dynamic_quantization is None
    assert q.budget_cost.startswith("openvino-cpu")  # the time model of this host's ISA
    assert for_target(BuildConfig(quant=q), (), "openvino").config.quant == q  # idempotent
    for target in ("reference", "trt"):  # no measured time model: no default budget
        q = _resolved(target)
        assert q.budget is None and not q.auto_budget and q.mixed_precision == "off"
    chose = [dict(auto_budget=False), dict(budget=1.25), dict(sparsity=0.5, orders=2),
             dict(activations="none"), dict(mixed_precision="all", budget=1.5),
             dict(ensemble=2), dict(sensitivity="off"), dict(operator="power")]
    for quant in chose:
        q = _resolved(**quant)
        assert not q.auto_budget and q.budget == quant.get("budget"), quant
        assert q.mixed_precision == quant.get("mixed_precision", "off"), quant


def test_the_default_budget_counts_from_the_orders_asked():
    for orders in (2, 3, 4):
        q = _resolved(orders=orders)
        assert (q.budget, q.budget_from, q.mixed_precision) == (AUTO_BUDGET, orders,
                                                                "activations")
        assert q.max_orders == min(orders + 1, 4)  # the 5 % may buy order K + 1
        assert for_target(BuildConfig(quant=q), (), "openvino").config.quant == q
    q = _resolved(weights="int4")  # 4-bit weights, int8 activations: the default too
    assert (q.budget, q.budget_from, q.dynamic_quantization) == (AUTO_BUDGET, 1, None)
    q = _resolved(weights="int4", orders=2, auto_budget=False)
    assert q.budget is None and q.max_orders == 2
    assert _resolved("trt", orders=2).budget is None
    with pytest.raises(UserError, match="budget_from 2"):
        QuantConfig(orders=2, budget_from=2).validate()  # no budget to count
    with pytest.raises(UserError, match=r"1\.\.--orders"):
        QuantConfig(orders=2, budget_from=3, budget=1.1, mixed_precision="activations").validate()


def test_budget_cost_names_what_the_default_budget_counts():
    assert _resolved(budget_cost="bops").budget_cost == "bops"
    with pytest.raises(UserError, match="this build spends none"):
        _resolved("trt", budget_cost="bops")


def test_an_artifact_from_before_the_default_budget_reads_without_it():
    old = QuantConfig().to_dict()
    del old["expansion"]["auto_budget"]
    assert not QuantConfig.from_dict(old).auto_budget
    assert QuantConfig.from_dict(QuantConfig().to_dict()).auto_budget


def test_cli_budget_takes_auto_off_or_a_number(tmp_path):
    from click.testing import CliRunner

    from rexdeploy.cli import cli
    from rexdeploy.cli.build import build_config

    help_text = " ".join(CliRunner().invoke(cli, ["build", "--help"]).output.split())
    assert "[auto|off|X]" in help_text and "gets 1.05 with" in help_text
    result = CliRunner().invoke(cli, ["build", "m.onnx", "--budget", "lots"])
    assert result.exit_code == 2 and "'lots'" in result.output and "auto or off" in result.output
    ctx = cli.commands["build"].make_context("build", ["m.onnx", "--budget", "off"])
    assert not build_config(ctx.params).quant.auto_budget
    ctx = cli.commands["build"].make_context("build", ["m.onnx", "--budget", "1.25"])
    q = build_config(ctx.params).quant
    assert q.budget == 1.25 and not q.auto_budget
    ctx = cli.commands["build"].make_context("build", ["m.onnx"])
    q = build_config(ctx.params).quant
    assert q.budget is None and q.auto_budget


@pytest.mark.openvino
def test_a_default_build_keeps_what_hurts_float_and_says_so(tmp_path):
    model = tiny_cnn()
    auto = rexdeploy.build(model, ["input:1x3x32x32"], output=str(tmp_path / "auto"),
                           quiet=True)
    off = rexdeploy.build(model, ["input:1x3x32x32"], output=str(tmp_path / "off"), quiet=True,
                          config=BuildConfig(quant=QuantConfig(auto_budget=False)))
    with open(auto.file("plan")) as f:
        plan = json.load(f)["config"]
    assert plan["budget"] == AUTO_BUDGET and plan["mixed_precision"] == "activations"
    s, s_off = auto.report()["summary"], off.report()["summary"]
    assert s_off["bops_ratio"] == 1.0 and "cost_ratio" not in s_off
    assert 1.0 <= s["cost_ratio"] <= AUTO_BUDGET + 1e-9
    kept = [r for r in auto.report()["layers"] if "activation" in (r.get("mixed") or {})]
    assert kept and all(r["activation"] is None for r in kept)
    assert any(n.startswith("mixed precision:") for n in auto.report()["notes"])
    assert not any(n.startswith("mixed precision") for n in off.report()["notes"])
    db = {k: min(o["reference_db"] for o in a.report()["device_check"]["outputs"].values())
          for k, a in (("auto", auto), ("off", off))}
    assert db["auto"] > db["off"], db  # what it keeps float is what the output loses most to
    from rexdeploy.render import build_table
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(build_table(auto))
    assert "budget 1.05 (the default: --budget auto)" in console.export_text()


@pytest.mark.openvino
def test_a_default_k2_build_keeps_k2_and_spends_the_budget_above_it(tmp_path):
    model = tiny_cnn()
    auto = rexdeploy.build(model, ["input:1x3x32x32"], output=str(tmp_path / "auto"),
                           quiet=True, config=BuildConfig(quant=QuantConfig(orders=2)))
    off = rexdeploy.build(model, ["input:1x3x32x32"], output=str(tmp_path / "off"), quiet=True,
                          config=BuildConfig(quant=QuantConfig(orders=2, auto_budget=False)))
    with open(auto.file("plan")) as f:
        plan = json.load(f)["config"]
    assert (plan["budget"], plan["budget_from"], plan["orders"]) == (AUTO_BUDGET, 2, 3)
    layers = auto.report()["layers"]
    assert all(r["orders"] >= 2 for r in layers if r.get("macs"))  # K=2 everywhere, as asked
    up = sum(r["orders"] == 3 for r in layers)
    assert any(n.startswith(f"REx orders: every layer keeps K=2; the budget gave order 3 to {up} "
                            f"of {len(layers)} layers") for n in auto.report()["notes"])
    s, s_off = auto.report()["summary"], off.report()["summary"]
    assert s_off["bops_ratio"] == 2.0 and s["bops_ratio"] >= 2.0
    db = {k: min(o["reference_db"] for o in a.report()["device_check"]["outputs"].values())
          for k, a in (("auto", auto), ("off", off))}
    assert db["auto"] > db["off"], db
    from rexdeploy.render import build_table
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(build_table(auto))
    assert "K=2..3, budget 1.05 over K=2 (the default: --budget auto)" in console.export_text()


@pytest.mark.openvino
@pytest.mark.cpuid_kernels  # the 4-bit MatMuls run OpenVINO's compressed-weight kernel
def test_a_4bit_default_build_keeps_matmul_inputs_int8(tmp_path):
    """OpenVINO's compressed-weight kernel runs every 4-bit MatMul and quantizes a float input
    again by its dynamic quantization: the default budget keeps those inputs int8, so that the
    device runs what the reference does."""
    from tiny_models import tiny_mlp

    def build(name, **quant):
        return rexdeploy.build(tiny_mlp(), ["x:1x8x32"], output=str(tmp_path / name),
                               quiet=True, config=BuildConfig(quant=QuantConfig(**quant)))

    art = build("w4", weights="int4")
    with open(art.file("plan")) as f:
        plan = json.load(f)["config"]
    assert plan["budget"] == AUTO_BUDGET and plan["mixed_precision"] == "activations"
    wide = dict(budget=4.0, mixed_precision="activations")  # room for every float input
    for a in (art, build("w4_wide", weights="int4", **wide)):
        for r in a.report()["layers"]:
            assert "activation" not in (r.get("mixed") or {}), r["name"]
            assert r["activation"] is not None, r["name"]  # every MatMul input int8
    w8 = build("w8_wide", **wide)  # int8 weights: no runtime requantization, floats allowed
    assert any("activation" in (r.get("mixed") or {}) for r in w8.report()["layers"])
    w8 = build("w8_dq", dynamic_quantization=32, **wide)  # the user's: the runtime requantizes
    assert all("activation" not in (r.get("mixed") or {}) for r in w8.report()["layers"])
