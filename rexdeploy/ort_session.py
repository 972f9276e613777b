"""One place that opens ONNX Runtime sessions: CPU, errors-only logging, the graph optimisation
a caller needs said by name, and one clear error when ONNX Runtime cannot load the model.

    session(model, what, optimization="all", threads=None) -> onnxruntime.InferenceSession

optimization:
  "all"   ONNX Runtime's default: float models whose tensors are only read (range observation,
          sensitivity, an export check).
  "basic" the reference backend's oracle: the extended level rewrites weight-only DQ->MatMul
          into MatMulNBits (which quantizes activations on the fly) and its MatMul+Add fusion
          breaks on int8 Q/DQ (onnxruntime 1.32), so a Q/DQ graph must not get it.
  "none"  every node as written: a marked layer in the whole model and the same layer cut out
          alone compute the same thing (the basic level already fuses DQ -> Conv -> ... -> Q
          into integer kernels with an int32 bias in the whole model but not in the cut-out
          layer), and f16 Q/DQ graphs, which the basic level's rewrites get wrong.
"""

from __future__ import annotations

from rexdeploy.errors import UserError

PROVIDERS = ["CPUExecutionProvider"]
LEVELS = ("all", "basic", "none")


def session(model: bytes | str, what: str, optimization: str = "all",
            threads: int | None = None):
    """An InferenceSession over `model` (serialised bytes or a path); `what` names it in the
    error. threads: intra-op threads (None: one per core)."""
    import onnxruntime as ort

    if optimization not in LEVELS:
        raise ValueError(f"optimization {optimization!r}: one of {LEVELS}")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT warns about every unused initializer
    options.intra_op_num_threads = int(threads or 0)  # 0: ORT's choice
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[optimization]
    try:
        return ort.InferenceSession(model, options, providers=PROVIDERS)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
        raise UserError(f"ONNX Runtime cannot load {what}: "
                        f"{str(exc).strip().splitlines()[-1]}",
                        "check the model with onnx.checker.check_model") from exc


def with_outputs(model, names: list[str], types: dict | None = None, copy: bool = True):
    """`model` (onnx.ModelProto) with the tensors `names` appended to its graph outputs, so a
    session returns them too; typed from `types` (name -> onnx element type) where given, else
    left for ONNX Runtime to infer. copy=False extends `model` itself."""
    import onnx
    from onnx import helper

    tapped = model
    if copy:
        tapped = onnx.ModelProto()
        tapped.CopyFrom(model)
    have = {o.name for o in tapped.graph.output}
    for name in dict.fromkeys(names):
        if name in have:
            continue
        if types is None:
            tapped.graph.output.add(name=name)
        else:
            tapped.graph.output.append(helper.make_tensor_value_info(
                name, types.get(name, onnx.TensorProto.FLOAT), None))
    return tapped
