"""Frontend: load a user's model (any supported format) and export it to a float ONNX graph.

    load_model(source, trust_pickle=False, factory_weights=None) -> LoadedModel
    export_onnx(loaded, specs, opset=21) -> (onnx_ir.Model, tuple[InputSpec, ...])

Importing this package imports no torch or onnx; the functions import them when called.
"""

from rexdeploy.frontend.export import export_onnx
from rexdeploy.frontend.load import LoadedModel, load_model

__all__ = ["LoadedModel", "export_onnx", "load_model"]
