"""Data-free bias correction: the expected output shift equals what a real conv produces on the
mean input, and subtracting it restores the float layer's expected output."""

import pytest
import torch
import torch.nn.functional as F

from calib_free.refine.bias_correction import expected_output_shift
from calib_free.weights.expansion import expand_uniform
from calib_free.weights.quantizer import dequantize


@pytest.mark.parametrize("cin, cout, groups, k", [(4, 6, 1, 3), (6, 4, 2, 3), (8, 8, 8, 3),
                                                  (8, 16, 8, 5), (3, 5, 1, 1)])
def test_shift_equals_conv_of_the_mean_input(cin, cout, groups, k):
    g = torch.Generator().manual_seed(groups * 100 + k)
    delta = torch.randn(cout, cin // groups, k, k, generator=g, dtype=torch.float64) * 1e-2
    mean_in = torch.randn(cin, generator=g, dtype=torch.float64)
    x = mean_in[None, :, None, None].expand(1, cin, 9, 9)
    y = F.conv2d(x, delta, groups=groups)  # no padding: every pixel is interior
    shift = expected_output_shift(delta, mean_in, groups=groups)
    assert shift.shape == (cout,) and shift.dtype == torch.float64
    assert torch.allclose(y[0, :, 4, 4], shift, rtol=1e-12, atol=1e-15)
    assert torch.allclose(y[0], shift[:, None, None].expand_as(y[0]), rtol=1e-12, atol=1e-15)


def test_shift_of_a_linear_weight():
    delta, mean_in = torch.randn(7, 5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    assert torch.allclose(expected_output_shift(delta, mean_in), delta @ mean_in)


def test_correction_restores_the_expected_output():
    """W4 conv on inputs with a large mean (post-ReLU): the corrected bias brings the output mean
    back to the float one."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 8, 3, 3, generator=g) * 0.2
    b = torch.randn(16, generator=g)
    mean_in = torch.rand(8, generator=g) * 2 + 1
    x = mean_in[None, :, None, None] + 0.3 * torch.randn(8, 8, 64, 64, generator=g)
    (codes, scale), = expand_uniform(w, 4, 1)
    w_hat = dequantize(codes, scale)
    shift = expected_output_shift(w_hat - w, mean_in)
    ref = F.conv2d(x, w, b).mean((0, 2, 3))
    raw = F.conv2d(x, w_hat, b).mean((0, 2, 3))
    fixed = F.conv2d(x, w_hat, b - shift).mean((0, 2, 3))
    assert float((fixed - ref).abs().max()) < 0.1 * float((raw - ref).abs().max())


def test_shift_rejects_channel_mismatch():
    with pytest.raises(ValueError, match="input channels"):
        expected_output_shift(torch.randn(4, 3, 3, 3), torch.zeros(4))
