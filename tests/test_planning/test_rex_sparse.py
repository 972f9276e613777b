"""Group-sparse REx orders, the BOPs budget and the layer-partition ensemble (issue 3):
calib_free math, lowering forms (golden summaries, ONNX Runtime numerics, OpenVINO runtime
precision), build reports and CLI validation."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from calib_free.plan import LayerPlan, QuantPlan, WeightOrder
from calib_free.weights.ensemble import combine_weights, partition_layers
from calib_free.weights.expansion import expand_uniform
from calib_free.weights.quantizer import dequantize
from calib_free.weights.sparse import (LayerCost, allocate_budget, channel_errors, keep_count,
                                       uniform_channels)
from cli_helpers import refused_build
from lowering_helpers import (check_golden, cnn_fixture, cnn_inputs_fixture,  # noqa: F401
                              make_plan, mlp_fixture, mlp_inputs_fixture, run_ort, sqnr_db)
from rexdeploy.lower import lower, summarize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EFFNET = os.path.join(ROOT, ".cache", "models", "efficientnet_lite0.pt")


# -- the expansion bound, ternary included, on random and real weights ---------------------------
def _bound_holds(w: torch.Tensor, bits: int, k: int) -> bool:
    orders = expand_uniform(w, bits, k)
    approx = sum(dequantize(c, s).double() for c, s in orders)
    err = (w.double() - approx).abs().flatten(1).amax(dim=1)
    top = w.double().abs().flatten(1).amax(dim=1)
    slack = 4 * 1.2e-7 * top / (2 ** bits - 2) ** (k - 1)
    return bool((err <= top / (2 ** bits - 2) ** k + slack).all())


@pytest.mark.parametrize("k", [1, 2, 3])
def test_ternary_bound(k):
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(k))
    assert _bound_holds(w, 2, k)


@pytest.mark.skipif(not os.path.exists(EFFNET), reason="EfficientNet-Lite0 not fetched "
                    "(tools/fetch_example.py)")
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_bound_on_real_weights(bits):
    model = torch.jit.load(EFFNET)
    weights = [p for n, p in model.named_parameters() if p.ndim == 4][:12]
    for w in weights:
        for k in (1, 2, 3):
            assert _bound_holds(w.detach().float(), bits, k)


# -- channel selection and the budget ---------------------------------------------------------
def test_channel_errors_weighting():
    w = torch.randn(4, 3)
    w_hat = torch.zeros(4, 3)
    plain = channel_errors(w, w_hat, out_axis=0)
    torch.testing.assert_close(plain, w.double().square().sum(1))
    power = torch.tensor([1.0, 0.0, 4.0])
    weighted = channel_errors(w, w_hat, 0, power, in_axis=1)
    torch.testing.assert_close(weighted, (w.double().square() * power.double()).sum(1))
    # MatMul layout [Cin, Cout]: out axis 1
    torch.testing.assert_close(channel_errors(w.T, w_hat.T, 1, power, in_axis=0), weighted)
    # depthwise [C, 1, k, k] with per-channel input power: channel i reads input i only
    dw = torch.randn(3, 1, 2, 2)
    got = channel_errors(dw, torch.zeros_like(dw), 0, power, in_axis=1, groups=3)
    torch.testing.assert_close(got, dw.double().square().sum((1, 2, 3)) * power.double())


def test_uniform_channels_are_nested_and_largest():
    e1 = torch.tensor([5.0, 1.0, 9.0, 3.0, 7.0, 0.5, 2.0, 8.0])
    e2 = torch.tensor([0.1, 0.0, 0.2, 0.0, 0.9, 0.0, 0.0, 0.3])
    kept2, kept3 = uniform_channels([e1, e2], 0.5)
    assert kept2.tolist() == [0, 2, 4, 7]  # the four largest e1
    assert kept3.tolist() == [0, 2, 4, 7]  # every order covers gamma of the channels, nested
    kept2, kept3 = uniform_channels([e1, e2], 0.25)
    assert kept2.tolist() == [2, 7] and kept3.tolist() == [2, 7]
    (only,) = uniform_channels([e2], 0.25)
    assert only.tolist() == [4, 7]  # the largest residuals
    assert keep_count(0.01, 8) == 1 and keep_count(1.0, 8) == 8


def _cost(name, errors, macs=1000):
    return LayerCost(name, torch.tensor(errors, dtype=torch.float64), macs, 8, 8)


def test_budget_goes_where_the_error_is():
    # order 2 removes 99 % of one layer's error, 10 % of the other's; and within a layer it
    # goes to the channel holding most of the error
    helped = _cost("helped", [[1.0, 9.0], [0.01, 0.09]])
    stubborn = _cost("stubborn", [[10.0, 10.0], [9.0, 9.0]])
    alloc = allocate_budget([stubborn, helped], 1.25)  # room for one channel of one layer
    assert alloc.kept["helped"][0].tolist() == [1]
    assert alloc.kept["stubborn"][0].numel() == 0
    assert alloc.total_bops <= 1.25 * alloc.base_bops + 1e-9


def test_budget_per_bop_prefers_cheap_channels():
    # Same error drop; the cheap layer (10x fewer MACs) gives 10x more per BOP.
    heavy = _cost("heavy", [[1.0] * 4, [0.0] * 4], macs=10000)
    cheap = _cost("cheap", [[1.0] * 4, [0.0] * 4], macs=1000)
    alloc = allocate_budget([heavy, cheap], 1.0 + 1000 / 11000)
    assert alloc.kept["cheap"][0].numel() == 4 and alloc.kept["heavy"][0].numel() == 0


@pytest.mark.parametrize("budget", [1.0, 1.1, 1.5, 2.0, 3.0])
def test_budget_is_respected_and_monotone(budget):
    g = torch.Generator().manual_seed(0)
    layers = []
    for i in range(5):
        e1 = torch.rand(16, generator=g, dtype=torch.float64) * (i + 1)
        e2 = e1 * torch.rand(16, generator=g, dtype=torch.float64) * 0.01
        e3 = e2 * 0.01
        layers.append(LayerCost(f"l{i}", torch.stack([e1, e2, e3]), int(1000 * (i + 1)), 8, 8))
    alloc = allocate_budget(layers, budget)
    assert alloc.total_bops <= budget * alloc.base_bops * (1 + 1e-12)
    for kept in alloc.kept.values():  # order 3 only where order 2 is
        assert set(kept[1].tolist()) <= set(kept[0].tolist())
    if budget == 1.0:
        assert all(k.numel() == 0 for ks in alloc.kept.values() for k in ks)
    if budget == 3.0:  # everything fits
        assert all(k.numel() == 16 for ks in alloc.kept.values() for k in ks)
    smaller = allocate_budget(layers, max(1.0, budget - 0.1))
    assert smaller.total_bops <= alloc.total_bops


@pytest.mark.parametrize("budget", [1.0, 1.1, 1.5, 2.0, 3.0])
def test_whole_layer_budget(budget):
    """whole_layers: each order is all of a layer's channels or none, the budget holds and
    counts whole layers, order 3 only on layers with order 2."""
    g = torch.Generator().manual_seed(0)
    layers = []
    for i in range(5):
        e1 = torch.rand(16, generator=g, dtype=torch.float64) * (i + 1)
        e2 = e1 * torch.rand(16, generator=g, dtype=torch.float64) * 0.01
        layers.append(LayerCost(f"l{i}", torch.stack([e1, e2, e2 * 0.01]), 1000 * (i + 1), 8, 8))
    alloc = allocate_budget(layers, budget, whole_layers=True)
    assert alloc.total_bops <= budget * alloc.base_bops * (1 + 1e-12)
    for kept in alloc.kept.values():
        assert all(k.tolist() in ([], list(range(16))) for k in kept)
        assert len(kept[1]) <= len(kept[0])
    spent = sum(l.bops * (1 + sum(len(k) > 0 for k in alloc.kept[l.name])) for l in layers)
    assert spent == pytest.approx(alloc.total_bops)
    if budget == 3.0:
        assert all(len(k) == 16 for ks in alloc.kept.values() for k in ks)
    if budget == 1.0:
        assert all(len(k) == 0 for ks in alloc.kept.values() for k in ks)


def test_whole_layer_budget_per_bop_prefers_the_cheap_layer():
    heavy = _cost("heavy", [[1.0] * 4, [0.0] * 4], macs=10000)
    cheap = _cost("cheap", [[1.0] * 4, [0.0] * 4], macs=1000)
    alloc = allocate_budget([heavy, cheap], 1.0 + 1000 / 11000, whole_layers=True)
    assert alloc.kept["cheap"][0].numel() == 4 and alloc.kept["heavy"][0].numel() == 0
    # a part of a layer is never bought: just under the cheap layer's cost buys nothing
    assert allocate_budget([heavy, cheap], 1.0 + 999 / 11000, whole_layers=True).total_bops \
        == pytest.approx(11000 * 64)


def test_budget_below_one_is_refused():
    with pytest.raises(ValueError):
        allocate_budget([], 0.5)


# -- ensemble partition -----------------------------------------------------------------------
def test_combine_weights():
    assert combine_weights(2) == [-1.0, 1.0, 1.0]
    assert combine_weights(3) == [-2.0, 1.0, 1.0, 1.0]
    assert sum(combine_weights(4)) == 1.0  # a constant output is reproduced


def test_partitions():
    bops = [4.0, 1.0, 1.0, 1.0, 1.0, 4.0]
    sens = [0.1, 9.0, 8.0, 0.2, 0.3, 0.1]
    balanced = partition_layers(bops, sens, 2, "balanced")
    assert balanced[1] != balanced[2]  # the two most sensitive layers in different members
    loads = [sum(b for b, g in zip(bops, balanced) if g == m) for m in range(2)]
    assert max(loads) - min(loads) <= 2.0
    contiguous = partition_layers(bops, sens, 2, "contiguous")
    assert contiguous == sorted(contiguous) and set(contiguous) == {0, 1}
    by_bops = partition_layers(bops, sens, 2, "bops")
    assert by_bops[0] != by_bops[5]


# -- lowering: golden summaries and numerics of the sparse forms ---------------------------------
def sparsify(plan: QuantPlan, fraction: float) -> QuantPlan:
    """Orders >= 2 kept on the `fraction` of channels with the largest residual after the
    previous orders (the dense plan's codes zeroed elsewhere)."""
    rows = []
    for lp in plan.layers:
        axis = lp.orders[0].axis
        errors, approx = [], 0
        for o in lp.orders[:-1]:
            approx = approx + o.dequantize()
            residual = sum(x.dequantize() for x in lp.orders) - approx
            others = tuple(i for i in range(residual.ndim) if i != axis)
            errors.append(torch.from_numpy((residual.astype(np.float64) ** 2).sum(others)))
        kept = uniform_channels(errors, fraction)
        orders = [lp.orders[0]]
        for o, idx in zip(lp.orders[1:], kept):
            mask = np.zeros(o.codes.shape[axis], bool)
            mask[idx.numpy()] = True
            shape = [1] * o.codes.ndim
            shape[axis] = -1
            codes = np.where(mask.reshape(shape), o.codes, 0).astype(np.int8)
            orders.append(WeightOrder(codes, o.scale, o.bits, axis, o.block_size,
                                      idx.numpy().astype(np.int64)))
        rows.append(LayerPlan(lp.name, lp.op, lp.weight, lp.input, tuple(orders), lp.bias_shift))
    return QuantPlan(tuple(rows), plan.activations, plan.skipped)


@pytest.mark.parametrize("which", ["cnn", "mlp"])
@pytest.mark.parametrize("form", ["dense", "compact", "gather"])
def test_golden_sparse_summary(which, form, request):
    model = request.getfixturevalue(which)
    inputs = request.getfixturevalue(f"{which}_inputs")
    plan = sparsify(make_plan(model, inputs, orders=3, bits=4), 0.25)
    check_golden(f"lower_tiny_{which}_k3_sparse_{form}.json",
                 summarize(lower(model, plan, sparse_form=form)))


def test_golden_k3_summary(cnn, cnn_inputs):
    check_golden("lower_tiny_cnn_k3.json", summarize(lower(cnn, make_plan(cnn, cnn_inputs,
                                                                          orders=3))))


@pytest.mark.parametrize("which", ["cnn", "mlp"])
def test_sparse_forms_compute_the_same(which, request):
    model = request.getfixturevalue(which)
    inputs = request.getfixturevalue(f"{which}_inputs")
    plan = sparsify(make_plan(model, inputs, orders=2, bits=4), 0.25)
    outs = {form: run_ort(lower(model, plan, sparse_form=form), inputs[0])
            for form in ("dense", "compact", "gather")}
    assert sqnr_db(outs["dense"], outs["compact"]) > 90
    assert sqnr_db(outs["dense"], outs["gather"]) > 90
    assert sqnr_db(outs["dense"], run_ort(lower(model, make_plan(model, inputs, orders=1,
                                                                  bits=4)), inputs[0])) < 60


def test_compact_branches_have_fewer_filters(cnn, cnn_inputs):
    plan = sparsify(make_plan(cnn, cnn_inputs, orders=2), 0.25)
    lowered = lower(cnn, plan, sparse_form="compact")
    from rexdeploy.passes.qdq_nodes import branches, const_array

    for lp in plan.layers:
        first, second = branches(lowered.graph, lp.name)
        kept = len(lp.orders[1].channels)
        codes = const_array(second.inputs[1].producer().inputs[0])
        assert codes.shape[lp.orders[1].axis] == kept
        assert codes.size == lp.orders[1].codes.size // lp.orders[1].codes.shape[
            lp.orders[1].axis] * kept
        if lp.op == "Conv" and first.attributes.get_int("group", 1) > 1:
            assert second.attributes.get_int("group") == kept
            assert second.inputs[0].producer().op_type == "Gather"


# -- end to end: build reports, OpenVINO runtime precision, the ensemble ------------------------
def _build(path, tmp_path, target="openvino", **quant):
    import rexdeploy
    from rexdeploy.config import BuildConfig, QuantConfig

    cfg = BuildConfig(quant=QuantConfig(**quant))
    name = "_".join(f"{k}{v}" for k, v in quant.items()) or "plain"
    return rexdeploy.build(path, ["input:1x3x32x32"], target=target, config=cfg, quiet=True,
                           output=str(tmp_path / f"{name}.{target}"))


@pytest.mark.openvino
@pytest.mark.parametrize("form", ["dense", "compact", "gather"])
def test_every_sparse_branch_runs_int8_in_openvino(cnn_file, tmp_path, form):
    art = _build(cnn_file, tmp_path, orders=2, sparsity=0.25, sparse_form=form)
    report = art.report()
    for row in report["layers"]:
        assert row["orders"] == 2 and row["runs_int8"], row
        assert len(row["runtime"]) >= 2  # order 1 and the sparse order, both int8
        assert 0 < row["kept_fraction"][0] <= 0.3
    assert report["summary"]["bops_ratio"] == pytest.approx(1.25, abs=0.1)


def test_report_lists_orders_gamma_bops_and_errors(cnn_file, tmp_path):
    art = _build(cnn_file, tmp_path, target="reference", weights="int4", budget=1.3)
    report = art.report()
    s = report["summary"]
    assert 1.0 < s["bops_ratio"] <= 1.3
    expanded = [r for r in report["layers"] if r["orders"] > 1]
    assert expanded
    for row in report["layers"]:
        assert row["bops"] > 0 and row["weight_error_order1"] and row["weight_error"]
        if row["orders"] > 1:
            assert row["weight_error"]["rel_l2"] < row["weight_error_order1"]["rel_l2"]
            assert len(row["kept_fraction"]) == row["orders"] - 1


@pytest.mark.parametrize("form", ["dense", "compact"])
def test_a_partly_kept_order_in_the_dense_form_says_what_runs(cnn_file, tmp_path, form):
    art = _build(cnn_file, tmp_path, target="reference", orders=2, sparsity=0.25,
                 sparse_form=form)
    notes = [n for n in art.report()["notes"] if "runs for every channel" in n]
    assert art.report()["summary"]["bops_ratio"] == pytest.approx(1.25, abs=0.1)
    if form == "compact":
        assert not notes
    else:  # every layer has a second order on a quarter of its channels: the dense form runs 2x
        assert len(notes) == 1 and "2.00x the order-1 bit-operations run" in notes[0], notes


def _linear_net():
    from torch import nn

    class Linear(nn.Module):  # no nonlinearity: conv -> conv -> (parallel) conv + conv
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            return self.a(x) + self.b(x)

    torch.manual_seed(0)
    return Linear().eval()


def test_ensemble_reproduces_the_exact_expansion_without_nonlinearities(tmp_path):
    """Branches in parallel, no activation quantization: the first-order combine rule is exact."""
    from rexdeploy.api import artifact_runner

    path = str(tmp_path / "linear.pt")
    torch.jit.save(torch.jit.trace(_linear_net(), torch.randn(1, 3, 32, 32)), path)
    common = dict(weights="int4", activations="none", bias_correction=False)
    exact = _build(path, tmp_path, target="reference", orders=2, **common)
    ens = _build(path, tmp_path, target="reference", ensemble=2, **common)
    base = _build(path, tmp_path, target="reference", **common)
    members = ens.manifest["ensemble"]["members"]
    assert [m["weight"] for m in members] == [-1.0, 1.0, 1.0]
    assert sorted(len(m["layers"]) for m in members[1:]) == [1, 1]
    x = {"input": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    outs = {}
    for name, art in (("exact", exact), ("ensemble", ens), ("base", base)):
        with artifact_runner(art) as r:
            outs[name] = next(iter(r.infer(x).values()))
    assert sqnr_db(outs["exact"], outs["ensemble"]) > 100
    assert sqnr_db(outs["exact"], outs["base"]) < 60


@pytest.mark.cpuid_kernels
@pytest.mark.openvino
def test_ensemble_artifact_compares_and_profiles(cnn_file, tmp_path):
    import rexdeploy

    rtn = _build(cnn_file, tmp_path, weights="int4")
    exact = _build(cnn_file, tmp_path, weights="int4", orders=2)
    ens = _build(cnn_file, tmp_path, weights="int4", ensemble=2)
    report = ens.report()
    assert [e["name"] for e in report["ensemble"]] == ["base", "member1", "member2"]
    # an ensemble's manifest keeps each stage's CPU time too (it recorded none before)
    assert ens.manifest["stage_cpu_seconds"].keys() == ens.manifest["stage_seconds"].keys()
    assert ens.manifest["stage_cpu_seconds"]["compile"] > 0
    for e in report["ensemble"]:
        assert e["runtime_int8_layers"] >= 0.8 * e["runtime_compute_layers"]
    sq = {name: rexdeploy.compare(a.path, synthetic=6, quiet=True)["sqnr_db"]
          for name, a in (("rtn", rtn), ("exact", exact), ("ensemble", ens))}
    assert sq["rtn"] < sq["ensemble"] <= sq["exact"] + 1.0, sq
    prof = rexdeploy.profile(ens.path, duration=0.2, rounds=1, baselines=False, quiet=True)
    assert prof["variants"][0]["latency_ms"]["median"] > 0


# -- CLI validation ---------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--sparsity", "0.25"], "--orders is 1"),
    (["--orders", "2", "--sparsity", "1.5"], "must be in \\(0, 1\\]"),
    (["--orders", "2", "--sparsity", "0.25", "--budget", "1.2"], "not both"),
    (["--budget", "0.5"], "from 1"),
    (["--ensemble", "1"], "must be 2"),
    (["--ensemble", "2", "--orders", "3"], "cannot be combined"),
])
def test_impossible_combinations(cnn_file, tmp_path, args, message):
    output = refused_build(cnn_file, tmp_path / "never", args)
    assert re.search(message, output), output


def test_truncating_orders_keeps_a_refined_bias_shift(cnn, cnn_inputs):
    """An ensemble's base truncates K=2 layers to order 1. Plain plan: the shift becomes the
    data-free correction of the kept order (as recomputing it would give). Refined plan (ERQ
    solves the shift on its calibration data, an extra component R): R survives truncation
    (it used to be replaced by the data-free correction)."""
    from dataclasses import replace as dc_replace

    from rexdeploy.planning.analyze import find_layers
    from rexdeploy.planning.quantize import _bias_shift, truncate_layer

    plan = make_plan(cnn, cnn_inputs, orders=2, bits=4)
    infos = {info.name: info for info in find_layers(cnn)[0]}
    rng = np.random.default_rng(0)
    checked = 0
    for lp in plan.layers:
        info = infos[lp.name]
        if len(lp.orders) < 2 or info.groups != 1:
            continue
        mean = rng.standard_normal(info.in_channels)
        w = torch.from_numpy(np.ascontiguousarray(info.weight_array, np.float32))
        full = sum(torch.from_numpy(o.dequantize()) for o in lp.orders)
        plain = dc_replace(lp, bias_shift=_bias_shift(info, full - w, mean))
        kept_only = _bias_shift(info, torch.from_numpy(lp.orders[0].dequantize()) - w, mean)
        np.testing.assert_allclose(truncate_layer(plain, info, 1, mean).bias_shift, kept_only,
                                   rtol=1e-4, atol=1e-5)
        extra = rng.standard_normal(plain.bias_shift.shape).astype(np.float32)
        refined = dc_replace(lp, bias_shift=plain.bias_shift + extra)
        np.testing.assert_allclose(truncate_layer(refined, info, 1, mean).bias_shift,
                                   kept_only + extra, rtol=1e-4, atol=1e-5)
        checked += 1
    assert checked >= 3
