"""Synthetic inputs without data (docs/algorithms.md section 3, items 2 and 3).

Random Gaussian or uniform images, natural synthetic images (1/f noise in natural colour,
pink_noise_images), ZeroQ-style inputs whose BatchNorm batch statistics match the running
statistics, and random token ids for token models. All deterministic given the seed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def gaussian_inputs(shape: tuple[int, ...], n: int, seed: int = 0, lo: float | None = None,
                    hi: float | None = None) -> torch.Tensor:
    """float32 [n, *shape[1:]]: uniform in [lo, hi] when both are given, else N(0, 1).

    shape includes the batch dim (ignored), as an input spec's concrete shape does.
    """
    if (lo is None) != (hi is None):
        raise ValueError("give both lo and hi (a uniform range) or neither (N(0, 1))")
    g = torch.Generator().manual_seed(seed)
    size = (n, *shape[1:])
    if lo is None:
        return torch.randn(size, generator=g)
    if not lo < hi:
        raise ValueError(f"input range [{lo}, {hi}]: lo must be below hi")
    return lo + (hi - lo) * torch.rand(size, generator=g)


def bn_matched_inputs(model: nn.Module, shape: tuple[int, ...], n: int = 8, steps: int = 100,
                      lr: float = 0.2, seed: int = 0,
                      bounded: tuple[float, float] | None = None,
                      progress: Callable[[int, int, float], None] | None = None) -> torch.Tensor:
    """float32 [n, *shape[1:]] inputs whose BatchNorm batch statistics match the running ones.

    ZeroQ: minimises sum over BN layers of ||mu_batch - mu_run||_2 + ||sigma_batch - sigma_run||_2
    (statistics over every dim but channels) with Adam and a cosine learning-rate decay.
    `bounded=(lo, hi)` keeps inputs in range through x = mid + half * tanh(v). The model runs in
    eval mode with its parameters frozen; its mode, requires_grad flags and hooks are restored
    afterwards. progress(step, steps, loss) is called after each step (step counts from 1).
    """
    bns = [m for m in model.modules() if isinstance(m, _BATCHNORMS) and m.running_mean is not None]
    if not bns:
        raise ValueError("bn_matched_inputs needs a torch.nn model with BatchNorm layers that "
                         "track running statistics (a TorchScript model hides them)")
    device = next(iter(model.parameters()), torch.empty(0)).device
    param = _initial_parameter(shape, n, seed, bounded, device)
    to_input = _input_map(bounded)
    losses: list[torch.Tensor] = []
    with _frozen_eval(model), _bn_hooks(bns, losses):
        opt = torch.optim.Adam([param], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
        for step in range(1, steps + 1):
            losses.clear()
            opt.zero_grad(set_to_none=True)
            model(to_input(param))
            if not losses:
                raise ValueError("no BatchNorm layer ran in the model's forward pass")
            loss = torch.stack(losses).sum()
            loss.backward()
            opt.step()
            sched.step()
            if progress is not None:
                progress(step, steps, float(loss.detach()))
    return to_input(param).detach().clone()


def random_tokens(vocab_size: int, n: int, length: int, seed: int = 0,
                  special: tuple[int, int] | None = None) -> torch.Tensor:
    """int64 [n, length] token ids drawn uniformly from [0, vocab_size).

    special=(cls_id, sep_id) puts [CLS] first and [SEP] last in every row, as a tokenizer would.
    """
    if special is not None and length < 2:
        raise ValueError(f"length {length}: [CLS] and [SEP] need at least 2 positions")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (n, length), generator=g, dtype=torch.int64)
    if special is not None:
        ids[:, 0], ids[:, -1] = special
    return ids


def _initial_parameter(shape: tuple[int, ...], n: int, seed: int,
                       bounded: tuple[float, float] | None, device: torch.device) -> torch.Tensor:
    """The optimised tensor: x itself (N(0, 1) start) or v with x = mid + half * tanh(v)."""
    if bounded is not None and not bounded[0] < bounded[1]:
        raise ValueError(f"bounded={bounded}: lo must be below hi")
    x = gaussian_inputs(shape, n, seed).to(device)
    # Bounded: start inside the range, away from tanh's flat tails where gradients vanish.
    return (0.5 * x if bounded is not None else x).requires_grad_(True)


def _input_map(bounded: tuple[float, float] | None) -> Callable[[torch.Tensor], torch.Tensor]:
    if bounded is None:
        return lambda v: v
    mid, half = (bounded[0] + bounded[1]) / 2, (bounded[1] - bounded[0]) / 2
    return lambda v: mid + half * torch.tanh(v)


@contextlib.contextmanager
def _bn_hooks(bns: list[nn.Module], losses: list[torch.Tensor]) -> Iterator[None]:
    """Forward hooks appending each BN layer's statistics-matching loss to `losses`."""

    def hook(bn: nn.Module, inputs: tuple, _output) -> None:
        x = inputs[0]
        dims = [d for d in range(x.ndim) if d != 1]  # all but channels
        std = torch.sqrt(x.var(dim=dims, unbiased=False) + bn.eps)  # eps: finite grad at var 0
        run_std = torch.sqrt(bn.running_var + bn.eps)
        losses.append(torch.linalg.vector_norm(x.mean(dim=dims) - bn.running_mean)
                      + torch.linalg.vector_norm(std - run_std))

    handles = [bn.register_forward_hook(hook) for bn in bns]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _frozen_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients for the duration; both restored on exit."""
    training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)


def random_token_lengths(n: int, max_length: int, seed: int = 0, median: float = 24.0,
                         spread: float = 0.6, min_length: int = 4) -> torch.Tensor:
    """int64 [n] sequence lengths in [min_length, max_length], log-normal around `median`
    tokens (a sentence; spread 0.6: most draws between 13 and 44 tokens), so synthetic token
    batches carry padding and attention masks the way tokenized sentences do."""
    if max_length < 1:
        raise ValueError(f"max_length {max_length} must be at least 1")
    g = torch.Generator().manual_seed(seed)
    raw = torch.exp(torch.randn(n, generator=g, dtype=torch.float64) * spread) * median
    return raw.round().clamp(min(min_length, max_length), max_length).to(torch.int64)


# Natural-image colour (used for 3-channel images): ImageNet's RGB pixel covariance, its
# eigenvalues and eigenvectors (columns; Krizhevsky et al. 2012, the "PCA lighting" constants).
# The first component is luminance (90 % of the variance), the other two colour opponents.
RGB_EIGENVALUES = (0.2175, 0.0188, 0.0045)
RGB_EIGENVECTORS = ((-0.5675, 0.7192, 0.4009),
                    (-0.5808, -0.0045, -0.8140),
                    (-0.5836, -0.6948, 0.4203))
CHROMA_OCTAVE = 3  # colour varies only at octaves k >= 3 (over 8 pixels and more)
OCTAVES = 6


def pink_noise_images(shape: tuple[int, ...], n: int, seed: int = 0,
                      value_range: tuple[float, float] | None = None,
                      colour: bool | None = None) -> torch.Tensor:
    """n images [n, C, H, W] of 1/f noise: octaves of Gaussian noise drawn at H/2^k x W/2^k
    (k = 0..5, at least 2 x 2), upsampled bilinearly and weighted by 2^-k's inverse size, so the
    amplitude spectrum falls as 1/f like a natural image's. Each image is scaled to fill
    `value_range` (lo, hi), or to zero mean and unit std when none is given.

    colour (default: C == 3): the channels are RGB with a natural image's colour statistics: a
    luminance field over every octave plus two colour-opponent fields over octaves >= 3 only,
    mixed by ImageNet's RGB principal components (RGB_EIGENVALUES / RGB_EIGENVECTORS). Without
    it every channel is independent noise at every scale.

    Why 1/f: the output sensitivity measured on white-noise images ranked EfficientNet-Lite0's
    layers badly (W4A8 --budget 1.1: 3.8 dB logits SQNR against 5.0 without the signal); on 1/f
    noise it reached 6.1 dB, next to 6.3 dB with the sensitivity measured on real photos.
    Why colour: on independent RGB noise the first depthwise convolution's input measured 1.5e-4
    output NSR, where the photos give 0.5-1.3e-3 (quantizing it is half the default build's
    output noise on photos); fine-grained colour noise, which photos lack, drives the stem's
    colour-opponent filters. With coarse colour it measures 1.2-2.4e-3 (docs/benchmarks.md)."""
    c, h, w = shape[-3], shape[-2], shape[-1]
    colour = (c == 3) if colour is None else colour
    if colour and c != 3:
        raise ValueError(f"colour images have 3 channels, not {c}")
    g = torch.Generator().manual_seed(seed)
    if colour:
        luma = _octaves(n, 1, h, w, g, 0)
        chroma = _octaves(n, 2, h, w, g, CHROMA_OCTAVE)
        fields = torch.cat([luma / luma.std().clamp_min(1e-12),
                            chroma / chroma.std().clamp_min(1e-12)], 1)
        mix = torch.tensor(RGB_EIGENVECTORS) * torch.tensor(RGB_EIGENVALUES).sqrt()
        out = torch.einsum("ij,njhw->nihw", mix, fields)
    else:
        out = _octaves(n, c, h, w, g, 0)
    if value_range is None:
        flat = out.flatten(1)
        return ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-12)
                ).reshape(out.shape)
    lo, hi = value_range
    peak = out.flatten(1).abs().amax(1).clamp_min(1e-12).reshape(n, 1, 1, 1)
    return (lo + hi) / 2 + out / peak * (hi - lo) / 2


def _octaves(n: int, c: int, h: int, w: int, g: torch.Generator, first: int) -> torch.Tensor:
    """Sum of octaves first..OCTAVES-1 of 1/f noise [n, c, h, w] (see pink_noise_images)."""
    out = torch.zeros(n, c, h, w)
    for k in range(OCTAVES):
        fh, fw = max(2, h >> k), max(2, w >> k)
        octave = torch.randn(n, c, fh, fw, generator=g)
        if k < first:
            continue  # drawn all the same: the octaves kept do not depend on `first`
        if (fh, fw) != (h, w):
            octave = torch.nn.functional.interpolate(octave, size=(h, w), mode="bilinear",
                                                     align_corners=False)
        out += octave * (2.0 ** k)  # coarser octave, larger amplitude: 1/f
    return out


DEAD_LEAVES_SIDE = 256


def dead_leaves_images(shape: tuple[int, ...], n: int, seed: int = 0,
                       value_range: tuple[float, float] | None = None,
                       colour: bool | None = None) -> torch.Tensor:
    """n images [n, C, H, W] of the dead-leaves model: opaque discs dropped one over another,
    radii drawn from p(r) ~ r^-3 between 1 pixel and half the image (scale invariance: a 1/f
    spectrum, as pink_noise_images), each of one colour (colour, default C == 3: natural colour
    from ImageNet's RGB principal components; else grey levels per channel) uniformly over
    `value_range` (default [-1, 1]). Unlike Gaussian 1/f noise they have what photos and
    printed pages have at every scale: sharp edges between flat regions at full contrast
    (Lee, Mumford and Huang, "Occlusion models for natural images", 2001). The larger discs
    fall first, so the small ones stay visible."""
    c, full_h, full_w = shape[-3], shape[-2], shape[-1]
    colour = (c == 3) if colour is None else colour
    if colour and c != 3:
        raise ValueError(f"colour images have 3 channels, not {c}")
    lo, hi = value_range if value_range is not None else (-1.0, 1.0)
    g = torch.Generator().manual_seed(seed)
    # drawn at most DEAD_LEAVES_SIDE on the long side (time grows with the pixels), then
    # enlarged by nearest neighbour: the edges stay steps at full contrast
    f = max(1, -(-max(full_h, full_w) // DEAD_LEAVES_SIDE))
    h, w = -(-full_h // f), -(-full_w // f)
    count = max(8, 2 * h * w // 32)  # enough to cover the image (most discs are small)
    r_min, r_max = 1.0, max(h, w) / 2.0
    ys, xs = torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32)
    mix = torch.tensor(RGB_EIGENVECTORS) * torch.tensor(RGB_EIGENVALUES).sqrt()
    out = torch.empty(n, c, h, w)
    for i in range(n):
        u = torch.rand(count, generator=g, dtype=torch.float64)
        radii = (r_min ** -2 - u * (r_min ** -2 - r_max ** -2)) ** -0.5  # inverse CDF of r^-3
        radii = radii.sort(descending=True).values.float()
        cy, cx = torch.rand(count, generator=g) * h, torch.rand(count, generator=g) * w
        if colour:  # photo-like colour around mid grey: luminance std 0.47, in [0, 1]
            tint = (0.5 + torch.randn(count, 3, generator=g) @ mix.T).clamp(0.0, 1.0)
        else:
            tint = torch.rand(count, c, generator=g)
        levels = lo + tint * (hi - lo)
        img = levels[0].reshape(c, 1, 1).expand(c, h, w).clone()
        for k in range(count):
            r = float(radii[k])
            y0, y1 = max(0, int(cy[k] - r)), min(h, int(cy[k] + r) + 1)
            x0, x1 = max(0, int(cx[k] - r)), min(w, int(cx[k] + r) + 1)
            if y0 >= y1 or x0 >= x1:
                continue
            disc = (ys[y0:y1, None] - cy[k]) ** 2 + (xs[None, x0:x1] - cx[k]) ** 2 <= r * r
            img[:, y0:y1, x0:x1][:, disc] = levels[k].reshape(c, 1)
        out[i] = img
    if f > 1:
        out = out.repeat_interleave(f, 2).repeat_interleave(f, 3)[:, :, :full_h, :full_w]
    return out
