"""Ranges observed on natural synthetic images: what a compute op made of them is widened by
NATURAL_MARGIN (never past what the op can produce, nor past TYPICAL_SPREAD times the median
image's maximum) and its channel means serve the bias correction; the input itself, moved and
rescaled by elementwise ops, keeps its observed range and its means are not the data's."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from rexdeploy.planning.bounds import hard_bounds
from rexdeploy.planning.observe import NATURAL_MARGIN, TYPICAL_SPREAD, observe


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


def _bounded_model() -> ir.Model:
    """x -> Conv 3x3 -> Clip(0, 6) (bounds cast, as torch exports them) -> GlobalAveragePool
    -> Flatten, and Conv -> Sigmoid."""
    w = np.full((2, 1, 3, 3), 1.0, np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0.0), "lo64"),
             numpy_helper.from_array(np.array(6.0), "hi64")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], name="conv", pads=[1] * 4),
             helper.make_node("Cast", ["lo64"], ["lo"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["hi64"], ["hi"], to=TensorProto.FLOAT),
             helper.make_node("Clip", ["conv", "lo", "hi"], ["relu6"], name="clip"),
             helper.make_node("GlobalAveragePool", ["relu6"], ["pooled"], name="gap"),
             helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
             helper.make_node("Sigmoid", ["conv"], ["gate"], name="sigmoid")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("flat", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("gate", TensorProto.FLOAT, [1, 2, 8, 8])], inits)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_natural_ranges_are_never_widened_past_what_the_op_can_produce():
    """A ReLU6 output the images drive to 6 stays at 6 (EfficientNet-Lite0 from
    torch.onnx.export had 31 of them at 7.5: 22.6 dB on the photos, 23.7 since), and so does
    what pooling and reshaping make of it; a Sigmoid stays within 1."""
    model = _bounded_model()
    assert hard_bounds(model) == {"relu6": (0.0, 6.0), "pooled": (0.0, 6.0),
                                  "flat": (0.0, 6.0), "gate": (0.0, 1.0)}
    rng = np.random.default_rng(2)
    samples = [{"x": rng.uniform(0, 2, (1, 1, 8, 8)).astype(np.float32)} for _ in range(4)]
    names = ["conv", "relu6", "pooled", "gate"]
    plain = observe(model, names, samples)
    natural = observe(model, names, samples, natural=True)
    assert plain["relu6"].hi == pytest.approx(6.0) and plain["gate"].hi > 0.99
    assert natural["conv"].hi == pytest.approx(NATURAL_MARGIN * plain["conv"].hi)
    assert natural["relu6"].hi == pytest.approx(6.0)
    assert np.all(natural["relu6"].channel_absmax <= 6.0)
    assert natural["gate"].hi <= 1.0
    # the pooled mean is widened, within the ReLU6's bound
    assert plain["pooled"].hi < natural["pooled"].hi <= 6.0


def test_one_images_outlier_does_not_set_a_natural_range():
    """Where one image reaches far past the others (a deep CNN's heavy tails: MobileNetV2 from
    torch.onnx.export 17.3 -> 19.9 dB on the photos), a natural range is at most
    TYPICAL_SPREAD times the median image's maximum; plain and --calib observations keep it."""
    model = _model()
    rng = np.random.default_rng(3)
    samples = [{"x": rng.uniform(0.4, 0.6, (1, 1, 8, 8)).astype(np.float32)} for _ in range(7)]
    samples.append({"x": rng.uniform(-4, 4, (1, 1, 8, 8)).astype(np.float32)})
    per_image = [float(np.abs(observe(model, ["conv"], [f])["conv"].bound)) for f in samples]
    cap = TYPICAL_SPREAD * float(np.median(per_image))
    plain = observe(model, ["conv"], samples)
    natural = observe(model, ["conv"], samples, natural=True)
    assert plain["conv"].bound == pytest.approx(max(per_image))
    assert plain["conv"].bound > 2 * cap  # the outlier image
    assert natural["conv"].bound == pytest.approx(cap)
    assert np.max(natural["conv"].channel_absmax) == pytest.approx(cap)
    # without an outlier the cap stays out of the way
    calm = observe(model, ["conv"], samples[:7], natural=True)
    assert calm["conv"].bound == pytest.approx(NATURAL_MARGIN * observe(
        model, ["conv"], samples[:7])["conv"].bound)


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
