"""`--sensitivity` / `--mixed-precision`: the budget allocation steered by measured sensitivity.

Glue between the plan's dense expansions (rexdeploy.planning.quantize) and calib_free.mixed: builds
the
allocator's view of each layer (its error proxy, its measured output NSR, its 8-bit error proxy
when its weights may be raised), runs the greedy, and turns the result into LayerPlans: raised
layers re-expanded at int8 (order 1), float-kept activations dropped from the plan, and every
choice recorded in the layer's metrics (report.json `mixed`) with its reason and BOP cost.
"""

from __future__ import annotations

from dataclasses import replace

from calib_free.mixed import FLOAT_BITS, MixedAllocation, MixedLayer, allocate_mixed
from rexdeploy.planning import cost_models
from rexdeploy.config import QuantConfig


def raises_weights(config: QuantConfig) -> bool:
    return config.mixed_precision in ("weights", "all") and config.weight_bits < 8


def raises_activations(config: QuantConfig) -> bool:
    return config.mixed_precision in ("activations", "all") and config.activations == "int8"


def allocate(expansions, config: QuantConfig, sensitivity, act_tensors: set[str], expand8
             ) -> tuple[MixedAllocation, dict]:
    """(allocation, layer -> its int8 expansion when raisable). expand8(layer_expansion) makes
    the order-1 int8 expansion of a layer."""
    measured = [v for v in sensitivity.weights.values()]
    fallback = sum(measured) / len(measured) if measured else None  # unmeasured layer: mean
    eights = {e.layer.name: expand8(e) for e in expansions} if raises_weights(config) else {}
    int8_only = _capped_matmul_inputs(expansions, config)
    rows = []
    for e in expansions:
        name = e.layer.name
        cost = e.layer.cost(e.errors, config.weight_bits, config.activation_bits)
        floatable = e.layer.input in act_tensors and e.layer.input not in int8_only
        rows.append(MixedLayer(cost, sensitivity.weights.get(name, fallback),
                               eights[name].errors[0] if name in eights else None,
                               e.layer.input if floatable else None))
    alloc = allocate_mixed(rows, config.budget, sensitivity.activations,
                           raise_weights=raises_weights(config),
                           float_activations=raises_activations(config),
                           whole_layers=config.budget_whole_layers,
                           cost_model=cost_models.get(config.budget_cost),
                           floor=config.budget_from)
    return alloc, eights


def _capped_matmul_inputs(expansions, config: QuantConfig) -> set[str]:
    """The MatMul/Gemm inputs that stay int8 on OpenVINO CPU, where such a layer whose input is
    float and whose weights are integer runs on the compressed-weight kernel:
    - in a build for a pre-VNNI CPU: OpenVINO chooses that kernel by the CPU's own features,
      which ONEDNN_MAX_CPU_ISA does not hide, and oneDNN then refuses it
      (backends.cpu_isa.cap_note). Such a build's device check runs under that cap on a newer
      host (and a cross-build must equal the build made under it);
    - in a build whose runtime keeps its dynamic quantization (4-bit builds, and 8-bit ones
      whose user set --dynamic-quantization N > 0; otherwise 8-bit builds turn it off:
      rexdeploy.resolve.float_inputs_stay_float): that kernel would quantize the float input
      again, and the device would not run what the reference does."""
    requant = config.dynamic_quantization != 0
    if not (config.budget_cost.startswith("openvino-cpu") and (config.int8_saturates or requant)):
        return set()
    return {e.layer.input for e in expansions if e.layer.op in ("MatMul", "Gemm")}


def finish(plans: list, alloc: MixedAllocation, sensitivity, config: QuantConfig,
           layers: dict) -> list:
    """The layer plans with their metrics updated for the mixed choices: BOPs (and the budget's
    cost, when it is not BOPs) at the precision each layer runs, its measured sensitivity, and
    `mixed` (what was raised, why, at what cost). `plans` already holds the raised layers at
    int8; layers: name -> LayerInfo."""
    from calib_free.weights.sparse import layer_bops

    out = []
    for lp in plans:
        m = dict(lp.metrics)
        fractions = m.get("kept_fraction", [])
        bits_w = lp.orders[0].bits
        float_act = lp.input in alloc.float_activations
        bits_a = FLOAT_BITS if float_act else config.activation_bits
        m["bops_order1"] = layer_bops(m["macs"], config.weight_bits, config.activation_bits, [])
        m["bops"] = layer_bops(m["macs"], bits_w, bits_a, fractions)
        m.update(cost_models.layer_metrics(layers[lp.name], config.budget_cost, bits_w, bits_a,
                                           fractions, (config.weight_bits,
                                                       config.activation_bits)))
        m["sensitivity"] = {"weights_nsr": _sig(sensitivity.weights.get(lp.name)),
                            "activation_nsr": _sig(sensitivity.activations.get(lp.input))}
        mixed = {}
        if lp.name in alloc.raised_weights:
            r = alloc.raised_weights[lp.name]
            mixed["weights"] = {
                "bits": r["bits"], "from_bits": r["from_bits"], "bops_delta": r["bops_delta"],
                "why": f"its int{r['from_bits']} weights alone cost the output NSR "
                       f"{r['nsr_w']:.3g}; int8 removes an expected {r['expected_nsr_drop']:.3g}"
                       f" for {r['bops_delta'] / 1e6:.3g} MBOPs"}
        if float_act:
            r = alloc.float_activations[lp.input]
            mixed["activation"] = {
                "precision": "float", "tensor": lp.input, "bops_delta": r["bops_delta"],
                "layers": r["layers"],
                "why": f"quantizing {lp.input} alone costs the output NSR {r['nsr_a']:.3g}; "
                       f"kept float for {r['bops_delta'] / 1e6:.3g} MBOPs"
                       + (f" (shared by {len(r['layers'])} layers)" if len(r["layers"]) > 1
                          else "")}
        if mixed:
            m["mixed"] = mixed
        out.append(replace(lp, metrics=m))
    return out


def _sig(v):
    return None if v is None else float(f"{v:.4g}")
