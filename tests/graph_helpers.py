"""Small helpers shared by the graph-pass tests: run an onnx_ir model in ONNX Runtime, count ops."""

from __future__ import annotations

import collections

import onnx_ir as ir


def run(model: ir.Model, feeds):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(ir.to_proto(model).SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(None, feeds)


def ops(model):
    return collections.Counter(n.op_type for n in model.graph)
