"""rexdeploy: a data-free quantization compiler for edge targets (OpenVINO, TensorRT).

Importing this package is cheap: torch, onnx and openvino are imported only by the functions that
need them, so `rexdeploy --help` stays instant.

    import rexdeploy
    artifact = rexdeploy.build("model.pt", inputs=["input:1x3x224x224"], target="openvino",
                               output="out/model.openvino")
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "build", "compare", "profile", "inspect", "UserError"]

from rexdeploy.errors import UserError


def __getattr__(name: str):
    # Lazy re-exports of the API so `import rexdeploy` does not import torch.
    import importlib

    api = importlib.import_module("rexdeploy.api")
    if name == "api":
        return api
    if name in ("build", "compare", "profile", "inspect", "BuildConfig", "QuantConfig",
                "load_artifact"):
        return getattr(api, name)
    raise AttributeError(name)
