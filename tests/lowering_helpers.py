"""Helpers shared by the lowering tests: the tiny models exported to ONNX, plans built with a small
numpy round-to-nearest quantizer (per output channel, max-abs) and activation ranges observed by
ONNX Runtime on random inputs (so these tests do not depend on calib_free's algorithms), the ONNX
Runtime oracle, the golden summaries in tests/golden/ and the module-scoped fixtures `cnn`, `mlp`,
`cnn_inputs`, `mlp_inputs` (a test module imports `cnn_fixture`, ... explicitly; the functions'
names differ from the fixtures' so that a test's arguments do not shadow the imports).

Used by tests/test_lowering/ (test_lower*.py), tests/test_backends/test_trt_rules.py,
test_modelopt_placement.py and tests/test_planning/test_rex_sparse.py.
"""

from __future__ import annotations

import difflib
import io
import json
import os
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch

from calib_free.plan import ActivationPlan, LayerPlan, QuantPlan, WeightOrder
from rexdeploy.planning.analyze import LayerInfo, find_layers
from tiny_models import tiny_cnn, tiny_mlp

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
CNN_INPUT, MLP_INPUT = (1, 3, 32, 32), (1, 8, 32)


def export(module: torch.nn.Module, shape: tuple[int, ...]) -> ir.Model:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "opset 21 is not supported" (it works, see feasibility)
        torch.onnx.export(module.eval(), (torch.randn(shape),), f, dynamo=False,
                          opset_version=21, do_constant_folding=True)
    return ir.from_proto(onnx.load_from_string(f.getvalue()))


def rtn(w: np.ndarray, axis: int, bits: int = 8, block_size: int | None = None) -> WeightOrder:
    """Symmetric round-to-nearest: per channel along `axis`, or per block of `block_size` along
    `axis` (ONNX blocked layout: the scale has the codes' shape with `axis` divided)."""
    qmax = 2 ** (bits - 1) - 1
    if block_size:
        blocks = np.split(w, range(block_size, w.shape[axis], block_size), axis=axis)
        amax = np.concatenate([np.abs(b).max(axis=axis, keepdims=True) for b in blocks], axis)
        s = np.maximum(amax, 1e-12) / qmax
        full = np.repeat(s, block_size, axis=axis)[tuple(slice(0, n) for n in w.shape)]
    else:
        others = tuple(i for i in range(w.ndim) if i != axis)
        s = np.maximum(np.abs(w).max(axis=others), 1e-12) / qmax
        full = s.reshape([-1 if i == axis else 1 for i in range(w.ndim)])
    codes = np.clip(np.round(w / full), -qmax, qmax).astype(np.int8)
    return WeightOrder(codes, s.astype(np.float32), bits, axis, block_size)


def expand(layer: LayerInfo, orders: int, bits: int = 8,
           block_size: int | None = None) -> tuple[WeightOrder, ...]:
    """REx: order k quantizes what orders 1..k-1 left of the weight."""
    axis = layer.in_axis if block_size else layer.out_axis
    out: list[WeightOrder] = []
    for _ in range(orders):
        left = layer.weight_array - sum((o.dequantize() for o in out), np.float32(0))
        out.append(rtn(left, axis, bits, block_size))
    return tuple(out)


def skip_tensors(model: ir.Model, layers: list[LayerInfo]) -> list[str]:
    """Residual skip inputs: the non-layer side of an Add whose other side is a layer output."""
    outputs = {l.output for l in layers}
    skips = []
    for node in model.graph:
        if node.op_type == "Add" and len(node.inputs) == 2 and \
                not any(v.const_value is not None for v in node.inputs):
            names = [v.name for v in node.inputs]
            for mine, other in (names, names[::-1]):
                if other in outputs and mine not in outputs:
                    skips.append(mine)
    return skips


def observe(model: ir.Model, names: list[str], inputs: list[np.ndarray]) -> dict[str, list]:
    """The float values of tensors `names` on `inputs` (ONNX Runtime, as extra outputs)."""
    proto = ir.to_proto(model)
    known = {o.name for o in proto.graph.output}
    proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in known)
    session = ort_session(proto)
    feed = session.get_inputs()[0].name
    runs = [session.run(names, {feed: x}) for x in inputs]
    return {n: [r[i] for r in runs] for i, n in enumerate(names)}


def make_plan(model: ir.Model, inputs: list[np.ndarray], *, orders: int = 1, bits: int = 8,
              activations: bool = True, block_size: int | None = None,
              bias_shift: float = 0.0, extra_activations: tuple[str, ...] = ()) -> QuantPlan:
    layers, skipped = find_layers(model)
    rng = np.random.default_rng(1)
    plans = tuple(
        LayerPlan(l.name, l.op, l.weight, l.input, expand(l, orders, bits, block_size),
                  (rng.standard_normal(l.out_channels) * bias_shift).astype(np.float32)
                  if bias_shift else None)
        for l in layers)
    acts: tuple[ActivationPlan, ...] = ()
    if activations:
        tensors = list(dict.fromkeys([l.input for l in layers] + skip_tensors(model, layers)
                                     + list(extra_activations)))
        seen = observe(model, tensors, inputs)
        acts = tuple(activation_plan(t, np.stack(seen[t])) for t in tensors)
    return QuantPlan(plans, acts, tuple(skipped))


def activation_plan(tensor: str, values: np.ndarray) -> ActivationPlan:
    """Max-abs range; uint8 for a tensor that never went negative, else int8."""
    signed = bool(values.min() < 0)
    bound = float(np.abs(values).max())
    return ActivationPlan(tensor, bound / (127 if signed else 255), 8, signed, "observed", bound)


def ort_session(model, optimize: bool = False):
    """An ORT CPU session; basic graph optimizations only unless `optimize`.

    The oracle runs the Q/DQ semantics as written: at the default level ORT rewrites a weight-
    only DQ -> MatMul into MatMulNBits with dynamically quantized activations (K=2 then measures
    ~55 dB instead of ~108 dB against float), and its MatMulAddFusion + QDQ propagation breaks on
    an int8 Q/DQ in front of a 3-D MatMul+Add ("output_dtype INT8 does not match y_zero_point
    type UINT8", onnxruntime 1.32).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def run_ort(model, x: np.ndarray, optimize: bool = False) -> np.ndarray:
    session = ort_session(model, optimize)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    noise = np.sum((ref.astype(np.float64) - test) ** 2)
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / max(noise, 1e-30)))


def random_inputs(shape, n=4, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


def check_golden(name: str, summary: dict) -> None:
    """Compare with tests/golden/`name`; REXDEPLOY_REGEN_GOLDEN=1 rewrites it instead."""
    path = os.path.join(GOLDEN, name)
    text = json.dumps(summary, indent=1, sort_keys=True) + "\n"
    if os.environ.get("REXDEPLOY_REGEN_GOLDEN") == "1":
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing; run with REXDEPLOY_REGEN_GOLDEN=1 to write it")
    with open(path) as f:
        expected = f.read()
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            f"golden/{name}", "lowered now"))
        pytest.fail(f"lowered graph differs from golden/{name} (REXDEPLOY_REGEN_GOLDEN=1 "
                    f"rewrites it if the change is intended):\n{diff}")


# -- fixtures (a module imports the *_fixture functions; its tests ask for `cnn`, `mlp`, ...) ---
@pytest.fixture(scope="module", name="cnn")
def cnn_fixture() -> ir.Model:
    return export(tiny_cnn(), CNN_INPUT)


@pytest.fixture(scope="module", name="mlp")
def mlp_fixture() -> ir.Model:
    return export(tiny_mlp(), MLP_INPUT)


@pytest.fixture(scope="module", name="cnn_inputs")
def cnn_inputs_fixture():
    return random_inputs(CNN_INPUT)


@pytest.fixture(scope="module", name="mlp_inputs")
def mlp_inputs_fixture():
    return random_inputs(MLP_INPUT)
