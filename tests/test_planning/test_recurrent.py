"""Int8 LSTM/GRU layers (--recurrent int8) on OpenVINO: codes, plan, lowering, runtime proof."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import rexdeploy
from calib_free.plan import QuantPlan
from calib_free.weights.recurrent import (LSTM_SWAPPED_GATES, STATE_BOUND, dequantize, input_bound,
                                          shared_row_codes, state_clip)
from recurrent_helpers import ConvLSTM, build, to_onnx
from rexdeploy.config import BuildConfig, QuantConfig


# -- codes -----------------------------------------------------------------------------------------
def test_w_and_r_share_one_scale_per_gate_row():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, (2, 12, 5)).astype(np.float32)
    r = rng.normal(0, 0.3, (2, 12, 3)).astype(np.float32)
    r[1, 4] = 0  # the row's peak is in W then
    wq, rq, scale = shared_row_codes(w, r)
    assert wq.dtype == rq.dtype == np.int8 and scale.shape == (2, 12)
    peak = np.maximum(np.abs(wq).max(2), np.abs(rq).max(2))
    assert (peak == 127).all()  # each row reaches the full range in W or in R
    np.testing.assert_allclose(dequantize(wq, scale), w, atol=scale.max() / 2 + 1e-7)
    np.testing.assert_allclose(dequantize(rq, scale), r, atol=scale.max() / 2 + 1e-7)
    with pytest.raises(ValueError):
        shared_row_codes(w, r[:, :6])


def test_lstm_input_and_forget_rows_of_a_unit_share_a_scale():
    rng = np.random.default_rng(0)
    gates = np.repeat([4, 1, 0.5, 2], 4)[None, :, None]  # one size per gate block
    w = rng.normal(0, 1, (1, 16, 5)).astype(np.float32) * gates
    r = np.zeros((1, 16, 4), np.float32)
    _, _, scale = shared_row_codes(w, r, tie=LSTM_SWAPPED_GATES)
    gates = scale.reshape(4, 4)  # ONNX order i, o, f, c
    np.testing.assert_array_equal(gates[0], gates[2])
    assert (gates[0] >= gates[2].min()).all() and not np.allclose(gates[1], gates[0])


def test_the_input_range_covers_the_hidden_state():
    assert input_bound(0.2) == STATE_BOUND == 1.0 and input_bound(3.5) == 3.5


# -- builds ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lstm_onnx(tmp_path_factory):
    torch.manual_seed(0)
    return to_onnx(ConvLSTM(), tmp_path_factory.mktemp("lstm") / "lstm.onnx")


def test_lstm_stays_float_by_default_and_is_listed(lstm_onnx, tmp_path):
    art = build(lstm_onnx, tmp_path / "a.openvino")
    report, s = art.report(), art.manifest["summary"]
    lstm = [r for r in report["skipped"] if r["op"] == "LSTM"]
    assert len(lstm) == 2 and all("--recurrent int8" in r["reason"] for r in lstm)
    assert s["macs_float"] == sum(r["macs"] for r in lstm) > 0
    assert not any(r["type"] == "RNNSeq" and r["int8"] for r in report["runtime_layers"])


def test_int8_lstm_runs_int8_and_stays_close_to_float(lstm_onnx, tmp_path):
    art = build(lstm_onnx, tmp_path / "b.openvino", recurrent="int8")
    report, s = art.report(), art.manifest["summary"]
    rows = {r["name"]: r for r in report["layers"]}
    lstm = [r for r in rows.values() if r["op"] == "LSTM"]
    assert len(lstm) == 2 and not [r for r in report["skipped"] if r["op"] == "LSTM"]
    # the compiled model runs its recurrent layers on the int8 kernel, and the rows say so
    assert all(r["runs_int8"] and r["runtime"] for r in lstm)
    assert all(r["precision"] == "u8" for r in report["runtime_layers"] if r["type"] == "RNNSeq")
    assert s["int8_coverage_macs"] == 1.0 and s["macs_float"] == 0
    # X rescaled onto the grid of the hidden state (its observed peak, at most 1), W carries
    # the factor
    for r in lstm:
        assert 0 < r["activation"]["range"] <= 1.0 and "rescaled" in r["activation"]["source"]
        assert r["weight_error"]["sqnr_db"] > 35
    # the Q/DQ ONNX: int8 W and R (blocked per-row scale), and its X through Q/DQ
    model = onnx.load(f"{art.path}/model.onnx")
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for node in (n for n in model.graph.node if n.op_type == "LSTM"):
        assert node.input[1] in dq and node.input[2] in dq and node.input[0] in dq
    # the reference is close to float; the device loses more (its fed-back state is int8),
    # and the check measures it, naming the recurrent layers if it exceeds the tolerance
    x = np.random.default_rng(1).normal(size=(1, 16, 40)).astype(np.float32)
    options = ort.SessionOptions()  # as the reference backend runs it: the graph as written
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    ref, flt = (ort.InferenceSession(f"{art.path}/{f}", options).run(None, {"input": x})[0]
                for f in ("model.onnx", "float.onnx"))
    assert 10 * np.log10((flt ** 2).sum() / ((flt - ref) ** 2).sum()) > 30
    check = report["device_check"]
    assert check["outputs"] and min(o["device_db"] for o in check["outputs"].values()) > 25
    if not check["agrees"]:
        assert "recurrent" in check["likely_cause"]
    # the plan keeps the recurrent codes
    plan = QuantPlan.load(art.path)
    assert [r.name for r in plan.recurrent] == [r["name"] for r in lstm]
    assert plan.recurrent[0].w_codes.dtype == np.int8
    assert json.load(open(f"{art.path}/plan.json"))["recurrent"][0]["op"] == "LSTM"


def test_state_grid_follows_the_observed_hidden_state():
    assert state_clip(None) == state_clip(0.0) == STATE_BOUND
    assert state_clip(0.4) == pytest.approx(0.5) and state_clip(0.95) == STATE_BOUND


def test_int8_lstm_with_unequal_gates_agrees_with_its_reference(tmp_path):
    """Gates of very different magnitudes: OpenVINO hands oneDNN the i and f gates' scales
    swapped; with one scale for both rows of a unit the device still matches the reference
    (untied per-row scales: about 7 dB between them)."""
    torch.manual_seed(0)
    module = ConvLSTM()
    with torch.no_grad():  # torch's gate order: i, f, g, o
        for name in ("weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"):
            weight = getattr(module.lstm, name)
            hidden = weight.shape[0] // 4
            weight[:hidden] *= 6
            weight[hidden:2 * hidden] *= 0.3
    art = build(to_onnx(module, tmp_path / "gates.onnx"), tmp_path / "g.openvino",
                recurrent="int8")
    check = art.report()["device_check"]
    assert min(o["device_vs_reference_db"] for o in check["outputs"].values()) > 30


def test_vanilla_gru_runs_int8_and_a_pytorch_gru_is_listed(tmp_path):
    class ConvGRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(16, 32, 3, padding=1)
            self.gru = nn.GRU(32, 64, batch_first=True)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            y, _ = self.gru(torch.relu(self.conv(x)).transpose(1, 2))
            return self.fc(y[:, -1])

    torch.manual_seed(0)
    module = ConvGRU()
    vanilla = to_onnx(module, tmp_path / "gru0.onnx", gru_reset_linear=0)
    art = build(vanilla, tmp_path / "v.openvino", recurrent="int8")
    gru = [r for r in art.report()["layers"] if r["op"] == "GRU"]
    assert len(gru) == 1 and gru[0]["runs_int8"]
    torch_gru = to_onnx(module, tmp_path / "gru.onnx")  # linear_before_reset=1: no int8 kernel
    art = build(torch_gru, tmp_path / "t.openvino", recurrent="int8")
    skipped = [r for r in art.report()["skipped"] if r["op"] == "GRU"]
    assert len(skipped) == 1 and "linear-before-reset" in skipped[0]["reason"]


def test_tensorrt_keeps_recurrent_layers_float_and_says_why(lstm_onnx, tmp_path):
    art = rexdeploy.build(lstm_onnx, ["input:1x16x40"], target="trt", quiet=True,
                          output=str(tmp_path / "l.trt"),
                          config=BuildConfig(quant=QuantConfig(recurrent="int8")))
    lstm = [r for r in art.report()["skipped"] if r["op"] == "LSTM"]
    assert len(lstm) == 2 and all("TensorRT" in r["reason"] for r in lstm)


@pytest.mark.cpuid_kernels  # weight-only: int8 weights on a float input
def test_weight_only_builds_keep_recurrent_layers_float(lstm_onnx, tmp_path):
    art = build(lstm_onnx, tmp_path / "w.openvino", recurrent="int8", activations="none")
    lstm = [r for r in art.report()["skipped"] if r["op"] == "LSTM"]
    assert len(lstm) == 2 and all("weight-only" in r["reason"] for r in lstm)
