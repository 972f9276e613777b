"""Sequential reconstruction (--refine-inputs quantized, rexdeploy/planning/refine_sequential.py),
the
row reduction it relies on, and --refine combined with scale migration. Tiny models, reference
(ONNX Runtime) target."""

import numpy as np
import onnx_ir as ir
import pytest
import torch
from torch import nn

from calib_free.plan import QuantPlan
from calib_free.refine.reconstruction import layer_data, output_error
from refine_helpers import build, outlier_calib_data, outputs, sqnr
from rexdeploy.config import QuantConfig
from rexdeploy.errors import UserError

MLP_IN = ["x:1x8x32"]


def _deep_mlp():
    """Four Linear layers (MatMul + Add) with GELU between: three levels of upstream error."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(),
                         nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 16)).eval()


@pytest.fixture(scope="module")
def deep_data(tmp_path_factory):
    """16 calibration inputs (.npz, a few large channels), their feeds and float outputs."""
    return outlier_calib_data(_deep_mlp, 16, tmp_path_factory.mktemp("calib") / "deep.npz")


def test_reduced_rows_are_d_plus_one_and_exact_for_inputs_of_another_model():
    """x (float model) and xq (quantized model: a different input, not x's fake-quant): the
    error kept in D + 1 rows plus a constant equals the direct one for any delta and shift."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 500, 24, generator=g)
    xq = x + 0.3 * torch.randn(2, 500, 24, generator=g)
    w = torch.randn(2, 40, 24, generator=g)
    data = layer_data(x, xq, w)
    assert data.m.shape == (2, 25, 24 + 1 + 40) and data.residual > 0
    for seed in range(3):
        gs = torch.Generator().manual_seed(seed)
        delta = 0.1 * torch.randn(2, 40, 24, generator=gs, dtype=torch.float64)
        shift = torch.randn(2, 40, generator=gs, dtype=torch.float64)
        w_hat = w.double() - delta
        direct = (x.double() @ w.double().transpose(-1, -2)
                  - (xq.double() @ w_hat.transpose(-1, -2) - shift[:, None, :])).square().sum()
        assert float(output_error(data, delta, shift)) == pytest.approx(float(direct), rel=1e-9)


def _sequential_layer_errors(art, rtn_art, samples):
    """Per layer: (error of the refined layer, error of round-to-nearest), both on the inputs
    the refined quantized model gives the layer (its upstream layers are final when it is
    refined, and nothing downstream changes its input), computed here from scratch. A migrated
    input enters as x * f with the weights W / f."""
    from rexdeploy.planning.analyze import find_layers
    from rexdeploy.planning.refine import _capture, _capture_quantized, _fake_quant, _matrix

    plan, rtn = QuantPlan.load(art.path), QuantPlan.load(rtn_art.path)
    model = ir.load(art.file("float_onnx"))
    layers, _ = find_layers(model)
    infos = {info.name: info for info in layers}
    nodes = {node.name: node for node in model.graph}
    targets = [infos[lp.name] for lp in plan.layers]
    x, picks = _capture(model, targets, nodes, samples, 0)
    xq = _capture_quantized(model, plan, targets, nodes, samples, picks)
    out = {}
    for lp, lr in zip(plan.layers, rtn.layers):
        info, act = infos[lp.name], plan.activation(lp.input)
        f = torch.ones(()) if act.smooth is None else torch.from_numpy(act.smooth)
        w = _matrix(info, torch.from_numpy(np.asarray(info.weight_array, np.float32)))
        w = (w.double() / f.double()).float()
        data = layer_data(x[lp.name] * f, _fake_quant(xq.get(lp.name, x[lp.name]) * f, act), w)
        errs = []
        for p in (lp, lr):
            w_hat = sum(_matrix(info, torch.from_numpy(o.dequantize())).double()
                        for o in p.orders)
            shift = None if p.bias_shift is None else \
                torch.from_numpy(p.bias_shift.astype(np.float64)).reshape(1, -1)
            errs.append(float(output_error(data, w.double() - w_hat, shift)))
        out[lp.name] = errs
    return out


@pytest.mark.parametrize("method", ["flexround", "erq"])
def test_sequential_never_increases_a_layers_error_on_its_calibration_data(tmp_path, deep_data,
                                                                           method):
    path, samples, _ = deep_data
    kw = dict(weights="int4", calib=path, smooth="off")
    art = build(_deep_mlp(), MLP_IN, tmp_path / "seq", refine=method, refine_iters=30, **kw)
    rtn = build(_deep_mlp(), MLP_IN, tmp_path / "rtn", **kw)
    report = [row["refine"] for row in art.report()["layers"]]
    assert len(report) == 4 and all(r["error_after"] <= r["error_before"] for r in report)
    assert QuantPlan.load(art.path).config["refine_inputs"] == "quantized"
    errors = _sequential_layer_errors(art, rtn, samples)
    for name, (refined, nearest) in errors.items():
        assert refined <= nearest * (1 + 1e-9), (name, refined, nearest)
    # and it does lower them: FlexRound on 3 of the 4 layers; ERQ keeps only the layers whose
    # update also lowers the error on held-out rows (the last quarter of the calibration rows):
    # on 96 fitting rows its ridge update overfits the 32- and 64-column layers /0 and /4 here
    # (held-out error 0.0057 -> 0.0079 and 0.0058 -> 0.0074), which keep round-to-nearest
    assert sum(r < n * 0.99 for r, n in errors.values()) >= (3 if method == "flexround" else 2)
    if method == "erq":
        held = [(r["held_out_error_before"], r["held_out_error_after"], r["kept"])
                for r in report]
        assert all(after < before for before, after, kept in held if kept)
        assert any(after > before and not kept for before, after, kept in held)


@pytest.mark.parametrize("method, bits", [("flexround", "int4"), ("erq", "int3")])
def test_sequential_beats_float_inputs_on_the_models_output(tmp_path, deep_data, method, bits):
    """The whole model's output error on the calibration data: sequential (each layer sees the
    upstream quantization error and corrects what it can) <= each layer on float inputs.
    Measured: flexround int4 29.0 vs 24.3 dB, erq int3 25.6 vs 18.4 dB (RTN 23.9 / 16.1)."""
    path, samples, ref = deep_data
    sq = {}
    for mode in ("float", "quantized"):
        art = build(_deep_mlp(), MLP_IN, tmp_path / mode, weights=bits, calib=path,
                    refine=method, refine_iters=30, refine_inputs=mode)
        assert QuantPlan.load(art.path).config["refine_inputs"] == mode
        sq[mode] = sqnr(ref, outputs(art, samples))
    assert sq["quantized"] >= sq["float"], sq


def test_refine_inputs_is_validated(tmp_path):
    with pytest.raises(UserError, match="--refine-inputs"):
        QuantConfig(refine="flexround", refine_inputs="fp32").validate()
    QuantConfig(refine="erq", refine_inputs="float").validate()
    from click.testing import CliRunner

    from rexdeploy.cli import cli

    result = CliRunner().invoke(cli, ["build", "m.onnx", "--refine-inputs", "sequential"])
    assert result.exit_code == 2 and "--refine-inputs" in result.output


def test_refine_combines_with_scale_migration(tmp_path, deep_data):
    """--smooth all with --refine: the migrated inputs stay in the plan, every layer is refined
    against x * f and W / f (what the lowered model computes), never worse, and the model's
    output beats the migrated round-to-nearest build."""
    path, samples, ref = deep_data
    kw = dict(weights="int4", calib=path, smooth="all")
    rtn = build(_deep_mlp(), MLP_IN, tmp_path / "rtn", **kw)
    art = build(_deep_mlp(), MLP_IN, tmp_path / "flex", refine="flexround", refine_iters=30,
                **kw)
    plan = QuantPlan.load(art.path)
    assert sum(a.smooth is not None for a in plan.activations) == 4
    report = [row["refine"] for row in art.report()["layers"]]
    assert len(report) == 4 and all(r["error_after"] <= r["error_before"] for r in report)
    errors = _sequential_layer_errors(art, rtn, samples)
    assert all(r <= n * (1 + 1e-9) for r, n in errors.values()), errors
    assert sqnr(ref, outputs(art, samples)) > sqnr(ref, outputs(rtn, samples)) + 0.5
