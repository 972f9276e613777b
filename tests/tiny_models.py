"""Tiny models built in code, shared by the tests: each exercises one pattern of the lowering.

BatchNorm layers get non-trivial running statistics (`randomize_bn`) so that folding and the
data-free statistics are tested on something other than the identity.
"""

from __future__ import annotations

import torch
from torch import nn


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.3)
    return model.eval()


class ConvBnRelu(nn.Sequential):
    def __init__(self, cin, cout, k=3, stride=1, groups=1, act=nn.ReLU6):
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act() if act else nn.Identity())


class InvertedResidual(nn.Module):
    """MobileNet-style block: expand 1x1, depthwise 3x3, project 1x1 (no act), residual Add."""

    def __init__(self, c, expand=4):
        super().__init__()
        h = c * expand
        self.body = nn.Sequential(ConvBnRelu(c, h, 1), ConvBnRelu(h, h, 3, groups=h),
                                  ConvBnRelu(h, c, 1, act=None))

    def forward(self, x):
        return x + self.body(x)


class TinyCNN(nn.Module):
    """stem conv -> depthwise block -> residual block -> GAP -> Linear. Input 1x3x32x32."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = ConvBnRelu(3, 16, 3, 2)
        self.dw = ConvBnRelu(16, 16, 3, groups=16)
        self.pw = ConvBnRelu(16, 24, 1, act=None)
        self.block = InvertedResidual(24)
        self.head = ConvBnRelu(24, 64, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.head(self.block(self.pw(self.dw(self.stem(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


class TinyMLP(nn.Module):
    """Linear layers on a 3-D input (exported as MatMul + Add) with GELU and LayerNorm."""

    def __init__(self, d=32, h=64):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, h)
        self.fc2 = nn.Linear(h, d)

    def forward(self, x):  # x: [B, T, d]
        return x + self.fc2(nn.functional.gelu(self.fc1(self.ln(x))))


def tiny_cnn(seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    return randomize_bn(TinyCNN(), seed)


def tiny_mlp(seed: int = 0) -> TinyMLP:
    torch.manual_seed(seed)
    return TinyMLP().eval()


def overflow_cnn(seed: int = 0) -> nn.Module:
    """A small CNN that a pre-VNNI int8 kernel saturates unless its weight codes are
    pair-limited (calib_free.weights.saturation): its pointwise convolutions have non-negative
    weights, so every pair of adjacent input channels adds two same-sign products, against ReLU6
    outputs that use the whole uint8 range. Input 1x3x32x32."""
    torch.manual_seed(seed)
    model = nn.Sequential(ConvBnRelu(3, 32, 3, 2), ConvBnRelu(32, 32, 1), ConvBnRelu(32, 32, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    for block in (model[1], model[2]):
        block[0].weight.data.abs_()
    return randomize_bn(model, seed)


def bn_stats_cnn(realizable: bool, seed: int = 0) -> nn.Sequential:
    """Conv-BN-ReLU x2 on [N, 3, 16, 16] with random BN running statistics, for the data-free
    (BatchNorm-matched) inputs: tests/test_calib_free/test_calib_free_synthetic.py and
    tests/test_planning/test_refine_build.py.

    realizable: the statistics are those of a random input distribution (per-channel mean and std
    drawn at random), as a trained network's are. Otherwise they are drawn independently per
    channel, and 8 channel means after a 3-input conv cannot all be met: the loss has a floor.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU())
    for bn in (m[1], m[4]):
        bn.weight.data.uniform_(0.5, 1.5, generator=g)
        bn.bias.data.normal_(0, 0.5, generator=g)
        bn.running_mean.normal_(0, 0.5, generator=g)
        bn.running_var.uniform_(0.3, 2.0, generator=g)
        bn.momentum = None  # cumulative average when realizable stats are recorded below
    if realizable:
        mean = torch.rand(1, 3, 1, 1, generator=g) * 2 - 1
        std = torch.rand(1, 3, 1, 1, generator=g) * 1.5 + 0.3
        for bn in (m[1], m[4]):
            bn.reset_running_stats()
        m.train()
        with torch.no_grad():
            for _ in range(10):
                m(mean + std * torch.randn(16, 3, 16, 16, generator=g))
    return m.eval()
