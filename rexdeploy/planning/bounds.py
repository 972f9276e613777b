"""Bounds a tensor's values cannot leave, whatever the model's input (no data, no statistics).

Two uses:
- observed ranges (rexdeploy/planning/observe.py) are clamped to them: a ReLU6 output's range
  is never widened past 6;
- a tensor bounded below by a small negative value (the output of swish, hard-swish or GELU,
  and what a scalar scale and shift make of it) can take a uint8 grid with a zero point on
  targets that run one (OpenVINO): its codes then cover [lo, hi] instead of [-hi, hi], about
  half the step of a symmetric int8 grid (`zero_point_floors`, docs/algorithms.md section
  3.01).

Where a value is an elementwise function of one tensor (x * Sigmoid(x), x * Clip(x + 3, 0, 6)
/ 6, 0.5 * x * (1 + Erf(x / sqrt 2)), a scalar scale and shift of those), the bounds are the
function's over that tensor's own bounds, sampled densely near 0 and out to 1e6 (a side whose
values still move at the far end of the samples is unbounded).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from rexdeploy.constants import const_array
from rexdeploy.planning.stats import clip_bounds, elementwise_step

# ops whose output lies within fixed bounds, and ops whose output lies within their first input's
_BOUNDED = {"Sigmoid": (0.0, 1.0), "HardSigmoid": (0.0, 1.0), "Softmax": (0.0, 1.0),
            "Tanh": (-1.0, 1.0), "Relu": (0.0, np.inf)}
_WITHIN_INPUT = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Reshape",
                 "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Slice", "Split")
_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
_ERF = np.frompyfunc(math.erf, 1, 1)
# unary functions known here beyond the statistics' (rexdeploy.planning.stats.elementwise_step)
_EXTRA_UNARY = {
    "Erf": lambda x: _ERF(x).astype(np.float64),
    "Gelu": lambda x: 0.5 * x * (1.0 + _ERF(x / math.sqrt(2.0)).astype(np.float64)),
    "Softplus": lambda x: np.logaddexp(0.0, x),
    "Exp": np.exp,
}
_SAMPLES = np.unique(np.concatenate([-np.logspace(-6, 6, 241), np.linspace(-32.0, 32.0, 6401),
                                     np.logspace(-6, 6, 241), [0.0]]))
_DEPTH = 10  # elementwise nodes between a value and the tensor it is a function of


def hard_bounds(model: ir.Model) -> dict[str, tuple[float, float]]:
    """value name -> (lo, hi) that its values cannot leave whatever the input (either may be
    infinite): outputs of Clip with constant bounds, ReLU, Sigmoid, HardSigmoid, Softmax and
    Tanh, what pooling and reshaping ops make of them (a Concat of bounded inputs too), and
    elementwise functions of one tensor bounded on at least one side (swish, hard-swish, GELU,
    and a scalar scale or shift of a bounded value)."""
    bounds: dict[str, tuple[float, float]] = {}
    for node in model.graph:  # topological order
        ins = [bounds.get(v.name) if v is not None else None for v in node.inputs]
        if node.op_type == "Clip":
            lo, hi = clip_bounds(node)
            inner = ins[0] or (-np.inf, np.inf)
            b = (max(inner[0], -np.inf if lo is None else lo),
                 min(inner[1], np.inf if hi is None else hi))
        elif node.op_type in _BOUNDED:
            b = _BOUNDED[node.op_type]
        elif node.op_type in _WITHIN_INPUT and ins and ins[0] is not None:
            b = ins[0]
        elif node.op_type == "Concat" and ins and all(i is not None for i in ins):
            b = (min(i[0] for i in ins), max(i[1] for i in ins))
        else:
            b = _function_bounds(node, bounds)
            if b is None:
                continue
        bounds.update({v.name: b for v in node.outputs if v is not None})
    return bounds


def zero_point_floors(model: ir.Model) -> dict[str, float]:
    """value name -> its hard lower bound, for the values bounded below by a finite negative
    value (swish -0.278, hard-swish -0.375, GELU -0.170, and scalar scalings of those): the
    tensors a uint8 grid with a zero point can cover from that bound up."""
    return {name: float(lo) for name, (lo, _) in hard_bounds(model).items()
            if np.isfinite(lo) and lo < 0.0}


def _function_bounds(node: ir.Node, bounds: dict[str, tuple[float, float]]
                     ) -> tuple[float, float] | None:
    """The bounds of `node`'s output where it is an elementwise function of one tensor and
    bounded on at least one side, else None."""
    if not _elementwise(node):
        return None
    out = node.outputs[0] if node.outputs else None
    if out is None:
        return None
    for root in _ancestors(out):
        fn = _function_of(out, root, _DEPTH)
        if fn is not None:
            found = _range_of(fn, bounds.get(root.name, (-np.inf, np.inf)))
            return None if found is None or not (np.isfinite(found[0]) or
                                                 np.isfinite(found[1])) else found
    return None


def _ancestors(value: ir.Value) -> list[ir.Value]:
    """The values `value` is computed from through elementwise nodes alone, nearest first: the
    nearest one it is a function of gives the same bounds as any farther one (its own bounds,
    found before it in topological order, are that function's range), at less cost."""
    seen: dict[int, ir.Value] = {}
    frontier = [value]
    for _ in range(_DEPTH):
        nxt = []
        for v in frontier:
            node = v.producer()
            if node is None or not _elementwise(node):
                continue
            for i in node.inputs:
                if i is not None and const_array(i) is None and id(i) not in seen:
                    seen[id(i)] = i
                    nxt.append(i)
        frontier = nxt
    return list(seen.values())


def _elementwise(node: ir.Node) -> bool:
    return node.op_type in _BINARY or node.op_type in _EXTRA_UNARY or \
        elementwise_step(node) is not None


def _function_of(value: ir.Value, root: ir.Value, depth: int):
    """f with value = f(root) elementwise, through unary ops, scalar-constant arithmetic and
    Add/Sub/Mul/Div of two such functions of root; else None."""
    if value is root:
        return lambda x: x
    node = value.producer()
    if node is None or depth == 0 or not node.inputs or node.inputs[0] is None:
        return None
    step = elementwise_step(node)
    if step is None and node.op_type in _EXTRA_UNARY:
        step = _EXTRA_UNARY[node.op_type], node.inputs[0]
    if step is not None:
        fn, source = step
        inner = _function_of(source, root, depth - 1)
        return None if inner is None else (lambda x: fn(inner(x)))
    if node.op_type in _BINARY and len(node.inputs) == 2 and None not in node.inputs:
        a, b = (_function_of(v, root, depth - 1) for v in node.inputs)
        if a is not None and b is not None:
            op = _BINARY[node.op_type]
            return lambda x: op(a(x), b(x))
    return None


def _range_of(fn, domain: tuple[float, float]) -> tuple[float, float] | None:
    """(min, max) of fn over the domain, sampled; a side whose value still moves between the
    two outermost samples of an unbounded domain is infinite."""
    lo, hi = domain
    x = np.clip(_SAMPLES, lo, hi)
    with np.errstate(all="ignore"):
        y = np.asarray(fn(x), np.float64)
    if y.shape != x.shape or np.isnan(y).any():
        return None
    out = [float(y.min()), float(y.max())]
    for end, inner, open_end in ((0, 1, not np.isfinite(lo)), (-1, -2, not np.isfinite(hi))):
        if open_end and abs(y[end] - y[inner]) > 1e-9 * (1.0 + abs(y[end])):
            if y[end] <= out[0]:
                out[0] = -np.inf
            if y[end] >= out[1]:
                out[1] = np.inf
    return out[0], out[1]
