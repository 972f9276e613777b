"""Attention MatMuls (two activation inputs): which run int8 under --attention, the Softmax
output's exact range, the reasons of those kept float per target, the plan round trip, and the
Q/DQ graph (both inputs dequantized) run in ONNX Runtime against the float graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import rexdeploy
from calib_free.plan import QuantPlan
from rexdeploy.config import BuildConfig, QuantConfig
from rexdeploy.planning import attention

T, D = 8, 16


def _attention_onnx(path) -> str:
    """x [1, T, D] -> Q, K, V Linear -> Softmax(Q K^T / 4) (through a Reshape) x V -> Linear."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (D, D)).astype(np.float32), n)
             for n in ("wq", "wk", "wv", "wo")]
    inits += [numpy_helper.from_array(np.array([1, T, T], np.int64), "shape"),
              numpy_helper.from_array(np.array(0.25, np.float32), "quarter")]
    nodes = [helper.make_node("MatMul", ["x", w], [o], name=f"{o}_proj")
             for w, o in (("wq", "q"), ("wk", "k"), ("wv", "v"))]
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
              helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
              helper.make_node("Mul", ["s", "quarter"], ["ss"], name="scale"),
              helper.make_node("Softmax", ["ss"], ["p"], name="softmax", axis=-1),
              helper.make_node("Reshape", ["p", "shape"], ["pr"], name="reshape"),
              helper.make_node("MatMul", ["pr", "v"], ["c"], name="context"),
              helper.make_node("MatMul", ["c", "wo"], ["y"], name="out_proj")]
    graph = helper.make_graph(
        nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return _attention_onnx(tmp_path_factory.mktemp("att") / "attention.onnx")


def test_candidates_and_softmax_inputs(model_path):
    model = ir.load(model_path)
    assert [n.name for n in attention.candidates(model)] == ["scores", "context"]
    nodes = {n.name: n for n in model.graph}
    assert attention.from_softmax(nodes["context"].inputs[0])  # through the Reshape
    assert not any(map(attention.from_softmax, nodes["scores"].inputs))


def _build(model_path, tmp_path, target="reference", **quant):
    return rexdeploy.build(model_path, [f"x:1x{T}x{D}"], target=target, quiet=True,
                           output=str(tmp_path / f"a.{target}"),
                           config=BuildConfig(quant=QuantConfig(**quant)))


def _dequantized(art, name: str) -> list[bool]:
    model = onnx.load(art.file("onnx"))
    node = next(n for n in model.graph.node if n.name == name)
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    return [producers.get(i) == "DequantizeLinear" for i in node.input]


@pytest.mark.parametrize("mode,int8", [("scores", ["scores"]), ("int8", ["scores", "context"]),
                                       ("float", [])])
def test_modes_quantize_both_inputs_and_list_the_rest(model_path, tmp_path, mode, int8):
    art = _build(model_path, tmp_path, attention=mode)
    plan = QuantPlan.load(art.path)  # the plan round trip keeps them
    assert [a.name for a in plan.attention] == int8
    skipped = {s.name: s.reason for s in plan.skipped}
    assert set(skipped) == {"scores", "context"} - set(int8)
    if mode == "scores":
        assert "reads a Softmax output" in skipped["context"]
    if mode == "float":
        assert all("--attention float" in r for r in skipped.values())
    for name in ("scores", "context"):
        assert _dequantized(art, name) == [name in int8] * 2
    softmax = plan.activation("pr")
    if "context" in int8:  # the Softmax output on exactly [0, 1], uint8
        assert (softmax.source, softmax.range, softmax.signed) == ("softmax", 1.0, False)
        assert softmax.scale == pytest.approx(1 / 255)
    rows = [r for r in art.report()["layers"] if "activations" in r]
    assert [r["name"] for r in rows] == int8
    assert art.report()["summary"]["quantized_layers"] == 4 + len(int8)


def test_int8_attention_stays_faithful(model_path, tmp_path):
    """The Q/DQ graph with both attention MatMuls int8, in ONNX Runtime, against the float
    graph on Gaussian inputs (the ranges came from the synthetic ones)."""
    from rexdeploy.ort_session import session

    art = _build(model_path, tmp_path, attention="int8", input_ranges=(("x", -3.0, 3.0),))
    x = {"x": np.random.default_rng(5).normal(0, 1, (1, T, D)).astype(np.float32)}
    ref = session(model_path, "float", "basic").run(None, x)[0]
    out = session(art.file("onnx"), "int8", "basic").run(None, x)[0]
    sqnr = 10 * np.log10((ref ** 2).sum() / ((ref - out) ** 2).sum())
    assert sqnr > 25, sqnr
    # compare --per-layer taps them too (accumulated SQNR; no local cut: two inputs)
    from rexdeploy.evaluate.localize import localize

    rows = {r["name"]: r for r in localize(model_path, art.file("onnx"), [("x", x)])["layers"]}
    for name in ("scores", "context"):
        assert rows[name]["op"] == "MatMul" and rows[name]["sqnr_db"] > 25, rows[name]
        assert rows[name]["local_sqnr_db"] is None
    assert list(rows).index("scores") < list(rows).index("context") < list(rows).index("out_proj")


def test_tensorrt_keeps_them_float(model_path, tmp_path):
    trt = _build(model_path, tmp_path, target="trt", attention="int8")
    reasons = {s["name"]: s["reason"] for s in trt.report()["skipped"]}
    assert set(reasons) == {"scores", "context"}
    assert all("TensorRT" in r for r in reasons.values()), reasons
    assert not any(_dequantized(trt, "scores"))


@pytest.mark.openvino
def test_openvino_runs_scores_int8_and_a_pre_vnni_build_keeps_them_float(model_path, tmp_path):
    art = _build(model_path, tmp_path, target="openvino", int8_isa="auto")
    report = art.report()
    if report["summary"]["int8_isa"]["saturates"]:  # this host runs pre-VNNI kernels
        assert all("without VNNI" in s["reason"] for s in report["skipped"])
    else:  # the MatMul (or the fused attention kernel holding it) reads i8
        row = next(r for r in report["layers"] if r["name"] == "scores")
        assert row["runs_int8"] and row["runtime"], row
    # a cross-build for a pre-VNNI CPU: OpenVINO runs these MatMuls in f32 there
    avx2 = _build(model_path, tmp_path / "avx2", target="openvino", int8_isa="avx2")
    reasons = [s.reason for s in QuantPlan.load(avx2.path).skipped]
    assert len(reasons) == 2 and all("without VNNI" in r for r in reasons), reasons
