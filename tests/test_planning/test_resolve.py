"""The quantize stage's own choices are made once, before any stage reads them
(rexdeploy.planning.stage.resolve_ranges), so every stage and the manifest see the same ones."""

from rexdeploy.config import CALIB_RANGES, BuildConfig, QuantConfig
from rexdeploy.inputspec import parse_input_specs
from rexdeploy.planning.stage import resolve_ranges


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
