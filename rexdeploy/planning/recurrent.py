"""Which LSTM/GRU layers of a float graph run int8, and their plan (calib_free.weights.recurrent).

    candidates(model) -> list[ir.Node]          LSTM/GRU nodes of the main graph OpenVINO's int8
                                                RNN kernel takes (eligible(node) is None)
    add_to_plan(plan, model, ranges, config, target) -> QuantPlan
        the candidates quantized (W and R int8, X an int8 activation widened to the hidden
        state's range) and dropped from plan.skipped; every other recurrent layer stays listed
        float with its reason

Which targets run them int8 is their TargetRules' (backends): OpenVINO (its CPU plugin turns an
LSTMSequence/GRUSequence with dequantized X, W and R into oneDNN's int8 RNN); TensorRT runs
them in float.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx_ir as ir

from calib_free.plan import ActivationPlan, QuantPlan, RecurrentPlan
from rexdeploy.constants import const_array

RECURRENT_OPS = ("LSTM", "GRU")
_DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh")}
FLOAT_REASON = ("recurrent layers stay float by default (--recurrent int8 runs them on "
                "OpenVINO's int8 RNN kernel, which also rounds the fed-back hidden state); "
                "kept in float")
WEIGHT_ONLY_REASON = ("OpenVINO's recurrent kernels are int8 only with an int8 input (a "
                      "weight-only build keeps the input float); kept in float")


def eligible(node: ir.Node) -> str | None:
    """Why OpenVINO's int8 RNN kernel cannot take this LSTM/GRU, or None when it can."""
    op = node.op_type
    if op not in RECURRENT_OPS:
        return (f"OpenVINO's int8 recurrent kernels cover LSTM and GRU, not {op}; "
                "kept in float")
    inputs = list(node.inputs) + [None] * 8
    x, w, r, b = inputs[:4]
    initial_h = inputs[5]
    if x is None or const_array(x) is not None:
        return "its input X is not an activation; kept in float"
    arrays = [const_array(w), const_array(r)]
    if any(a is None or a.ndim != 3 or not np.issubdtype(a.dtype, np.floating) for a in arrays):
        return "W or R is not a float constant; kept in float"
    if b is not None and const_array(b) is None:
        return "its bias B is not a constant; kept in float"
    if op == "LSTM" and inputs[7] is not None:
        return "LSTM with peepholes (input P) has no int8 kernel; kept in float"
    if not _shape_only(initial_h):
        return ("its initial hidden state is computed from data (the int8 kernel needs it "
                "constant or from shapes only); kept in float")
    acts = node.attributes.get_strings("activations", None)
    default = _DEFAULT_ACTIVATIONS[op]
    if acts and tuple(acts) != default * (len(acts) // len(default)):
        return f"non-default activations {list(acts)}; kept in float"
    if op == "GRU" and node.attributes.get_int("linear_before_reset", 0):
        return ("oneDNN has no int8 kernel for a linear-before-reset GRU (PyTorch's and "
                "Keras's default GRU); kept in float")
    if node.attributes.get("clip") is not None:
        return "a cell clip has no int8 kernel; kept in float"
    if node.attributes.get_int("input_forget", 0) or node.attributes.get_int("layout", 0):
        return "input_forget / layout=1 are not supported by the int8 kernel; kept in float"
    return None


def _shape_only(value: ir.Value | None) -> bool:
    """True when `value` is absent, constant, or computed from constants and tensor shapes
    only (Shape/Size), never from a tensor's values."""
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        if v is None or id(v) in seen or const_array(v) is not None:
            continue
        seen.add(id(v))
        producer = v.producer()
        if producer is None:  # a graph input
            return False
        if producer.op_type in ("Shape", "Size"):
            continue
        stack += list(producer.inputs)
    return True


def candidates(model: ir.Model) -> list[ir.Node]:
    """The LSTM/GRU nodes of the main graph the int8 kernel takes, in graph order."""
    return [node for node in model.graph if node.op_type in RECURRENT_OPS and node.name
            and node.domain in ("", "ai.onnx") and eligible(node) is None]


def state_output(node: ir.Node) -> ir.Value | None:
    """The output holding the layer's hidden states: Y (every step), else Y_h (the last)."""
    outputs = [v for v in node.outputs[:2] if v is not None and v.name]
    return outputs[0] if outputs else None


def add_to_plan(plan: QuantPlan, model: ir.Model, ranges: dict[str, tuple[float, str]],
                config, rules) -> QuantPlan:
    """`plan` with the recurrent candidates quantized (a target whose TargetRules allow int8
    recurrent layers, --recurrent int8, int8 activations, not --exclude'd) and the reasons of
    the others in plan.skipped said for the target (`rules`, backends.base.TargetRules).
    ranges: value name -> (bound, source) of the range found for it (observed or from
    statistics), for each candidate's X and its hidden-state output (state_output); a
    candidate whose X has none stays float."""
    from calib_free.activations.ranges import scale_from_clip
    from calib_free.weights.recurrent import (LSTM_SWAPPED_GATES, input_bound, shared_row_codes,
                                              state_clip, weight_sqnr)

    nodes = {node.name: node for node in model.graph if node.op_type in ("LSTM", "GRU", "RNN")}
    quantize = rules.int8_recurrent and config.activations == "int8" and \
        config.recurrent == "int8"
    chosen = {node.name: node for node in candidates(model)
              if quantize and node.name not in set(config.exclude)
              and node.inputs[0].name in ranges}
    skipped, recurrent = [], []
    acts = {a.tensor: a for a in plan.activations}
    factors: dict[str, float] = {}  # X -> the factor W carries where X was rescaled
    for s in plan.skipped:
        node = nodes.get(s.name)
        if node is None or node.op_type != s.op:
            skipped.append(s)
        elif s.name in chosen:
            x = node.inputs[0].name
            bound, source = ranges[x]
            w, r = const_array(node.inputs[1]), const_array(node.inputs[2])
            if x in factors:  # a second recurrent layer reading the same rescaled X
                w = w * np.float32(factors[x])
            elif x in acts:  # shared with a Conv/MatMul input: one range for both, widened
                bound = max(bound, acts[x].range)
                clip = input_bound(bound)
                acts[x] = ActivationPlan(x, float(scale_from_clip(clip)), 8, True,
                                         source + ("+state" if clip > bound else ""), clip)
            else:  # X rescaled into the hidden state's range; W carries the inverse factor
                bound = max(float(bound), 1e-8)
                state = state_output(node)
                clip = state_clip(ranges[state.name][0] if state is not None and
                                  state.name in ranges else None)
                factors[x] = bound / clip
                w = w * np.float32(factors[x])
                acts[x] = ActivationPlan(x, float(scale_from_clip(clip)), 8, True,
                                         source + "+rescaled", clip,
                                         np.full(w.shape[2], clip / bound, np.float32))
            wq, rq, scale = shared_row_codes(
                w, r, tie=LSTM_SWAPPED_GATES if node.op_type == "LSTM" else (),
                pair_limit=config.pair_limit)
            recurrent.append(RecurrentPlan(
                s.name, s.op, x, (node.inputs[1].name, node.inputs[2].name), wq, rq, scale,
                {"macs": s.macs, "input_bound": round(float(bound), 6),
                 "state_clip": round(float(acts[x].range), 6),
                 "weight_sqnr_db": round(weight_sqnr(w, r, wq, rq, scale), 2)}))
        else:
            skipped.append(replace(s, reason=_reason(node, rules, config)))
    return replace(plan, skipped=tuple(skipped), activations=tuple(acts.values()),
                   recurrent=tuple(recurrent))


def _reason(node: ir.Node, rules, config) -> str:
    if node.op_type in RECURRENT_OPS and rules.recurrent_float_reason:
        return rules.recurrent_float_reason
    if node.op_type in RECURRENT_OPS and config.recurrent == "float":
        return FLOAT_REASON
    if node.op_type in RECURRENT_OPS and config.activations != "int8":
        return WEIGHT_ONLY_REASON
    if node.name in set(config.exclude):
        return "excluded by --exclude"
    return eligible(node) or "no range was found for its input X; kept in float"
