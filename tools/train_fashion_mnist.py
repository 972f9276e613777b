#!/usr/bin/env python
"""Train a small CNN on Fashion-MNIST: the third example model (true accuracy on 10k test images).

    .venv/bin/python tools/train_fashion_mnist.py [--epochs 3] [--threads 2]

Conv-BN-ReLU blocks, one residual block (two 3x3 convs and an Add) and a Linear head, about
60k parameters and 3.7 MMACs per image; the input is 0..1 grayscale (1x1x28x28, pixels / 255), the
dataset normalisation is inside the model, so an artifact is built with `--input-range input:0,1`.
Fixed seed and deterministic algorithms; about 40 s per epoch on 2 idle cores (2 minutes for
the default 3 epochs; more on a shared machine). Writes
  .cache/models/fashion_cnn.pt        TorchScript (torch.jit.trace at 1x1x28x28), eval mode
  .cache/fashion-mnist/test.npz       input: float32 [10000, 1, 28, 28]; labels: int64 [10000]
The data come from tools/fetch_fashion_mnist.py (Debian's dataset-fashion-mnist).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fetch_fashion_mnist as fm  # noqa: E402

MODEL = fm.ROOT / ".cache" / "models" / "fashion_cnn.pt"
TEST_NPZ = fm.OUT / "test.npz"
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel mean / std (0..1 scale)


def build_model():
    import torch
    from torch import nn

    def cbr(cin, cout, stride=1, act=True):
        layers = [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, nn.ReLU()) if act else nn.Sequential(*layers)

    class Residual(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.a, self.b = cbr(c, c), cbr(c, c, act=False)

        def forward(self, x):
            return torch.relu(x + self.b(self.a(x)))

    class FashionCNN(nn.Module):
        """1x28x28 -> 16x28x28 -> 32x14x14 -> 48x7x7 -> residual -> GAP -> Linear(48, 10)."""

        def __init__(self):
            super().__init__()
            self.stem = cbr(1, 16)
            self.down1 = cbr(16, 32, 2)
            self.down2 = cbr(32, 48, 2)
            self.res = Residual(48)
            self.fc = nn.Linear(48, 10)

        def forward(self, x):
            x = (x - MEAN) / STD
            x = self.res(self.down2(self.down1(self.stem(x))))
            return self.fc(torch.flatten(torch.mean(x, dim=(2, 3), keepdim=True), 1))

    return FashionCNN()


def train(epochs: int, threads: int, seed: int = 0, batch: int = 128):
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    images, labels = fm.load("train")
    x = torch.from_numpy(images[:, None].astype(np.float32) / 255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    model = build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        start, total = time.perf_counter(), 0.0
        for i in range(len(x) // batch):
            idx = perm[i * batch:(i + 1) * batch]
            xb = x[idx]
            if torch.rand((), generator=g) < 0.5:  # horizontal flip, the usual augmentation
                xb = xb.flip(3)
            loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        print(f"epoch {epoch + 1}/{epochs}: loss {total / (len(x) // batch):.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    return model.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch

    fm.fetch()
    model = train(args.epochs, args.threads, args.seed)
    images, labels = fm.load("test")
    x = images[:, None].astype(np.float32) / 255.0
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(x[i:i + 1000])) for i in range(0, len(x),
                                                                                  1000)])
    acc = float((logits.argmax(1).numpy() == labels).mean())
    MODEL.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.trace(model, torch.from_numpy(x[:1])), str(MODEL))
    np.savez(TEST_NPZ, input=x, labels=labels.astype(np.int64))
    print(f"test accuracy {acc:.4f} on {len(x)} images; wrote {MODEL} and {TEST_NPZ}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
