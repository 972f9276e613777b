"""calib_free: the data-free quantization math (pure torch + numpy).

Quantizer, REx residual expansion, activation range estimators, Gaussian moment propagation,
bias correction and synthetic inputs. No ONNX or backend import anywhere in this package (a test
enforces it). The names below are re-exported lazily, so `import calib_free.plan` (numpy only,
read by tools that never quantize) does not pay for torch; `calib_free.expand_uniform` does.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "bias_correction": ("expected_output_shift",),
    "expansion": ("expand_residuals", "expand_uniform", "weight_error"),
    "moments": ("add_moments", "clipped_gaussian_moments", "conv_mean", "conv_moments",
                "gelu_moments", "linear_moments"),
    "plan": ("ActivationPlan", "LayerPlan", "QuantPlan", "SkippedLayer", "WeightOrder"),
    "quantizer": ("choose_scale", "dequantize", "qmax", "quantize", "quantize_weight"),
    "ranges": ("gaussian_clip", "gaussian_mse_sigma", "maxabs", "mse_optimal", "percentile",
               "scale_from_clip"),
    "synthetic": ("bn_matched_inputs", "gaussian_inputs", "random_tokens"),
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
