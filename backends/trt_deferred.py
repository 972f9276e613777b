"""Finish a deferred TensorRT artifact on the device: `rexdeploy build --from-deferred ARTIFACT`.

The artifact was written where `tensorrt` did not import: it holds the checked Q/DQ ONNX and
trt_build.json (the build spec), or one of each per member under members/<name>/ for an
ensemble (--ensemble M: one engine per member, run concurrently, each runner on its own CUDA
stream). Here, where TensorRT imports, the engine is built from exactly
that spec, the engine inspector's per-layer precision goes into report.json, the engine is
checked against its Q/DQ ONNX in ONNX Runtime (rexdeploy/evaluate/device_check.py: the check every
OpenVINO build runs), and the artifact is rewritten atomically (a copy built next to it, renamed
into place) with `engine: built`.
"""

from __future__ import annotations

import json
import os
import shutil

from rexdeploy.artifact import Artifact, ArtifactWriter, load_artifact
from rexdeploy.evaluate.device_check import put, say, strict
from rexdeploy.errors import UserError


def finish_deferred(path: str, log) -> Artifact:
    from backends.tensorrt import SPEC, TrtBuildSpec, build_engine, tensorrt_status
    from backends.trt_rules import check_trt_rules

    art = load_artifact(path)
    import backends

    if not backends.rules(art.target).defers:
        raise UserError(f"{path} is a {art.target} artifact; --from-deferred finishes trt ones")
    if art.manifest.get("engine") != "deferred":
        raise UserError(f"{path} is not a deferred build (engine: {art.manifest.get('engine')})")
    ok, why = tensorrt_status()
    if not ok:
        raise UserError(f"cannot finish {path} here: TensorRT is not installed ({why})",
                        "run this on the device that will run the engine (engines are not "
                        "portable): on a Jetson, in a venv made with --system-site-packages so "
                        "JetPack's TensorRT imports; nothing was written")
    members = (art.manifest.get("ensemble") or {}).get("members")
    # (name, member dir relative to the artifact, its files relative to the artifact)
    models = ([(m["name"], os.path.dirname(m["files"]["onnx"]), m["files"]) for m in members]
              if members else [("", "", art.files)])
    specs = []
    for name, _, files in models:
        onnx_path = os.path.join(art.path, files["onnx"])
        check = check_trt_rules(onnx_path)
        if check.errors:
            raise UserError(f"{onnx_path} breaks TensorRT's rules: {check.errors[0]}")
        if "trt_build" not in files:
            raise UserError(f"{path}: {name or 'the model'} has no {SPEC}", "rebuild the artifact")
        with open(os.path.join(art.path, files["trt_build"])) as f:
            specs.append(TrtBuildSpec.from_dict(json.load(f)))
    with ArtifactWriter(art.path, force=True) as writer:
        for role, rel in art.files.items():
            shutil.copy2(os.path.join(art.path, rel), writer.path(rel, role))
        runtime, built = [], {}
        for (name, rel_dir, files), spec in zip(models, specs):
            label = f"{name}: " if name else ""
            with log.stage("compile", f"{label}TensorRT engine from {SPEC}"):
                layers, built = build_engine(spec, os.path.join(writer.tmp, rel_dir))
            for role, rel in (("engine", spec.engine), ("timing_cache", spec.timing_cache),
                              ("layer_info", spec.layer_info)):
                rel = os.path.join(rel_dir, rel) if rel_dir else rel
                files[role] = rel
                writer.roles[f"{name}_{role}" if name else role] = rel
            runtime += [{"name": l.name, "type": l.type, "precision": l.precision,
                         "kernel": l.kernel, "int8": l.is_int8, "original": list(l.original_names),
                         **({"member": name} if name else {})} for l in layers]
        report = _engine_report(art.report(), runtime, built)
        put(report, _check_engines(art, writer.tmp, models, members, log), "trt")
        writer.write_json("report.json", report, "report")
        manifest = {k: v for k, v in art.manifest.items()
                    if k not in ("files", "schema_version", "manifest_sha256")}
        manifest["engine"] = "built"
        manifest["backend"] = {**manifest.get("backend", {}), "engine": "built", **built}
        manifest["summary"] = report["summary"]
        if members:  # the members' file maps now list their engines
            manifest["ensemble"] = {**manifest["ensemble"], "members": members}
        strict(art.config, report["device_check"])
        finished = writer.commit(manifest)
    say(report["device_check"], log)
    return finished


def _check_engines(art: Artifact, root: str, models: list, members: list | None, log) -> dict:
    """The engine against its Q/DQ ONNX (ONNX Runtime) and float.onnx on SAMPLES synthetic inputs
    in the build's ranges (rexdeploy/evaluate/device_check.py): the same check an OpenVINO build
    runs."""
    from rexdeploy.evaluate.device_check import SAMPLES, CheckSpec, check
    from rexdeploy.inputs import synthetic_inputs

    cfg = art.config
    weights = [m["weight"] for m in members] if members else [1.0]
    spec = CheckSpec(root, "trt", art.manifest.get("device", "GPU"),
                     tuple({"files": files, "weight": w} for (_, _, files), w in
                           zip(models, weights)), art.files["float_onnx"])
    samples = synthetic_inputs(art.manifest["inputs"], SAMPLES, cfg.quant.seed,
                               {n: (lo, hi) for n, lo, hi in cfg.quant.input_ranges},
                               dict(cfg.quant.input_grid), dict(cfg.dims))
    with log.stage("device check", f"TensorRT engine vs its Q/DQ ONNX (onnxruntime), "
                                   f"{SAMPLES} synthetic inputs"):
        return check(spec, [f for _, f in samples], "synthetic inputs",
                     tolerance_db=cfg.device_tolerance)


def _engine_report(report: dict, runtime: list[dict], built: dict) -> dict:
    """report.json with the engines' per-layer runtime precision (the engine inspector's)."""
    from rexdeploy.report import _assign_runtime

    report["runtime_layers"] = runtime
    assigned = _assign_runtime([row["name"] for row in report["layers"]], {}, runtime)
    for row in report["layers"]:
        ran = assigned[row["name"]]
        row["runtime"] = [{"precision": r["precision"], "kernel": r["kernel"]} for r in ran]
        row["runs_int8"] = bool(ran) and all(r["int8"] for r in ran)
    int8 = sum(r["int8"] for r in runtime)
    report["summary"].update(runtime_compute_layers=len(runtime), runtime_int8_layers=int8,
                             int8_coverage=round(int8 / len(runtime), 4) if runtime else 0.0)
    report.setdefault("backend", {}).update(engine="built", **built)
    return report
