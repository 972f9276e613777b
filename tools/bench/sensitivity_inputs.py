#!/usr/bin/env python
"""What the data-free sensitivity's synthetic images say against real photos, tensor by tensor.

    .venv/bin/python tools/bench/sensitivity_inputs.py [ARTIFACT] [--photos DIR] [-n 8]

For every activation tensor an EfficientNet-Lite0 int8 artifact quantizes (default: the one
the quick start builds, out/efficientnet_lite0.openvino; it keeps the worst one float, the
default budget's choice: build the quick start's command with --budget off to see every
tensor), the output noise-to-signal ratio when
only that tensor is quantized at its planned scale (rexdeploy/planning/sensitivity.py's
measurement), on:
  - the real photos (.cache/photos, tools/fetch_photos.py), in two halves (their spread);
  - 1/f noise with independent channels (calib_free.synthetic.pink_noise_images, colour=False), the
    sensitivity's images before colour;
  - 1/f noise with natural colour (colour=True, the default for three channels);
  - dead-leaves images (calib_free.synthetic.dead_leaves_images: opaque discs of natural colour,
    sharp edges at every scale).
Printed: the tensors the photos rank worst with each input's NSR, and, over all tensors, the
rank correlation (Spearman) of each synthetic kind with the photos (of each half of the photos
with the other half: how far real images agree among themselves). The synthetic images fill the
build's --input-range and lie on its pixel grid, as the build makes them. ONNX Runtime on the
artifact's float.onnx.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("artifact", nargs="?",
                    default=os.path.join(ROOT, "out", "efficientnet_lite0.openvino"))
    ap.add_argument("--photos", default=os.path.join(ROOT, ".cache", "photos"))
    ap.add_argument("-n", type=int, default=8, help="synthetic images per kind")
    ap.add_argument("--top", type=int, default=8, help="rows: the tensors the photos rank worst")
    args = ap.parse_args()
    from rexdeploy.errors import UserError

    try:
        return _run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args) -> int:
    nsr = measure(args.artifact, args.photos, args.n)
    kinds = list(nsr)
    tensors = list(nsr[kinds[0]])
    photo = {t: (nsr["photos 1st half"][t] + nsr["photos 2nd half"][t]) / 2 for t in tensors}
    worst = sorted(tensors, key=lambda t: -photo[t])[:args.top]
    print("| tensor (worst on photos first) | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for t in worst:
        print(f"| {t} | " + " | ".join(f"{nsr[k][t]:.1e}" for k in kinds) + " |")
    other = {"photos 1st half": "photos 2nd half", "photos 2nd half": "photos 1st half"}
    ranks = []
    for k in kinds:  # a half of the photos against the other half; synthetic against all photos
        against = nsr[other[k]] if k in other else photo
        ranks.append(_spearman([against[t] for t in tensors], [nsr[k][t] for t in tensors]))
    print("| rank correlation over all tensors (a half: with the other half; synthetic: with "
          "the photos) | " + " | ".join(f"{r:.2f}" for r in ranks) + " |")
    return 0


def measure(artifact: str, photos_dir: str, n: int = 8, tensors: list[str] | None = None,
            progress: bool = True) -> dict[str, dict[str, float]]:
    """{kind: {tensor: output NSR with only that tensor quantized}} for the kinds "photos 1st
    half", "photos 2nd half", "1/f independent", "1/f colour", "dead leaves", "half each" (the
    first n/2 of the last two; n images each), over the
    artifact's planned activation tensors but the model input (or `tensors`):
    rexdeploy.planning.sensitivity's own measurement, on the artifact's float.onnx and plan."""
    import onnx_ir as ir

    from calib_free.synthetic import dead_leaves_images, pink_noise_images
    from calib_free.plan import QuantPlan
    from rexdeploy.api import load_artifact
    from rexdeploy.inputs import load_inputs, on_grid
    from rexdeploy.planning.sensitivity import measure_sensitivity

    art = load_artifact(artifact)
    spec = art.manifest["inputs"][0]
    name, shape = spec["name"], tuple(spec["shape"])
    photos = np.concatenate([s[name] for _, s in load_inputs(
        photos_dir, art.manifest["inputs"], art.manifest.get("preprocess"))])
    quant = art.config.quant
    ranges = {r[0]: (r[1], r[2]) for r in quant.input_ranges}
    lo_hi = ranges.get(name, (float(photos.min()), float(photos.max())))
    step = dict(quant.input_grid).get(name)
    draft = QuantPlan.load(art.path)
    keep = (lambda t: t in tensors) if tensors is not None else (lambda t: t != name)
    draft = replace(draft, activations=tuple(a for a in draft.activations if keep(a.tensor)))

    def grid(x):
        return on_grid(x, step, lo_hi) if step else x

    half = len(photos) // 2
    kinds = {"photos 1st half": photos[:half], "photos 2nd half": photos[half:],
             "1/f independent": grid(pink_noise_images(shape, n, 0, lo_hi, colour=False).numpy()),
             "1/f colour": grid(pink_noise_images(shape, n, 0, lo_hi).numpy()),
             "dead leaves": grid(dead_leaves_images(shape, n, 0, lo_hi).numpy())}
    kinds["half each"] = np.concatenate([kinds["1/f colour"][:n - n // 2],
                                         kinds["dead leaves"][:n // 2]])
    float_model = ir.load(art.file("float_onnx"))  # measure_sensitivity copies it to a proto
    nsr = {}
    for i, (kind, x) in enumerate(kinds.items()):
        if progress:
            print(f"\r{i + 1}/{len(kinds)} kinds of input", end="", file=sys.stderr, flush=True)
        samples = [{name: x[j:j + 1].astype(np.float32)} for j in range(len(x))]
        sens = measure_sensitivity(float_model, [], draft, samples,
                                   weights=False, max_samples=len(samples))
        nsr[kind] = sens.activations
    if progress:
        print(file=sys.stderr)
    return nsr


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


if __name__ == "__main__":
    sys.exit(main())
