"""One contract, every backend that runs here: the runner lifecycle, the input check, what a
profiler reads (info, throughput_info, sync_call, timings), through RunnerBase."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import backends
from backends.base import BuildOptions, RunnerBase, RunOptions
from rexdeploy.errors import UserError

RUNNABLE = ["reference", "openvino"]  # TensorRT needs a GPU and tensorrt: its runner class below


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              [w])
    path = tmp_path_factory.mktemp("contract") / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


@pytest.mark.parametrize("name", RUNNABLE)
def test_every_runner_keeps_the_contract(name, tiny_onnx, tmp_path):
    backend = backends.get(name)
    result = backend.build(tiny_onnx, str(tmp_path), BuildOptions())
    runner = backend.runner(str(tmp_path), result.files, RunOptions())
    assert isinstance(runner, RunnerBase)
    x = {"x": np.ones((1, 4), np.float32)}
    with pytest.raises(RuntimeError, match="not active"):
        runner.infer(x)
    with runner as r:
        y = next(iter(r.infer(x).values()))
        np.testing.assert_allclose(y, x["x"] @ (np.arange(12).reshape(4, 3) / 10), rtol=1e-5)
        with pytest.raises(UserError):
            r.infer({"x": np.ones((1, 5), np.float32)})  # wrong shape
        with pytest.raises(UserError):
            r.infer({"z": x["x"]})  # wrong name
        call = r.sync_call(x)
        call()
        assert isinstance(r.info, dict) and isinstance(r.timings(), list)
        done, seconds = r.throughput(x, 0.05)
        assert done >= 1 and seconds > 0 and isinstance(r.throughput_info, dict)
    assert not runner.active


def test_the_tensorrt_runner_shares_the_base():
    from backends.tensorrt import TrtRunner

    assert issubclass(TrtRunner, RunnerBase)
