"""`rexdeploy compare`: fidelity of an artifact against its float model, with per-output
floors as a pass/fail gate (exit 3)."""

from __future__ import annotations

import json
import sys

import click

import backends

from rexdeploy.cli.common import console, json_default, quiet_option, save_json, user_errors


@click.command(epilog="""\b
Exit status: 0 done; 1 user error; 2 usage error; 3 a --min-sqnr / --min-cosine floor was
missed (each output's figure against its floor is named on stderr).""")
@click.argument("artifact", type=click.Path())
@click.option("--inputs", type=click.Path(), help="Directory of images (needs a preprocess spec, "
              "recorded at build or given here) or of .npy/.npz files.")
@click.option("--synthetic", type=click.IntRange(1, 100000), help="N synthetic inputs instead.")
@click.option("--preprocess", metavar="SPEC", help="Override the artifact's preprocess spec.")
@click.option("--reference", type=click.Choice(["auto", "torch", "onnx"]), default="auto",
              show_default=True, help="Float reference: the source torch model (auto: when it "
                                      "is still there unchanged) or the artifact's float.onnx.")
@click.option("--backend", type=click.Choice(backends.names()),
              help="Run the artifact on this backend [default: its target].")
@click.option("--limit", type=int, help="Use at most N inputs.")
@click.option("--per-layer", is_flag=True,
              help="Also compare every quantized layer's output (float.onnx vs model.onnx in "
                   "ONNX Runtime, all layer outputs marked) and name the first bad layer. Two "
                   "columns: 'SQNR' is the quantized model's layer output against the float "
                   "model's, so it accumulates the error of every earlier layer (where the "
                   "damage shows); 'local SQNR' runs the layer alone (its input Q/DQ, weights "
                   "and bias) on the float model's input to it, so it is that layer's own "
                   "quantization error; 'output dB, input float' is the network's output SQNR "
                   "with that layer's input Q/DQ bypassed (on the first 16 inputs, one more run "
                   "of the model per quantized input): the layers it ranks highest are the ones "
                   "whose input to keep float (--mixed-precision activations, or --exclude at "
                   "build). A layer's own error and its share of the output's differ: a deep "
                   "layer may lose 10 dB locally and cost the output 0.1 dB. A bypass may also "
                   "read below the output's own SQNR: bias correction offsets the mean shift "
                   "of the quantization, and bypassing one Q/DQ leaves its offset behind. Also "
                   "lists layers whose bias overflows "
                   "int32 at input scale x weight scale. Where the artifact runs on a device "
                   "(not --backend reference), the marked model also runs there: 'device SQNR' "
                   "and 'device vs ref' per layer, and the first layer where the device loses "
                   "against ONNX Runtime is named (a runtime-only loss, e.g. int8 saturation "
                   "on a CPU without VNNI).")
@click.option("--device-check/--no-device-check", default=True, show_default=True,
              help="Where the artifact runs on a device, also run its Q/DQ ONNX in ONNX "
                   "Runtime (the reference that defines what the plan means) on the same inputs: "
                   "two more columns, the reference's SQNR and the device's against it, and a "
                   "loud line when the device loses more than the build's --device-tolerance.")
@click.option("--threshold", "threshold_db", type=float, default=20.0, show_default=True,
              metavar="DB", help="With --per-layer: a layer below this SQNR is bad. 20 dB is "
                                 "noise at 1% of the signal power, 20 dB under the ~40 dB a "
                                 "clean int8 tensor keeps; EfficientNet-Lite0's int8 logits at "
                                 "23 dB already flip 4% of its top-1 answers.")
@click.option("--top", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="With --per-layer: list the N worst layers by local SQNR, and the N "
                   "whose input kept float raises the output most.")
@click.option("--ten-crop", is_flag=True,
              help="Judge each image of --inputs through its ten standard crops (centre and four "
                   "corners of the resized image, each mirrored; needs crop= in the preprocess "
                   "spec): ten times the decisions. Top-1 agreement on a few dozen images moves "
                   "by whole flips (48/50 = 96%, 95% interval 87-99%); ten crops narrow it about "
                   "threefold.")
@click.option("--output-slice", "output_slices", multiple=True,
              metavar="NAME:AXIS:START:END[=LABEL]",
              help="Also compare a part of an output on its own row: elements START to END of "
                   "its axis AXIS (the sample axis not counted), e.g. output:2:5:6=classes for "
                   "a detector head [1, anchors, 6] whose last column is the class score. One "
                   "SQNR over a whole concatenated head can hide a collapsed part. Repeatable.")
@click.option("--min-sqnr", "min_sqnr", multiple=True, metavar="[OUTPUT:]DB",
              help="Fail (exit 3) when an output's SQNR against the float model is below DB; "
                   "OUTPUT: one output or --output-slice label, else every output. Repeatable.")
@click.option("--min-cosine", "min_cosine", multiple=True, metavar="[OUTPUT:]VALUE",
              help="Fail (exit 3) when an output's mean cosine similarity to the float model "
                   "is below VALUE (e.g. 0.99). Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--save", type=click.Path(), help="Also write the metrics as JSON to this file.")
@quiet_option("No progress output; of the floors, only those missed are named.")
@user_errors
def compare(artifact, inputs, synthetic, preprocess, reference, backend, limit, per_layer,
            device_check, threshold_db, top, ten_crop, output_slices, min_sqnr, min_cosine,
            as_json, save, quiet):
    """Fidelity of ARTIFACT against the float model: SQNR, cosine, top-1 agreement, KL; on a
    device, also against its own Q/DQ reference (ONNX Runtime). With --min-sqnr/--min-cosine,
    a pass/fail gate for CI."""
    from rexdeploy import api
    from rexdeploy.evaluate.floors import check_floors, parse_floor

    floors = tuple(parse_floor(t, "sqnr_db") for t in min_sqnr) + \
        tuple(parse_floor(t, "cosine_mean") for t in min_cosine)

    result = api.compare(artifact, inputs, synthetic=synthetic, preprocess=preprocess,
                         reference=reference, backend=backend, limit=limit, quiet=quiet or as_json,
                         per_layer=per_layer, threshold_db=threshold_db, top=top,
                         ten_crop=ten_crop, device_check=device_check,
                         output_slices=output_slices)
    findings = check_floors(result, floors)
    if floors:
        result["floors"] = [{"floor": str(f.floor), "output": f.output, "measured": f.measured,
                             "passed": not f.missed} for f in findings]
    save_json(save, result)
    if as_json:
        click.echo(json.dumps(result, indent=1, default=json_default))
    else:
        from rexdeploy.evaluate.fidelity import render_table

        console().print(render_table(result))
        if "per_layer" in result:
            from rexdeploy.evaluate.localize import render_per_layer

            console().print(render_per_layer(result["per_layer"]))
    _floor_gate(findings, quiet)


def _floor_gate(findings, quiet: bool) -> None:
    from rexdeploy.evaluate.floors import EXIT_FLOOR

    failed = [f for f in findings if f.missed]
    for f in findings if not quiet else failed:
        click.echo(("BELOW FLOOR " if f.missed else "ok ") + f.describe(), err=True)
    if failed:
        click.secho(f"fidelity gate failed: {len(failed)} of {len(findings)} figure(s) below "
                    "their floor", fg="red", err=True)
        sys.exit(EXIT_FLOOR)
