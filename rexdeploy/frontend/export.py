"""The float ONNX for a loaded model: export (or import), then the standard cleanup.

    export_onnx(loaded, specs, opset) -> (onnx_ir.Model, final input specs)

The result keeps BatchNormalization nodes (the data-free activation ranges are read from their
statistics; `FoldBatchNormPass` folds them afterwards), has no Constant nodes, no zero Pad
before a Conv, inferred shapes, and unique non-empty node names. Specs are validated against
the model before any export work starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rexdeploy.errors import UserError
from rexdeploy.frontend.load import LoadedModel
from rexdeploy.inputspec import InputSpec

if TYPE_CHECKING:
    import onnx_ir as ir


def export_onnx(loaded: LoadedModel, specs: tuple[InputSpec, ...] = (),
                opset: int = 21) -> tuple[ir.Model, tuple[InputSpec, ...]]:
    """Float ONNX of `loaded` as an onnx_ir.Model, and the input specs it was built for."""
    import rexdeploy.frontend.onnx_import as onnx_import
    import rexdeploy.frontend.torch_export as torch_export
    from rexdeploy.frontend.specs import match_declared, specs_for_module
    from rexdeploy.passes.cleanup import CleanupPass

    specs = tuple(specs)
    if loaded.kind == "onnx":
        model = onnx_import.load_onnx(loaded.obj, opset)
        specs = match_declared(onnx_import.declared_inputs(model), specs, "ONNX model")
    elif loaded.kind == "exported":
        specs = match_declared(torch_export.declared_inputs(loaded.obj), specs,
                               "torch.export program")
        model = torch_export.export_program(loaded.obj, opset)
    elif loaded.kind in ("module", "torchscript"):
        what = "TorchScript model" if loaded.kind == "torchscript" else "PyTorch module"
        specs = specs_for_module(loaded.obj, specs, what)
        model = torch_export.export_module(loaded.obj, specs, opset)
    else:
        raise ValueError(f"unknown LoadedModel kind {loaded.kind!r}")  # a bug, not user input
    _apply_specs(model, specs)
    from rexdeploy.passes.shapes import SHAPE_NOTE, inference_failure

    # the cleanup re-infers shapes that contradict the graph; the build says so
    # (pipeline._shape_note)
    model.meta[SHAPE_NOTE] = inference_failure(model)
    CleanupPass()(model)
    _check_outputs(model)
    return model, specs


def _apply_specs(model, specs: tuple[InputSpec, ...]) -> None:
    """Write the final specs onto the graph inputs: fixed dims become static, named dims carry
    the user's names (so shapes inferred downstream use them)."""
    import onnx_ir as ir

    by_name = {s.name: s for s in specs}
    for value in model.graph.inputs:
        spec = by_name.get(value.name)
        if spec is not None:
            value.shape = ir.Shape([d if isinstance(d, int) else ir.SymbolicDim(d)
                                    for d in spec.shape])


def _check_outputs(model) -> None:
    if not model.graph.outputs:
        raise UserError("the exported model has no outputs", hint="return a tensor from forward")
