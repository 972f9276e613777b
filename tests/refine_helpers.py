"""Helpers shared by the --calib/--refine build tests (tests/test_planning/test_refine_build.py
and test_refine_sequential.py): a quiet build for the reference (ONNX Runtime) target, its
outputs, SQNR, and calibration data with a few large channels."""

import numpy as np
import torch

import rexdeploy
from rexdeploy.config import BuildConfig, QuantConfig


def build(model, inputs, out, **quant):
    cfg = BuildConfig(quant=QuantConfig(**quant))
    return rexdeploy.build(model, inputs, target="reference", output=str(out), config=cfg,
                           quiet=True, force=True)


def outputs(art, samples):
    import onnxruntime as ort

    options = ort.SessionOptions()  # basic level, as the reference backend (ORT's extended
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # breaks
    s = ort.InferenceSession(art.file("onnx"), options,  # int4 MatMul on 3-D inputs)
                             providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, feeds)[0] for feeds in samples])


def sqnr(ref, test):
    return 10 * np.log10((ref ** 2).sum() / ((ref - test) ** 2).sum())


def outlier_calib_data(model_fn, n: int, path):
    """n MLP inputs [1, 8, 32] with a few large channels, stacked into the .npz at `path`:
    (path, the feeds one by one, model_fn()'s float outputs)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 8, 32, generator=g)
    x[..., :3] *= 5
    np.savez(path, x=x.numpy())
    with torch.no_grad():
        ref = torch.cat([model_fn()(x[i]) for i in range(n)]).numpy()
    return str(path), [{"x": x[i].numpy()} for i in range(n)], ref
