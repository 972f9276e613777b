"""The Python API the CLI is a thin layer over.

    import rexdeploy
    art = rexdeploy.build("model.pt", ["input:1x3x224x224"], target="openvino",
                          output="out/model.openvino")
    rexdeploy.compare(art.path, inputs="photos/")
    rexdeploy.profile(art.path)

Stages (each a function with a typed input and output, see docs/design.md): load -> export (float
ONNX, BN kept) -> statistics -> fold BN -> analyze -> quantize (QuantPlan) -> lower (Q/DQ ONNX) ->
compile (backend) -> artifact.
"""

from __future__ import annotations

import os
from dataclasses import replace

from rexdeploy.artifact import Artifact, ArtifactWriter, load_artifact
from rexdeploy.config import BuildConfig, QuantConfig
from rexdeploy.evaluate.device_check import say, strict
from rexdeploy.progress import StageLog
from rexdeploy.evaluate.compare import compare
from rexdeploy.pipeline import build_manifest, import_heavy, model_name, run_pipeline
from rexdeploy.runners import artifact_runner, ensemble_runner

__all__ = ["build", "compare", "profile", "inspect", "load_artifact", "artifact_runner",
           "BuildConfig", "QuantConfig", "Artifact"]


def build(model, inputs=(), *, target: str | None = None, output: str | None = None,
          config: BuildConfig | None = None, force: bool = False, quiet: bool = False,
          preprocess: str | None = None) -> Artifact:
    """Quantize `model` without data and compile it for `target`; returns the artifact.

    target: "openvino" or "trt"; None takes `config.target` (default "openvino").

    model: a path (TorchScript, .pt2, ONNX, pickled module with trust_pickle), a
    `package.module:factory` string (weights in config.factory_weights), or an nn.Module.
    inputs: `--input` style strings or InputSpec objects (optional for ONNX models).
    preprocess: how images are turned into inputs (recorded for compare), e.g.
    "resize=256,crop=224,mean=127,std=128".
    """
    from rexdeploy.extras import require_build
    from rexdeploy.resolve import for_target

    require_build("building from a model")
    resolved = for_target(config, inputs, target, preprocess)  # every stage reads this config
    config = resolved.config
    name = model_name(model)
    output = output or os.path.join("out", f"{name}.{config.target}")
    log = StageLog(quiet=quiet)
    import_heavy()
    with ArtifactWriter(output, force=force) as writer:
        stages = run_pipeline(model, config, writer, log, resolved.backend, preprocess,
                              resolved.isa)
        manifest = build_manifest(stages, preprocess)
        strict(config, stages.report.get("device_check") or {})
        artifact = writer.commit(manifest)
    summary = stages.report["summary"]
    if artifact.manifest.get("engine") == "deferred":
        log.info(f"[bold]{artifact.path}[/]: {summary['quantized_layers']} layers quantized, "
                 f"{summary['skipped_layers']} kept float; [yellow]deferred: TensorRT is not "
                 f"installed here, no engine was built; finish on the device with `rexdeploy "
                 f"build --from-deferred {artifact.path}`[/] (or its build_engine.sh)")
    else:
        log.info(f"[bold]{artifact.path}[/]: {summary['quantized_layers']} layers quantized, "
                 f"{summary['skipped_layers']} kept float, runtime int8 coverage "
                 f"{summary['int8_coverage']:.0%}")
    say(stages.report.get("device_check"), log)
    return artifact


def build_from_deferred(artifact: str, *, quiet: bool = False) -> Artifact:
    """Finish a deferred TensorRT artifact on the device: build the engine, update it in place."""
    from backends.trt_deferred import finish_deferred

    return finish_deferred(artifact, StageLog(quiet=quiet))


# -- profile -----------------------------------------------------------------------------------
def profile(artifact: str | list[str], config=None, *, compare: bool = False,
            baselines: bool | None = None, quiet: bool = False, **overrides) -> dict:
    """Latency (sync, 1 request), async throughput and per-layer times of one or more
    artifacts, interleaved in one run; with `compare` also the float model under OpenVINO with
    f32 pinned and with the device default precision. `config`: a profile_run.ProfileConfig;
    keyword `overrides` replace its fields (e.g. duration=1.0, rounds=2, device="GPU").
    `baselines` is the former name of `compare`. Returns the profile_schema document."""
    import backends
    from rexdeploy.profiling.run import ProfileConfig, run_profile

    config = replace(config or ProfileConfig(), **overrides)
    artifacts = [artifact] if isinstance(artifact, str) else list(artifact)
    if len(artifacts) == 1:
        art = load_artifact(artifacts[0])
        if backends.rules(art.target).profile == "engine":  # alone: no float baselines
            return _profile_trt(art, config.duration, config.rounds, quiet)
    return run_profile(artifacts, config, compare=compare if baselines is None else baselines,
                       quiet=quiet)


def _profile_trt(art: Artifact, duration: float, rounds: int, quiet: bool) -> dict:
    """A TensorRT engine's latency and throughput (no float baselines: those would need a float
    engine; build one with --activations none --weights ... to compare)."""
    import backends
    from backends.base import RunOptions
    from rexdeploy.devinfo import device_info
    from rexdeploy.inputs import synthetic_inputs
    from rexdeploy.profiling.timing import profile_variants

    trt = backends.get("trt")
    feeds = synthetic_inputs(art.manifest["inputs"], 1, 0)[0][1]
    options = RunOptions(device="GPU")

    def runner():  # an ensemble's members: one engine each, run concurrently
        if art.manifest.get("ensemble"):
            return ensemble_runner(art, trt, options)
        return trt.runner(art.path, art.files, options)

    variants = [(f"rexdeploy {art.config.quant.weights} (TensorRT)", runner)]
    with StageLog(quiet=quiet).stage("profile", f"TensorRT engine x {rounds} rounds"):
        results = profile_variants(variants, feeds, duration_s=duration, rounds=rounds)
    return {"artifact": art.path, "device": device_info(), "variants": results}


# -- inspect -----------------------------------------------------------------------------------
def inspect(artifact: str, verify: bool = True) -> dict:
    """The artifact's manifest and report; with `verify` (the default) every file's sha256,
    the manifest's digest and its schema are checked first (a mismatch is a UserError), and
    `verified` says what was checked."""
    art = load_artifact(artifact, verify=verify)
    verified = None
    if verify:
        verified = {"files": len(art.manifest["files"]),
                    "schema_version": art.manifest["schema_version"],
                    "manifest_digest": "manifest_sha256" in art.manifest}
    return {"path": art.path, "manifest": art.manifest, "report": art.report(),
            "verified": verified}
