"""The identity split (rexdeploy/passes/split_identity.py): a reparameterised convolution's
dominant diagonal goes beside it as a float per-channel Mul; the graph computes the same
function, only convolutions that map each pixel and channel onto themselves are split, and a
build of such a network is more faithful with it than without."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import rexdeploy
from rexdeploy.ort_session import session
from rexdeploy.passes.split_identity import ROLE, identity_splits, split_identity

C = 16


def _rep_weights(rng, groups: int, k: int, rows: int = C // 2) -> np.ndarray:
    """Gaussian kernels with a folded identity of 3-6 on the centre tap of the first `rows`."""
    w = rng.normal(0, 0.05, (C, C // groups, k, k))
    index = (np.arange(rows), np.arange(rows) if groups == 1 else np.zeros(rows, int), k // 2,
             k // 2)
    w[index] += rng.uniform(3, 6, rows)
    return w.astype(np.float32)


def _model(convs: list[tuple[int, int, int, int]], output_conv: bool = False) -> ir.Model:
    """x -> [Conv(groups, k, stride, pad) -> Relu]* -> y; each Conv's kernel a folded identity.
    output_conv: the last Conv's output is the graph output (no Relu after it)."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i, (groups, k, stride, pad) in enumerate(convs):
        inits += [numpy_helper.from_array(_rep_weights(rng, groups, k), f"w{i}"),
                  numpy_helper.from_array(rng.normal(0, 0.1, C).astype(np.float32), f"b{i}")]
        last = output_conv and i == len(convs) - 1
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], ["y" if last else f"c{i}"],
                                      name=f"conv{i}", group=groups, strides=[stride] * 2,
                                      pads=[pad] * 4, kernel_shape=[k, k]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
    if not output_conv:
        nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, "h", "w"])], inits)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    return session(ir.to_proto(model).SerializeToString(), "test").run(["y"], {"x": x})[0]


def _convs(model: ir.Model) -> set[str]:
    return {n.name for n in model.graph if n.op_type == "Conv"}


@pytest.mark.parametrize("output_conv", [False, True])
def test_the_split_graph_computes_the_same_function(output_conv):
    convs = [(1, 1, 1, 0), (C, 3, 1, 1), (1, 3, 1, 1), (C, 5, 1, 2)]
    before, after = _model(convs, output_conv), _model(convs, output_conv)
    # auto: the square convolutions alone (a depthwise one's Mul would cost about what the
    # depthwise convolution does); all: the depthwise ones too
    assert [s.layer for s in identity_splits(after, _convs(after), 8)] == ["conv0", "conv2"]
    splits = identity_splits(after, _convs(after), bits=8, mode="all")
    assert [s.layer for s in splits] == ["conv0", "conv1", "conv2", "conv3"]
    # (a Gaussian depthwise row may have its largest weight at the centre too: split as well)
    assert all(s.rows >= C // 2 and s.channels == C for s in splits)
    assert all(s.after_db >= s.before_db + 10 for s in splits), splits
    split_identity(after, splits)
    x = np.random.default_rng(1).normal(0, 1, (1, C, 12, 12)).astype(np.float32)
    want = _run(before, x)
    np.testing.assert_allclose(_run(after, x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # each split Conv lost its diagonal in the split rows, and the Mul and the Add are its own
    conv = next(n for n in after.graph if n.name == "conv0")
    w = conv.inputs[1].const_value.numpy()
    assert not w[np.arange(C // 2), np.arange(C // 2), 0, 0].any()
    tagged = [n for n in after.graph if n.metadata_props.get("rexdeploy.role") == ROLE]
    assert sorted(n.op_type for n in tagged) == ["Add"] * 4 + ["Mul"] * 4


@pytest.mark.parametrize("conv", [(1, 1, 2, 0),   # stride 2: a pixel maps elsewhere
                                  (1, 3, 1, 0),   # 3x3 without padding: the map shrinks
                                  (4, 3, 1, 1)])  # grouped, not depthwise: no diagonal
def test_a_convolution_that_moves_pixels_or_mixes_groups_is_not_split(conv):
    model = _model([conv])
    assert identity_splits(model, _convs(model), bits=8, mode="all") == []


def test_kernels_without_a_dominant_diagonal_are_not_split():
    model = _model([(1, 1, 1, 0)])
    conv = next(n for n in model.graph if n.op_type == "Conv")
    w = np.random.default_rng(2).normal(0, 0.05, (C, C, 1, 1)).astype(np.float32)
    conv.inputs[1].const_value = ir.tensor(w, name=conv.inputs[1].name)
    assert identity_splits(model, _convs(model), bits=8, mode="all") == []
    assert identity_splits(_model([(1, 1, 1, 0)]), set(), 8, "all") == []  # none outside the plan


@pytest.mark.openvino
def test_a_build_of_a_reparameterised_network_is_more_faithful_with_the_split(tmp_path):
    """A RepVGG-like CNN: the default build splits its diagonals (and says so), no Q/DQ lands
    on the diagonal's product, the device agrees with the reference, and the output is closer
    to float than the same build with --split-identity off."""
    model = _model([(1, 1, 1, 0), (C, 3, 1, 1), (1, 1, 1, 0), (C, 3, 1, 1)])
    path = str(tmp_path / "rep.onnx")
    ir.save(model, path)
    x = [np.random.default_rng(i).normal(0, 1, (1, C, 12, 12)).astype(np.float32)
         for i in range(4)]
    want = np.concatenate([_run(model, v).ravel() for v in x])
    db = {}
    for mode in ("auto", "off"):
        from rexdeploy.config import BuildConfig, QuantConfig

        art = rexdeploy.build(path, [f"x:1x{C}x12x12"], quiet=True, output=str(tmp_path / mode),
                              config=BuildConfig(quant=QuantConfig(
                                  split_identity=mode, input_ranges=(("x", -4.0, 4.0),))))
        report = art.report()
        assert report["summary"]["device_check"]["agrees"], report["device_check"]
        notes = [n for n in report["notes"] if n.startswith("identity split")]
        assert bool(notes) == (mode == "auto"), notes
        qdq = ir.load(art.file("onnx"))
        for node in qdq.graph:
            if node.metadata_props.get("rexdeploy.role") == ROLE and node.op_type == "Mul":
                assert all(u.op_type != "QuantizeLinear" for u, _ in node.outputs[0].uses())
        got = np.concatenate([_run(qdq, v).ravel() for v in x])
        db[mode] = 10 * np.log10((want ** 2).sum() / ((got - want) ** 2).sum())
    assert db["auto"] > db["off"] + 3, db


def test_a_tensorrt_build_with_split_diagonals_passes_its_rules(tmp_path):
    """The deferred TensorRT build checks its Q/DQ ONNX against TensorRT's rules: the float Mul
    and Add beside an int8 convolution pass them, and the float parts are float16."""
    from rexdeploy.config import BuildConfig, QuantConfig

    path = str(tmp_path / "rep.onnx")
    ir.save(_model([(1, 1, 1, 0), (1, 1, 1, 0)]), path)
    art = rexdeploy.build(path, [f"x:1x{C}x12x12"], target="trt", quiet=True,
                          output=str(tmp_path / "rep.trt"),
                          config=BuildConfig(quant=QuantConfig(input_ranges=(("x", -4.0, 4.0),))))
    assert any(n.startswith("identity split: 2 convolution(s)") for n in art.report()["notes"])
    qdq = ir.load(art.file("onnx"))
    muls = [n for n in qdq.graph if n.metadata_props.get("rexdeploy.role") == ROLE
            and n.op_type == "Mul"]
    assert len(muls) == 2 and all(m.outputs[0].dtype == ir.DataType.FLOAT16 for m in muls)


def test_rex_orders_sum_before_the_split_diagonal(tmp_path):
    """With --orders 2 every order of a split layer reads the same input and sums before the
    diagonal's Add: the Q/DQ model is closer to float than at order 1 (ONNX Runtime)."""
    from rexdeploy.config import BuildConfig, QuantConfig

    model = _model([(1, 1, 1, 0), (1, 1, 1, 0)])
    path = str(tmp_path / "rep.onnx")
    ir.save(model, path)
    x = np.random.default_rng(5).normal(0, 1, (1, C, 12, 12)).astype(np.float32)
    want = _run(model, x)
    db = {}
    for orders in (1, 2):
        art = rexdeploy.build(path, [f"x:1x{C}x12x12"], target="reference", quiet=True,
                              output=str(tmp_path / f"k{orders}"),
                              config=BuildConfig(quant=QuantConfig(
                                  orders=orders, auto_budget=False, activations="none")))
        qdq = ir.load(art.file("onnx"))
        adds = [n for n in qdq.graph if n.metadata_props.get("rexdeploy.role") == ROLE
                and n.op_type == "Add"]
        assert len(adds) == 2
        got = _run(qdq, x)
        db[orders] = 10 * np.log10((want ** 2).sum() / ((got - want) ** 2).sum())
    assert db[2] > db[1] + 20, db


def test_a_float16_graph_and_same_padding_keep_their_types():
    """A float16 model's kernels stay float16, and SAME_UPPER padding at stride 1 (symmetric
    for an odd kernel) is eligible like explicit padding."""
    rng = np.random.default_rng(3)
    w = _rep_weights(rng, 1, 3).astype(np.float16)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", auto_pad="SAME_UPPER",
                          kernel_shape=[3, 3])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, C, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, C, 12, 12])],
        [numpy_helper.from_array(w, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before, after = ir.from_proto(proto), ir.from_proto(proto)
    splits = identity_splits(after, {"conv"}, bits=8)
    assert [s.layer for s in splits] == ["conv"]
    split_identity(after, splits)
    assert {v.const_value.dtype for v in after.graph.initializers.values()} == \
        {ir.DataType.FLOAT16}
    x = rng.normal(0, 1, (1, C, 12, 12)).astype(np.float16)
    want = _run(before, x).astype(np.float32)
    np.testing.assert_allclose(_run(after, x), want, atol=2e-2 * np.abs(want).max())
