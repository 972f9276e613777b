"""`rexdeploy compare`: the float model against the artifact on real or synthetic inputs, with the
device checked against its Q/DQ reference and, on request, the error localised layer by layer."""

from __future__ import annotations

import contextlib
import os

from rexdeploy.artifact import Artifact, load_artifact
from rexdeploy.errors import UserError
from rexdeploy.progress import StageLog
from rexdeploy.runners import (artifact_runner, integer_ranges, reference_runner, runs_on_device,
                               usable_backend)


# -- compare -----------------------------------------------------------------------------------
def compare(artifact: str, inputs: str | None = None, *, synthetic: int | None = None,
            preprocess: str | None = None, reference: str = "auto", backend: str | None = None,
            limit: int | None = None, quiet: bool = False, per_layer: bool = False,
            threshold_db: float | None = None, top: int | None = None,
            ten_crop: bool = False, device_check: bool = True,
            output_slices: tuple[str, ...] = ()) -> dict:
    """Float model vs the artifact on real (`inputs`) or synthetic inputs: fidelity metrics.

    ten_crop: each image of an `inputs` folder gives its ten standard crops (centre and four
    corners, each mirrored; rexdeploy.inputs.preprocess_views): ten times the decisions, so the
    top-1 agreement's interval narrows about threefold. `limit` still counts images.

    per_layer: also localise the error layer by layer (rexdeploy.evaluate.localize: float.onnx vs
    model.onnx in ONNX Runtime, every quantized layer's output marked) under "per_layer";
    threshold_db (default 20) marks a layer bad, top (default 5) worst layers are listed.

    output_slices: "NAME:AXIS:START:END[=LABEL]" parts of outputs compared on their own (a
    detector's head concatenating boxes, objectness and class scores: one SQNR hides a class
    score that collapsed), rexdeploy.evaluate.fidelity.OutputSlice.

    device_check: where the artifact runs on its device (not ONNX Runtime), also run its Q/DQ
    ONNX in ONNX Runtime (the reference) and report, per output, the reference's fidelity and
    the device's against it ("device_check"); with per_layer the marked Q/DQ model also runs on
    the device, and the first layer where the device loses against ONNX Runtime is named.
    """
    art = load_artifact(artifact)
    from rexdeploy.evaluate.fidelity import run_compare

    log = StageLog(quiet=quiet)
    if inputs and synthetic:
        raise UserError("give either --inputs or --synthetic, not both",
                        "--inputs DIR compares on your data; --synthetic N on random inputs")
    if ten_crop and not inputs:
        raise UserError("--ten-crop takes the views of images: give --inputs DIR")
    if per_layer and art.manifest.get("ensemble"):  # before any work
        raise UserError("--per-layer localises one Q/DQ model; an ensemble artifact holds "
                        f"{len(art.manifest['ensemble']['members'])} member models",
                        "build the exact expansion (--orders 2, no --ensemble) to localise")
    with log.stage("inputs", inputs or f"{synthetic or 16} synthetic"):
        samples, labels = _samples(art, inputs, synthetic, preprocess, limit, ten_crop)
    from rexdeploy.evaluate.fidelity import parse_output_slice

    slices = tuple(parse_output_slice(t) for t in output_slices)
    ref_runner, ref_name = reference_runner(art, reference)
    test_runner = artifact_runner(art, backend)
    on_device = runs_on_device(art, backend)
    qdq_runner = artifact_runner(art, "reference") if on_device and device_check else None
    with log.stage("compare", f"{len(samples)} samples: {ref_name} vs "
                              f"{backend or art.target}" +
                              (" and its Q/DQ reference (onnxruntime)" if qdq_runner else "")):
        with ref_runner as r, test_runner as t, (qdq_runner or contextlib.nullcontext()) as q:
            result = run_compare(r, t, samples, labels=labels, qdq_runner=q, slices=slices,
                                 tolerance_db=art.config.device_tolerance,
                                 heads=_heads(art))
    _describe(result, art, ref_name, backend, len(samples),
              (inputs or f"synthetic:{synthetic or 16}") + (", ten crops each" if ten_crop else ""))
    if per_layer:
        result["per_layer"] = _per_layer(art, samples, threshold_db, top, log,
                                         on_device and device_check)
    return result


def _heads(art: Artifact) -> dict[str, str]:
    """The outputs a Sigmoid or Softmax makes, which the device check reads as logits (as the
    build's own check does)."""
    from rexdeploy.evaluate.fidelity import model_heads

    if "float_onnx" not in art.files or not os.path.exists(art.file("float_onnx")):
        return {}
    return model_heads(art.file("float_onnx"))


def _samples(art: Artifact, inputs: str | None, synthetic: int | None, preprocess: str | None,
             limit: int | None, ten_crop: bool) -> tuple[list[dict], list | None]:
    """The inputs to compare on, and their labels where the folder has them: the user's
    (`inputs`, through the artifact's preprocess spec unless one is given) or synthetic ones
    drawn as the build drew its own (input ranges, pixel grids, token ids, named dims)."""
    from rexdeploy.inputs import load_inputs, load_labels, synthetic_inputs

    specs = art.manifest["inputs"]
    if inputs:
        preprocess = preprocess or art.manifest.get("preprocess")
        return (load_inputs(inputs, specs, preprocess, limit, views=10 if ten_crop else 1),
                load_labels(inputs, specs, limit))
    config = art.config
    ranges = {n: (lo, hi) for n, lo, hi in config.quant.input_ranges}
    ranges.update(integer_ranges(art))
    return synthetic_inputs(specs, synthetic or 16, 1234, ranges, dict(config.quant.input_grid),
                            dict(config.dims)), None


def _describe(result: dict, art: Artifact, reference: str, backend: str | None, samples: int,
              inputs: str) -> None:
    """What was compared with what, on what, into `result`; where the device disagrees with
    its reference and the artifact has int8 recurrent layers, the likely cause."""
    result["reference"] = reference
    result["backend"] = backend or art.target
    check = result.get("device_check")
    if check and not check.get("agrees", True):
        from rexdeploy.report import recurrent_count

        recurrent = recurrent_count(art.report())
        if recurrent:
            from rexdeploy.evaluate.device_check import likely_cause

            check["likely_cause"] = likely_cause(None, None, art.target, recurrent)
    if art.manifest.get("engine") == "deferred" and result["backend"] == art.target:
        result["backend"] = f"reference (deferred {art.target} artifact: its Q/DQ ONNX in " \
                            "ONNX Runtime)"
    result["samples"] = samples
    result["inputs"] = inputs


def _per_layer(art: Artifact, samples, threshold_db: float | None, top: int | None,
               log: StageLog, on_device: bool = False) -> dict:
    from rexdeploy.extras import require_build

    require_build("compare --per-layer")
    from rexdeploy.evaluate.localize import (DEFAULT_THRESHOLD_DB, DEFAULT_TOP, IMPACT_SAMPLES,
                                             localize)

    device = None
    if on_device:
        from backends.base import RunOptions

        b = usable_backend(art, art.target)
        options = RunOptions(device=art.manifest.get("device", "CPU"))
        device = (f"{art.target} {options.device}",
                  lambda path: b.runner(os.path.dirname(path), {"onnx": os.path.basename(path)},
                                        options))
    with log.stage("per-layer", f"{len(samples)} samples: float.onnx vs model.onnx, "
                                "every quantized layer marked (onnxruntime"
                                + (f" and {device[0]}" if device else "") + "), then each "
                                f"quantized input bypassed on {min(len(samples), IMPACT_SAMPLES)}"):
        return localize(art.file("float_onnx"), art.file("onnx"), samples,
                        threshold_db=DEFAULT_THRESHOLD_DB if threshold_db is None
                        else threshold_db, top=top or DEFAULT_TOP, device=device,
                        device_tolerance_db=art.config.device_tolerance)
