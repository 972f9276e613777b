"""Hand-built ONNX graphs for the TensorRT rule checker's tests (backends/trt_rules.py): a graph
from nodes and initializers, an initializer from an array, and a small Q/DQ Conv graph that
violates one rule per argument. Used by tests/test_backends/test_trt_rules.py and
test_backend_tensorrt.py."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def onnx_model(nodes, inits, inputs=(("x", [1, 4, 8, 8]),), opset=21):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, F, s)
                                           for n, s in inputs],
                              [helper.make_tensor_value_info("y", F, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def tensor(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def conv_graph(*, zp=0, act_scale=None, w_axis=0, w_scale=None, skip_qdq=True, opset=21,
               pad=False, extra_nodes=(), weight_dtype=np.int8):
    """x -> Q/DQ -> Conv(DQ(w)) -> Add(skip = x through its own Q/DQ)."""
    w = np.ones((4, 4, 1, 1), weight_dtype)
    inits = [tensor("a_s", act_scale if act_scale is not None else np.float32(0.1)),
             tensor("a_z", np.int8(zp)), tensor("w", w),
             tensor("w_s", w_scale if w_scale is not None else np.full(4, 0.01, np.float32)),
             tensor("pads", np.zeros(8, np.int64))]
    nodes = []
    src = "x"
    if pad:
        nodes.append(helper.make_node("Pad", ["x", "pads"], ["xp"], name="pad"))
        src = "xp"
    nodes += [
        helper.make_node("QuantizeLinear", [src, "a_s", "a_z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "a_s", "a_z"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["w", "w_s"], ["wd"], name="w_dq", axis=w_axis),
        helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv"),
    ]
    if skip_qdq:
        nodes.append(helper.make_node("Add", ["c", "xd"], ["y"], name="add"))
    else:
        nodes.append(helper.make_node("Add", ["c", "x"], ["y"], name="add"))
    return onnx_model(nodes + list(extra_nodes), inits, opset=opset)
