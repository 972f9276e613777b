#!/usr/bin/env python
"""The quick start's closing table: what was built, how faithful it is, how fast it runs.

    tools/summary.py ARTIFACT COMPARE.json PROFILE.json
"""

from __future__ import annotations

import json
import sys


def main(artifact: str, compare_json: str, profile_json: str) -> int:
    from rich.console import Console
    from rich.table import Table

    from rexdeploy.artifact import load_artifact

    art = load_artifact(artifact)
    fid = json.load(open(compare_json))
    prof = json.load(open(profile_json))["variants"]
    s = art.manifest["summary"]
    q = art.config.quant
    by = {v["label"]: v for v in prof}
    f32 = by.get("float f32 (pinned)")
    table = Table(title="rexdeploy quick start: EfficientNet-Lite0, data-free int8 on OpenVINO",
                  show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("artifact", art.path)
    table.add_row("quantization", f"W:{q.weights} A:{q.activations} K={q.orders}, no "
                                  f"data (ranges: {q.ranges}, BatchNorm statistics)")
    table.add_row("runtime int8", f"{s['runtime_int8_layers']}/{s['runtime_compute_layers']} "
                                  f"compute layers ({s['int8_coverage']:.0%}), read from the "
                                  "compiled model")
    agree, ci = fid.get("top1_agreement"), fid.get("top1_agreement_ci")
    agree_text = "-" if agree is None else f"{agree:.1%}" + (
        f" (95% interval {ci[0]:.0%}-{ci[1]:.0%})" if ci else "")
    ties, decisive = fid.get("top1_near_ties"), fid.get("top1_agreement_decisive")
    if ties and decisive is not None:
        agree_text += f"; {decisive:.0%} on the {fid['samples'] - ties} that are not near ties"
    table.add_row("fidelity", f"{fid['samples']} real photos vs {fid['reference']}: logits SQNR "
                              f"{fid['sqnr_db']:.1f} dB, top-1 agreement {agree_text}, KL "
                              f"{fid['kl']:.4f}")
    isa, fix = s.get("int8_isa"), s.get("overflow_fix") or {}
    if isa:
        table.add_row("int8 ISA", f"{isa['name']} ({isa['source']}): " + (
            f"int8 pairs saturate in int16 here, weight codes pair-limited in {fix['layers']} "
            "layers (--overflow-fix)" if fix.get("pair_limit") else
            "int32 accumulation, nothing to limit"))
    check = fid.get("device_check")
    if check:
        out = check["outputs"].get(fid.get("output"), {})
        verdict = "within" if check["agrees"] else "[bold red]NOT within[/]"
        table.add_row("device vs reference",
                      f"{verdict} {check['tolerance_db']:g} dB: OpenVINO "
                      f"{out.get('device_db', 0):.1f}"
                      f" dB, its Q/DQ ONNX in ONNX Runtime {out.get('reference_db', 0):.1f} dB "
                      "against float on the same photos")
    for v in prof:
        lat = v["latency_ms"]["median"]
        ratio = f" ({lat / f32['latency_ms']['median']:.2f}x f32)" if f32 else ""
        prec = v.get("info", {}).get("inference_precision", "")
        table.add_row(f"latency: {v['label']}",
                      f"{lat:.2f} ms median{ratio}" + (f", float parts in {prec}" if prec else ""))
    Console().print(table)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
