"""Property-based tests (hypothesis) of the parsers every user string goes through, and of the
quantizer's contract.

Parsers: any text gives a result or a UserError, never another exception (which the CLI would
show as a traceback); what the parser writes back (`str(spec)`) parses to the same value.
Quantizer (docs/algorithms.md section 1): codes in [-qmax, qmax], zero-point 0 (the grid is
symmetric: q(-w) = -q(w), q(0) = 0), and |dequantize(quantize(w)) - w| <= scale/2 for every w
inside the clip range (also with clip search, which clips below max |w|).
The example counts are small: these run in the default suite.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from calib_free.weights.quantizer import (broadcast_scale, dequantize, qmax, quantize,
                                          quantize_weight)
from rexdeploy.cli.common import parse_range
from rexdeploy.errors import UserError
from rexdeploy.inputs import Preprocess, parse_preprocess
from rexdeploy.inputspec import DTYPES, MAX_ELEMENTS, InputSpec, parse_input_spec, \
    parse_input_specs

FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

names = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_.\-/]{0,12}\Z")
# dims are split on x/X, so a dim name has neither (and "scalar" alone means rank 0)
dim_names = st.from_regex(r"\A[A-WYZa-wyz_][A-WYZa-wyz0-9_]{0,6}\Z").filter(
    lambda n: n.lower() != "scalar")
dims = st.one_of(st.integers(1, 4096), dim_names)
specs = st.builds(InputSpec, names, st.lists(dims, max_size=5).map(tuple),
                  st.sampled_from(DTYPES))


# -- --input -----------------------------------------------------------------------------------
@FAST
@given(st.text(max_size=40))
def test_input_spec_any_text_parses_or_is_a_user_error(text):
    try:
        spec = parse_input_spec(text)
    except UserError as e:
        assert e.message.startswith("bad --input") and e.hint
        return
    assert isinstance(spec, InputSpec) and spec.dtype in DTYPES
    assert all(isinstance(d, str) or d > 0 for d in spec.shape)


@FAST
@given(specs)
def test_input_spec_round_trips(spec):
    n = math.prod(d for d in spec.shape if isinstance(d, int))
    assume(n <= MAX_ELEMENTS)
    assert parse_input_spec(str(spec)) == spec
    # the dtype is optional (float32) and case does not matter
    text = f"{spec.name}:{'x'.join(map(str, spec.shape)) or 'scalar'}"
    assert parse_input_spec(text) == InputSpec(spec.name, spec.shape, "float32")
    assert parse_input_spec(f"{text}:{spec.dtype.upper()}").dtype == spec.dtype


@FAST
@given(names, st.lists(st.integers(1, 10**6), min_size=2, max_size=6))
def test_input_spec_refuses_more_than_max_elements(name, shape):
    text = f"{name}:{'x'.join(map(str, shape))}"
    if math.prod(shape) > MAX_ELEMENTS:
        with pytest.raises(UserError, match="more than this tool accepts"):
            parse_input_spec(text)
    else:
        assert parse_input_spec(text).shape == tuple(shape)


@FAST
@given(st.lists(specs, min_size=1, max_size=4))
def test_input_specs_refuse_duplicate_names(many):
    assume(all(math.prod(d for d in s.shape if isinstance(d, int)) <= MAX_ELEMENTS
               for s in many))
    texts = [str(s) for s in many]
    if len({s.name for s in many}) < len(many):
        with pytest.raises(UserError, match="given twice"):
            parse_input_specs(texts)
    else:
        assert parse_input_specs(texts) == tuple(many)


# -- --input-range -----------------------------------------------------------------------------
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@FAST
@given(st.text(max_size=30))
def test_input_range_any_text_parses_or_is_a_user_error(text):
    try:
        name, lo, hi = parse_range(text)
    except UserError as e:
        assert "--input-range" in e.message and e.hint
        return
    assert name and math.isfinite(lo) and math.isfinite(hi)


@FAST
@given(names, finite, finite)
def test_input_range_round_trips(name, lo, hi):
    assert parse_range(f"{name}:{lo!r},{hi!r}") == (name, lo, hi)


@FAST
@given(names, st.sampled_from(["nan", "inf", "-inf", "1e999"]), finite)
def test_input_range_refuses_non_finite_bounds(name, bad, other):
    for text in (f"{name}:{bad},{other!r}", f"{name}:{other!r},{bad}"):
        with pytest.raises(UserError, match="finite"):
            parse_range(text)


# -- --preprocess ------------------------------------------------------------------------------
positive = st.floats(1e-6, 1e6, allow_nan=False, allow_infinity=False)
channel_values = st.one_of(st.tuples(finite.filter(lambda v: abs(v) < 1e6)),
                           st.tuples(*[finite.filter(lambda v: abs(v) < 1e6)] * 3))
preprocesses = st.builds(
    Preprocess,
    resize=st.one_of(st.none(), st.tuples(st.integers(1, 4096)),
                     st.tuples(st.integers(1, 4096), st.integers(1, 4096))),
    crop=st.one_of(st.none(), st.tuples(st.integers(1, 4096), st.integers(1, 4096))),
    mean=channel_values,
    std=st.one_of(st.tuples(positive), st.tuples(positive, positive, positive)),
    scale=positive, layout=st.sampled_from(["auto", "nchw", "nhwc"]),
    channels=st.sampled_from(["rgb", "bgr"]))


@FAST
@given(preprocesses)
def test_preprocess_round_trips(pre):
    assert parse_preprocess(str(pre)) == pre


spec_chars = st.sampled_from(list("resizecropmantdlyouhgbvw=,/x.0123456789-e ") + ["nan"])


@FAST
@given(st.one_of(st.text(max_size=40), st.lists(spec_chars, max_size=30).map("".join)))
def test_preprocess_any_text_parses_or_is_a_user_error(text):
    try:
        pre = parse_preprocess(text)
    except UserError as e:
        assert "preprocess" in e.message
        return
    assert isinstance(pre, Preprocess)
    assert all(math.isfinite(v) for v in (*pre.mean, *pre.std, pre.scale))
    assert pre.scale != 0 and all(s != 0 for s in pre.std)


# -- the quantizer -----------------------------------------------------------------------------
@st.composite
def weights(draw):
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 8), min_size=rank, max_size=rank)))
    granularity = draw(st.sampled_from(["tensor", "channel", "block"]))
    axis = draw(st.integers(0, rank - 1))
    block = draw(st.integers(1, shape[axis] + 1)) if granularity == "block" else None
    bits = draw(st.integers(2, 8))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    w = rng.laplace(size=shape) * 10.0 ** draw(st.integers(-4, 2))
    return torch.from_numpy(w.astype(np.float32)), granularity, axis, block, bits


@FAST
@given(weights(), st.booleans())
def test_quantizer_codes_in_range_and_zero_point_zero(case, clip_search):
    w, granularity, axis, block, bits = case
    codes, scale = quantize_weight(w, bits, granularity, axis, block, clip_search=clip_search)
    q = qmax(bits)
    assert codes.dtype == torch.int8
    assert int(codes.max()) <= q and int(codes.min()) >= -q  # symmetric: -qmax-1 never used
    # zero-point 0: zero maps to code 0 and the grid is odd-symmetric
    assert not quantize(torch.zeros_like(w), scale, bits, axis, block).any()
    assert torch.equal(quantize(-w, scale, bits, axis, block), -codes)
    assert bool((scale > 0).all()) and bool(torch.isfinite(scale).all())


@FAST
@given(weights(), st.booleans())
def test_quantizer_error_within_half_step_inside_clip_range(case, clip_search):
    w, granularity, axis, block, bits = case
    codes, scale = quantize_weight(w, bits, granularity, axis, block, clip_search=clip_search)
    s = broadcast_scale(scale, w.shape, axis, block).double().expand(w.shape)
    clip = s * qmax(bits)
    w64 = w.double()
    err = (dequantize(codes, scale, axis, block).double() - w64).abs()
    inside = w64.abs() <= clip * (1 + 1e-6)  # the float32 scale may round clip a hair down
    slack = 1e-6 * s + 2 * float(torch.finfo(torch.float32).eps) * w64.abs()
    assert bool((err[inside] <= (s / 2 + slack)[inside]).all())
    # outside the clip range (clip search only) values saturate at +-clip
    outside = ~inside
    if outside.any():
        deq = dequantize(codes, scale, axis, block).double()
        assert torch.allclose(deq[outside].abs(), clip[outside], rtol=1e-6)
        assert bool((torch.sign(deq[outside]) == torch.sign(w64[outside])).all())
    if not clip_search:
        assert bool(inside.all())  # max-abs scales: every weight is inside
