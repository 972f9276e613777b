"""Target rules live with the backends: each declares its TargetRules, and the pipeline asks
them instead of testing a target's name."""

from __future__ import annotations

import pathlib
import re

import pytest

import backends
from backends.base import TargetRules
from rexdeploy.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
# "reference" stays a name: it is the oracle every artifact can be run on (--backend
# reference), a role rather than a deployment target with rules
NAME_TEST = re.compile(r"""(target|name)\s*[!=]=\s*["'](trt|openvino)["']""")


@pytest.mark.parametrize("name", backends.names())
def test_every_backend_declares_its_rules(name):
    rules = backends.rules(name)
    assert isinstance(rules, TargetRules)
    assert backends.get(name).name == name
    assert rules.profile in ("variants", "engine", "none")
    assert rules.table_dtype in ("float32", "float16")
    if rules.defers:  # a target that defers says how to get a deferred artifact
        assert rules.unavailable_hint


def test_the_pipeline_never_tests_a_target_by_name():
    found = [f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
             for top in ("rexdeploy", "calib_free")
             for path in sorted((ROOT / top).rglob("*.py"))
             for i, line in enumerate(path.read_text().splitlines(), 1)
             if NAME_TEST.search(line)]
    assert not found, "ask backends.rules(target) instead:\n" + "\n".join(found)


def test_unknown_targets_get_one_clear_error():
    with pytest.raises(UserError, match="available targets"):
        backends.rules("coreml")


def test_tensorrt_and_openvino_differ_where_the_build_asks():
    trt, ov = backends.rules("trt"), backends.rules("openvino")
    assert (trt.default_device, ov.default_device) == ("GPU", "CPU")
    assert not trt.unsigned_activations and ov.unsigned_activations
    assert trt.int4_weight_only and not ov.int4_weight_only
    assert ov.int8_recurrent and not trt.int8_recurrent and trt.recurrent_float_reason
    assert ov.cpu_cost_models and not trt.cpu_isa
