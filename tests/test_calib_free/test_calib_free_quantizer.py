"""Uniform symmetric quantizer: scale layouts, the scale/2 error bound, clip search, and exact
agreement with the plan's numpy dequantization (what the lowering writes into the ONNX)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from calib_free.plan import WeightOrder
from calib_free.weights.quantizer import (MIN_SCALE, broadcast_scale, choose_scale, dequantize,
                                          qmax, quantize, quantize_weight)

EPS32 = float(torch.finfo(torch.float32).eps)


def _check_rounding_bound(w, codes, scale, bits, axis, block_size):
    """Codes in [-qmax, qmax] and |w - deq| <= scale/2 elementwise (plus float32 rounding)."""
    q = qmax(bits)
    assert codes.dtype == torch.int8 and scale.dtype == torch.float32
    assert int(codes.abs().max()) <= q
    s = broadcast_scale(scale, w.shape, axis, block_size).double()
    err = (w.double() - dequantize(codes, scale, axis, block_size).double()).abs()
    assert bool((err <= s / 2 * (1 + 1e-6) + 2 * EPS32 * w.double().abs() + 1e-30).all())


def test_qmax():
    assert [qmax(b) for b in (2, 3, 4, 5, 6, 8)] == [1, 3, 7, 15, 31, 127]
    assert qmax(8, signed=False) == 255 and qmax(4, signed=False) == 15
    for bad in (1, 9):
        with pytest.raises(ValueError):
            qmax(bad)


@pytest.mark.parametrize("granularity, axis, block, shape, scale_shape", [
    ("tensor", 0, None, (6, 5), ()),
    ("channel", 0, None, (6, 3, 3, 3), (6,)),
    ("channel", 1, None, (7, 6), (6,)),              # MatMul [Cin, Cout]: channels on axis 1
    ("block", 1, 4, (6, 10), (6, 3)),                # Gemm [Cout, Cin], partial last block
    ("block", 0, 8, (32, 5), (4, 5)),                # MatMul [Cin, Cout] blocked along Cin
    ("block", 1, 2, (4, 5, 3, 3), (4, 3, 3, 3)),     # Conv blocked along Cin/g
])
def test_scale_layouts_and_rounding_bound(granularity, axis, block, shape, scale_shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    for bits in (8, 4, 2):
        codes, scale = quantize_weight(w, bits, granularity, axis, block)
        assert tuple(scale.shape) == scale_shape and codes.shape == w.shape
        _check_rounding_bound(w, codes, scale, bits, axis, block)
        # Max-abs scales: some code of every group reaches +-qmax.
        assert int(codes.abs().max()) == qmax(bits)


def test_partial_last_block_uses_its_own_max():
    w = torch.arange(1.0, 11.0).repeat(2, 1)  # [2, 10], blocks of 4: [1..4], [5..8], [9, 10]
    scale = choose_scale(w, 8, "block", axis=1, block_size=4)
    expected = torch.tensor([4.0, 8.0, 10.0]) / 127
    assert torch.equal(scale, expected.to(torch.float32).repeat(2, 1))


def test_zero_groups_get_a_tiny_positive_scale_and_zero_codes():
    w = torch.randn(4, 8)
    w[2] = 0.0
    for granularity, block in (("channel", None), ("block", 4), ("tensor", None)):
        wz = torch.zeros_like(w) if granularity == "tensor" else w
        codes, scale = quantize_weight(wz, 4, granularity, axis=0 if block is None else 1,
                                       block_size=block)
        assert bool(torch.isfinite(scale).all()) and bool((scale > 0).all())
        zero_rows = codes[2] if granularity != "tensor" else codes
        assert not zero_rows.any()
    assert float(choose_scale(torch.zeros(3, 3), 8)[0]) == MIN_SCALE


def test_round_half_to_even_and_clamp():
    codes = quantize(torch.tensor([0.5, 1.5, 2.5, -2.5, 300.0, -300.0]), torch.tensor(1.0), 8)
    assert codes.tolist() == [0, 2, 2, -2, 127, -127]


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_clip_search_never_worse_than_maxabs(bits):
    torch.manual_seed(bits)
    # Laplace rows of 256: the max sits far in the tail, where clipping pays at low bits.
    w = torch.distributions.Laplace(0.0, 1.0).sample((16, 256)) * torch.rand(16, 1)
    err = {}
    for search in (False, True):
        codes, scale = quantize_weight(w, bits, "channel", clip_search=search)
        assert int(codes.abs().max()) <= qmax(bits)
        err[search] = (w - dequantize(codes, scale)).square().sum(dim=1)
    assert bool((err[True] <= err[False] * (1 + 1e-6)).all())
    if bits <= 4:
        assert float(err[True].sum()) < 0.95 * float(err[False].sum())


def test_clip_search_is_vectorised_per_block():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(3))
    s_block = choose_scale(w, 3, "block", axis=1, block_size=16, clip_search=True)
    s_chan = choose_scale(w[:, :16], 3, "channel", axis=0, clip_search=True)
    assert torch.equal(s_block[:, 0], s_chan)  # the first block searched alone gives the same


@pytest.mark.parametrize("granularity, axis, block, shape", [
    ("tensor", None, None, (5, 4, 3, 3)),
    ("channel", 0, None, (5, 4, 3, 3)),
    ("channel", 1, None, (9, 7)),
    ("block", 1, 4, (6, 10)),
    ("block", 0, 3, (10, 6)),
])
def test_dequantize_agrees_exactly_with_weight_order(granularity, axis, block, shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(7)) * 0.05
    codes, scale = quantize_weight(w, 6, granularity, 0 if axis is None else axis, block)
    order = WeightOrder(codes.numpy(), scale.numpy(), 6, axis, block)
    ours = dequantize(codes, scale, 0 if axis is None else axis, block)
    assert ours.dtype == torch.float32
    assert np.array_equal(order.dequantize(), ours.numpy())


def test_float64_weights_give_float32_scales():
    w = torch.randn(4, 6, dtype=torch.float64)
    codes, scale = quantize_weight(w, 8)
    assert scale.dtype == torch.float32 and codes.dtype == torch.int8
    _check_rounding_bound(w, codes, scale, 8, 0, None)


def test_bad_arguments():
    w = torch.randn(4, 6)
    with pytest.raises(ValueError, match="granularity"):
        choose_scale(w, 8, "row")
    with pytest.raises(ValueError, match="block_size"):
        choose_scale(w, 8, "block", axis=1)
    with pytest.raises(ValueError, match="axis"):
        choose_scale(w, 8, "channel", axis=2)


@st.composite
def _quant_cases(draw):
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=rank, max_size=rank)))
    granularity = draw(st.sampled_from(["tensor", "channel", "block"]))
    axis = draw(st.integers(0, rank - 1))
    block = draw(st.integers(1, shape[axis] + 2)) if granularity == "block" else None
    bits = draw(st.integers(2, 8))
    magnitude = 10.0 ** draw(st.integers(-6, 3))
    seed = draw(st.integers(0, 2 ** 16))
    heavy = draw(st.booleans())
    return shape, granularity, axis, block, bits, magnitude, seed, heavy


@settings(max_examples=50, deadline=None)
@given(_quant_cases())
def test_property_codes_in_range_and_half_step_error(case):
    shape, granularity, axis, block, bits, magnitude, seed, heavy = case
    rng = np.random.default_rng(seed)
    w = rng.standard_t(2, shape) if heavy else rng.standard_normal(shape)
    w = torch.from_numpy((w * magnitude).astype(np.float32))
    codes, scale = quantize_weight(w, bits, granularity, axis, block)
    _check_rounding_bound(w, codes, scale, bits, axis, block)
    assert bool((scale > 0).all()) and bool(torch.isfinite(scale).all())
    if block:
        assert scale.shape[axis] == math.ceil(shape[axis] / block)
    # Clip search: still in range, never a worse total error than max-abs.
    codes_s, scale_s = quantize_weight(w, bits, granularity, axis, block, clip_search=True)
    assert int(codes_s.abs().max()) <= qmax(bits)
    err_s = (w.double() - dequantize(codes_s, scale_s, axis, block).double()).square().sum()
    err_m = (w.double() - dequantize(codes, scale, axis, block).double()).square().sum()
    assert float(err_s) <= float(err_m) * (1 + 1e-5) + 1e-30


# -- --rounding dc: every conv kernel keeps its code sum (quantizer.preserve_sums) --------------
def test_preserve_sums_keeps_each_kernel_sum_within_one_step():
    from calib_free.weights.quantizer import quantize

    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 8, 3, 3, generator=g) * 0.1
    scale = choose_scale(w, 8)
    nearest = quantize(w, scale, 8).double()
    dc = quantize(w, scale, 8, sum_dims=(2, 3)).double()
    t = (w / broadcast_scale(scale, w.shape, 0, None)).double()
    assert torch.equal(dc.sum((2, 3)), torch.round(t.sum((2, 3))))  # every (out, in) kernel
    assert (dc - t).abs().max() < 1.0  # each code within one step of the weight
    # only as many codes move as the kernel's sum was off, each by one step
    moved = (dc != nearest).sum((2, 3)).double()
    assert torch.equal(moved, (torch.round(t.sum((2, 3))) - nearest.sum((2, 3))).abs())
    assert (nearest.sum((2, 3)) != torch.round(t.sum((2, 3)))).any()  # the test has work to do


def test_preserve_sums_respects_the_clamp():
    from calib_free.weights.quantizer import quantize

    w = torch.full((1, 1, 3, 3), 0.999)  # every code at qmax: nothing can move up
    w[0, 0, 0, 0] = 1.0
    codes = quantize(w, choose_scale(w, 8), 8, sum_dims=(2, 3))
    assert int(codes.max()) <= 127 and int(codes.min()) >= -127


def test_preserve_sums_lowers_the_error_on_a_flat_input():
    """What it is for: a smooth input (a flat patch) sees the kernel's summed error."""
    from calib_free.weights.quantizer import quantize

    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 4, 3, 3, generator=g) * 0.05
    scale = choose_scale(w, 4)  # coarse grid: the sum errors are large
    x = torch.ones(1, 4, 8, 8)
    ref = torch.nn.functional.conv2d(x, w)
    err = {}
    for dims in (None, (2, 3)):
        w_hat = dequantize(quantize(w, scale, 4, sum_dims=dims), scale)
        err[dims] = float((torch.nn.functional.conv2d(x, w_hat) - ref).square().mean())
    assert err[(2, 3)] < 0.25 * err[None], err


def test_expansion_keeps_sums_in_the_last_order_only():
    from calib_free.weights.expansion import expand_uniform

    g = torch.Generator().manual_seed(2)
    w = torch.randn(8, 3, 3, 3, generator=g)
    plain = expand_uniform(w, 4, 2)
    dc = expand_uniform(w, 4, 2, sum_dims=(2, 3))
    assert torch.equal(plain[0][0], dc[0][0])  # order 1 rounds to nearest
    assert not torch.equal(plain[1][0], dc[1][0])
    approx = sum(dequantize(c, s).double() for c, s in dc)
    step2 = broadcast_scale(dc[1][1], w.shape, 0, None).double()
    assert ((w.double() - approx).abs() < step2 + 1e-9).all()
