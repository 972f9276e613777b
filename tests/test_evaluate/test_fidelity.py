"""Fidelity metrics against their definitions, and compare over runners."""

import math

import numpy as np
import pytest
from rich.console import Console

from rexdeploy.evaluate.fidelity import (METRICS, compare_outputs, cosine, kl_divergence,
                                         max_abs_error,
                               render_table, run_compare, sqnr_db, top1_accuracy,
                               top1_agreement)
from rexdeploy.errors import UserError


def test_sqnr_identical_is_inf(rng):
    x = rng.standard_normal((4, 10))
    assert sqnr_db(x, x.copy()) == math.inf
    assert sqnr_db(np.zeros(3), np.ones(3)) == -math.inf


@pytest.mark.parametrize("sigma", [0.3, 0.1, 0.01])
def test_sqnr_of_known_noise_matches_theory(rng, sigma):
    ref = rng.standard_normal((100, 10_000))
    test = ref + sigma * rng.standard_normal(ref.shape)
    assert abs(sqnr_db(ref, test) - 10 * math.log10(1 / sigma ** 2)) < 0.1


def test_sqnr_is_pooled_not_averaged():
    ref = np.array([[10.0, 0.0], [1.0, 0.0]])
    test = np.array([[10.0, 1.0], [1.0, 1.0]])  # equal noise, unequal signal
    assert sqnr_db(ref, test) == pytest.approx(10 * math.log10(101 / 2))


def test_cosine_per_sample():
    ref = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    test = np.array([[0.0, 1.0], [-1.0, -1.0], [0.0, 0.0], [1.0, 0.0], [6.0, 8.0]])
    np.testing.assert_allclose(cosine(ref, test), [0.0, -1.0, 1.0, 0.0, 1.0])
    assert cosine(np.ones((2, 3, 4)), np.ones((2, 3, 4))).shape == (2,)


def test_top1_agreement_and_stacked_logits():
    ref = np.array([[1, 2, 3], [3, 2, 1], [0, 5, 0], [1, 0, 0]], float)
    test = np.array([[0, 1, 9], [9, 1, 0], [5, 0, 0], [2, 0, 0]], float)
    assert top1_agreement(ref, test) == 0.75
    assert top1_agreement(ref[:, None, :], test[:, None, :]) == 0.75  # N stacked [1, C]
    assert top1_agreement(np.ones((4, 3, 8, 8)), np.ones((4, 3, 8, 8))) is None
    assert top1_agreement(np.ones((4, 1)), np.ones((4, 1))) is None


def test_top1_accuracy():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert top1_accuracy(logits, np.array([1, 0, 0])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        top1_accuracy(logits, np.array([1, 0]))


def test_kl_divergence(rng):
    x = rng.standard_normal((8, 5)) * 3
    assert kl_divergence(x, x) == pytest.approx(0.0, abs=1e-12)
    assert kl_divergence(x, x + 5.0) == pytest.approx(0.0, abs=1e-12)  # softmax shift-invariant
    assert kl_divergence(x, rng.standard_normal((8, 5))) > 0
    p, q = np.array([0.75, 0.25]), np.array([0.5, 0.5])
    expected = float(np.sum(p * np.log(p / q)))
    assert kl_divergence(np.log(p)[None], np.log(q)[None]) == pytest.approx(expected)
    assert kl_divergence(np.ones((2, 3, 4, 4)), np.ones((2, 3, 4, 4))) is None


def test_agreement_interval():
    from rexdeploy.evaluate.fidelity import agreement_interval

    assert agreement_interval(0.96, 50) == pytest.approx((0.8654, 0.9890), abs=1e-4)
    assert agreement_interval(0.96, 500) == pytest.approx((0.9390, 0.9739), abs=1e-4)
    lo, hi = agreement_interval(1.0, 50)
    assert hi == 1.0 and lo == pytest.approx(0.9287, abs=1e-4)


def test_near_ties_and_agreement_on_the_decisive_samples():
    from rexdeploy.evaluate.fidelity import near_ties, output_metrics

    # probabilities: a clear winner, a near tie (0.51 / 0.49), an exact tie, and a 3-way spread
    probs = np.array([[0.9, 0.05, 0.05], [0.51, 0.49, 0.0], [0.4, 0.4, 0.2], [0.5, 0.3, 0.2]])
    ref = np.log(np.clip(probs, 1e-12, None))
    assert near_ties(ref).tolist() == [False, True, True, False]
    assert near_ties(ref, margin=0.25).tolist() == [False, True, True, True]
    assert near_ties(np.zeros(4)) is None  # not classifier-shaped
    test = ref.copy()
    test[1] = ref[1][[1, 0, 2]]  # the near tie flips: agreement 3/4, on the decisive ones 2/2
    m = output_metrics(ref, test)
    assert m["top1_agreement"] == 0.75
    assert m["top1_near_ties"] == 2 and m["top1_agreement_decisive"] == 1.0
    test[0] = ref[0][[1, 0, 2]]  # a decisive flip counts
    assert output_metrics(ref, test)["top1_agreement_decisive"] == 0.5
    only_ties = output_metrics(ref[1:3], ref[1:3])
    assert only_ties["top1_near_ties"] == 2 and only_ties["top1_agreement_decisive"] is None


def test_max_abs_error():
    assert max_abs_error(np.array([1.0, -2.0]), np.array([1.5, -4.0])) == 2.0


def test_compare_outputs_keys(rng):
    ref = {"logits": rng.standard_normal((6, 1, 10)), "feat": rng.standard_normal((6, 4, 3, 3))}
    test = {k: v + 0.01 * rng.standard_normal(v.shape) for k, v in ref.items()}
    result = compare_outputs(ref, test)
    assert result["output"] == "logits"
    assert set(result["outputs"]) == {"logits", "feat"}
    for m in result["outputs"].values():
        assert set(m) == set(METRICS)
    assert {k: result[k] for k in METRICS} == result["outputs"]["logits"]
    assert result["top1_agreement"] is not None and result["kl"] >= 0
    assert result["outputs"]["feat"]["top1_agreement"] is None
    lo, hi = result["top1_agreement_ci"]  # Wilson interval over the 6 decisions
    assert lo < result["top1_agreement"] <= hi <= 1.0 and hi - lo > 0.3
    assert result["sqnr_db"] == pytest.approx(40, abs=1)
    off = compare_outputs(ref, test, classifier=False)
    assert off["top1_agreement"] is None and off["kl"] is None
    forced = compare_outputs(ref, test, classifier=True)
    assert forced["outputs"]["feat"]["top1_agreement"] is not None


def test_headline_output_skips_inputs_passed_through(rng):
    """An encoder exported with input_ids and the mask among its outputs (int64, exact):
    the summary speaks for the first floating-point output, every output keeps its row."""
    ids = rng.integers(0, 30000, (4, 1, 8))
    emb = rng.standard_normal((4, 1, 16)).astype(np.float32)
    ref = {"input_ids": ids, "mask": np.ones_like(ids), "embedding": emb}
    test = dict(ref, embedding=emb + 0.1 * rng.standard_normal(emb.shape).astype(np.float32))
    result = compare_outputs(ref, test)
    assert result["output"] == "embedding" and np.isfinite(result["sqnr_db"])
    assert set(result["outputs"]) == set(ref)
    assert not np.isfinite(result["outputs"]["input_ids"]["sqnr_db"])
    only_ints = compare_outputs({"a": ids}, {"a": ids})
    assert only_ints["output"] == "a"


def test_compare_outputs_mismatch_is_a_user_error():
    a = {"y": np.zeros((2, 3))}
    with pytest.raises(UserError, match="outputs differ"):
        compare_outputs(a, {"z": np.zeros((2, 3))})
    with pytest.raises(UserError, match="shape"):
        compare_outputs(a, {"y": np.zeros((2, 4))})


class Fake:
    """A runner whose output is a function of the input (scaled, plus a per-sample offset)."""

    def __init__(self, noise=0.0):
        self.noise = noise
        self.calls = 0

    def infer(self, feeds):
        self.calls += 1
        x = feeds["x"]
        return {"logits": x * 2 + self.noise * x.sum() * np.ones_like(x)}


def test_run_compare_finds_worst_samples(rng):
    samples = [(f"s{i}", {"x": rng.standard_normal((1, 10)) * (1 + i)}) for i in range(7)]
    seen = []
    result = run_compare(Fake(), Fake(noise=0.2), samples, progress=lambda d, n: seen.append(d))
    assert seen == list(range(1, 8))
    assert set(METRICS) <= set(result)
    worst = result["worst_samples"]
    assert len(worst) == 5
    assert [w["cosine"] for w in worst] == sorted(w["cosine"] for w in worst)
    assert all(w["id"].startswith("s") for w in worst)
    identical = run_compare(Fake(), Fake(), samples)
    assert identical["sqnr_db"] == math.inf and identical["top1_agreement"] == 1.0


def test_run_compare_needs_samples():
    with pytest.raises(UserError, match="no samples"):
        run_compare(Fake(), Fake(), [])


def test_render_table(rng):
    samples = [(f"s{i}", {"x": rng.standard_normal((1, 10))}) for i in range(3)]
    result = run_compare(Fake(), Fake(noise=0.1), samples)
    result.update(reference="torch", backend="openvino", samples=3, inputs="synthetic:3")
    console = Console(record=True, width=160)
    console.print(render_table(result))
    text = console.export_text()
    assert "logits" in text and "openvino vs torch" in text and "lowest cosine" in text

    # near ties get their own caption line, with the agreement on the other inputs
    probs = np.array([[0.9, 0.05, 0.05], [0.51, 0.49, 0.0], [0.5, 0.3, 0.2]])
    ref = {"logits": np.log(np.clip(probs, 1e-12, None))}
    flipped = {"logits": ref["logits"][:, [1, 0, 2]] * np.array([[0], [1], [0]])
               + ref["logits"] * np.array([[1], [0], [1]])}
    tied = compare_outputs(ref, flipped) | {"samples": 3}
    console = Console(record=True, width=200)
    console.print(render_table(tied))
    text = console.export_text()
    assert "1 of 3 inputs are near ties" in text and "agreement on the others 100.0%" in text
    console = Console(record=True, width=200)
    console.print(render_table(compare_outputs({"logits": ref["logits"][[0, 2]]},
                                               {"logits": ref["logits"][[0, 2]]})))
    assert "near ties" not in console.export_text()


def test_embeddings_get_neighbour_metrics_not_top1(rng):
    from rexdeploy.evaluate.fidelity import (is_embedding, nn_agreement, nn_label_accuracy,
                                             output_metrics)

    emb = rng.standard_normal((20, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert is_embedding(emb) and is_embedding(emb[:, None, :])
    assert not is_embedding(emb * 3) and not is_embedding(emb[:, :1])
    m = output_metrics(emb, emb)
    assert m["top1_agreement"] is None and m["kl"] is None and m["nn_agreement"] == 1.0
    logits = output_metrics(emb * 3, emb * 3)
    assert logits["top1_agreement"] == 1.0 and logits["nn_agreement"] is None
    # swapping two rows changes exactly their own neighbours' view of them
    far = emb.copy()
    far[0] = -emb[0]
    assert nn_agreement(emb, far) < 1.0
    assert nn_agreement(emb[:2], emb[:2]) is None  # two samples: the neighbour is forced
    # two tight clusters far apart: 1-NN recovers the cluster label
    x = np.r_[np.tile([1.0, 0.0], (5, 1)), np.tile([0.0, 1.0], (5, 1))] + \
        rng.normal(0, 0.01, (10, 2))
    labels = np.r_[np.zeros(5, int), np.ones(5, int)]
    assert nn_label_accuracy(x, labels) == 1.0
    assert nn_label_accuracy(x, np.arange(10)) == 0.0  # every label unique: no match
    with pytest.raises(ValueError):
        nn_label_accuracy(x, labels[:3])


# -- outputs a Sigmoid or Softmax makes: the device check reads them as logits ----------------
def test_head_logits_read_back_what_the_head_squashed():
    from rexdeploy.evaluate.fidelity import HEAD_FLOOR, head_logits

    z = np.array([-30.0, -14.0, -5.0, 0.0, 5.0, 30.0])
    got = head_logits(1 / (1 + np.exp(-z)), "Sigmoid")
    floor = math.log(HEAD_FLOOR / (1 - HEAD_FLOOR))
    assert got[0] == 0.0 and got[-1] == pytest.approx(-2 * floor)  # clipped at the floor
    assert np.allclose(got[2:5], z[2:5] - floor)  # exact in between
    p = np.exp(z[2:5]) / np.exp(z[2:5]).sum()
    assert np.allclose(np.diff(head_logits(p, "Softmax")), np.diff(z[2:5]))


def test_a_sigmoid_map_near_0_is_checked_as_logits(rng):
    """Two runtimes' Sigmoids differ far out in the tail (ONNX Runtime returns 0 where OpenVINO
    returns 1e-12): as probabilities the device seems to lose everything, as logits above
    HEAD_FLOOR it agrees, and a real departure still shows."""
    from rexdeploy.evaluate.fidelity import device_vs_reference

    z = rng.normal(-25.0, 3.0, (4, 1, 32, 32))
    z[:, :, :4, :4] = rng.normal(0.0, 2.0, (4, 1, 4, 4))  # a little text
    flt = 1 / (1 + np.exp(-z))
    qdq = 1 / (1 + np.exp(-(z + 0.05 * rng.standard_normal(z.shape))))
    qdq[z < -17] = 0.0  # ONNX Runtime's tail
    dev = np.where(z < -17, 1e-12, qdq)  # OpenVINO's
    plain = device_vs_reference({"p": flt}, {"p": dev}, {"p": qdq})["outputs"]["p"]
    heads = {"p": "Sigmoid"}
    read = device_vs_reference({"p": flt}, {"p": dev}, {"p": qdq}, heads=heads)
    assert read["agrees"] and read["outputs"]["p"]["on"] == "logits"
    assert read["outputs"]["p"]["device_vs_reference_db"] > plain["device_vs_reference_db"] + 20
    wrong = dev.copy()
    wrong[:, :, :4, :4] = 1 - wrong[:, :, :4, :4]  # the text region inverted
    assert not device_vs_reference({"p": flt}, {"p": wrong}, {"p": qdq}, heads=heads)["agrees"]


def test_a_sigmoid_map_has_no_per_position_top1(rng):
    ref = rng.random((3, 1, 1, 8, 16))
    test = ref + 0.01 * rng.standard_normal(ref.shape)
    assert "position_top1" in compare_outputs({"p": ref}, {"p": test})["outputs"]["p"]
    got = compare_outputs({"p": ref}, {"p": test}, heads={"p": "Sigmoid"})["outputs"]["p"]
    assert "position_top1" not in got
    soft = compare_outputs({"p": ref}, {"p": test}, heads={"p": "Softmax"})["outputs"]["p"]
    assert "position_top1" in soft  # classes on the last axis


def test_model_heads_through_layout_ops(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from rexdeploy.evaluate.fidelity import model_heads

    v = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Reshape", ["s", "k"], ["r"]),
         helper.make_node("Softmax", ["x"], ["p"]), helper.make_node("Relu", ["p"], ["q"])],
        "g", [v("x"), v("k")], [v("r"), v("q")])
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    assert model_heads(str(tmp_path / "m.onnx")) == {"r": "Sigmoid"}


def test_an_empty_map_gets_no_verdict(rng):
    """A detector's map on noise: the float model says < 1e-6 everywhere, so the inputs say
    nothing of the device; the check names the output and gives no verdict on it."""
    from rexdeploy.evaluate.device_check import summary_line
    from rexdeploy.evaluate.fidelity import device_vs_reference

    z = rng.normal(-25.0, 2.0, (4, 1, 32, 32))
    flt, qdq = 1 / (1 + np.exp(-z)), 1 / (1 + np.exp(-(z + 3.0)))
    got = device_vs_reference({"p": flt, "y": z}, {"p": qdq * 50, "y": z}, {"p": qdq, "y": z},
                              heads={"p": "Sigmoid"})
    assert set(got["outputs"]["p"]) == {"on", "informative"} and got["agrees"]
    result = {"samples": 4, "inputs": "noise", "outputs": got["outputs"], "loss_db": 0.0,
              "agrees": True, "tolerance_db": 1.0, "no_verdict": ["p"]}
    line = summary_line(result)
    assert line.startswith("agrees") and "no verdict on p" in line and "--inputs" in line
    del result["outputs"]["y"]
    assert summary_line(result).startswith("no verdict on p")


def test_a_pooled_loss_that_one_input_makes_is_scatter_not_a_disagreement(rng):
    """Two runtimes round a deep network's codes a little differently, and the difference grows
    to the size of the quantization noise: input by input either may read better. A pooled loss
    that one input makes agrees within the inputs' scatter; a device that loses on every input,
    or a pooled loss over too few inputs to judge, disagrees."""
    from rexdeploy.evaluate.device_check import summary_line
    from rexdeploy.evaluate.fidelity import SCATTER_MIN_INPUTS, device_vs_reference

    flt = rng.normal(0, 1, (8, 64))
    qdq = flt + 0.1 * rng.standard_normal(flt.shape)
    dev = flt + 0.1 * rng.standard_normal(flt.shape)  # another realization, as good
    dev[6] = flt[6] + 0.6 * rng.standard_normal(64)     # and one input it reads worse
    got = device_vs_reference({"y": flt}, {"y": dev}, {"y": qdq})
    row = got["outputs"]["y"]
    assert row["loss_db"] > 1.0 and got["agrees"], row
    assert row["per_input_loss_db"] <= 2 * row["per_input_loss_se"] and row["inputs"] == 8
    result = {"samples": 8, "inputs": "noise", "outputs": got["outputs"], "agrees": True,
              "loss_db": row["loss_db"], "tolerance_db": 1.0, "environment": {}}
    assert summary_line(result).startswith("agrees within the inputs' scatter")
    worse = flt + 0.2 * rng.standard_normal(flt.shape)  # 6 dB on every input
    assert not device_vs_reference({"y": flt}, {"y": worse}, {"y": qdq})["agrees"]
    few = [6, 0, 1][:SCATTER_MIN_INPUTS - 1]
    assert not device_vs_reference({"y": flt[few]}, {"y": dev[few]}, {"y": qdq[few]})["agrees"]
