"""REx residual expansion: the exact error bound max|W - W_hat(K)| <= max|W| / (2^b - 2)^K per
channel, own scales per order, operator-agnostic Q, and the weight error metrics."""

import math

import pytest
import torch

from calib_free.weights.expansion import expand_residuals, expand_uniform, stop_orders, weight_error
from calib_free.weights.quantizer import dequantize, quantize_weight

EPS32 = float(torch.finfo(torch.float32).eps)


def _weights(kind: str, shape=(32, 16, 3, 3)) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g) * 0.1
    if kind == "heavy":  # Student-t(2) tails and a few 50x outliers, as in transformer layers
        w = torch.distributions.StudentT(2.0).sample(shape) * 0.02
        w.view(-1)[torch.randint(0, w.numel(), (20,), generator=g)] *= 50
    return w


def _reconstruct(orders, axis=0, block_size=None) -> torch.Tensor:
    return sum(dequantize(c, s, axis, block_size).double() for c, s in orders)


@pytest.mark.parametrize("kind", ["normal", "heavy"])
@pytest.mark.parametrize("bits", [8, 6, 5, 4, 3])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_rex_error_bound_per_channel(kind, bits, k):
    w = _weights(kind)
    orders = expand_uniform(w, bits, k)
    assert len(orders) == k
    err = (w.double() - _reconstruct(orders)).abs().flatten(1).amax(dim=1)
    top = w.double().abs().flatten(1).amax(dim=1)
    bound = top / (2 ** bits - 2) ** k
    # Float32 slack: each order sees its residual rounded to float32 and a float32 scale, an error
    # of a few ulps of the last residual (max |W| / (2^b - 2)^(K-1)); relative to the bound that is
    # about 4 eps32 * (2^b - 2), 1.2e-4 at 8 bits.
    slack = 4 * EPS32 * top / (2 ** bits - 2) ** (k - 1)
    assert bool((err <= bound + slack).all()), float((err / bound).max())


def test_rex_bound_per_block():
    w = _weights("heavy", (16, 40))
    orders = expand_uniform(w, 4, 2, "block", axis=1, block_size=16)
    err = (w.double() - _reconstruct(orders, 1, 16)).abs()
    for j0 in range(0, 40, 16):
        blk = slice(j0, j0 + 16)
        top = w[:, blk].double().abs().amax(dim=1)
        assert bool((err[:, blk].amax(dim=1) <= top / 14 ** 2 + 4 * EPS32 * top / 14).all())


def test_each_order_has_its_own_smaller_scales():
    w = _weights("heavy")
    (c1, s1), (c2, s2) = expand_uniform(w, 4, 2)
    assert s1.shape == s2.shape == (w.shape[0],)
    assert bool((s2 <= s1 / 14 * (1 + 1e-5)).all())  # residual <= s1/2, so s2 <= s1 / (2 qmax)
    # The outlier inflates s1 and most weights round to 0 in R1; R2 recovers them.
    assert float((c1 == 0).float().mean()) > 0.5 > float((c2 == 0).float().mean())


def test_expansion_is_operator_agnostic():
    calls = []

    def q(r):  # per-tensor 3-bit, any (codes, scale) pair works
        calls.append(r.clone())
        return quantize_weight(r, 3, "tensor")

    w = _weights("normal", (8, 8))
    orders = expand_residuals(w, 3, q, lambda c, s: c.float() * s)
    assert len(orders) == len(calls) == 3
    assert torch.equal(calls[0], w)
    assert torch.allclose(calls[1], w - orders[0][0].float() * orders[0][1])
    errors = [weight_error(w, _reconstruct(orders[:k]))["rel_l2"] for k in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]
    calls.clear()
    final = []
    two = expand_residuals(w, 2, q, lambda c, s: c.float() * s,
                           final_quantize_fn=lambda r: final.append(r) or quantize_weight(r, 8))
    assert len(calls) == len(final) == 1  # order 1 by quantize_fn, order 2 by the final one
    assert torch.equal(final[0], w - two[0][0].float() * two[0][1])
    with pytest.raises(ValueError):
        expand_residuals(w, 0, q, lambda c, s: c * s)


@pytest.mark.parametrize("granularity", ["channel", "tensor"])
@pytest.mark.parametrize("bits", [8, 4, 3])
def test_clip_search_only_refines_the_last_order(granularity, bits):
    w = _weights("heavy", (32, 64))
    plain = expand_uniform(w, bits, 2, granularity)
    searched = expand_uniform(w, bits, 2, granularity, clip_search=True)
    # Order 1 keeps max-abs scales (its residual stays within half a step for order 2) ...
    assert torch.equal(plain[0][0], searched[0][0]) and torch.equal(plain[0][1], searched[0][1])
    # ... and searching order 2's clip never loses against max-abs.
    err = [weight_error(w, _reconstruct(o))["rel_l2"] for o in (plain, searched)]
    assert err[1] <= err[0] * (1 + 1e-6)
    one = expand_uniform(w, bits, 1, granularity, clip_search=True)
    assert weight_error(w, _reconstruct(one))["rel_l2"] <= weight_error(
        w, _reconstruct(plain[:1]))["rel_l2"] * (1 + 1e-6)


def test_w4_k2_is_close_to_w8():
    w = _weights("normal")
    w4k2 = weight_error(w, _reconstruct(expand_uniform(w, 4, 2)))
    w8 = weight_error(w, _reconstruct(expand_uniform(w, 8, 1)))
    assert w4k2["sqnr_db"] > w8["sqnr_db"] - 6  # each order buys about 2^b


def test_zero_weight_expands_to_zero_codes():
    orders = expand_uniform(torch.zeros(4, 3), 4, 3)
    assert all(not c.any() and bool((s > 0).all()) for c, s in orders)


def test_weight_error_metrics():
    w, w_hat = torch.tensor([3.0, 4.0]), torch.tensor([3.0, 3.0])
    e = weight_error(w, w_hat)
    assert e["rel_l2"] == pytest.approx(0.2) and e["max_abs"] == pytest.approx(1.0)
    assert e["sqnr_db"] == pytest.approx(10 * math.log10(25.0))
    exact = weight_error(w, w)
    assert exact["rel_l2"] == 0.0 and exact["max_abs"] == 0.0 and exact["sqnr_db"] == math.inf
    assert weight_error(torch.zeros(2), torch.zeros(2))["rel_l2"] == 0.0
    assert weight_error(torch.zeros(2), torch.ones(2))["rel_l2"] == math.inf


@pytest.mark.parametrize("k", [2, 3])
def test_stop_orders_are_each_order_quantized_as_the_last(k):
    """stop_orders[j] is what an expansion of j + 1 orders would have made its last order: with
    sum-preserving rounding, the K=j+1 expansion's own last codes; the last entry is unchanged."""
    w = _weights("normal")
    dims = (2, 3)
    orders = expand_uniform(w, 4, k, sum_dims=dims)
    final = lambda r: quantize_weight(r, 4, sum_dims=dims)  # noqa: E731
    stops = stop_orders(w, orders, final, dequantize)
    assert len(stops) == k and all(a is b for a, b in zip(stops[-1], orders[-1]))
    for j in range(k - 1):
        shorter = expand_uniform(w, 4, j + 1, sum_dims=dims)
        assert torch.equal(stops[j][0], shorter[j][0]) and torch.equal(stops[j][1], shorter[j][1])
        # the sum-preserving form moved codes off nearest, and is the better place to stop
        assert not torch.equal(stops[j][0], orders[j][0])
        kernel_sum = lambda o: _reconstruct(orders[:j] + [o]).sum(dims)  # noqa: E731
        assert (kernel_sum(stops[j]) - w.double().sum(dims)).abs().mean() < \
            (kernel_sum(orders[j]) - w.double().sum(dims)).abs().mean()
