"""Calibration-based refinements: reconstruction data, FlexRound, ERQ (pure torch, tiny layers)."""

import pytest
import torch

from calib_free.refine.erq import aqer, erq, wqer
from calib_free.refine.flexround import dequantize_orders, flexround, rtn_scale
from calib_free.refine.reconstruction import centered_shift, layer_data, optimal_shift, output_error
from calib_free.weights.quantizer import qmax


def _fake_quant(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    s = x.abs().max() / qmax(bits)
    return torch.clamp(torch.round(x / s), -qmax(bits), qmax(bits)) * s


def _problem(g=1, o=16, d=24, rows=512, seed=0, outliers=True):
    """Correlated inputs with a few large channels (as real activations have), a weight."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(g, d, d, generator=gen) / d ** 0.5 + torch.eye(d)
    x = torch.randn(g, rows, d, generator=gen) @ mix + 0.3
    if outliers:
        x[..., :2] *= 6
    w = torch.randn(g, o, d, generator=gen) * 0.1
    return x, _fake_quant(x), w


def _rtn(w, bits):
    s = rtn_scale(w, bits, "channel")
    return [(torch.clamp(torch.round(w / s), -qmax(bits), qmax(bits)).to(torch.int8), s)]


def test_reduced_data_gives_the_exact_output_error():
    x, xq, w = _problem(g=2, rows=300)
    data = layer_data(x, xq, w)
    assert data.m.shape[1] < 300  # rows were reduced
    w_hat = dequantize_orders(_rtn(w, 4), w.shape[-1], None)
    shift = torch.randn(2, 16, dtype=torch.float64)
    direct = (x.double() @ w.double().transpose(-1, -2)
              - (xq.double() @ w_hat.transpose(-1, -2) - shift[:, None, :])).square().sum()
    got = output_error(data, w.double() - w_hat, shift)
    assert float(got) == pytest.approx(float(direct), rel=1e-9)
    # the centred shift is the data-free bias correction: -(W - W_hat) mean
    mean = torch.randn(2, 24, dtype=torch.float64)
    assert torch.allclose(centered_shift(w.double() - w_hat, mean),
                          ((w_hat - w.double()) @ mean[..., None])[..., 0])


def test_optimal_shift_minimises_the_error():
    x, xq, w = _problem()
    data = layer_data(x, xq, w)
    delta = w.double() - dequantize_orders(_rtn(w, 3), 24, None)
    c = optimal_shift(data, delta)
    best = float(output_error(data, delta, c))
    for _ in range(5):
        assert best <= float(output_error(data, delta, c + 1e-3 * torch.randn_like(c))) + 1e-12


@pytest.mark.parametrize("bits,groups,orders", [(4, 1, 1), (3, 4, 1), (4, 1, 2)])
def test_flexround_never_increases_the_error_and_usually_lowers_it(bits, groups, orders):
    x, xq, w = _problem(g=groups, o=8, d=18, rows=400, seed=bits + groups)
    data = layer_data(x, xq, w)
    rtn = _rtn(w, bits)
    if orders == 2:
        residual = w - dequantize_orders(rtn, 18, None).float()
        rtn = rtn + _rtn(residual, bits)
    mean = xq.double().mean(dim=1)
    res = flexround(w, rtn, bits, data, mean=mean, kernel_elems=9, iters=60, lr=1e-2)
    assert res.error_after <= res.error_before
    # it bought something (measured 0.69 / 0.67 / 0.96: order 2 leaves little to gain)
    assert res.error_after < (0.85 if orders == 1 else 0.99) * res.error_before
    # the returned orders are ordinary codes and scales, and the reported error is theirs
    for codes, scale in res.orders:
        assert codes.dtype == torch.int8 and int(codes.abs().max()) <= qmax(bits)
        assert scale.dtype == torch.float32 and bool((scale > 0).all())
    delta = w.double() - dequantize_orders(res.orders, 18, None)
    assert float(output_error(data, delta, centered_shift(delta, mean))) == \
        pytest.approx(res.error_after, rel=1e-9)


def test_flexround_keeps_round_to_nearest_when_nothing_helps():
    """With zero steps the best step is step 0: round-to-nearest, returned unchanged."""
    x, xq, w = _problem()
    data = layer_data(x, xq, w)
    rtn = _rtn(w, 4)
    res = flexround(w, rtn, 4, data, iters=0)
    assert res.error_after == res.error_before
    assert torch.equal(res.orders[0][0], rtn[0][0]) and torch.equal(res.orders[0][1], rtn[0][1])


def test_flexround_respects_sparse_order_masks_and_block_scales():
    x, xq, w = _problem(o=8, d=32)
    data = layer_data(x, xq, w)
    s = rtn_scale(w, 4, "block", 8)
    assert s.shape == (1, 8, 4)
    codes = torch.clamp(torch.round(w / s.repeat_interleave(8, -1)), -7, 7).to(torch.int8)
    residual = w - codes.float() * s.repeat_interleave(8, -1)
    mask = torch.zeros(1, 8, 1, dtype=torch.bool)
    mask[:, :3] = True
    s2 = rtn_scale(residual, 4, "block", 8)
    c2 = (torch.clamp(torch.round(residual / s2.repeat_interleave(8, -1)), -7, 7)
          * mask).to(torch.int8)
    res = flexround(w, [(codes, s), (c2, s2)], 4, data, granularity="block", block_size=8,
                    masks=[None, mask], iters=30)
    assert res.error_after <= res.error_before
    assert int(res.orders[1][0][:, 3:].abs().max()) == 0  # uncovered channels stay empty
    assert res.orders[0][1].shape == (1, 8, 4)


def test_aqer_matches_a_direct_ridge_least_squares_solve():
    x, xq, w = _problem(o=6, d=10, rows=200)
    data = layer_data(x, xq, w)
    lam = 1e-2
    w_new, db = aqer(data, w, lam)
    # direct: min ||A D - (y - A [W, b]^T)||^2 + lam_eff ||D||^2 on the raw rows
    a = torch.cat([xq[0].double(), torch.ones(200, 1, dtype=torch.float64)], dim=1)
    target = (x[0].double() - xq[0].double()) @ w[0].double().T
    lam_eff = lam * float(torch.diagonal(a.T @ a).mean())
    aug_a = torch.cat([a, lam_eff ** 0.5 * torch.eye(11, dtype=torch.float64)])
    aug_t = torch.cat([target, torch.zeros(11, 6, dtype=torch.float64)])
    sol = torch.linalg.lstsq(aug_a, aug_t).solution  # [D+1, O]
    assert torch.allclose(w_new[0] - w[0].double(), sol[:10].T, atol=1e-9)
    assert torch.allclose(db[0], sol[10], atol=1e-9)
    # and without ridge it is the plain least-squares solve
    w0, _ = aqer(data, w, 0.0)
    plain = torch.linalg.lstsq(a, target).solution
    assert torch.allclose(w0[0] - w[0].double(), plain[:10].T, atol=1e-8)


def test_wqer_lowers_the_rounding_proxy_and_erq_beats_round_to_nearest():
    x, xq, w = _problem(o=16, d=32, rows=600)
    data = layer_data(x, xq, w)
    h = data.gram()[..., :32, :32] / data.rows
    s = rtn_scale(w, 4, "channel").double()
    rtn_codes = torch.clamp(torch.round(w.double() / s), -7, 7)

    def proxy(codes):
        delta = w.double() - s * codes.double()
        return float((delta @ h * delta).sum())

    codes, scale = wqer(data, w, 4, lam=0.0, steps=100)
    assert proxy(codes) < proxy(rtn_codes)
    assert int(codes.abs().max()) <= 7 and torch.equal(scale, rtn_scale(w, 4, "channel"))
    res = erq(data, w, 4)
    delta = w.double() - dequantize_orders(_rtn(w, 4), 32, None)
    rtn_err = float(output_error(data, delta, optimal_shift(data, delta)))
    assert res.error_after < 0.9 * rtn_err
    delta = w.double() - res.codes.double() * res.scale.double()
    assert float(output_error(data, delta, res.shift)) == pytest.approx(res.error_after)
