"""Synthetic inputs: Gaussian/uniform draws, ZeroQ inputs on a tiny CNN, random tokens, 1/f noise
images in natural colour."""

import pytest
import torch
from torch import nn

from calib_free.synthetic import bn_matched_inputs, gaussian_inputs, random_tokens
from tiny_models import bn_stats_cnn

SHAPE = (1, 3, 16, 16)


def _stat_distance(model: nn.Sequential, x: torch.Tensor) -> float:
    """sum over BN layers of |batch mean - running mean| + |batch std - running std| (L2)."""
    total, h = 0.0, x
    for layer in model:
        if isinstance(layer, nn.BatchNorm2d):
            total += float(torch.linalg.vector_norm(h.mean((0, 2, 3)) - layer.running_mean))
            total += float(torch.linalg.vector_norm(h.std((0, 2, 3), unbiased=False)
                                                    - layer.running_var.sqrt()))
        h = layer(h)
    return total


def _run(model, **kw):
    losses = []
    x = bn_matched_inputs(model, SHAPE, n=8, steps=50, progress=lambda s, n, l: losses.append(l),
                          **kw)
    return x, losses


def test_zeroq_loss_drops_and_stats_approach_running_stats():
    model = bn_stats_cnn(realizable=True)
    with torch.no_grad():
        before = _stat_distance(model, gaussian_inputs(SHAPE, 8, seed=0))
    x, losses = _run(model)
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32
    assert len(losses) == 50
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        assert _stat_distance(model, x) < 0.5 * before


def test_zeroq_with_arbitrary_statistics_still_gets_closer():
    model = bn_stats_cnn(realizable=False)
    with torch.no_grad():
        before = _stat_distance(model, gaussian_inputs(SHAPE, 8, seed=0))
    x, losses = _run(model)
    assert losses[-1] < 0.7 * losses[0]  # measured 0.55: the unreachable means set the floor
    with torch.no_grad():
        assert _stat_distance(model, x) < before


def test_zeroq_bounded_inputs_stay_in_range():
    model = bn_stats_cnn(realizable=True)
    x, losses = _run(model, bounded=(-1.0, 2.0))
    assert float(x.min()) >= -1.0 and float(x.max()) <= 2.0
    assert losses[-1] < losses[0]


def test_zeroq_leaves_the_model_as_it_was_and_is_deterministic():
    model = bn_stats_cnn(realizable=True)
    model.train()
    model[0].weight.requires_grad_(True)
    model[3].weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x1 = bn_matched_inputs(model, SHAPE, n=4, steps=5, seed=3)
    x2 = bn_matched_inputs(model, SHAPE, n=4, steps=5, seed=3)
    assert torch.equal(x1, x2)
    assert not torch.equal(x1, bn_matched_inputs(model, SHAPE, n=4, steps=5, seed=4))
    assert model.training
    assert model[0].weight.requires_grad and not model[3].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # BN untouched


def test_zeroq_needs_batchnorm():
    with pytest.raises(ValueError, match="BatchNorm"):
        bn_matched_inputs(nn.Sequential(nn.Conv2d(3, 3, 1)), SHAPE, steps=1)
    with pytest.raises(ValueError, match="lo must be below hi"):
        bn_matched_inputs(bn_stats_cnn(True), SHAPE, steps=1, bounded=(1.0, 1.0))


def test_gaussian_inputs():
    x = gaussian_inputs((1, 3, 8, 8), 4, seed=1)
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32
    assert torch.equal(x, gaussian_inputs((1, 3, 8, 8), 4, seed=1))
    u = gaussian_inputs((2, 1000), 5, seed=0, lo=-2.0, hi=3.0)
    assert u.shape == (5, 1000) and float(u.min()) >= -2.0 and float(u.max()) <= 3.0
    assert abs(float(u.mean()) - 0.5) < 0.1
    with pytest.raises(ValueError):
        gaussian_inputs((1, 4), 2, lo=0.0)


def test_random_tokens():
    t = random_tokens(1000, 4, 32, seed=2)
    assert t.shape == (4, 32) and t.dtype == torch.int64
    assert int(t.min()) >= 0 and int(t.max()) < 1000
    assert torch.equal(t, random_tokens(1000, 4, 32, seed=2))
    s = random_tokens(30522, 3, 16, special=(101, 102))
    assert s[:, 0].tolist() == [101] * 3 and s[:, -1].tolist() == [102] * 3
    with pytest.raises(ValueError):
        random_tokens(10, 1, 1, special=(1, 2))


def test_pink_noise_images_fill_the_range_with_a_falling_spectrum():
    from calib_free.synthetic import pink_noise_images

    x = pink_noise_images((1, 3, 64, 64), 3, seed=1, value_range=(-1.0, 1.0))
    assert x.shape == (3, 3, 64, 64) and float(x.abs().max()) <= 1.0 + 1e-6
    assert float(x.flatten(1).abs().amax(1).min()) == pytest.approx(1.0, abs=1e-5)
    power = torch.fft.rfft2(x).abs().square().mean((0, 1))
    assert float(power[1:4, 1:4].mean()) > 20 * float(power[24:32, 24:32].mean())
    white = torch.rand(3, 3, 64, 64) * 2 - 1
    wp = torch.fft.rfft2(white).abs().square().mean((0, 1))
    assert float(wp[1:4, 1:4].mean()) < 3 * float(wp[24:32, 24:32].mean())
    z = pink_noise_images((1, 3, 32, 32), 2)  # no range: zero mean, unit std per image
    assert float(z.flatten(1).std(1).sub(1).abs().max()) < 1e-4
    assert torch.equal(pink_noise_images((1, 3, 32, 32), 2, seed=3),
                       pink_noise_images((1, 3, 32, 32), 2, seed=3))


def test_pink_noise_colour_images_have_natural_colour_statistics():
    from calib_free.synthetic import CHROMA_OCTAVE, RGB_EIGENVECTORS, pink_noise_images

    def corr(x, a, b):
        return float(torch.corrcoef(torch.stack([x[:, a].flatten(), x[:, b].flatten()]))[0, 1])

    x = pink_noise_images((1, 3, 128, 128), 4, seed=2, value_range=(-1.0, 1.0))
    assert x.shape == (4, 3, 128, 128) and float(x.abs().max()) <= 1.0 + 1e-6
    # ImageNet's covariance gives R-G 0.89, G-B 0.90, R-B 0.77: luminance dominates
    assert min(corr(x, 0, 1), corr(x, 1, 2)) > 0.85 and corr(x, 0, 2) > 0.7
    # the colour-opponent components hold detail only from octave CHROMA_OCTAVE up: at the
    # finest scales (periods of 2-4 pixels) luminance has far more power than colour
    v = torch.tensor(RGB_EIGENVECTORS)
    comp = torch.einsum("ij,nihw->njhw", v, x - x.mean((2, 3), keepdim=True))
    power = torch.fft.rfft2(comp).abs().square().mean(0)  # [3, H, W/2+1]
    fine = slice(32, 64)
    assert float(power[0, fine, fine].mean()) > 100 * float(power[1:, fine, fine].mean())
    assert 128 >> CHROMA_OCTAVE <= 32  # the band checked lies above the chroma octaves
    # without colour (or with another channel count) the channels are independent noise
    y = pink_noise_images((1, 3, 128, 128), 4, seed=2, value_range=(-1.0, 1.0), colour=False)
    assert abs(corr(y, 0, 1)) < 0.2
    g = pink_noise_images((1, 1, 64, 64), 2, seed=2)
    assert torch.equal(g, pink_noise_images((1, 1, 64, 64), 2, seed=2, colour=False))
    with pytest.raises(ValueError, match="3 channels"):
        pink_noise_images((1, 4, 32, 32), 1, colour=True)


def test_dead_leaves_images_are_flat_regions_with_sharp_edges():
    """Opaque discs of one colour each: most neighbouring pixels equal, and steps between
    regions at a large share of the range, which Gaussian 1/f noise never has; deterministic,
    within the range, drawn small and enlarged for large inputs."""
    from calib_free.synthetic import dead_leaves_images, pink_noise_images

    x = dead_leaves_images((1, 3, 64, 64), 3, seed=4, value_range=(0.0, 255.0))
    assert x.shape == (3, 3, 64, 64) and torch.equal(
        x, dead_leaves_images((1, 3, 64, 64), 3, seed=4, value_range=(0.0, 255.0)))
    assert float(x.min()) >= 0.0 and float(x.max()) <= 255.0
    for img in (x, pink_noise_images((1, 3, 64, 64), 3, 4, (0.0, 255.0))):
        steps = (img[..., 1:] - img[..., :-1]).abs()
        flat, sharp = float((steps == 0).float().mean()), float((steps > 64).float().mean())
        if img is x:
            assert flat > 0.5 and sharp > 0.01, (flat, sharp)
        else:
            assert flat < 0.01 and sharp < 0.001, (flat, sharp)
    grey = dead_leaves_images((1, 1, 600, 300), 1, value_range=(-1.0, 1.0))
    assert grey.shape == (1, 1, 600, 300)
    assert torch.equal(grey[..., 0::3, :], grey[..., 1::3, :])  # drawn at 200 x 100, x3
