"""QuantConfig nested by concern (rexdeploy/config.py): the groups hold the fields, the flags'
flat names build, read and change them, errors name the flag, and the manifest's form (nested,
version 2; flat, version 1) reads back to the same config."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rexdeploy.config import (QUANT_FLAGS, ActivationConfig, BuildConfig, CalibConfig,
                              ExpansionConfig, QuantConfig, WeightConfig, choices, flat_field)
from rexdeploy.errors import UserError


def test_flat_names_build_the_groups_and_read_back():
    q = QuantConfig(weights="int4", orders=2, budget=1.25, activation_scales="tensor",
                    unsigned_activations=False, calib="synthetic:8", seed=3)
    assert q.weight == WeightConfig(format="int4")
    assert q.expansion == ExpansionConfig(orders=2, budget=1.25)
    assert q.activation == ActivationConfig(scales="tensor", unsigned=False)
    assert q.calibration == CalibConfig(data="synthetic:8")
    assert (q.weights, q.orders, q.activation_scales, q.unsigned_activations, q.calib,
            q.seed) == ("int4", 2, "tensor", False, "synthetic:8", 3)
    assert q == QuantConfig(weight=WeightConfig(format="int4"),
                            expansion=ExpansionConfig(orders=2, budget=1.25),
                            activation=ActivationConfig(scales="tensor", unsigned=False),
                            calibration=CalibConfig(data="synthetic:8"), seed=3)
    assert hash(q) == hash(dataclasses.replace(q))  # frozen and hashable
    with pytest.raises(TypeError, match="no_such_field"):
        QuantConfig(no_such_field=1)
    with pytest.raises(AttributeError, match="no_such_field"):
        _ = q.no_such_field
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.seed = 1


def test_with_changes_by_flat_name_and_keeps_the_rest():
    q = QuantConfig(weights="int4", orders=3, smooth="off")
    r = q.with_(orders=1, budget=None, mixed_precision="off", seed=5)
    assert (r.orders, r.weights, r.smooth, r.seed) == (1, "int4", "off", 5)
    assert q.orders == 3  # the original is untouched
    assert q.with_(weight=WeightConfig(format="int8")).weights == "int8"


def test_every_flag_name_maps_to_a_field_with_its_choices():
    for name in QUANT_FLAGS:
        cls, field = flat_field(name)
        assert field in cls.__dataclass_fields__
    assert choices(*flat_field("activation_scales")) == ("auto", "depthwise", "tensor")
    assert "calib" not in choices(*flat_field("ranges"))  # a resolved value, never offered


@pytest.mark.parametrize("flat, message", [
    ({"activation_scales": "bogus"}, "--activation-scales bogus: use one of"),
    ({"weights": "int9"}, "--weights int9: use one of"),
    ({"orders": 5}, "--orders 5"),
    ({"operator": "power", "budget": 1.2}, "--operator power expands every channel"),
    ({"refine_iters": 0}, "--refine-iters 0"),
    ({"smooth_alpha": 2.0}, "--smooth-alpha 2.0"),
    ({"mixed_precision": "all"}, "no --budget was given"),
])
def test_errors_name_the_flag(flat, message):
    with pytest.raises(UserError, match=message):
        QuantConfig(**flat).validate()


def test_manifest_round_trip_is_nested_and_versioned():
    built = BuildConfig(quant=QuantConfig(weights="int4", orders=2, exclude=("fc",),
                                          input_ranges=(("x", -1.0, 1.0),)))
    d = json.loads(json.dumps(built.to_dict()))
    assert d["version"] == 2
    assert d["quant"]["weight"]["format"] == "int4" and d["quant"]["expansion"]["orders"] == 2
    assert "orders" not in d["quant"]  # nested, not flat
    assert BuildConfig.from_dict(d) == built
