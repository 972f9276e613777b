"""report.json: what was quantized how, and what precision really runs, per layer."""

from __future__ import annotations

import re

REPORT_VERSION = 1
# Runtime precisions of a compute layer that read integer weights: int8 kernels, or compressed
# int8/int4 weights decompressed inside the kernel (weight-only builds, OpenVINO FullyConnected).
LOW_BIT = ("i8", "u8", "i4", "u4")
TABLE_FLOAT_REASON = ("non-uniform codes have no integer kernel, and OpenVINO's CPU plugin "
                      "decompresses codebook (Gather) weights to f32; lowered as float weights "
                      "(f32 on OpenVINO, f16 on TensorRT), codes and table kept in plan.npz")


def _runtime_rows(layers) -> list[dict]:
    """The runtime's compute layers as report rows, under stable names (_stable_names)."""
    runtime = [
        {"name": l.name, "type": l.type, "precision": l.precision, "kernel": l.kernel,
         "int8": l.is_int8, "original": list(getattr(l, "original_names", ()) or ())}
        for l in layers]
    _stable_names(runtime)
    return runtime


def _stable_names(runtime: list[dict]) -> None:
    """Names the runtime made up for nodes of its own (no original node; OpenVINO: "Multiply_"
    and a process-wide counter, so two builds in one process differ) become "Multiply#k", the
    k-th such node of the report, in place: the report stays the same from build to build."""
    seen = 0
    for r in runtime:
        m = re.fullmatch(r"([A-Za-z]+)_\d+", r["name"])
        if m and not r["original"]:
            r["name"] = f"{m.group(1)}#{seen}"
            seen += 1


def build_report(plan, layers, result, lowered: dict, notes: list[str]) -> dict:
    """Join the plan (decisions), the analysis (MACs) and the backend's runtime precisions.
    Nothing run-dependent goes in (stage timings live in the manifest), so two builds of one
    model give the same report.json byte for byte."""
    runtime = _runtime_rows(result.layers)
    acts = {a.tensor: a for a in plan.activations}
    bias_nodes = {info.name: info.bias_node for info in layers}
    assigned = _assign_runtime([lp.name for lp in plan.layers] +
                               [rp.name for rp in plan.recurrent], bias_nodes, runtime)
    rows = []
    for lp in plan.layers:
        act = acts.get(lp.input)
        ran = assigned[lp.name]
        rows.append({
            "name": lp.name, "op": lp.op, "orders": len(lp.orders),
            "bits": [o.bits for o in lp.orders],
            "macs": lp.metrics.get("macs", 0),
            "kept_fraction": lp.metrics.get("kept_fraction", []),
            "bops": lp.metrics.get("bops"),
            "weight_error_order1": lp.metrics.get("error_order1"),
            "weight_error": lp.metrics.get("error"),
            "bias_corrected": lp.bias_shift is not None,
            "refine": lp.metrics.get("refine"),  # --refine: output error before/after, seconds
            "activation": _activation_row(act),
            **_runtime_fields(ran),
        })
        for key in ("cost", "cost_order1",  # --budget in a runtime's time model
                    # pair-limited codes for a pre-VNNI CPU (calib_free/weights/saturation.py)
                    "overflow_fix",
                    "sensitivity", "mixed"):  # --sensitivity / --mixed-precision (mixed.py)
            if key in lp.metrics:
                rows[-1][key] = lp.metrics[key]
        if any(o.table is not None for o in lp.orders):  # PowerQuant: codes + lookup table
            rows[-1]["operator"] = "power"
            rows[-1]["exponents"] = lp.metrics.get("exponents")
            rows[-1]["computes_float"] = TABLE_FLOAT_REASON
    unnamed = _unnamed_recurrent(runtime, assigned)
    rows += [_recurrent_row(rp, acts.get(rp.input), assigned[rp.name] or unnamed)
             for rp in plan.recurrent]
    rows += [_attention_row(a, [acts.get(t) for t in a.inputs], runtime) for a in plan.attention]
    table_layers = [r["name"] for r in rows if "computes_float" in r]
    if table_layers:
        notes = list(notes) + [f"{len(table_layers)} layers compute in float because their "
                               f"weights are PowerQuant lookup tables: {TABLE_FLOAT_REASON}"]
    int8 = sum(r["int8"] for r in runtime)
    coverage = int8 / len(runtime) if runtime else 0.0
    skipped = [{"name": s.name, "op": s.op, "reason": s.reason, "macs": s.macs}
               for s in plan.skipped]
    return {
        "version": REPORT_VERSION,
        "summary": {
            "quantized_layers": len(plan.layers) + len(plan.recurrent) + len(plan.attention),
            "skipped_layers": len(plan.skipped),
            "activation_tensors": len(plan.activations),
            "runtime_compute_layers": len(runtime),
            "runtime_int8_layers": int8,
            "runtime_low_bit_layers": sum(r["int8"] or r["precision"] in LOW_BIT
                                          for r in runtime),
            "int8_coverage": round(coverage, 4),
            "macs": sum(r["macs"] for r in rows),
            **macs_coverage(rows, skipped),
            **({"float_compute_layers": table_layers} if table_layers else {}),
            **({"mixed_precision": [{"layer": r["name"], **{k: {x: y for x, y in v.items()
                                                              if x != "why"}
                                                           for k, v in r["mixed"].items()}}
                                    for r in rows if r.get("mixed")]}
               if any("sensitivity" in r for r in rows) else {}),
            **bops_summary(plan),
        },
        "layers": rows,
        "skipped": skipped,
        "activations": [_activation_row(a) for a in plan.activations],
        "runtime_layers": runtime,
        "graph": lowered,
        "notes": list(notes) + list(result.info.get("notes", [])),
        "backend": dict(result.info),
    }


def _activation_row(act) -> dict | None:
    return None if act is None else {
        "tensor": act.tensor, "scale": act.scale, "range": act.range,
        "dtype": "int8" if act.signed else "uint8", "source": act.source} | (
        {"zero_point": act.zero_point} if act.zero_point else {}) | (
        {} if act.channel_scale is None else
        {"per_channel": True, "channels": len(act.channel_scale),
         "scale_min": float(min(act.channel_scale))})


def _runtime_fields(ran: list[dict]) -> dict:
    """What a planned layer's runtime layers run as: their precisions and kernels, and whether
    all of them run int8 / read integer weights."""
    return {"runtime": [{"precision": r["precision"], "kernel": r["kernel"]} for r in ran],
            "runs_int8": bool(ran) and all(r["int8"] for r in ran),
            "runs_low_bit": bool(ran) and all(r["precision"] in LOW_BIT for r in ran)}


def recurrent_count(report: dict) -> int:
    """How many LSTM/GRU layers of a report run int8 (--recurrent int8)."""
    return sum(r["op"] in ("LSTM", "GRU") for r in report.get("layers", ()))


def _unnamed_recurrent(runtime: list[dict], assigned: dict[str, list[dict]]) -> list[dict]:
    """The runtime recurrent layers no planned layer claimed, when they all run one precision:
    OpenVINO's CPU plugin splits a bidirectional LSTM/GRU into two layers it names from a
    counter, keeping no original name, so which layer is which cannot be read; if they all run
    int8 (or all do not), each int8 recurrent layer of the plan runs that way."""
    claimed = {id(r) for rows in assigned.values() for r in rows}
    left = [r for r in runtime if r["type"] in ("RNNSeq", "RNNCell") and id(r) not in claimed]
    return left if len({r["int8"] for r in left}) == 1 else []


def _recurrent_row(rp, act, ran: list[dict]) -> dict:
    """An int8 LSTM/GRU (calib_free.weights.recurrent) as a layer row."""
    return {"name": rp.name, "op": rp.op, "orders": 1, "bits": [8],
            "macs": rp.metrics.get("macs", 0), "kept_fraction": [], "bops": None,
            "weight_error": {"sqnr_db": rp.metrics.get("weight_sqnr_db")},
            "bias_corrected": False,
            "activation": _activation_row(act), **_runtime_fields(ran)}


def _attention_row(a, acts: list, runtime: list[dict]) -> dict:
    """An int8 activation x activation MatMul (rexdeploy/planning/attention.py) as a layer row.
    Its runtime layers: those named after it or listing among their original nodes it or the
    DequantizeLinear of an input (OpenVINO's fused MHA kernel may keep only those names); one
    runtime layer may hold both MatMuls of an attention block, so they are not claimed one
    layer each as the weighted layers' are."""
    marks = (a.name, *(f"{t}/DequantizeLinear" for t in a.inputs))
    ran = [r for r in runtime if r["name"] == a.name
           or any(o == m or o.startswith(m + "_") for o in r["original"] for m in marks)]
    return {"name": a.name, "op": "MatMul", "orders": 1, "bits": [],
            "macs": a.metrics.get("macs", 0), "kept_fraction": [], "bops": None,
            "weight_error": None, "bias_corrected": False,
            "activation": _activation_row(acts[0]),
            "activations": [_activation_row(act) for act in acts], **_runtime_fields(ran)}


def _assign_runtime(names: list[str], bias_nodes: dict[str, str | None],
                    runtime: list[dict]) -> dict[str, list[dict]]:
    """The runtime layers of each planned layer, each runtime layer given to one layer at most.

    First by the runtime layer's own name: the ONNX node `name`, a piece OpenVINO made of it
    (`name/DequantizationMultiply`, `name/order2` for expansion branches), or the layer's bias
    Add (a MatMul with its bias fused is named after the Add). Then, for runtime layers left,
    by `originalLayersNames` (which may list fused neighbours too, hence second).
    """
    def owner(n: str) -> str | None:
        for name in names:
            if n == name or n.startswith(name + "/") or n == bias_nodes.get(name):
                return name
        return None

    out: dict[str, list[dict]] = {name: [] for name in names}
    for r in runtime:
        name = owner(r["name"]) or next(filter(None, map(owner, r["original"])), None)
        if name is not None:
            out[name].append(r)
    return out


def bops_summary(plan) -> dict:
    """Total bit-operations of the plan and the ratio to its order-1 model; with a --budget in a
    runtime's time model, also that model's ratio (cost_ratio)."""
    total = sum(lp.metrics.get("bops", 0.0) or 0.0 for lp in plan.layers)
    base = sum(lp.metrics.get("bops_order1", 0.0) or 0.0 for lp in plan.layers)
    out = {"bops": total, "bops_order1": base,
           "bops_ratio": round(total / base, 4) if base else 1.0}
    if any("cost" in lp.metrics for lp in plan.layers):  # a --budget in a runtime's time model
        cost = sum(lp.metrics.get("cost", 0.0) for lp in plan.layers)
        base = sum(lp.metrics.get("cost_order1", 0.0) for lp in plan.layers)
        out["cost_ratio"] = round(cost / base, 4) if base else 1.0
    return out


def overflow_summary(plan) -> dict:
    """How many layers carry pair-limited codes (--overflow-fix, calib_free.weights.saturation), how
    many output channels moved to a coarser scale for it and the mean bits they gave up."""
    rows = [lp.metrics["overflow_fix"] for lp in plan.layers if "overflow_fix" in lp.metrics]
    moved = sum(r["channels_rescaled"] for r in rows)
    bits = sum(r["bits_given_up"] * r["channels_rescaled"] for r in rows)
    return {"layers": len(rows), "channels_rescaled": moved,
            "bits_given_up": round(bits / moved, 4) if moved else 0.0}


def macs_coverage(rows: list[dict], skipped: list[dict]) -> dict:
    """Coverage by multiply-adds (batch 1, the build's example shape): the MACs of the layers
    that run int8 (or read integer weights) over those of every compute op, kept-float ones
    (recurrent layers, ConvTranspose, attention MatMuls, subgraphs) included. macs_unknown:
    compute ops whose shape stayed unknown (0 MACs counted)."""
    int8 = sum(r["macs"] for r in rows if r["runs_int8"])
    low_bit = sum(r["macs"] for r in rows if r["runs_int8"] or r["runs_low_bit"])
    total = sum(r["macs"] for r in rows) + sum(s["macs"] for s in skipped)
    unknown = sum(r["macs"] == 0 for r in rows) + sum(s["macs"] == 0 for s in skipped)
    return {"macs_float": sum(s["macs"] for s in skipped),
            "int8_coverage_macs": round(int8 / total, 4) if total else 0.0,
            "low_bit_coverage_macs": round(low_bit / total, 4) if total else 0.0,
            "macs_unknown_layers": unknown}
