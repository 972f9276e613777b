"""Artifacts for the device-side tests (tests/test_backends/test_device_side.py), built where the
build extra is installed: an OpenVINO build and a deferred TensorRT build of a small CNN, and a
folder of images, all under one directory.

    .venv/bin/python tests/device_fixtures.py DIR     # what tools/test.sh does before the
                                                      # device-side lane (Python 3.10, no torch)

The device-side lane reads them from $REXDEPLOY_DEVICE_FIXTURES; in the build environment the
tests make them themselves with `build(DIR)`.
"""

from __future__ import annotations

import os
import sys

PREPROCESS = "resize=40,crop=32,mean=127,std=128"


def build(directory: str) -> dict[str, str]:
    """{"openvino", "trt", "images"}: paths of the two artifacts and the image folder."""
    import numpy as np
    import torch
    from PIL import Image

    import rexdeploy
    from rexdeploy.config import BuildConfig, QuantConfig
    from tiny_models import tiny_cnn

    os.makedirs(directory, exist_ok=True)
    model = os.path.join(directory, "tiny_cnn.pt")
    torch.jit.save(torch.jit.trace(tiny_cnn(), torch.randn(1, 3, 32, 32)), model)
    images = os.path.join(directory, "images")
    os.makedirs(images, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        pixels = (rng.random((48, 56, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(images, f"image{i}.png"))
    cfg = BuildConfig(quant=QuantConfig(input_ranges=(("input", -1.0, 1.0),)))
    out = {"images": images}
    for target in ("openvino", "trt"):
        art = rexdeploy.build(model, ["input:1x3x32x32"], target=target, config=cfg, quiet=True,
                              force=True, preprocess=PREPROCESS,
                              output=os.path.join(directory, f"tiny.{target}"))
        out[target] = art.path
    os.remove(model)  # the device has the artifact, not the source model
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for key, path in build(sys.argv[1]).items():
        print(f"{key}: {path}")
