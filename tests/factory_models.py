"""Factories for `package.module:factory` loading tests (imported as `factory_models:...`)."""

from __future__ import annotations

from tiny_models import TinyCNN, TinyMLP


def tiny_cnn():
    return TinyCNN()


def tiny_mlp():
    return TinyMLP()


def not_a_module():
    return {"not": "a model"}


def needs_arguments(width):
    return TinyCNN(width)


def broken():
    raise RuntimeError("cannot build the model today")


# -- models for the bad-input matrix (tests/test_cli/test_bad_inputs.py) ---------------------------
import torch  # noqa: E402
from torch import nn  # noqa: E402


class DataDependent(nn.Module):
    """forward branches on a tensor value: a trace keeps only the example's branch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if y.mean() > 0:
            return torch.relu(y)
        return -y


class WithConvTranspose(nn.Module):
    """Conv -> grouped ConvTranspose (not quantized: kept in float and listed) -> Conv."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2, groups=2)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.up(torch.relu(self.down(x))))


class TokenClassifier(nn.Module):
    """Integer-only input: token ids -> Embedding -> mean -> Linear."""

    def __init__(self, vocab=100, d=16, classes=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.fc = nn.Linear(d, classes)

    def forward(self, ids):  # ids: int64 [B, T]
        return self.fc(self.embed(ids).mean(dim=1))


def data_dependent():
    return DataDependent()


def with_conv_transpose():
    return WithConvTranspose()


def token_classifier():
    return TokenClassifier()
