"""The config's choices are made once, in rexdeploy/resolve.py (for_target before any stage,
for_model once the model's inputs are read), so every stage and the manifest see the same
ones."""

import pytest

from rexdeploy.config import CALIB_RANGES, BuildConfig, QuantConfig
from rexdeploy.inputspec import parse_input_specs
from rexdeploy.errors import UserError
from rexdeploy.resolve import for_model, for_target


def resolve_ranges(config: BuildConfig) -> BuildConfig:
    return for_model(config, config.inputs, None, None)


def test_user_data_gives_the_ranges_and_images_without_it_are_not_migrated(tmp_path):
    image = parse_input_specs(["x:1x3x8x8"])
    tokens = parse_input_specs(["ids:1x16:int64"])
    plain = resolve_ranges(BuildConfig(inputs=image)).quant
    assert (plain.ranges, plain.smooth) == ("auto", "off")
    user = resolve_ranges(BuildConfig(inputs=image, quant=QuantConfig(calib=str(tmp_path)))).quant
    assert (user.ranges, user.smooth) == (CALIB_RANGES, "auto")
    synthetic = resolve_ranges(BuildConfig(inputs=image, quant=QuantConfig(
        calib="synthetic:4", refine="flexround"))).quant
    assert (synthetic.ranges, synthetic.smooth) == ("auto", "off")
    text = resolve_ranges(BuildConfig(inputs=tokens)).quant
    assert (text.ranges, text.smooth) == ("auto", "auto")
    asked = resolve_ranges(BuildConfig(inputs=image, quant=QuantConfig(smooth="all"))).quant
    assert asked.smooth == "all"  # a user's explicit choice stands
    resolved = BuildConfig(inputs=image, quant=QuantConfig(calib=str(tmp_path)))
    assert resolve_ranges(resolve_ranges(resolved)) == resolve_ranges(resolved)  # idempotent
    resolve_ranges(resolved).validate()  # what the manifest records validates


def test_for_target_makes_every_target_choice_concrete():
    resolved = for_target(None, ["x:1x3x8x8"], "reference")
    q = resolved.config.quant
    assert resolved.config.target == "reference" and resolved.config.device == "CPU"
    assert q.int8_isa == resolved.isa.name and q.int8_isa != "auto"
    assert q.activation_scales == "depthwise"  # the reference runs per-axis QuantizeLinear
    trt = for_target(BuildConfig(quant=QuantConfig(budget=1.25)), ["x:1x3x8x8"], "trt").config
    assert trt.device == "GPU" and trt.quant.activation_scales == "tensor"
    assert trt.quant.budget_cost != "auto"
    again = for_target(resolved.config, (), None)
    assert again.config == resolved.config  # idempotent: a resolved config stays as it is
    with pytest.raises(UserError, match="depthwise"):
        for_target(BuildConfig(quant=QuantConfig(activation_scales="depthwise")),
                   ["x:1x3x8x8"], "trt")
