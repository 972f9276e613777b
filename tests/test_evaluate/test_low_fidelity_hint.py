"""A build whose own device check reads its output far from float says what to try; a faithful
one, or one that already spends a budget of its own, does not; the default's small budget finds
the activations that hurt by itself."""

import pytest

import rexdeploy
from rexdeploy.config import BuildConfig, QuantConfig
from rexdeploy.evaluate.device_check import LOW_FIDELITY_DB
from tiny_models import tiny_cnn


def _hints(art) -> list[str]:
    return [n for n in art.report()["notes"] if "--budget 1.5 --mixed-precision all" in n]


@pytest.mark.openvino
def test_a_build_far_from_float_suggests_the_budget(tmp_path):
    model = tiny_cnn()
    # ranges of half a standard deviation clip most activations: far from float
    clipped = rexdeploy.build(model, ["input:1x3x32x32"], quiet=True,
                              output=str(tmp_path / "clipped"),
                              config=BuildConfig(quant=QuantConfig(range_sigma=0.5,
                                                                   auto_budget=False)))
    db = min(o["reference_db"] for o in clipped.report()["device_check"]["outputs"].values())
    assert db < LOW_FIDELITY_DB
    assert len(_hints(clipped)) == 1 and f"{db:.1f} dB" in _hints(clipped)[0]
    default = rexdeploy.build(model, ["input:1x3x32x32"], quiet=True,
                              output=str(tmp_path / "default"))
    ok = min(o["reference_db"] for o in default.report()["device_check"]["outputs"].values())
    assert ok >= LOW_FIDELITY_DB and not _hints(default)
    spent = rexdeploy.build(model, ["input:1x3x32x32"], quiet=True,
                            output=str(tmp_path / "budget"),
                            config=BuildConfig(quant=QuantConfig(range_sigma=0.5, budget=1.5)))
    assert not _hints(spent)  # the user already spends a budget
    auto = rexdeploy.build(model, ["input:1x3x32x32"], quiet=True,
                           output=str(tmp_path / "auto"),
                           config=BuildConfig(quant=QuantConfig(range_sigma=0.5)))
    q = auto.manifest["config"]["quant"]["expansion"]
    assert q["auto_budget"] and q["mixed_precision"] == "activations"
    fixed = min(o["reference_db"] for o in auto.report()["device_check"]["outputs"].values())
    if auto.config.quant.int8_saturates:  # pre-VNNI: the classifier's input, the worst, stays
        assert fixed > db - 0.5           # int8 (mixed.py), so the budget buys little here
    else:
        assert fixed > db + 10  # the clipped activations that hurt most stay float


@pytest.mark.openvino
def test_a_sigmoid_output_is_checked_and_measured_as_logits(tmp_path):
    """A detector-like head (a Sigmoid mostly near 0): the build's device check and its
    sensitivity both read the logits, and each says so."""
    import torch

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = tiny_cnn()

        def forward(self, x):
            return torch.sigmoid(self.body(x) - 8.0)

    art = rexdeploy.build(Head().eval(), ["input:1x3x32x32"], quiet=True,
                          output=str(tmp_path / "head"))
    check = art.report()["device_check"]
    (row,) = check["outputs"].values()
    assert row["on"] == "logits" and check["agrees"], check
    assert any("on the logits (" in n and "Sigmoid's input" in n for n in art.report()["notes"])
    from rexdeploy.evaluate.device_check import summary_line

    assert "as logits" in summary_line(check)
