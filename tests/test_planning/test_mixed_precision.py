"""Auto mixed precision (issue 6, item 5): data-free per-layer sensitivity, the budget steered by
it, and raised precision (int8 weights, float activations): calib_free math, the measurement on
tiny models built in code, plan/report contents, lowering (ONNX Runtime numerics, OpenVINO
runtime precision) and CLI validation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from calib_free.mixed import FLOAT_BITS, MixedLayer, allocate_mixed, output_nsr
from calib_free.weights.sparse import LayerCost, allocate_budget
from cli_helpers import refused_build


# -- calib_free: the greedy -----------------------------------------------------------------
def _cost(name, channels=8, macs=1000, bits_w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    e1 = torch.rand(channels, generator=g, dtype=torch.float64) + 0.5
    return LayerCost(name, torch.stack([e1, e1 / 200]), macs, bits_w, 8)


def test_output_nsr():
    ref = [torch.ones(4), 2 * torch.ones(2)]
    assert output_nsr(ref, ref) == 0.0
    test = [torch.ones(4) * 1.1, 2 * torch.ones(2)]
    assert output_nsr(ref, test) == pytest.approx(4 * 0.01 / (4 + 8))


def test_sensitivity_sends_the_budget_to_the_sensitive_layer():
    costs = [_cost("a", seed=0), _cost("b", seed=0), _cost("c", seed=0)]
    plain = allocate_budget(costs, 1.35)
    # identical layers: the plain allocator has no reason to prefer one
    assert len({len(plain.kept[n][0]) for n in "abc"}) <= 2
    layers = [MixedLayer(costs[0], 1e-6), MixedLayer(costs[1], 1e-3), MixedLayer(costs[2], 1e-6)]
    alloc = allocate_mixed(layers, 1.35)
    assert len(alloc.kept["b"][0]) == 8  # every channel of the sensitive layer first
    assert len(alloc.kept["b"][0]) > len(alloc.kept["a"][0])
    assert alloc.total_bops <= 1.35 * alloc.base_bops * (1 + 1e-9)


@pytest.mark.parametrize("whole", [False, True])
@pytest.mark.parametrize("budget", [1.0, 1.05, 1.3, 2.0, 3.5])
def test_budget_is_never_exceeded(budget, whole):
    costs = [_cost(f"l{i}", channels=4 + i, macs=500 * (i + 1), bits_w=4, seed=i)
             for i in range(5)]
    layers = [MixedLayer(c, 10.0 ** -(i % 3 + 3), c.errors[0] / 300, f"t{i // 2}")
              for i, c in enumerate(costs)]
    act = {"t0": 1e-4, "t1": 3e-3, "t2": 1e-6}
    alloc = allocate_mixed(layers, budget, act, raise_weights=True, float_activations=True,
                           whole_layers=whole)
    assert alloc.total_bops <= budget * alloc.base_bops * (1 + 1e-9)
    if whole:  # an order covers all of a layer's channels or none
        assert all(len(k) in (0, c.cost.channels) for c in layers for k in alloc.kept[c.cost.name])
    # the reported total is what the choices cost, layer by layer
    total = 0.0
    for layer in layers:
        c = layer.cost
        bw = 8 if c.name in alloc.raised_weights else c.bits_w
        ba = FLOAT_BITS if layer.act in alloc.float_activations else 8
        extra = sum(len(k) for k in alloc.kept[c.name]) / c.channels
        total += c.macs * bw * ba * (1 + extra)
    assert total == pytest.approx(alloc.total_bops)
    for name in alloc.raised_weights:
        assert alloc.kept[name] == []  # int8 weights replace the higher orders
    if budget == 1.0:
        assert not alloc.raised_weights and not alloc.float_activations


def _three_orders(name, channels=8, macs=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    e1 = torch.rand(channels, generator=g, dtype=torch.float64) + 0.5
    return LayerCost(name, torch.stack([e1, e1 / 200, e1 / 40000]), macs, 4, 8)


@pytest.mark.parametrize("whole", [False, True])
def test_a_floor_keeps_its_orders_and_counts_the_budget_from_there(whole):
    costs = [_three_orders(n, seed=i) for i, n in enumerate("abc")]
    layers = [MixedLayer(c, n, None, f"t{i}") for i, (c, n) in
              enumerate(zip(costs, (1e-6, 1e-3, 1e-6)))]
    act = {"t0": 1e-9, "t1": 1e-9, "t2": 1e-2}
    k2 = 3 * 1000 * 4 * 8 * 2  # every layer at K=2: the budget's base
    none = allocate_mixed(layers, 1.0, act, float_activations=True, whole_layers=whole, floor=2)
    assert none.base_bops == pytest.approx(k2) == none.total_bops
    assert all(len(none.kept[n][0]) == 8 and len(none.kept[n][1]) == 0 for n in "abc")
    # room for one layer's third order (+1/6 of the base), not for t2 in float (+3x its 64k)
    alloc = allocate_mixed(layers, 1.2, act, float_activations=True, whole_layers=whole,
                           floor=2)
    assert all(len(alloc.kept[n][0]) == 8 for n in "abc")  # order 2 kept everywhere
    assert len(alloc.kept["b"][1]) == 8 and not alloc.kept["a"][1].numel()  # the sensitive one
    assert not alloc.float_activations
    assert alloc.total_bops <= 1.2 * k2 * (1 + 1e-9)
    wide = allocate_mixed(layers, 2.0, act, float_activations=True, whole_layers=whole, floor=2)
    assert set(wide.float_activations) == {"t2"}  # the activation that hurts most
    # floor 1 is the allocation counted from order 1, as before
    assert allocate_mixed(layers, 1.0, act, floor=1).base_bops == pytest.approx(k2 / 2)
    with pytest.raises(ValueError, match="floor 0"):
        allocate_mixed(layers, 1.0, floor=0)


def test_whole_layers_go_to_the_sensitive_layer():
    costs = [_cost("a", seed=0), _cost("b", seed=0), _cost("c", seed=0)]
    layers = [MixedLayer(costs[0], 1e-6), MixedLayer(costs[1], 1e-3), MixedLayer(costs[2], 1e-6)]
    alloc = allocate_mixed(layers, 1.35, whole_layers=True)  # room for one layer of three
    assert [len(alloc.kept[n][0]) for n in "abc"] == [0, 8, 0]
    assert alloc.total_bops == pytest.approx(4 / 3 * alloc.base_bops)


def test_raise_and_float_activation_go_to_the_worst_layers():
    costs = [_cost(f"l{i}", bits_w=4, seed=i) for i in range(4)]
    # l2's weights hurt most; t3 (read by l3) is the worst activation
    nsr = [1e-6, 1e-6, 1e-2, 1e-6]
    layers = [MixedLayer(c, n, c.errors[0] / 300, f"t{i}") for i, (c, n) in
              enumerate(zip(costs, nsr))]
    act = {"t0": 1e-7, "t1": 1e-7, "t2": 1e-7, "t3": 1e-2}
    # base 4 x 1000 x 4 x 8 BOPs; l2 at int8: +0.25 of it; t3 float: 1000 x 4 x 24 = +0.75
    alloc = allocate_mixed(layers, 2.01, act, raise_weights=True, float_activations=True)
    assert set(alloc.raised_weights) == {"l2"}
    assert set(alloc.float_activations) == {"t3"}
    assert alloc.raised_weights["l2"]["bops_delta"] == pytest.approx(1000 * 8 * (8 - 4))
    assert alloc.float_activations["t3"]["bops_delta"] == pytest.approx(1000 * 4 * (32 - 8))
    none = allocate_mixed(layers, 1.3, act)  # no raise asked: orders only
    assert not none.raised_weights and not none.float_activations


def test_sensitivity_samples_replace_images_only():
    from rexdeploy.planning.sensitivity import SAMPLES, sensitivity_samples

    samples = [{"img": np.zeros((1, 3, 32, 32), np.float32), "ids": np.ones((1, 8), np.int64)}
               for _ in range(6)]
    out, what = sensitivity_samples(samples, {"img": (0.0, 1.0)})
    assert len(out) == SAMPLES and "1/f noise, natural colour" in what  # three channels: RGB
    for feeds in out:
        assert feeds["img"].dtype == np.float32 and feeds["img"].min() >= 0.0
        assert feeds["img"].max() == pytest.approx(1.0) or feeds["img"].min() == pytest.approx(0)
        assert np.array_equal(feeds["ids"], np.ones((1, 8), np.int64))
    assert samples[0]["img"].max() == 0  # the build's own samples are not changed
    # a pixel grid (--preprocess): the noise is made of pixels, so the input's Q/DQ is exact
    step = 1 / 128
    gridded, _ = sensitivity_samples(samples, {"img": (-127 * step, 1.0)}, grids={"img": step})
    for feeds in gridded:
        codes = feeds["img"] / step
        assert np.array_equal(codes, np.round(codes)) and codes.min() >= -127
        assert codes.max() <= 128 and len(np.unique(codes)) > 100
    grey = [{"img": np.zeros((1, 1, 32, 32), np.float32)}]
    assert sensitivity_samples(grey, {})[1] == "synthetic inputs (images: 1/f noise)"
    # what the budget measures on: every second image a dead-leaves image (flat discs, sharp
    # edges), the others 1/f noise
    mixed, what = sensitivity_samples(samples, {"img": (0.0, 1.0)}, edges=True)
    assert "dead leaves" in what
    for i, feeds in enumerate(mixed):
        flat = float((np.diff(feeds["img"], axis=-1) == 0).mean())
        assert (flat > 0.5) if i % 2 else (flat < 0.01), (i, flat)


# -- the measurement on a model with a deliberately damaged layer -----------------------------
class Chain(nn.Module):
    """Four Linear layers; layer `damaged` has one outlier (4x its largest weight) per row, so
    its per-channel rounding zeroes the rest of the row (a large output error)."""

    def __init__(self, damaged: int | None = 2):
        super().__init__()
        torch.manual_seed(0)
        self.fcs = nn.ModuleList(nn.Linear(32, 32) for _ in range(4))
        if damaged is not None:
            with torch.no_grad():
                w = self.fcs[damaged].weight
                w[torch.arange(32), torch.randint(0, 32, (32,))] = 4 * w.abs().max()

    def forward(self, x):
        for i, fc in enumerate(self.fcs):
            x = fc(x)
            if i < 3:
                x = torch.relu(x)
        return x


def _build(model, tmp_path, name, shape="input:1x32", target="reference", **quant):
    import rexdeploy
    from rexdeploy.config import BuildConfig, QuantConfig

    cfg = BuildConfig(quant=QuantConfig(**quant))
    return rexdeploy.build(model, [shape], target=target, config=cfg, quiet=True,
                           output=str(tmp_path / f"{name}.{target}"))


def _gemm_names(report):
    return [r["name"] for r in report["layers"]]


def test_sensitivity_ranks_the_damaged_layer_first(tmp_path):
    art = _build(Chain(2), tmp_path, "ranked", weights="int4", budget=1.1, sensitivity="on")
    rows = art.report()["layers"]
    nsr = [r["sensitivity"]["weights_nsr"] for r in rows]
    assert int(np.argmax(nsr)) == 2, nsr
    assert nsr[2] > 5 * max(nsr[:2] + nsr[3:]), nsr
    assert any("sensitivity of 4 layers" in n for n in art.report()["notes"])


def test_measured_nsr_matches_the_analytic_one(tmp_path):
    """One Linear layer: the weights' NSR is ||x (W1 - W)^T||^2 / ||x W^T + b||^2 over the
    build's first 4 synthetic inputs, W1 the plan's order-1 weights; the input's NSR likewise
    with x fake-quantized at the planned scale."""
    from calib_free.plan import QuantPlan
    from rexdeploy.inputs import synthetic_inputs

    torch.manual_seed(1)
    model = nn.Linear(32, 16).eval()
    art = _build(model, tmp_path, "one", weights="int4", budget=1.1, bias_correction=False,
                 mixed_precision="activations")
    row = art.report()["layers"][0]
    plan = QuantPlan.load(art.path)
    w1 = torch.from_numpy(plan.layers[0].orders[0].dequantize()).double()  # Gemm [out, in]
    w, b = model.weight.detach().double(), model.bias.detach().double()
    xs = [torch.from_numpy(f["input"]).double() for _, f in
          synthetic_inputs([{"name": "input", "shape": [1, 32], "dtype": "float32"}], 4, 0)]
    ref = [x @ w.T + b for x in xs]
    nsr_w = output_nsr(ref, [x @ w1.T + b for x in xs])
    assert row["sensitivity"]["weights_nsr"] == pytest.approx(nsr_w, rel=2e-3)
    act = art.report()["activations"][0]
    scale = act["scale"]
    lo, hi = (0, 255) if act["dtype"] == "uint8" else (-128, 127)
    xq = [torch.clamp(torch.round(x / scale), lo, hi) * scale for x in xs]
    nsr_a = output_nsr(ref, [x @ w.T + b for x in xq])
    assert row["sensitivity"]["activation_nsr"] == pytest.approx(nsr_a, rel=2e-3)


class _SigmoidHead(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc = nn.Linear(32, 16)

    def forward(self, x):
        return torch.sigmoid(self.fc(x) - 6.0)  # a mostly empty map, as a detector's


def test_an_output_through_a_sigmoid_is_measured_on_its_logits(tmp_path):
    """The NSR of a Sigmoid output is that of its input: on a map near 0 the probabilities
    measure only how far noise lifts it."""
    from calib_free.plan import QuantPlan
    from rexdeploy.inputs import synthetic_inputs

    model = _SigmoidHead().eval()
    art = _build(model, tmp_path, "head", weights="int4", budget=1.1, bias_correction=False,
                 mixed_precision="activations")
    w1 = torch.from_numpy(QuantPlan.load(art.path).layers[0].orders[0].dequantize()).double()
    w, b = model.fc.weight.detach().double(), model.fc.bias.detach().double() - 6.0
    xs = [torch.from_numpy(f["input"]).double() for _, f in
          synthetic_inputs([{"name": "input", "shape": [1, 32], "dtype": "float32"}], 4, 0)]
    logits = output_nsr([x @ w.T + b for x in xs], [x @ w1.T + b for x in xs])
    probs = output_nsr([torch.sigmoid(x @ w.T + b) for x in xs],
                       [torch.sigmoid(x @ w1.T + b) for x in xs])
    got = art.report()["layers"][0]["sensitivity"]["weights_nsr"]
    assert got == pytest.approx(logits, rel=2e-3) and got != pytest.approx(probs, rel=0.1)
    assert any("on the logits (" in n and "at its Sigmoid's input" in n
               for n in art.report()["notes"])


def test_measure_at_logits_looks_through_layout_ops_only():
    from onnx import TensorProto, helper

    from rexdeploy.planning.sensitivity import measure_at_logits

    v = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["p"]), helper.make_node("Transpose", ["p"], ["pt"]),
         helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["s", "s"], ["m"]),
         helper.make_node("Relu", ["x"], ["r"])],
        "g", [v("x")], [v("pt"), v("m"), v("r")])
    proto = helper.make_model(graph)
    assert measure_at_logits(proto) == {"pt": ("Softmax", "x")}
    assert [o.name for o in proto.graph.output] == ["x", "m", "r"]
    both = helper.make_model(helper.make_graph(  # the logits are an output too: measured once
        [helper.make_node("Sigmoid", ["x"], ["s"])], "g", [v("x")], [v("x"), v("s")]))
    assert measure_at_logits(both) == {"s": ("Sigmoid", "x")}
    assert [o.name for o in both.graph.output] == ["x"]


def _kept(rep):
    return [(r["kept_fraction"] or [0.0])[0] for r in rep["layers"]]


def test_with_the_signal_the_budget_goes_to_the_damaged_layer(tmp_path):
    """Channel by channel (--sparse-form compact: only kept channels run)."""
    model = Chain(2)
    plain = _build(model, tmp_path, "plain", weights="int4", budget=1.1,
                   sparse_form="compact").report()
    steered = _build(model, tmp_path, "steered", weights="int4", budget=1.1,
                     sensitivity="on", sparse_form="compact").report()
    # 4 equal layers, budget 1.1: 0.4 of one layer's order 2 to spend. The plain allocator
    # spreads it (each layer's own error counts alike); the measured signal puts it all on
    # the damaged layer
    assert _kept(steered)[2] >= 0.35 and _kept(steered)[:2] + _kept(steered)[3:] == [0, 0, 0]
    assert _kept(steered)[2] > 2 * _kept(plain)[2], (_kept(plain), _kept(steered))
    for rep in (plain, steered):
        assert rep["summary"]["bops_ratio"] <= 1.1 + 1e-9


def test_dense_form_budget_buys_whole_layers(tmp_path):
    """The dense zero-row form (the targets' default) runs a whole second branch for one kept
    channel, so the budget buys whole layers: 1.1 buys none of the four equal layers, 1.3 one,
    and the measured signal picks the damaged one."""
    model = Chain(2)
    none = _build(model, tmp_path, "none", weights="int4", budget=1.1).report()
    assert _kept(none) == [0, 0, 0, 0] and none["summary"]["bops_ratio"] == 1.0
    one = _build(model, tmp_path, "one", weights="int4", budget=1.3)  # sensitivity auto: on
    assert _kept(one.report()) == [0, 0, 1, 0]
    assert all("sensitivity" in r for r in one.report()["layers"])
    assert one.config.quant.expansion.sparse_form == "dense"
    assert one.report()["summary"]["bops_ratio"] == pytest.approx(1.25, abs=0.01)


def test_sensitivity_auto_is_on_where_the_budget_buys_whole_layers():
    from rexdeploy.config import QuantConfig

    assert not QuantConfig().uses_sensitivity
    assert QuantConfig(budget=1.25).uses_sensitivity  # dense form: whole layers
    for per_channel in ("compact", "gather"):
        assert not QuantConfig(budget=1.25, sparse_form=per_channel).uses_sensitivity
    assert QuantConfig(budget=1.25, sparse_form="compact",
                       mixed_precision="activations").uses_sensitivity
    assert not QuantConfig(budget=1.25, sensitivity="off").uses_sensitivity
    # where the measurement cannot be used, auto stays off instead of refusing the build
    for quiet in (QuantConfig(budget=1.25, ensemble=2),
                  QuantConfig(budget=1.25, refine="erq", calib="synthetic")):
        assert not quiet.uses_sensitivity
        quiet.validate()


def test_no_budget_no_measurement_and_plain_budget_unchanged(tmp_path):
    model = Chain(2)
    plain = _build(model, tmp_path, "nobudget", weights="int4")
    budget = _build(model, tmp_path, "budget", weights="int4", budget=1.1, sparse_form="compact")
    for art in (plain, budget):
        rep = art.report()
        assert all("sensitivity" not in r and "mixed" not in r for r in rep["layers"])
        assert "mixed_precision" not in rep["summary"]
        with open(art.file("plan")) as f:
            assert "sensitivity" not in json.load(f)["config"]
        assert not any("sensitivity" in n for n in rep["notes"])


# -- raised precision: plan, report, Q/DQ ONNX in ONNX Runtime, OpenVINO runtime precision ------
@pytest.fixture(scope="module")
def mixed_cnn(tmp_path_factory):
    from tiny_models import tiny_cnn

    tmp = tmp_path_factory.mktemp("mixed")
    model = tiny_cnn()
    art = _build(model, tmp, "mixed", shape="input:1x3x32x32", target="openvino",
                 weights="int4", budget=1.25, mixed_precision="all", budget_cost="bops")
    return model, art


@pytest.mark.cpuid_kernels
def test_raised_layers_in_plan_and_report(mixed_cnn):
    _, art = mixed_cnn
    rep = art.report()
    s = rep["summary"]
    assert s["bops_ratio"] <= 1.25 + 1e-9
    raised = [r for r in rep["layers"] if "weights" in r.get("mixed", {})]
    floats = [r for r in rep["layers"] if "activation" in r.get("mixed", {})]
    assert raised and floats  # this seed's budget buys both (rows below check each)
    for r in raised:
        assert r["bits"] == [8] and r["orders"] == 1
        m = r["mixed"]["weights"]
        assert m["from_bits"] == 4 and m["bops_delta"] > 0 and "NSR" in m["why"]
        assert r["bops"] == pytest.approx(r["macs"] * 8 * (32 if "activation" in r["mixed"]
                                                             else 8))
    for r in floats:
        assert r["activation"] is None  # no Q/DQ on its input
        assert r["mixed"]["activation"]["precision"] == "float"
    listed = {m["layer"] for m in s["mixed_precision"]}
    assert listed == {r["name"] for r in raised + floats}
    for r in rep["layers"]:
        if "mixed" not in r:
            assert set(r["bits"]) == {4} and r["activation"] is not None
        assert r["sensitivity"]["weights_nsr"] is not None
    assert sum(r["bops"] for r in rep["layers"]) == pytest.approx(s["bops"])
    assert any(n.startswith("mixed precision: ") for n in rep["notes"])


@pytest.mark.cpuid_kernels
def test_raised_qdq_onnx_runs_in_onnxruntime(mixed_cnn):
    import onnx
    import onnxruntime as ort

    model, art = mixed_cnn
    proto = onnx.load(art.file("onnx"))
    onnx.checker.check_model(proto)
    raised = {r["name"] for r in art.report()["layers"] if "weights" in r.get("mixed", {})}
    for node in proto.graph.node:  # a raised layer reads 8-bit codes (an int8 DQ)
        if node.name in raised:
            dq = next(n for n in proto.graph.node if n.output[0] == node.input[1])
            codes = next(t for t in proto.graph.initializer if t.name == dq.input[0])
            assert codes.data_type == onnx.TensorProto.INT8
            arr = onnx.numpy_helper.to_array(codes)
            assert np.abs(arr).max() > 7  # uses the int8 range, not int4 codes
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(x).numpy()
    out = np.concatenate([sess.run(None, {"input": x[i:i + 1].numpy()})[0] for i in range(4)])
    sqnr = 10 * np.log10((ref ** 2).sum() / ((ref - out) ** 2).sum())
    assert sqnr > 15, sqnr


@pytest.mark.cpuid_kernels
@pytest.mark.openvino
def test_raised_layers_run_int8_in_openvino(mixed_cnn):
    _, art = mixed_cnn
    for r in art.report()["layers"]:
        act_float = "activation" in r.get("mixed", {})
        if not act_float:
            assert r["runs_int8"], r  # int8 kernels, raised (int8) or int4 codes (int8 tensors)
        elif r["op"] == "Conv":
            # documented: a Conv with a float input computes in float on OpenVINO
            assert not r["runs_int8"], r


def test_float_input_of_a_migrated_tensor_runs_unmigrated_weights(tmp_path):
    """A tensor with scale migration (--smooth) kept float: its readers must get the original
    weights back (nothing divides the input by the factor any more)."""
    import onnxruntime as ort

    from tiny_models import tiny_mlp

    model = tiny_mlp()
    art = _build(model, tmp_path, "mlp", shape="input:1x8x32", smooth="all", budget=16.0,
                 mixed_precision="activations")
    floats = [r for r in art.report()["layers"] if "activation" in r.get("mixed", {})]
    assert floats
    plan = art.report()
    x = torch.randn(1, 8, 32)
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(art.file("onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x.numpy()})[0]
    sqnr = 10 * np.log10((ref ** 2).sum() / ((ref - out) ** 2).sum())
    assert sqnr > 30, (sqnr, plan["summary"]["mixed_precision"])


# -- validation -----------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (["--mixed-precision", "all"], "no --budget was given"),
    (["--sensitivity", "on"], "no --budget was given"),
    (["--budget", "1.1", "--mixed-precision", "weights"], "int8 already"),
    (["--budget", "1.1", "--weights", "int4", "--activations", "none",
      "--mixed-precision", "activations"], "--activations is none"),
    (["--budget", "1.1", "--mixed-precision", "all", "--sensitivity", "off"],
     "--sensitivity off"),
    (["--budget", "1.1", "--ensemble", "2", "--sensitivity", "on"], "--ensemble"),
    (["--budget", "1.1", "--mixed-precision", "all", "--activations", "none"],
     "nothing to raise"),
])
def test_impossible_combinations(cnn_file, tmp_path, args, message):
    output = refused_build(cnn_file, tmp_path / "never", args)
    assert re.search(re.escape(message), output.replace("\n", " ")), output


def test_help_documents_the_options():
    from click.testing import CliRunner

    from rexdeploy.cli import cli

    out = CliRunner().invoke(cli, ["build", "--help"]).output
    assert "--mixed-precision" in out and "--sensitivity" in out
