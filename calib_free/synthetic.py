"""Synthetic inputs without data (docs/algorithms.md section 3, items 2 and 3).

Random Gaussian or uniform images, ZeroQ-style inputs whose BatchNorm batch statistics match the
running statistics, and random token ids for token models. All deterministic given the seed.
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
