"""calib_free: the data-free quantization math (pure torch + numpy).

No ONNX or backend import anywhere in this package (`calib_free/ruff.toml` covers the
subpackages; a test also checks at run time). Layout, by concern:

    weights/       weight codes and scales: the uniform quantizer, pair-limited codes for CPUs
                   without VNNI, PowerQuant, REx expansion, sparse orders and their budget, the
                   layer-partition ensemble, int8 recurrent (LSTM/GRU) weights
    activations/   activation ranges without data: range estimators, Gaussian moment
                   propagation, SmoothQuant-style scale migration
    refine/        after rounding: reconstruction data and error, FlexRound, ERQ, bias correction
    plan.py        QuantPlan, the frozen decision every group feeds (numpy only)
    metrics.py     the project's error ratios (SQNR in dB, noise ratio; pure Python)
    mixed.py       mixed precision under a bit-operation budget, steered by output sensitivity
    synthetic.py   synthetic inputs: Gaussian/uniform images, BatchNorm-matched, random tokens

Each subpackage's __init__ lists its modules. The names below are re-exported lazily, so
`import calib_free.plan` (numpy only, read by tools that never quantize) does not pay for torch;
`calib_free.expand_uniform` does.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "plan": ("ActivationPlan", "LayerPlan", "QuantPlan", "SkippedLayer", "WeightOrder"),
    "synthetic": ("bn_matched_inputs", "gaussian_inputs", "random_tokens"),
    "weights.quantizer": ("choose_scale", "dequantize", "qmax", "quantize", "quantize_weight"),
    "weights.expansion": ("expand_residuals", "expand_uniform", "weight_error"),
    "activations.moments": ("add_moments", "clipped_gaussian_moments", "conv_mean",
                            "conv_moments", "gelu_moments", "linear_moments"),
    "activations.ranges": ("gaussian_clip", "gaussian_mse_sigma", "maxabs", "mse_optimal",
                           "percentile", "scale_from_clip"),
    "refine.bias_correction": ("expected_output_shift",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'calib_free' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"calib_free.{module}"), name)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
