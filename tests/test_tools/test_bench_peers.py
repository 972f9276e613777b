"""tools/bench (issue 6): graph bit-operations, the Pareto frontier, the peers' verdicts and
skips, and real peers (ONNX Runtime, NNCF where installed) on a tiny model run by OpenVINO."""

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

BENCH = Path(__file__).resolve().parent.parent.parent / "tools" / "bench"

import graph_bops  # noqa: E402
import pareto  # noqa: E402
import peers  # noqa: E402

pytestmark = pytest.mark.openvino


def _conv_model(path, *, qdq_weight=None, qdq_act=False, group=1, two_branches=False,
                zero_point=0):
    """x [1,4,8,8] -> Conv (8 out, 3x3, groups) [-> second Conv on x, Add] -> out.

    qdq_weight: None (float weights), or the integer codes' max (127 for int8, 7 for int4
    codes stored in int8), put behind DequantizeLinear; qdq_act: Q/DQ on x (int8)."""
    rng = np.random.default_rng(0)
    cin = 4 // group
    nodes, inits = [], []
    x = "input"
    if qdq_act:
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
                  numpy_helper.from_array(np.array(0, np.int8), "xz")]
        nodes += [helper.make_node("QuantizeLinear", ["input", "xs", "xz"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"])]
        x = "xd"
    outs = []
    for b in range(2 if two_branches else 1):
        w = f"w{b}"
        if qdq_weight is None:
            inits.append(numpy_helper.from_array(
                rng.standard_normal((8, cin, 3, 3)).astype(np.float32), w))
        else:
            codes = rng.integers(-qdq_weight, qdq_weight + 1, (8, cin, 3, 3)).astype(np.int8)
            codes.flat[0], codes.flat[1] = -qdq_weight, qdq_weight  # the full span
            inits += [numpy_helper.from_array(codes, w + "q"),
                      numpy_helper.from_array(np.full(8, 0.01, np.float32), w + "s"),
                      numpy_helper.from_array(np.full(8, zero_point, np.int8), w + "z")]
            nodes.append(helper.make_node("DequantizeLinear", [w + "q", w + "s", w + "z"], [w],
                                          axis=0))
        nodes.append(helper.make_node("Conv", [x, w], [f"c{b}"], pads=[1, 1, 1, 1],
                                      group=group))
        outs.append(f"c{b}")
    if two_branches:
        nodes.append(helper.make_node("Add", outs, ["out"]))
    else:
        nodes[-1].output[0] = "out"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, [1, 4, 8, 8])], [helper.make_tensor_value_info(
            "out", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def test_code_bits():
    assert graph_bops.code_bits(np.array([-127, 127])) == 8
    assert graph_bops.code_bits(np.array([-8, 7])) == 4
    assert graph_bops.code_bits(np.array([-7, 7])) == 4
    assert graph_bops.code_bits(np.array([0, 0])) == 1
    assert graph_bops.code_bits(np.array([0, 255])) == 8


def test_float_graph_counts_macs_at_32_bits(tmp_path):
    info = graph_bops.graph_bops([_conv_model(tmp_path / "f.onnx")])
    assert info["macs"] == 8 * 8 * 8 * 4 * 9  # out elements x Cin x k x k
    assert info["layers"][0][3:] == (32, 32)
    assert info["ratio"] == pytest.approx(1.0)


def test_grouped_conv_macs(tmp_path):
    info = graph_bops.graph_bops([_conv_model(tmp_path / "g.onnx", group=2)])
    assert info["macs"] == 8 * 8 * 8 * 2 * 9


@pytest.mark.parametrize("codes, bits_w", [(127, 8), (7, 4)])
def test_qdq_bits_from_the_codes(tmp_path, codes, bits_w):
    path = _conv_model(tmp_path / "q.onnx", qdq_weight=codes, qdq_act=True, zero_point=0)
    info = graph_bops.graph_bops([path])
    assert info["layers"][0][3:] == (bits_w, 8)  # a zero point of zeros is not the weight
    assert info["ratio"] == pytest.approx(bits_w * 8 / 1024)


def test_weight_only_counts_float_activations(tmp_path):
    info = graph_bops.graph_bops([_conv_model(tmp_path / "w.onnx", qdq_weight=127)])
    assert info["layers"][0][3:] == (8, 32)
    assert info["ratio"] == pytest.approx(0.25)


def test_expansion_is_counted_against_the_float_macs(tmp_path):
    base = graph_bops.graph_bops([_conv_model(tmp_path / "f.onnx")])["macs"]
    two = _conv_model(tmp_path / "k2.onnx", qdq_weight=7, qdq_act=True, two_branches=True)
    info = graph_bops.graph_bops([two], base)
    assert info["macs"] == 2 * base
    assert info["ratio"] == pytest.approx(2 * 4 * 8 / 1024)
    assert graph_bops.graph_bops([two])["ratio"] == pytest.approx(4 * 8 / 1024)


def test_pareto_front():
    pts = [(1.0, 10.0), (0.5, 10.0), (0.5, 5.0), (2.0, 20.0), (3.0, 15.0), (np.nan, 99.0)]
    assert pareto.pareto_front(pts) == [1, 3]


def _row(label, metric, value, **kw):
    return {"label": label, metric: value, **kw}


def test_peer_verdicts_data_free_only_on_minilm():
    rows = [_row("rexdeploy W8A8 data-free (default)", "cos_mean", 0.99),
            _row("rexdeploy W4 weight-only, REx K=2", "cos_mean", 0.999),
            _row("NNCF real", "cos_mean", 0.997, peer=True, data="real"),
            _row("NNCF random", "cos_mean", 0.97, peer=True, data="random"),
            _row("ModelOpt int4", "cos_mean", 0.995, peer=True, data="none", cls="W4"),
            _row("NNCF INT8 WC", "cos_mean", 0.9995, peer=True, data="none", cls="W8"),
            {"label": "gone", "skipped": "skipped: x does not import", "peer": True}]
    lines = pareto.peer_verdicts("minilm", rows)
    assert not any("NNCF real" in l for l in lines)  # calibrated on real data: not a target
    assert any("NNCF random" in l and l.endswith("met") for l in lines)
    assert any("W4 weight-only, REx K=2 cos_mean 0.999 > ModelOpt int4" in l and l.endswith("met")
               for l in lines)  # compared with our weight-only W4, not with W8A8
    assert not any("NNCF INT8 WC" in l for l in lines)  # no W8 weight-only row: no verdict
    assert any(l.startswith("gone: skipped") for l in lines)


def test_peer_verdicts_every_peer_on_effnet():
    rows = [_row("rexdeploy W8A8 (default)", "sqnr", 20.0),
            _row("NNCF real", "sqnr", 21.0, peer=True, data="real"),
            _row("ModelOpt random", "sqnr", 9.0, peer=True, data="default")]
    lines = pareto.peer_verdicts("effnet", rows)
    assert lines[0].endswith("missed") and lines[1].endswith("met")


def test_random_stand_in_data():
    toks = peers.random_tokens(128)
    assert len(toks) == peers.N_RANDOM
    for t in toks:
        ids, mask = t["input_ids"][0], t["attention_mask"][0]
        n = int(mask.sum())
        assert 8 <= n <= 64 and mask[:n].all() and not mask[n:].any()
        assert ids[0] == 101 and ids[n - 1] == 102 and not ids[n:].any()
        assert (ids[1:n - 1] >= 1000).all() and (ids < 30522).all()
    imgs = peers.random_images((1, 3, 4, 4), -1.0, 1.0)
    stack = np.concatenate([d["input"] for d in imgs])
    assert stack.min() >= -1 and stack.max() <= 1 and stack.std() > 0.4


def test_missing_module_is_a_reason_not_an_exception():
    assert peers.missing(("json",)) is None
    why = peers.missing(("no_such_module_rexdeploy_test",))
    assert "no_such_module_rexdeploy_test does not import" in why


def _x(n=6):
    return np.random.default_rng(1).uniform(-1, 1, (n, 1, 4, 8, 8)).astype(np.float32)


def _run(tmp_path, monkeypatch, peer_list):
    from common import openvino_logits
    from rexdeploy.evaluate.fidelity import sqnr_db

    float_onnx = _conv_model(tmp_path / "float.onnx")
    xs = _x()[:, 0]  # [6, 4, 8, 8]: openvino_logits runs it row by row at batch 1
    ref = openvino_logits(str(tmp_path), {"onnx": "float.onnx"}, xs)
    monkeypatch.setattr(peers, "peer_list", lambda *a: peer_list)
    return peers.run_peers(
        Console(file=open(os.devnull, "w")), "effnet", float_onnx, str(tmp_path),
        real=[{"input": xs[i:i + 1]} for i in range(len(xs))],
        random=peers.random_images((1, 4, 8, 8), -1, 1, n=4), real_what="inputs",
        evaluate=lambda d, files: openvino_logits(d, files, xs),
        metrics=lambda label, out: {"label": label, "sqnr": sqnr_db(ref, out)})


def test_a_peer_that_does_not_import_is_skipped(tmp_path, monkeypatch):
    rows = _run(tmp_path, monkeypatch, [peers.Peer("ghost", ("no_such_module_rexdeploy_test",),
                                                   peers.ort_static, "random")])
    assert rows == [{"label": "ghost", "peer": True, "skipped": rows[0]["skipped"]}]
    assert rows[0]["skipped"].startswith("skipped: no_such_module_rexdeploy_test")


def test_a_peer_that_raises_is_shown_failed(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise ValueError("no calibration")

    rows = _run(tmp_path, monkeypatch, [peers.Peer("boom", ("json",), boom)])
    assert rows[0]["skipped"] == "failed: ValueError: no calibration"


def test_ort_static_peer_runs_on_openvino(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime.quantization")
    rows = _run(tmp_path, monkeypatch, [peers.Peer("ORT", ("onnxruntime.quantization",),
                                                   peers.ort_static, "real")])
    row = rows[0]
    assert "skipped" not in row, row
    assert 15 < row["sqnr"] < 60  # int8: close, not exact
    assert row["files"] == {"onnx": "model.onnx"} and row["data"] == "real"
    info = graph_bops.graph_bops(pareto.model_files(row))
    assert info["layers"][0][3:] == (8, 8)


def test_nncf_compress_weights_peer(tmp_path, monkeypatch):
    if peers.missing(("nncf",)):
        pytest.skip("nncf is not installed (tools/bench/requirements-peers.txt)")
    rows = _run(tmp_path, monkeypatch, [peers.Peer("NNCF WC", ("nncf",), peers.nncf_compress)])
    row = rows[0]
    assert "skipped" not in row, row
    assert row["files"] == {"ir_xml": "model.xml"} and row["sqnr"] > 25
    assert graph_bops.graph_bops(pareto.model_files(row))["layers"][0][3:] == (8, 32)


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [_row("rexdeploy W8A8", "sqnr", 23.0, bops_float=0.0625, latency_ms=5.0),
            _row("NNCF", "sqnr", 15.0, bops_float=0.0625, latency_ms=6.0, peer=True),
            _row("float", "sqnr", 100.0, bops_float=1.0, float=True),
            {"label": "gone", "skipped": "skipped: x", "peer": True}]
    path = pareto.plot(str(tmp_path / "p.png"), [{"title": "t", "metric": "sqnr",
                                                  "rows": rows}])
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "p.json").read_text())  # the panels, to draw them again
    assert [r["label"] for r in saved[0]["rows"]] == [r["label"] for r in rows]
    assert pareto.main(["--replot", str(tmp_path / "p.json"), "--plot",
                        str(tmp_path / "r.png")]) == 0
    with pytest.raises(ValueError):
        pareto.plot(str(tmp_path / "q.png"), [])


def test_plot_labels_do_not_overlap():
    """Twenty labels on points a few pixels apart: each placed label clears every other one
    and stays inside the axes (the old plot piled them up)."""
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(dpi=pareto.DPI)
    pts = [(1.0 + 0.01 * i, 20.0 + 0.02 * i) for i in range(20)]
    ax.scatter(*zip(*pts))
    ax.set_xlim(0, 3)
    ax.set_ylim(0, 40)
    fig.canvas.draw()
    pareto._place_labels(ax, [(p, f"configuration number {i}") for i, p in enumerate(pts)])
    renderer = fig.canvas.get_renderer()
    from matplotlib.text import Text

    for t in ax.texts:
        t.update_positions(renderer)
    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]  # the text, not its leader
    assert len(boxes) >= 10  # most find a place within 6 lines
    for i, a in enumerate(boxes):
        assert ax.bbox.x0 - 1 <= a.x0 and a.x1 <= ax.bbox.x1 + 1
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    plt.close(fig)


def test_fused_attention_is_counted(tmp_path):
    import openvino as ov
    import openvino.opset13 as ops

    q, k, v = (ops.parameter([1, 2, 16, 8], ov.Type.f32, name=n) for n in "qkv")
    sdpa = ops.scaled_dot_product_attention(q, k, v, causal=False)
    path = str(tmp_path / "sdpa.xml")
    ov.save_model(ov.Model([sdpa], [q, k, v]), path)
    info = graph_bops.graph_bops([path])
    assert info["layers"][0][1:] == ("ScaledDotProductAttention", 2 * 16 * 16 * (8 + 8), 32, 32)
