"""tools/bench/wild_ceilings.py: the oracle sets every activation scale from the largest value
the given inputs reach there, on a tiny CNN built for the reference target."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from calib_free.plan import QuantPlan

import wild_ceilings
from tiny_models import tiny_cnn


def test_oracle_scales_are_the_peaks_of_the_inputs(tmp_path):
    import rexdeploy
    from rexdeploy.ort_session import session, with_outputs

    art = rexdeploy.build(tiny_cnn(), ["input:1x3x32x32"], target="reference", quiet=True,
                          output=str(tmp_path / "cnn.reference"))
    rng = np.random.default_rng(0)
    feeds = [{"input": rng.normal(0, s, (1, 3, 32, 32)).astype(np.float32)} for s in (1, 3)]
    oracle = wild_ceilings._oracle_model(art, feeds)
    acts = QuantPlan.load(art.path).activations
    names = [a.tensor for a in acts]
    marked = with_outputs(onnx.load(art.file("float_onnx")), names)
    s = session(marked.SerializeToString(), "marked", "basic")
    peaks = np.max([[np.abs(x).max() for x in s.run(names, f)] for f in feeds], axis=0)
    scales = {i.name: numpy_helper.to_array(i) for i in oracle.graph.initializer}
    assert acts
    for a, peak in zip(acts, peaks):
        scale = scales[a.tensor + "/scale"]
        assert scale.max() == pytest.approx(peak / (127 if a.signed else 255), rel=1e-5)
    # and the oracle model runs
    session(oracle.SerializeToString(), "oracle", "basic").run(None, feeds[1])


def test_the_noise_floor_moves_each_input_by_at_most_half_a_pixel_level():
    rng = np.random.default_rng(0)
    level = np.array([0.5, 1.0, 2.0], np.float32).reshape(1, 3, 1, 1)
    feeds = [{"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32),
              "ids": np.arange(4, dtype=np.int64)}]
    noisy = wild_ceilings.jittered(feeds, level, rng)[0]
    moved = np.abs(noisy["x"] - feeds[0]["x"])
    assert noisy["x"].dtype == np.float32 and (noisy["ids"] == feeds[0]["ids"]).all()
    assert (moved <= level / 2 + 1e-6).all()
    assert (moved.max(axis=(0, 2, 3)) > 0.8 * level.ravel() / 2).all()  # and it does move


def test_a_rate_gets_its_interval_and_a_variant_its_flips_against_the_default():
    import wild

    base = [True] * 60 + [False] * 17
    variant = [False] + [True] * 59 + [True, True] + [False] * 15  # one lost, two gained
    rows = [{"key": "rec", "config": f"rexdeploy W8A8 {flag}, {backend}", "n": 77,
             **wild.ctc_match(*_ctc_pair(items))}
            for flag, items in (("(default)", base), ("--budget off", variant))
            for backend in ("device", "reference")]
    rows.append({"key": "rec", "config": "NNCF W8A8, real data", "n": 77,
                 **wild.ctc_match(*_ctc_pair(variant))})
    rows = wild.with_intervals(rows)
    default, other, nncf = rows[0], rows[2], rows[4]
    assert default["value"] == pytest.approx(60 / 77) and "flips" not in default
    lo, hi = default["ci"]
    assert 0.67 < lo < 60 / 77 < hi < 0.86  # Wilson, 95 %: about +-0.09 here
    assert other["flips"] == [2, 1] and rows[3]["flips"] == [2, 1]
    assert "flips" not in nncf and nncf["ci"]  # a peer: its interval, no default to pair with
    cells = wild._cells({**other, "model": "m", "sqnr": 18.0})
    assert "vs default +2 -1" in cells[3] and "[95% " in cells[3]


def _ctc_pair(items: list[bool]) -> tuple[list, list]:
    """Float and test class scores [1, 2, 3] whose greedy CTC strings agree where items say."""
    ref = [np.array([[[0.1, 0.9, 0.0], [0.9, 0.1, 0.0]]]) for _ in items]
    test = [r if ok else np.array([[[0.1, 0.0, 0.9], [0.9, 0.1, 0.0]]])
            for r, ok in zip(ref, items)]
    return ref, test
