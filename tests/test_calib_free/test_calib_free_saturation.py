"""calib_free.weights.saturation: pair-limited int8 codes (what a pre-VNNI int8 kernel computes
exactly).

The math alone, on random weights; that OpenVINO's kernels pair the way the module assumes is
proved on the runtime in tests/test_backends/test_int8_isa.py."""

import math

import pytest
import torch

from calib_free.weights.quantizer import choose_scale, dequantize, quantize, quantize_weight
from calib_free.weights.saturation import (PAIR_LIMIT, PairLimit, from_pairs, limit_pairs,
                                           overflowing_pairs, pair_room, pair_sums, safe_scale,
                                           to_pairs, worst_case_sum)

CONV = PairLimit(in_axis=1, out_axis=0)     # Conv [Cout, Cin, kh, kw]
MATMUL = PairLimit(in_axis=0, out_axis=1)   # MatMul [Cin, Cout]


def _weights(shape, seed=0, heavy=False):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    if heavy:  # a few large same-sign entries side by side: pairs that overflow
        w = w * (1 + 3 * (torch.rand(shape, generator=g) > 0.9))
    return w


def test_limit_is_what_int16_holds():
    assert PAIR_LIMIT == 128
    assert 255 * PAIR_LIMIT <= 32767 < 255 * (PAIR_LIMIT + 1)


@pytest.mark.parametrize("shape,rule", [((6, 5, 3, 3), CONV), ((7, 4, 1, 1), CONV),
                                        ((9, 6), MATMUL), ((5, 1, 3, 3), CONV)])
def test_pairs_round_trip(shape, rule):
    w = _weights(shape)
    p = to_pairs(w, rule)
    assert p.shape[:3] == (shape[rule.out_axis], (shape[rule.in_axis] + 1) // 2, 2)
    assert torch.equal(from_pairs(p, w.shape, rule), w)


def test_pairs_are_adjacent_input_channels_at_one_tap():
    codes = torch.zeros(2, 4, 3, 3, dtype=torch.int8)
    codes[0, 0, 1, 2] = codes[0, 1, 1, 2] = 100      # channels 0 and 1, same tap: one pair
    codes[1, 1, 0, 0] = codes[1, 2, 0, 0] = 100      # channels 1 and 2: two pairs
    codes[1, 0, 2, 1] = codes[1, 0, 2, 2] = 100      # one channel, two taps: two pairs
    assert overflowing_pairs(codes, CONV) == 1
    pos, _ = pair_sums(codes, CONV)
    assert int(pos[0].max()) == 200 and int(pos[1].max()) == 100


@pytest.mark.parametrize("rule,shape", [(CONV, (16, 24, 3, 3)), (CONV, (32, 17, 1, 1)),
                                        (MATMUL, (40, 12))])
def test_quantize_weight_leaves_no_pair_over_the_limit(rule, shape):
    w = _weights(shape, heavy=True)
    plain, _ = quantize_weight(w, 8, "channel", rule.out_axis)
    assert overflowing_pairs(plain, rule) > 0  # the test weights do overflow unfixed
    codes, scale = quantize_weight(w, 8, "channel", rule.out_axis, pairs=rule)
    assert overflowing_pairs(codes, rule) == 0
    assert worst_case_sum(codes, rule) <= 32767
    assert int(codes.abs().max()) <= 127


def test_untouched_channels_keep_codes_and_scale_bit_for_bit():
    signs = torch.tensor([1.0, -1.0] * 8).reshape(1, 16, 1, 1)
    w = _weights((8, 16, 1, 1)).abs() * signs  # every pair of mixed sign: none overflows
    w[0, 0] = w[0, 1] = 3 * w.abs().max()  # only channel 0 has a pair over the limit
    plain, plain_scale = quantize_weight(w, 8, "channel", 0)
    codes, scale = quantize_weight(w, 8, "channel", 0, pairs=CONV)
    assert torch.equal(codes[1:], plain[1:]) and torch.equal(scale[1:], plain_scale[1:])
    assert overflowing_pairs(codes, CONV) == 0


def test_safe_scale_beats_halving_and_plain_projection():
    """The chosen codes lose less than NNCF's overflow fix (7-bit weights: the scale doubled)
    and than only projecting the pairs at the max-abs scale, and at most 1 bit's worth."""
    w = _weights((64, 64, 1, 1), heavy=True)
    base = choose_scale(w, 8, "channel", 0)

    def err(scale, pairs):
        codes = quantize(w, scale, 8, 0, pairs=pairs)
        return float((w - dequantize(codes, scale, 0)).square().sum())

    safe = err(safe_scale(w, base, 127, CONV), CONV)
    assert safe < err(base, CONV)                       # projection alone
    assert safe < 0.5 * err(base * 2, None)             # 7 bits (halved codes)
    assert safe > err(base, None)                       # it does cost something


def test_sum_preserving_rounding_keeps_the_limit():
    w = _weights((16, 32, 3, 3), heavy=True)
    codes, scale = quantize_weight(w, 8, "channel", 0, sum_dims=(2, 3), pairs=CONV)
    assert overflowing_pairs(codes, CONV) == 0
    t = w / scale.reshape(-1, 1, 1, 1)
    # each kernel's code sum is round(sum of t) wherever the limit left room
    gap = (codes.double().sum((2, 3)) - torch.round(t.double().sum((2, 3)))).abs()
    assert float((gap == 0).double().mean()) > 0.95


def test_pair_room_masks():
    codes = torch.zeros(1, 2, 1, 1, dtype=torch.int8)
    codes[0, 0] = 100
    codes[0, 1] = 28  # sum 128: at the limit
    up, down = pair_room(codes, CONV)
    assert not up[0, 0] and not up[0, 1] and down[0, 0] and down[0, 1]
    codes[0, 1] = -28
    up, down = pair_room(codes, CONV)
    assert up.all() and down.all()


def test_projection_moves_both_codes_of_a_pair_evenly():
    t = torch.tensor([[[[120.2]], [[40.4]]]])  # [1, 2, 1, 1]: one pair, sum 160.6
    codes = limit_pairs(t, torch.round(t), 127, CONV)
    a, b = float(codes[0, 0]), float(codes[0, 1])
    assert a + b == 128 and math.isclose(a - b, 80, abs_tol=1)  # both moved by ~16
    neg = limit_pairs(-t, torch.round(-t), 127, CONV)
    assert torch.equal(neg, -codes)


def test_below_eight_bits_nothing_changes():
    w = _weights((8, 16, 1, 1), heavy=True)
    assert torch.equal(quantize_weight(w, 6, "channel", 0)[0],
                       quantize_weight(w, 6, "channel", 0, pairs=CONV)[0])


def test_per_tensor_scale_and_bad_arguments():
    w = _weights((8, 16, 1, 1), heavy=True)
    codes, scale = quantize_weight(w, 8, "tensor", 0, pairs=CONV)
    assert scale.ndim == 0 and overflowing_pairs(codes, CONV) == 0
    with pytest.raises(ValueError):
        quantize_weight(w, 8, "channel", 1, pairs=CONV)  # scales on another axis
    with pytest.raises(ValueError):
        to_pairs(w, PairLimit(in_axis=0, out_axis=0))
