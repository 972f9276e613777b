"""An ONNX file as the float model: loaded with its external data, upgraded to the target
opset when older (never downgraded), initializers removed from the graph inputs (they are
weights, not inputs a deployment feeds), and its inputs declared for spec matching.
"""

from __future__ import annotations

from rexdeploy.errors import UserError
from rexdeploy.frontend.specs import Declared, dtype_name


def load_onnx(path: str, opset: int):
    """The model at `path` as an onnx_ir.Model at opset >= `opset`."""
    import onnx
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveInitializersFromInputsPass

    try:
        proto = onnx.load(path)
    except (OSError, ValueError, RuntimeError) as e:  # missing or unreadable external data
        raise UserError(f"cannot load ONNX model {path} with its external data: {e}",
                        hint="keep the external data files next to the model, as exported") from e
    have = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if have is not None and have < opset:
        from onnx import version_converter

        try:
            proto = version_converter.convert_version(proto, opset)
        except Exception as e:  # the converter raises RuntimeError/ConvertError/ValueError
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot upgrade ONNX model {path} from opset {have} to {opset}: "
                            f"{reason}",
                            hint=f"export the model again at opset {opset} or newer") from e
    model = ir.serde.deserialize_model(proto)
    RemoveInitializersFromInputsPass()(model)
    return model


def declared_inputs(model) -> list[Declared]:
    declared = []
    for value in model.graph.inputs:
        shape = None
        if value.shape is not None:
            shape = tuple(d if isinstance(d, int) else (d.value or None) for d in value.shape)
        dtype = value.dtype.name if value.dtype is not None else "undefined"
        declared.append(Declared(value.name, shape, dtype_name(dtype, value.name, "ONNX model")))
    return declared
