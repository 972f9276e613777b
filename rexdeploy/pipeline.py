"""The build pipeline behind rexdeploy.build: load -> export (float ONNX, BN kept) -> statistics
-> fold BN -> analyze -> quantize (rexdeploy.planning.stage) -> lower (Q/DQ ONNX) -> compile
(backend) -> device check -> report and manifest, each stage timed and logged (docs/design.md).
What the stages hand to the manifest and the summary is one frozen BuildStages."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

from rexdeploy import __version__
from rexdeploy.artifact import ArtifactWriter
from rexdeploy.config import BuildConfig
from rexdeploy.evaluate.device_check import low_fidelity_hint, overflow_note, record
from rexdeploy.errors import UserError
from rexdeploy.progress import StageLog
from rexdeploy.planning.stage import (align_inputs, equalize_ranges, natural_samples,
                                      plan_quantization, range_statistics, rotate_ffn_inputs,
                                      split_identities)
from rexdeploy.resolve import for_model


@dataclass(frozen=True)
class BuildStages:
    """What a build's stages produced, for the manifest and the summary: the loaded model, the
    input specs and resolved config it was built with, the plan, the backend's result, the
    report, the graph's output names, the seconds (wall and CPU) per stage, and for an
    ensemble how its members combine."""

    loaded: object                  # rexdeploy.frontend.LoadedModel
    specs: tuple
    config: BuildConfig
    plan: object                    # calib_free.plan.QuantPlan
    result: object                  # backends.base.BuildResult
    report: dict
    outputs: tuple[str, ...]
    seconds: dict = field(default_factory=dict)
    cpu_seconds: dict = field(default_factory=dict)
    ensemble: dict | None = None


def _device_check(config: BuildConfig, isa, writer: ArtifactWriter, members: list[dict],
                  float_model, loaded, log: StageLog, result) -> dict:
    """The device check (rexdeploy/evaluate/device_check.py) on the build's synthetic inputs."""
    from rexdeploy.evaluate.device_check import SAMPLES, at_build

    return at_build(config, isa, writer.tmp, members,
                    os.path.relpath(writer.path("float.onnx"), writer.tmp),
                    lambda: natural_samples(float_model, config, loaded, log, SAMPLES), log,
                    deferred=result.info.get("engine") == "deferred")


def _record_check(report: dict, plan, isa, config: BuildConfig, log: StageLog,
                  checked: dict) -> None:
    """The device check into the report, and the note on what to try when it reads the output
    far from float (rexdeploy.evaluate.device_check.low_fidelity_hint)."""
    record(report, plan, isa, config, checked)
    hint = low_fidelity_hint(checked, config.quant)
    if hint:
        report["notes"].append(hint)
        log.note(hint)


def import_heavy() -> None:
    """Import torch and onnx before the first file is written. A Ctrl-C that lands inside
    `import torch` leaves it half-initialised, and the process can then crash (SIGSEGV) instead
    of cleaning up; before any file exists there is nothing to clean up."""
    import onnx  # noqa: F401
    import onnx_ir  # noqa: F401
    import torch  # noqa: F401


def run_pipeline(model, config: BuildConfig, writer: ArtifactWriter, log: StageLog,
                 backend, preprocess: str | None, isa) -> BuildStages:
    """Every stage of a build into `writer`; returns what the manifest and the summary need."""
    loaded, float_model, specs, config, stats = _front(model, config, writer, log, preprocess)
    layers, skipped, rewrites, config = _analyze(float_model, stats, config, loaded, writer, log)
    plan, notes, ensemble = _plan(float_model, layers, skipped, stats, config, loaded, writer,
                                  log, isa, rewrites)
    if ensemble is not None:
        return _build_ensemble(float_model, plan, ensemble, layers, notes, config, writer,
                               log, backend, loaded, specs, isa)
    return _compile(float_model, plan, layers, notes, config, writer, log, backend, loaded,
                    specs, isa)


def _front(model, config: BuildConfig, writer: ArtifactWriter, log: StageLog,
           preprocess: str | None):
    """load -> export (float ONNX, BatchNorm kept) -> statistics -> fold BatchNorm, float.onnx
    written; returns (loaded, float model, input specs, config with them, statistics)."""
    import onnx_ir as ir

    from rexdeploy.frontend import export_onnx, load_model
    from rexdeploy.passes.fold_batchnorm import FoldBatchNormPass

    with log.stage("load", str(model) if isinstance(model, str) else type(model).__name__):
        loaded = _load(model, config, load_model)
    with log.stage("export", f"ONNX opset {config.opset}"):
        float_model, specs = export_onnx(loaded, config.inputs, opset=config.opset)
    _shape_note(float_model, log)
    config = for_model(config, specs, preprocess, log)  # its last change (rexdeploy/resolve.py)
    with log.stage("statistics", f"ranges: {config.quant.ranges}"):
        stats = range_statistics(float_model, config)
        FoldBatchNormPass()(float_model)
        ir.save(float_model, writer.path("float.onnx", "float_onnx"))
        if config.keep_intermediates:
            ir.save(float_model, writer.path("intermediates/00_float.onnx"))
    _dims_note(config, log)
    return loaded, float_model, specs, config, stats


def _analyze(float_model, stats: dict, config: BuildConfig, loaded, writer: ArtifactWriter,
             log: StageLog):
    """The quantizable layers and the ones kept float, after the input's alignment, range
    equalization and the FFN inputs' rotation (which rewrite float.onnx); returns (layers,
    skipped, the notes of those rewrites, the config with the aligned inputs' grids)."""
    import onnx_ir as ir

    from rexdeploy.planning.analyze import find_layers

    with log.stage("analyze"):
        layers, skipped = find_layers(float_model, dict(config.dims))
        aligned, config = align_inputs(float_model, stats, config, log)
        rewrites = [n for n in (aligned,
                                equalize_ranges(float_model, layers, stats, config, log),
                                split_identities(float_model, layers, config, log),
                                rotate_ffn_inputs(float_model, layers, config, loaded,
                                                  log)) if n]
        if rewrites:
            layers, skipped = find_layers(float_model, dict(config.dims))
            # the same function, its tensors as the Q/DQ model has them (per-layer compare)
            ir.save(float_model, writer.path("float.onnx", "float_onnx"))
    if not layers:
        log.note("no Conv/Gemm/MatMul with constant weights: nothing to quantize")
    return layers, skipped, rewrites, config


def _plan(float_model, layers, skipped, stats: dict, config: BuildConfig, loaded,
          writer: ArtifactWriter, log: StageLog, isa, rewrites: list[str]):
    """The quantize stage: the plan (plan.json, plan.npz written), the notes the report
    carries, and the ensemble partition (None without --ensemble)."""
    with log.stage("quantize", f"W{config.quant.weight_bits} {config.quant.orders_label} "
                               f"A:{config.quant.activations}"):
        plan, notes, ensemble = plan_quantization(float_model, layers, skipped, stats, config,
                                                  loaded, log)
        isa_note = overflow_note(isa, config.quant, plan)
        notes[:0] = rewrites
        notes.append(isa_note)
        if config.quant.pair_limit is not None or isa.saturates:
            log.note(isa_note)
        plan_dir = writer.path("plan.json", "plan")
        plan.save(os.path.dirname(plan_dir))
        writer.roles["plan_arrays"] = "plan.npz"
        if config.keep_intermediates:
            inter = os.path.dirname(writer.path("intermediates/10_plan.json"))
            for path in plan.save(inter):
                os.replace(path, os.path.join(inter, "10_" + os.path.basename(path)))
    return plan, notes, ensemble


def _compile(float_model, plan, layers, notes: list[str], config: BuildConfig,
             writer: ArtifactWriter, log: StageLog, backend, loaded, specs, isa) -> BuildStages:
    """lower (model.onnx) -> compile (or defer) -> report with the device check."""
    import onnx_ir as ir

    from backends.base import BuildOptions
    from rexdeploy.lower import summarize
    from rexdeploy.passes.center_activations import centred_tensors
    from rexdeploy.report import build_report

    with log.stage("lower", "Q/DQ ONNX"):
        qdq = _lower(float_model, plan, config, notes)
        note = _dense_rows_note(plan) if config.quant.sparse_form == "dense" else None
        if note:
            notes.append(note)
            log.note(note)
        ir.save(qdq, writer.path("model.onnx", "onnx"))
        if config.keep_intermediates:
            ir.save(qdq, writer.path("intermediates/20_qdq.onnx"))
    defers = not backend.available()[0]  # TensorRT where tensorrt does not import
    stage = ("defer", "TensorRT does not import here: the checked Q/DQ ONNX and build_engine.sh "
                      "for the device") if defers else \
        ("compile", f"{config.target} on {config.device}")
    with log.stage(*stage):
        result = backend.build(writer.path("model.onnx"), writer.tmp,
                               BuildOptions(device=config.device,
                                            parallel_branches=max(
                                                (len(lp.orders) for lp in plan.layers), default=1),
                                            dla_core=config.dla_core,
                                            dim_ranges=config.dim_ranges,
                                            require_engine=config.require_engine,
                                            runtime_options=runtime_options(config)))
        for role, rel in result.files.items():
            writer.roles[role] = rel
    report = build_report(plan, layers, result, summarize(qdq), notes)
    report["summary"]["float_precision"] = config.float_dtype
    _mark_centred(report, centred_tensors(qdq))
    files = {"onnx": "model.onnx", **result.files}
    _record_check(report, plan, isa, config, log, _device_check(
        config, isa, writer, [{"files": files, "weight": 1.0}], float_model, loaded, log,
        result))
    writer.write_json("report.json", report, "report")
    return BuildStages(loaded, specs, config, plan, result, report,
                       tuple(o.name for o in qdq.graph.outputs), dict(log.seconds),
                       dict(log.cpu_seconds))


def _dims_note(config: BuildConfig, log: StageLog) -> None:
    """--dim must name dynamic dims; a dynamic dim without one is said to take 1."""
    named = {d for s in config.inputs for d in s.shape if isinstance(d, str)}
    unknown = sorted({n for n, _ in config.dims} - named)
    if unknown:
        raise UserError(f"--dim {', '.join(unknown)}: no input has a dynamic dim of that name "
                        f"(dynamic dims: {', '.join(sorted(named)) or 'none'})",
                        "name the dim as --input gives it, e.g. --input x:1x1x64xW --dim W=256")
    missing = sorted(named - {n for n, _ in config.dims} - {s.shape[0] for s in config.inputs
                                                           if s.shape and
                                                           isinstance(s.shape[0], str)})
    if missing:
        log.note(f"dynamic dim(s) {', '.join(missing)} take 1 in the synthetic inputs of the "
                 "statistics and the device check, and the multiply-adds of the layers they "
                 f"reach are not counted: pass --dim {missing[0]}=VALUE for a typical size")


def _shape_note(float_model, log: StageLog) -> None:
    """Say once, in one line, when ONNX's shape inference stopped on the model as given (a
    stored shape contradicting the graph): the cleanup re-infers the shapes without the stored
    ones; where it still cannot, a layer's shape stays unknown (0 multiply-adds counted)."""
    from rexdeploy.passes.shapes import SHAPE_NOTE, inference_failure

    given = float_model.meta.get(SHAPE_NOTE)
    if not given:
        return
    still = inference_failure(float_model)
    log.note(f"ONNX shape inference stops on this model as given ({given[:200]}): "
             + ("shapes re-inferred without its stored ones" if still is None else
                f"it still stops after dropping them ({still[:120]}); the build uses the "
                "shapes it has"))


def _lower(float_model, plan, config: BuildConfig, notes: list[str]):
    import backends
    from rexdeploy.lower import lower

    rules = backends.rules(config.target)
    # INT4 tensors only where the runtimes keep them compressed (MatMul/Gemm weights).
    qdq = lower(float_model, plan, int4_matmul=config.quant.weight_bits <= 4,
                int4_weight_only=rules.int4_weight_only, sparse_form=config.quant.sparse_form,
                table_dtype=rules.table_dtype)
    if config.centering_mode != "off":
        from rexdeploy.passes.center_activations import CenterActivationsPass

        centre = CenterActivationsPass(plan, border="add" if config.centering_mode == "all"
                                       else "skip")
        centre(qdq)
        note = _centering_note(centre, config.centering_mode)
        if note and note not in notes:
            notes.append(note)
    if config.float_dtype == "fp16":
        from rexdeploy.passes.float16 import Float16Pass

        to_half = Float16Pass()
        to_half(qdq)
        note = _float16_note(to_half.stats)
        if note not in notes:
            notes.append(note)
    return qdq


def _dense_rows_note(plan) -> str | None:
    """What a partly kept order (--sparsity) costs in the dense zero-row form, which runs it
    for every channel; None when no layer has one (the --budget allocation buys whole layers
    there)."""
    from rexdeploy.report import bops_summary

    fractions = [(lp.metrics.get("bops_order1") or 0.0, lp.metrics.get("kept_fraction") or [])
                 for lp in plan.layers]
    partial = sum(any(0 < f < 1 for f in kept) for _, kept in fractions)
    bops = bops_summary(plan)
    if not partial or not bops["bops_order1"]:
        return None
    ran = sum(order1 * (1 + sum(f > 0 for f in kept)) for order1, kept in fractions)
    return (f"{partial} layer(s) carry a partly kept order, which the dense zero-row form runs "
            f"for every channel: {ran / bops['bops_order1']:.2f}x the order-1 bit-operations "
            f"run, not the {bops['bops_ratio']:.2f}x planned (--sparse-form compact computes "
            f"the kept channels only)")


def _mark_centred(report: dict, centred: set[str]) -> None:
    """The report's activation entries as lowered: a centred tensor (`centred_tensors` of the
    lowered model, or of an ensemble's members) is int8 at half the step (range / 254), shifted
    by range / 2 (the plan keeps the uncentred scale)."""
    report["summary"]["centred_activations"] = len(centred)
    entries = list(report["activations"]) + [r["activation"] for r in report["layers"]
                                             if r.get("activation")]
    for entry in entries:
        if entry["tensor"] in centred:
            entry.update(dtype="int8", scale=entry["range"] / 254, shift=entry["range"] / 2)


def _centering_note(centre, mode: str) -> str | None:
    """What centring did, for the report (--centering; TensorRT's signed int8 activations)."""
    stats, kept = centre.stats, centre.kept
    done = stats.get("centred", 0)
    if not done and not kept:
        return None
    note = (f"{done} non-negative activation tensor(s) centred for signed int8 "
            f"(--centering {mode}: quantized minus half their range, 8 bits instead of 7; "
            "the shift is folded into biases")
    if stats.get("border_adds"):
        note += f"; {stats['border_adds']} padded Conv(s) got a border-correction Add"
    note += ")"
    if kept:
        note += "; left at 7 bits: " + "; ".join(f"{n} {why}" for why, n in sorted(kept.items()))
    return note


def _float16_note(stats: dict[str, int]) -> str:
    """What the float16 pass changed, for the report (--float-precision fp16)."""
    note = ("float parts written as float16 (--float-precision fp16; inputs and outputs stay "
            "float32 behind a Cast)")
    raised = [f"{stats[k]} {what}" for k, what in (
        ("activation_scales_raised", "activation scales raised to f16's smallest normal"),
        ("weight_scales_raised", "weight scales of near-zero channels raised to 2^-24"),
        ("values_clamped", "constants clamped to +-65504"),
        ("values_flushed", "tiny non-zero constants now 0 (e.g. a clamp's 1e-9 floor)"))
        if stats.get(k)]
    return note + (": " + "; ".join(raised) if raised else "")


def runtime_options(config: BuildConfig) -> tuple[tuple[str, str], ...]:
    """Runtime properties the IR carries for weight-only builds (OpenVINO): the compressed
    FullyConnected's dynamic activation quantization group (--dynamic-quantization) and, for
    --activations fp16, the f16 inference precision (a CPU without f16 kernels picks bf16)."""
    q, out = config.quant, []
    if q.dynamic_quantization is not None:
        out.append(("DYNAMIC_QUANTIZATION_GROUP_SIZE", str(q.dynamic_quantization)))
    if q.activations == "fp16":
        out.append(("INFERENCE_PRECISION_HINT", "f16"))
    return tuple(out)


def _build_ensemble(float_model, plan, ensemble, layers, notes, config: BuildConfig,
                    writer: ArtifactWriter, log: StageLog, backend, loaded, specs,
                    isa) -> BuildStages:
    """Lower and compile the base and each member as a complete model under members/<name>/;
    the manifest's `ensemble` entry holds the files and the combine weights."""
    import onnx_ir as ir

    from backends.base import BuildOptions, BuildResult
    from calib_free.weights.ensemble import combine_weights
    from rexdeploy.lower import summarize
    from rexdeploy.passes.center_activations import centred_tensors
    from rexdeploy.report import build_report

    member_plans, groups = ensemble
    weights = combine_weights(len(member_plans) - 1)
    entries, results, graphs, centred = [], [], [], set()
    for i, (mplan, weight) in enumerate(zip(member_plans, weights)):
        name = "base" if i == 0 else f"member{i}"
        rel = f"members/{name}"
        with log.stage("lower", f"{name}: Q/DQ ONNX"):
            qdq = _lower(float_model, mplan, config, notes)
            centred |= centred_tensors(qdq)
            ir.save(qdq, writer.path(f"{rel}/model.onnx", f"{name}_onnx"))
        with log.stage("compile", f"{name}: {config.target} on {config.device}"):
            result = backend.build(writer.path(f"{rel}/model.onnx"),
                                   os.path.join(writer.tmp, rel),
                                   BuildOptions(device=config.device,
                                                runtime_options=runtime_options(config)))
        files = {"onnx": f"{rel}/model.onnx"}
        for role, r in result.files.items():
            files[role] = f"{rel}/{r}"
            writer.roles[f"{name}_{role}"] = f"{rel}/{r}"
        entries.append({"name": name, "weight": weight, "files": files,
                        "layers": [] if i == 0 else groups[i - 1]})
        results.append(result)
        graphs.append(summarize(qdq))
    merged = BuildResult(files={}, layers=tuple(l for r in results for l in r.layers),
                         info=dict(results[0].info, members=len(results)))
    report = build_report(plan, layers, merged, graphs[-1], notes)
    report["summary"]["float_precision"] = config.float_dtype
    _mark_centred(report, centred)
    report["ensemble"] = [{"name": e["name"], "weight": e["weight"], "layers": e["layers"],
                           "runtime_int8_layers": sum(l.is_int8 for l in r.layers),
                           "runtime_compute_layers": len(r.layers), "graph_ops": g["ops"]}
                          for e, r, g in zip(entries, results, graphs)]
    report["summary"]["ensemble_members"] = len(entries) - 1
    # the work the members do together (a member's own cost sets its stream's latency)
    base = report["summary"]["bops_order1"] or 1.0
    member_bops = [sum(lp.metrics.get("bops", 0.0) or 0.0 for lp in mp.layers) / base
                   for mp in member_plans]
    report["summary"]["bops_ratio"] = round(sum(member_bops), 4)
    report["summary"]["bops_ratio_members"] = [round(b, 4) for b in member_bops]
    _record_check(report, plan, isa, config, log, _device_check(
        config, isa, writer, [{"files": e["files"], "weight": e["weight"]} for e in entries],
        float_model, loaded, log, results[0]))
    writer.write_json("report.json", report, "report")
    return BuildStages(loaded, specs, config, plan, merged, report,
                       tuple(o.name for o in float_model.graph.outputs), dict(log.seconds),
                       dict(log.cpu_seconds),  # an ensemble's CPU times too (they were lost)
                       {"rule": "output = sum over members of weight * member output",
                        "partition": config.quant.ensemble_partition, "members": entries})


def _load(model, config: BuildConfig, load_model):
    from rexdeploy.frontend import LoadedModel

    if isinstance(model, str):
        return load_model(model, trust_pickle=config.trust_pickle,
                          factory_weights=config.factory_weights)
    import torch

    if isinstance(model, torch.nn.Module):
        return LoadedModel("module", model.eval(), type(model).__name__, "")
    raise UserError(f"cannot build from a {type(model).__name__}: give a path, a "
                    "package.module:factory string or a torch.nn.Module")


def build_manifest(stages: BuildStages, preprocess: str | None) -> dict:
    loaded, result, config = stages.loaded, stages.result, stages.config
    return {
        "rexdeploy_version": __version__,
        "target": config.target,
        "device": config.device,
        "config": config.to_dict(),
        "source": {"path": os.path.abspath(loaded.path) if os.path.exists(str(loaded.path))
                   else loaded.path, "kind": loaded.kind, "sha256": loaded.sha256},
        "inputs": [s.to_dict() for s in stages.specs],
        "outputs": list(stages.outputs),
        "preprocess": preprocess,
        "members": [],
        "ensemble": stages.ensemble,
        "versions": _versions(),
        "backend": result.info,
        "engine": result.info.get("engine"),  # trt: "built" or "deferred"
        "summary": stages.report["summary"],
        "stage_seconds": dict(stages.seconds),  # here, not in a hashed file: reproducible
        "stage_cpu_seconds": dict(stages.cpu_seconds),  # process CPU time
    }


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "onnx", "onnx-ir", "onnxruntime", "openvino", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def model_name(model) -> str:
    if isinstance(model, str):
        base = os.path.basename(model.rstrip("/")) if os.path.exists(model) else \
            model.split(":")[-1]
        return os.path.splitext(base)[0] or "model"
    return type(model).__name__.lower()
