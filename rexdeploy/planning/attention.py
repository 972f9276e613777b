"""Which MatMuls with two activation inputs (attention: Q x K^T, then P x V) run int8.

    inputs(model, config, rules) -> list[str]   the tensors they need ranges of (both inputs of
                                                each candidate the build quantizes, `wanted`)
    add_to_plan(plan, model, config, rules) -> QuantPlan
        the candidates whose two inputs both have a plain per-tensor ActivationPlan quantized
        (an AttentionPlan each, dropped from plan.skipped); a Softmax output's range set to
        exactly [0, 1]; every other activation x activation MatMul stays listed float with
        its reason

A MatMul of two activations has no weight: int8 there means both inputs quantized, per tensor
(one scale each). --attention scores (the default) quantizes the MatMuls that read no Softmax
output (Q x K^T), int8 all of them, float none. OpenVINO's CPU plugin fuses the attention block
into one int8 kernel where the CPU has AMX/VNNI and runs int8 MatMuls otherwise
(docs/algorithms.md section 10). Which targets run them int8 is their TargetRules' (backends):
OpenVINO and the reference do; TensorRT keeps them float.
"""

from __future__ import annotations

from dataclasses import replace

import onnx_ir as ir

from calib_free.plan import ActivationPlan, AttentionPlan, QuantPlan
from rexdeploy.constants import const_array

FLOAT_REASON = ("activation x activation MatMuls stay float with --attention float "
                "(--attention scores, the default, quantizes Q x K^T); kept in float")
SOFTMAX_REASON = ("it reads a Softmax output (attention probabilities, most of them under "
                  "uint8's 1/255 step at long sequences), kept float by --attention scores, the "
                  "default, as NNCF's Softmax -> MatMul ignored pattern does; --attention int8 "
                  "quantizes it too; kept in float")
PRE_VNNI_REASON = ("OpenVINO runs activation x activation MatMuls in f32 on a CPU without "
                   "VNNI (measured under ONEDNN_MAX_CPU_ISA=AVX2), where int8 inputs would only "
                   "add rounding; kept in float")
WEIGHT_ONLY_REASON = ("both inputs are activations, and this build keeps activations float "
                      "(weight-only); kept in float")
# ops that only move a tensor's values (a Softmax seen through them is still in [0, 1])
_MOVES = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity")


def _activation(value: ir.Value | None) -> bool:
    """A non-constant float value that is not a dequantized constant (a weight)."""
    if value is None or const_array(value) is not None:
        return False
    producer = value.producer()
    if producer is not None and producer.op_type == "DequantizeLinear" and \
            const_array(producer.inputs[0]) is not None:
        return False
    return value.dtype in (None, ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def candidates(model: ir.Model) -> list[ir.Node]:
    """The MatMul nodes of the main graph whose two inputs are activations, in graph order."""
    return [node for node in model.graph if node.op_type == "MatMul" and node.name
            and node.domain in ("", "ai.onnx") and len(node.inputs) == 2
            and all(map(_activation, node.inputs))]


def enabled(config, rules) -> bool:
    """Whether this build quantizes activation x activation MatMuls (`config`: a QuantConfig;
    `rules`: the target's backends.base.TargetRules)."""
    return rules.int8_attention and config.activations == "int8" and \
        config.attention != "float" and not config.int8_saturates


def wanted(node: ir.Node, config, rules) -> bool:
    """Whether the build quantizes this candidate: enabled, not --exclude'd, and under
    --attention scores reading no Softmax output."""
    return enabled(config, rules) and node.name not in set(config.exclude) and \
        (config.attention == "int8" or not any(map(from_softmax, node.inputs)))


def inputs(model: ir.Model, config, rules) -> list[str]:
    """Both inputs of every candidate the build quantizes (`wanted`)."""
    return list(dict.fromkeys(v.name for node in candidates(model)
                              if wanted(node, config, rules) for v in node.inputs))


def from_softmax(value: ir.Value) -> bool:
    """Whether `value` is a Softmax output (seen through reshapes and transposes): its values
    lie in [0, 1] whatever the input."""
    producer = value.producer()
    while producer is not None and producer.op_type in _MOVES and producer.inputs:
        producer = producer.inputs[0].producer() if producer.inputs[0] is not None else None
    return producer is not None and producer.op_type == "Softmax"


def add_to_plan(plan: QuantPlan, model: ir.Model, config, rules) -> QuantPlan:
    """`plan` with the candidates quantized and the reasons of the others in plan.skipped said
    for the target. A candidate runs int8 when the build quantizes it (`wanted`) and both its
    inputs have a per-tensor ActivationPlan (no migration factors, no channel scales: those
    are folded into a weight, and this layer has none)."""
    from calib_free.activations.ranges import scale_from_clip

    nodes = {node.name: node for node in candidates(model)}
    acts = {a.tensor: a for a in plan.activations}
    chosen, skipped = [], []
    for s in plan.skipped:
        node = nodes.get(s.name)
        if node is None or s.op != "MatMul":
            skipped.append(s)
            continue
        ins = [acts.get(v.name) for v in node.inputs]
        plain = all(a is not None and a.smooth is None and a.channel_scale is None for a in ins)
        if wanted(node, config, rules) and plain:
            chosen.append(AttentionPlan(node.name, tuple(v.name for v in node.inputs),
                                        {"macs": s.macs}))
        else:
            skipped.append(replace(s, reason=_reason(node, config, rules, plain)))
    for a in chosen:  # a Softmax output takes its exact range, [0, 1]
        for name, value in zip(a.inputs, nodes[a.name].inputs):
            act = acts[name]
            if from_softmax(value) and act.source != "softmax":
                acts[name] = ActivationPlan(name, float(scale_from_clip(1.0, 8, act.signed)), 8,
                                            act.signed, "softmax", 1.0)
    return replace(plan, skipped=tuple(skipped), activations=tuple(acts.values()),
                   attention=tuple(chosen))


def _reason(node: ir.Node, config, rules, plain: bool) -> str:
    if rules.attention_float_reason:
        return rules.attention_float_reason
    if config.activations != "int8":
        return WEIGHT_ONLY_REASON
    if config.int8_saturates and config.attention != "float":
        return PRE_VNNI_REASON
    if config.attention == "float":
        return FLOAT_REASON
    if node.name in set(config.exclude):
        return "excluded by --exclude"
    if config.attention == "scores" and any(map(from_softmax, node.inputs)):
        return SOFTMAX_REASON
    if not plain:
        return ("an input has per-channel scales or migration factors (they fold into a "
                "weight, and this MatMul has none); kept in float")
    return "no range was found for an input; kept in float"
