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
