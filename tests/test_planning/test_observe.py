"""Ranges observed on natural synthetic images: what a compute op made of them is widened by
NATURAL_MARGIN and its channel means serve the bias correction; the input itself, moved and
rescaled by elementwise ops, keeps its observed range and its means are not the data's."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from rexdeploy.planning.observe import NATURAL_MARGIN, observe


def _model() -> ir.Model:
    """x -> (x - 0.5) / 0.25 -> Conv 3x3 -> Relu."""
    w = np.random.default_rng(0).normal(0, 0.3, (4, 1, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(np.array(0.5, np.float32), "half"),
             numpy_helper.from_array(np.array(0.25, np.float32), "quarter"),
             numpy_helper.from_array(w, "w")]
    nodes = [helper.make_node("Sub", ["x", "half"], ["centred"], name="sub"),
             helper.make_node("Div", ["centred", "quarter"], ["normed"], name="div"),
             helper.make_node("Conv", ["normed", "w"], ["conv"], name="conv", pads=[1] * 4),
             helper.make_node("Relu", ["conv"], ["relu"], name="relu")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("relu", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_natural_observations_widen_only_what_a_compute_op_made():
    model = _model()
    rng = np.random.default_rng(1)
    samples = [{"x": rng.uniform(0, 1, (1, 1, 8, 8)).astype(np.float32)} for _ in range(4)]
    names = ["normed", "conv", "relu"]
    plain = observe(model, names, samples)
    natural = observe(model, names, samples, natural=True)
    # the input, normalised: its range as observed, its means the images' (not fit for the
    # bias correction: the Fashion-MNIST CNN lost 2.3 dB correcting with them)
    assert natural["normed"].bound == pytest.approx(plain["normed"].bound)
    assert not natural["normed"].natural and not plain["normed"].natural
    for name in ("conv", "relu"):
        assert natural[name].natural and not plain[name].natural
        assert natural[name].bound == pytest.approx(NATURAL_MARGIN * plain[name].bound)
        np.testing.assert_allclose(natural[name].channel_absmax,
                                   NATURAL_MARGIN * plain[name].channel_absmax, rtol=1e-6)
        np.testing.assert_allclose(natural[name].channel_mean, plain[name].channel_mean)
    assert natural["relu"].rectified and not natural["conv"].rectified


@pytest.mark.parametrize("tail", [1e-2, 1e-3])
def test_real_samples_give_tail_quantiles_not_the_extremes(tail):
    """--calib's samples: each tensor's extremes are the quantiles at tail and 1 - tail of all
    its values over the samples (streamed, yet exact), so one rare value does not set the range;
    the channel maxima and means stay as observed."""
    model = _model()
    rng = np.random.default_rng(2)
    samples = [{"x": rng.uniform(0, 1, (1, 1, 8, 8)).astype(np.float32)} for _ in range(30)]
    samples[7]["x"][0, 0, 3, 3] = 40.0  # one outlier pixel in 1920
    names = ["normed", "conv"]
    plain = observe(model, names, samples)
    tails = observe(model, names, samples, tail=tail)
    session_values = {n: [] for n in names}
    from rexdeploy.ort_session import session, with_outputs

    sess = session(with_outputs(ir.to_proto(model), names).SerializeToString(), "test")
    for feeds in samples:
        for n, v in zip(names, sess.run(names, feeds)):
            session_values[n].append(v.reshape(-1))
    for n in names:
        values = np.concatenate(session_values[n])
        k = int(np.floor(tail * values.size))
        assert tails[n].lo == pytest.approx(np.sort(values)[k])
        assert tails[n].hi == pytest.approx(np.sort(values)[::-1][k])
        assert plain[n].hi == pytest.approx(values.max())
        np.testing.assert_allclose(tails[n].channel_absmax, plain[n].channel_absmax)
    assert plain["normed"].hi == pytest.approx((40.0 - 0.5) / 0.25)
    assert tails["normed"].hi < 4.0  # the outlier pixel no longer sets the input's range


def test_padded_positions_are_left_out_of_token_tensors():
    """A user's sentences padded to the build's length: the positions their attention mask
    marks 0 set no range, mean or channel maximum of a [1, L, C] tensor (the pad token's
    embedding here is 100 in every channel); a tensor of another shape is observed whole, and
    a sample without padding counts every position."""
    table = np.random.default_rng(3).normal(0, 1, (10, 4)).astype(np.float32)
    table[0] = 100.0  # the pad token
    inits = [numpy_helper.from_array(table, "table")]
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["emb"], name="gather"),
             helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT,
                              name="cast")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 6]),
                     helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, 6])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [1, 6, 4]),
         helper.make_tensor_value_info("maskf", TensorProto.FLOAT, [1, 6])], inits)
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    ids = np.array([[3, 5, 7, 0, 0, 0]], np.int64)
    mask = np.array([[1, 1, 1, 0, 0, 0]], np.int64)
    padded = observe(model, ["emb", "maskf"], [{"input_ids": ids, "attention_mask": mask}])
    tokens = table[[3, 5, 7]]
    assert padded["emb"].hi == pytest.approx(tokens.max())
    np.testing.assert_allclose(padded["emb"].channel_absmax, np.abs(tokens).max(axis=0))
    np.testing.assert_allclose(padded["emb"].channel_mean, tokens.mean(axis=0), rtol=1e-6)
    assert padded["maskf"].lo == 0.0  # not a token tensor: observed whole
    full = observe(model, ["emb"], [{"input_ids": ids, "attention_mask": np.ones_like(mask)}])
    assert full["emb"].hi == pytest.approx(100.0)
