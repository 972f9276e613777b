"""Rotate the input of a transformer's FFN output Linear by a block Hadamard matrix.

The input of an FFN's second Linear (a GELU or SiLU output, 4x the hidden size) carries a few
channels 10-25x the median (all-MiniLM-L6-v2); its one int8 scale per tensor then leaves the
other channels a handful of codes, and scale migration (`--smooth`) only moves part of that
into the weights. An orthogonal R changes nothing in float, x W = (x R)(R^T W), and spreads
each outlier over the channels it mixes (QuaRot, 2024, rotates with Hadamard matrices for the
same reason). Here R is block diagonal: blocks of BLOCK channels, each diag(d) H / sqrt(BLOCK)
with H the Sylvester Hadamard matrix and d random signs (seeded), which keep a non-negative
tensor's mean from piling into one channel of each block. R^T W is folded into the weight
(exact, float64); x R runs as a float MatMul on x reshaped to [N, -1, BLOCK] (N its first
dim, kept so that multiply-adds count at batch 1), back to x's shape.

Requires: BatchNorm folded. Ensures: each rotated layer reads Reshape(MatMul(Reshape(x), R),
x's shape) (a constant where x's shape is static, else Shape(x)) and holds the weight R^T W; the rotation MatMul carries ROTATION_KEY (the layer's
name), which the analysis lists as kept float with its reason; the model computes the same
function.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from rexdeploy.constants import const_array as _const
from rexdeploy.passes.qdq_nodes import UniqueNames, add_initializer

BLOCK = 32
ROTATION_KEY = "rexdeploy.rotation"  # metadata of the rotation MatMul: the layer it serves
# what makes a Linear's input an FFN's hidden activation: its producer is one of these, or a
# Mul whose inputs reach one of the GATES within GATE_DEPTH nodes (GELU written with Erf, SiLU;
# x * (1 + erf(x / sqrt 2)) * 0.5, as torch exports HF's GELU, puts Erf three nodes up)
ACTIVATIONS = ("Gelu", "FastGelu", "BiasGelu", "HardSwish", "Mish")
GATES = ("Erf", "Sigmoid", "Tanh")
GATE_DEPTH = 3


def hadamard(n: int) -> np.ndarray:
    """The n x n Sylvester Hadamard matrix (n a power of 2), entries +-1."""
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def rotation(block: int, seed: int) -> np.ndarray:
    """diag(d) H / sqrt(block), float64: orthogonal, d random signs from `seed`."""
    d = np.where(np.random.default_rng(seed).random(block) < 0.5, -1.0, 1.0)
    return d[:, None] * hadamard(block) / np.sqrt(block)


def ffn_outputs(model: ir.Model, planned: set[str], block: int = BLOCK) -> list[ir.Node]:
    """The MatMul/Gemm layers (names in `planned`) whose input is an FFN's hidden activation
    and whose input channels split into blocks of `block`."""
    out = []
    for node in model.graph:
        if node.name not in planned or node.op_type not in ("MatMul", "Gemm"):
            continue
        w = _const(node.inputs[1])
        if w is None or w.ndim != 2:
            continue
        k = w.shape[1] if node.op_type == "Gemm" and node.attributes.get_int("transB", 0) \
            else w.shape[0]
        if k % block or k < 2 * block or not _after_activation(node.inputs[0]):
            continue
        out.append(node)
    return out


def rotate_inputs(model: ir.Model, layers: list[ir.Node], seed: int = 0,
                  block: int = BLOCK) -> list[str]:
    """Rotate the inputs of `layers` (from ffn_outputs) in place; returns their names."""
    graph = model.graph
    names = UniqueNames(graph)
    done = []
    for i, node in enumerate(layers):
        r = rotation(block, seed + i)
        x = node.inputs[0]
        # named "rotation<layer>", not "<layer>/...": the report gives a runtime layer to the
        # planned layer its name extends, and the rotation runs in float
        base = f"rotation{node.name}"
        flat = add_initializer(graph, names, f"{base}/shape", np.array([0, -1, block], np.int64))
        matrix = add_initializer(graph, names, f"{base}/matrix", r.astype(np.float32))
        values = [ir.Value(name=names.value(f"{base}/{s}")) for s in
                  ("blocks", "rotated_blocks", "shape", "rotated")]
        static = x.shape is not None and all(isinstance(d, int) for d in x.shape)
        back = add_initializer(graph, names, f"{base}/back_shape",
                               np.array(list(x.shape), np.int64)) if static else values[2]
        nodes = [ir.Node("", "Reshape", [x, flat], outputs=[values[0]],
                         name=names.node(f"{base}/reshape")),
                 ir.Node("", "MatMul", [values[0], matrix], outputs=[values[1]],
                         name=names.node(base))]
        if not static:  # back to x's shape, read at run time
            nodes.append(ir.Node("", "Shape", [x], outputs=[values[2]],
                                 name=names.node(f"{base}/shape")))
        nodes.append(ir.Node("", "Reshape", [values[1], back], outputs=[values[3]],
                             name=names.node(f"{base}/back")))
        nodes[1].metadata_props[ROTATION_KEY] = node.name
        if x.dtype is not None:
            values[3].dtype = values[0].dtype = values[1].dtype = x.dtype
        values[3].shape = x.shape
        if static:  # the rotation's multiply-adds count
            rows = int(np.prod(list(x.shape)[1:])) // block
            for v in values[:2]:
                v.shape = ir.Shape([x.shape[0], rows, block])
        graph.insert_before(node, nodes)
        node.replace_input_with(0, values[3])
        node.replace_input_with(1, add_initializer(graph, names, f"{node.inputs[1].name}/rotated",
                                                   _rotated_weight(node, r, block)))
        done.append(node.name)
    return done


def _rotated_weight(node: ir.Node, r: np.ndarray, block: int) -> np.ndarray:
    """R^T W for the layer's weight (any layout), R block diagonal of `r`."""
    w = _const(node.inputs[1]).astype(np.float64)
    trans = node.op_type == "Gemm" and node.attributes.get_int("transB", 0)
    kn = w.T if trans else w  # [K, N]
    rotated = np.einsum("ji,bjn->bin", r, kn.reshape(-1, block, kn.shape[1]))
    rotated = rotated.reshape(kn.shape)
    return (rotated.T if trans else rotated).astype(np.float32)


def _after_activation(x: ir.Value | None) -> bool:
    producer = x.producer() if x is not None else None
    if producer is None:
        return False
    if producer.op_type in ACTIVATIONS:
        return True
    if producer.op_type != "Mul":
        return False
    frontier = [v.producer() for v in producer.inputs if v is not None]
    for _ in range(GATE_DEPTH):
        if any(p is not None and p.op_type in GATES for p in frontier):
            return True
        frontier = [v.producer() for p in frontier if p is not None
                    for v in p.inputs if v is not None]
    return False
