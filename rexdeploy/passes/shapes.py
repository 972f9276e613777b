"""ONNX shape inference without onnx-ir's log noise.

onnx-ir's ShapeInferencePass logs a warning with the whole traceback when ONNX's inference stops
(a model whose stored shapes contradict what inference derives, e.g. ddddocr's `common.onnx`:
"Inferred shape and existing shape differ in rank"), and leaves the model unchanged. A build
must not print a raw third-party traceback: `QuietShapeInferencePass` does the same work
silently, and `inference_failure` gives the reason in one line for the build log.

Requires: a valid model. Ensures: shapes inferred where ONNX can; nothing logged.
"""

from __future__ import annotations

import contextlib
import logging

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

_LOGGER = "onnx_ir.passes.common.shape_inference"
SHAPE_NOTE = "rexdeploy.shape_inference_failure"  # model.meta key: why inference stopped as given


class _Failures(logging.Handler):
    """Counts the records onnx-ir logs (it logs only when inference stops)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


@contextlib.contextmanager
def _quiet():
    """onnx-ir's shape-inference logger silenced; yields a handler counting what it logged."""
    logger = logging.getLogger(_LOGGER)
    level, propagate = logger.level, logger.propagate
    failures = _Failures()
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    logger.addHandler(failures)
    try:
        yield failures
    finally:
        logger.removeHandler(failures)
        logger.setLevel(level)
        logger.propagate = propagate


class QuietShapeInferencePass(ShapeInferencePass):
    """ShapeInferencePass that logs nothing (`inference_failure` says why it stops)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        with _quiet() as failures:
            result = super().call(model)
        if not failures.count:
            return result
        # a stored shape that contradicts inference stops it for the whole model (ddddocr's
        # common.onnx declares its output [1, seqlen]; it computes [seqlen, 1, classes]):
        # drop the stored shapes but the inputs' and infer them afresh
        if not _clear_intermediate_shapes(model):
            return result
        with _quiet():
            super().call(model)
        return ir.passes.PassResult(model, True)


def _clear_intermediate_shapes(model: ir.Model) -> bool:
    keep = {id(v) for v in model.graph.inputs}
    cleared = False
    for node in model.graph:
        for value in node.outputs:
            if id(value) not in keep and value.shape is not None:
                value.shape = None
                cleared = True
    return cleared


def inference_failure(model: ir.Model) -> str | None:
    """Why ONNX's shape inference stops on `model` (its last message line), None when it runs."""
    import onnx

    try:
        onnx.shape_inference.infer_shapes(ir.serde.serialize_model(model), check_type=False,
                                          strict_mode=True, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError / ValidationError / RuntimeError
        lines = [l.strip() for l in str(exc).strip().splitlines() if l.strip()]
        return lines[-1] if lines else type(exc).__name__
    return None
