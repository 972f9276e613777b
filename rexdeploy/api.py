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

import contextlib
import os
import platform
from dataclasses import replace

from rexdeploy import __version__
from rexdeploy.artifact import Artifact, ArtifactWriter, load_artifact
from rexdeploy.config import BuildConfig, QuantConfig
from rexdeploy.device_check import overflow_note, record, say, strict
from rexdeploy.errors import UserError
from rexdeploy.inputspec import InputSpec, parse_input_specs
from rexdeploy.progress import StageLog

__all__ = ["build", "compare", "profile", "inspect", "load_artifact", "BuildConfig",
           "QuantConfig", "Artifact"]


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
    import backends
    from rexdeploy.extras import require_build

    require_build("building from a model")
    config = config or BuildConfig()
    specs = tuple(s if isinstance(s, InputSpec) else None for s in inputs)
    if any(s is None for s in specs):
        specs = parse_input_specs([str(s) for s in inputs])
    config = replace(config, target=target or config.target, inputs=specs or config.inputs)
    rules = backends.rules(config.target)
    if config.device == "CPU":  # the CLI's default device; TensorRT's is the GPU
        config = replace(config, device=rules.default_device)
    config.validate()
    _check_input_sizes(config.inputs)
    backend = backends.get(config.target)
    ok, why = backend.available()
    if not ok and (config.require_engine or not rules.defers):
        raise UserError(f"target {config.target} is unavailable here: {why}",
                        rules.unavailable_hint)
    isa = backend.int8_isa(config.quant.int8_isa, config.device)
    scales = config.quant.activation_scales
    if scales == "auto":
        scales = "depthwise" if rules.channel_activations else "tensor"
    config = replace(config, quant=replace(config.quant, int8_isa=isa.name,
                                           int8_saturates=isa.saturates,
                                           activation_scales=scales))
    if config.quant.budget is not None:  # what the budget counts on this target and device
        from rexdeploy.cost_models import resolve

        config = replace(config, quant=replace(config.quant, budget_cost=resolve(
            config.quant.budget_cost, config.target, config.device, isa.saturates)))
    if preprocess:
        from rexdeploy.inputs import parse_preprocess

        parse_preprocess(preprocess)  # validate before any work
        if config.quant.calib and not config.quant.calib_preprocess:  # images under --calib
            config = replace(config, quant=replace(config.quant, calib_preprocess=preprocess))
    name = _model_name(model)
    output = output or os.path.join("out", f"{name}.{config.target}")
    log = StageLog(quiet=quiet)
    _import_heavy()
    with ArtifactWriter(output, force=force) as writer:
        stages = _run_pipeline(model, config, writer, log, backend, preprocess, isa)
        manifest = _manifest(stages["config"], stages, preprocess)
        strict(config, stages["report"].get("device_check") or {})
        artifact = writer.commit(manifest)
    summary = stages["report"]["summary"]
    if artifact.manifest.get("engine") == "deferred":
        log.info(f"[bold]{artifact.path}[/]: {summary['quantized_layers']} layers quantized, "
                 f"{summary['skipped_layers']} kept float; [yellow]deferred: TensorRT is not "
                 f"installed here, no engine was built; finish on the device with `rexdeploy "
                 f"build --from-deferred {artifact.path}`[/] (or its build_engine.sh)")
    else:
        log.info(f"[bold]{artifact.path}[/]: {summary['quantized_layers']} layers quantized, "
                 f"{summary['skipped_layers']} kept float, runtime int8 coverage "
                 f"{summary['int8_coverage']:.0%}")
    say(stages["report"].get("device_check"), log)
    return artifact


def _device_check(config: BuildConfig, isa, writer: ArtifactWriter, members: list[dict],
                  float_model, loaded, log: StageLog, result) -> dict:
    """The device check (rexdeploy/device_check.py) on the build's synthetic inputs."""
    from rexdeploy.device_check import SAMPLES, at_build

    return at_build(config, isa, writer.tmp, members,
                    os.path.relpath(writer.path("float.onnx"), writer.tmp),
                    lambda: _natural_samples(float_model, config, loaded, log, SAMPLES), log,
                    deferred=result.info.get("engine") == "deferred")


def _import_heavy() -> None:
    """Import torch and onnx before the first file is written. A Ctrl-C that lands inside
    `import torch` leaves it half-initialised, and the process can then crash (SIGSEGV) instead
    of cleaning up; before any file exists there is nothing to clean up."""
    import onnx  # noqa: F401
    import onnx_ir  # noqa: F401
    import torch  # noqa: F401


_ITEMSIZE = {"float32": 4, "float16": 2, "int64": 8, "int32": 4, "bool": 1, "uint8": 1}


def _check_input_sizes(specs) -> None:
    """Refuse inputs too large to export on this machine, before any work (an export that
    swaps for minutes is worse than a clear error)."""
    available = _available_memory()
    for spec in specs:
        n = 1
        for d in spec.concrete_shape():  # named dims at 1: --dim is checked when used
            n *= d
        size = n * _ITEMSIZE.get(spec.dtype, 4)
        # export and statistics hold several activations of this size at once
        if available and size * 16 > available:
            raise UserError(f"--input {spec}: one example of this input is {size / 2**30:.1f} "
                            f"GiB, too large to export with {available / 2**30:.1f} GiB of "
                            "memory available", "check the shape for a typo, or build with a "
                            "smaller example shape (named dims stay dynamic)")


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _run_pipeline(model, config: BuildConfig, writer: ArtifactWriter, log: StageLog,
                  backend, preprocess: str | None, isa) -> dict:
    import onnx_ir as ir

    from rexdeploy.analyze import find_layers
    from rexdeploy.frontend import export_onnx, load_model
    from rexdeploy.lower import summarize
    from rexdeploy.passes.center_activations import centred_tensors
    from rexdeploy.passes.fold_batchnorm import FoldBatchNormPass

    keep = config.keep_intermediates
    with log.stage("load", str(model) if isinstance(model, str) else type(model).__name__):
        loaded = _load(model, config, load_model)
    with log.stage("export", f"ONNX opset {config.opset}"):
        float_model, specs = export_onnx(loaded, config.inputs, opset=config.opset)
    _shape_note(float_model, log)
    config = _pixel_input(replace(config, inputs=specs), preprocess, log)
    # the budget allocator needs to know what a sparse order costs on this target
    config = replace(config, quant=replace(config.quant, sparse_form=sparse_form(config)))
    with log.stage("statistics", f"ranges: {config.quant.ranges}"):
        stats = _statistics(float_model, config)
        FoldBatchNormPass()(float_model)
        ir.save(float_model, writer.path("float.onnx", "float_onnx"))
        if keep:
            ir.save(float_model, writer.path("intermediates/00_float.onnx"))
    _dims_note(config, log)
    with log.stage("analyze"):
        layers, skipped = find_layers(float_model, dict(config.dims))
        equalized = _equalize(float_model, layers, stats, config, log)
        if equalized:
            layers, skipped = find_layers(float_model, dict(config.dims))
            # the same function, its tensors as the Q/DQ model has them (per-layer compare)
            ir.save(float_model, writer.path("float.onnx", "float_onnx"))
    if not layers:
        log.note("no Conv/Gemm/MatMul with constant weights: nothing to quantize")
    with log.stage("quantize", f"W{config.quant.weight_bits} K={config.quant.max_orders} "
                               f"A:{config.quant.activations}"):
        plan, range_notes, ensemble = _quantize(float_model, layers, skipped, stats, config,
                                                loaded, log)
        isa_note = overflow_note(isa, config.quant, plan)
        range_notes[:0] = [equalized] if equalized else []
        range_notes.append(isa_note)
        if config.quant.pair_limit is not None or isa.saturates:
            log.note(isa_note)
        plan_dir = writer.path("plan.json", "plan")
        plan.save(os.path.dirname(plan_dir))
        writer.roles["plan_arrays"] = "plan.npz"
        if keep:
            inter = os.path.dirname(writer.path("intermediates/10_plan.json"))
            for path in plan.save(inter):
                os.replace(path, os.path.join(inter, "10_" + os.path.basename(path)))
    if ensemble is not None:
        return _build_ensemble(float_model, plan, ensemble, layers, range_notes, config, writer,
                               log, backend, loaded, specs, isa)
    with log.stage("lower", "Q/DQ ONNX"):
        qdq = _lower(float_model, plan, config, range_notes)
        note = _dense_rows_note(plan) if config.quant.sparse_form == "dense" else None
        if note:
            range_notes.append(note)
            log.note(note)
        ir.save(qdq, writer.path("model.onnx", "onnx"))
        if keep:
            ir.save(qdq, writer.path("intermediates/20_qdq.onnx"))
    from backends.base import BuildOptions

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
    from rexdeploy.report import build_report

    report = build_report(plan, layers, result, summarize(qdq), range_notes)
    report["summary"]["float_precision"] = config.float_dtype
    _mark_centred(report, centred_tensors(qdq))
    files = {"onnx": "model.onnx", **result.files}
    record(report, plan, isa, config, _device_check(
        config, isa, writer, [{"files": files, "weight": 1.0}], float_model, loaded, log,
        result))
    writer.write_json("report.json", report, "report")
    return {"loaded": loaded, "specs": specs, "plan": plan, "result": result, "report": report,
            "outputs": [o.name for o in qdq.graph.outputs], "config": config,
            "seconds": log.seconds, "cpu_seconds": log.cpu_seconds}


def _equalize(float_model, layers, stats: dict, config: BuildConfig, log: StageLog
              ) -> str | None:
    """Cross-layer range equalization of depthwise inputs (rexdeploy/passes/equalize.py), for
    int8 activations with per-channel weight scales; the note saying what it did, None when
    it changed nothing."""
    q = config.quant
    if q.equalize == "off" or q.activations != "int8" or q.granularity != "channel":
        return None
    from rexdeploy.passes.equalize import equalize_depthwise
    from rexdeploy.quantize import use_stats

    planned = {layer.name for layer in layers if layer.name not in set(q.exclude)}
    done = equalize_depthwise(float_model, stats, q.range_sigma, planned,
                              lambda s: use_stats(s, q.ranges))
    if not done:
        return None
    worst = max(spread for _, spread in done)
    note = (f"range equalization: {len(done)} depthwise convolution input(s) equalized through "
            f"the layer before (channel ranges up to {worst:.0f}x the median before; exact in "
            "float, the weight scales per channel absorb it)")
    log.note(note)
    return note


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
    form = sparse_form(config)
    qdq = lower(float_model, plan, int4_matmul=config.quant.weight_bits <= 4,
                int4_weight_only=rules.int4_weight_only, sparse_form=form,
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
                    writer: ArtifactWriter, log: StageLog, backend, loaded, specs, isa) -> dict:
    """Lower and compile the base and each member as a complete model under members/<name>/;
    the manifest's `ensemble` entry holds the files and the combine weights."""
    import onnx_ir as ir

    from backends.base import BuildOptions, BuildResult
    from calib_free.ensemble import combine_weights
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
    record(report, plan, isa, config, _device_check(
        config, isa, writer, [{"files": e["files"], "weight": e["weight"]} for e in entries],
        float_model, loaded, log, results[0]))
    writer.write_json("report.json", report, "report")
    return {"loaded": loaded, "specs": specs, "plan": plan, "result": merged, "report": report,
            "outputs": [o.name for o in float_model.graph.outputs],
            "config": replace(config, inputs=specs), "seconds": log.seconds,
            "ensemble": {"rule": "output = sum over members of weight * member output",
                         "partition": config.quant.ensemble_partition, "members": entries}}


def sparse_form(config: BuildConfig) -> str:
    """How group-sparse orders are lowered for this target: the config's choice, else the
    target's measured preference (TargetRules.sparse_form; tools/bench/rex_latency.py)."""
    import backends

    if config.quant.sparse_form != "auto":
        return config.quant.sparse_form
    return backends.rules(config.target).sparse_form


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


def _pixel_input(config: BuildConfig, preprocess: str | None, log: StageLog) -> BuildConfig:
    """What --preprocess says of a one-image-input model's input values: their range, where
    --input-range does not give it (without either, N(0, 1) would be assumed: EfficientNet-Lite0
    17.1 dB instead of 23.7), and their pixel grid (QuantConfig.input_grid)."""
    floats = [s for s in config.inputs if s.dtype.startswith("float")]
    if not preprocess or len(floats) != 1 or len(floats[0].shape) != 4:
        return config
    from rexdeploy.inputs import parse_preprocess

    pre, name, q = parse_preprocess(preprocess), floats[0].name, config.quant
    lo, hi = pre.value_range()
    given = {n: (a, b) for n, a, b in q.input_ranges}
    if name not in given:
        q = replace(q, input_ranges=q.input_ranges + ((name, lo, hi),))
        log.note(f"value range of input {name!r} taken from --preprocess {preprocess}: "
                 f"{lo:.4g} to {hi:.4g}")
    step = pre.pixel_step()
    glo, ghi = given.get(name, (lo, hi))
    # a given range wider than the pixels' by more than a step says the input may hold other
    # values than these pixels: its scale then follows the range, not the grid
    if step is not None and glo >= lo - 1.001 * step and ghi <= hi + 1.001 * step \
            and name not in {n for n, _ in q.input_grid}:
        q = replace(q, input_grid=q.input_grid + ((name, step),))
    return replace(config, quant=q)


def _statistics(float_model, config: BuildConfig) -> dict:
    from rexdeploy.stats import propagate_stats

    ranges = {name: (lo, hi) for name, lo, hi in config.quant.input_ranges}
    known = {v.name for v in float_model.graph.inputs}
    for name in ranges:
        if name not in known:
            raise UserError(f"--input-range names {name!r}, which is not a model input "
                            f"(inputs: {', '.join(sorted(known))})",
                            "name one of the model's inputs, e.g. --input-range "
                            f"{sorted(known)[0]}:-1,1")
    return propagate_stats(float_model, ranges, config.quant.range_sigma)


def _quantize(float_model, layers, skipped, stats, config: BuildConfig, loaded, log: StageLog):
    from rexdeploy.quantize import activation_tensors, make_plan, observed_means, use_stats

    q = config.quant
    calib = _calibration(float_model, config, loaded, log)  # --calib / --refine (None: neither)
    if calib is not None and calib.user:
        q = replace(q, ranges="calib")  # ranges observed on the user's data
    if q.smooth == "auto" and q.ranges != "calib" and \
            any(s.dtype.startswith("float") and len(s.shape) >= 4 for s in config.inputs):
        # Migration follows the per-channel maxima it observes on the synthetic inputs: random
        # token sentences show a token model's channel pattern, Gaussian images do not show an
        # image model's (EfficientNet-Lite0 --ranges synthetic: 13.3 dB without, 1.4 dB with)
        q = replace(q, smooth="off")
    tensors = activation_tensors(float_model, layers) if q.activations == "int8" else []
    recurrent_x = _recurrent_inputs(float_model, config)  # ranged too, planned apart
    missing = [t for t in dict.fromkeys(tensors + recurrent_x)
               if not use_stats(stats.get(t), q.ranges)]
    means_missing = [layer.input for layer in layers if q.bias_correction
                     and observed_means(q) and not use_stats(stats.get(layer.input), q.ranges)]
    need = list(dict.fromkeys(missing + means_missing))
    observed = {}
    notes = []
    if need:
        natural = False
        if calib is not None and calib.user:
            samples, what = calib.samples, calib.source
        else:
            samples, what, natural = _range_samples(float_model, config, loaded, log)
        from rexdeploy.observe import observe

        observed = observe(float_model, need, samples, natural=natural)
        notes.append(f"{len(missing)} activation ranges observed on {what} ({q.ranges}); "
                     f"{len(set(tensors + recurrent_x)) - len(missing)} from statistics")
    assumed = [s.name for s in config.inputs if s.dtype.startswith("float")
               and s.name not in {n for n, _, _ in q.input_ranges}]
    if assumed and q.activations == "int8":
        notes.append(f"input value range not given for {', '.join(assumed)}: assumed N(0, 1) "
                     f"(pass --input-range NAME:LO,HI, e.g. input:-1,1 for images in [-1, 1])")
    for n in notes:
        log.note(n)
    import backends

    allow_unsigned = backends.rules(config.target).unsigned_activations
    sensitivity = _sensitivity(float_model, layers, skipped, tensors, stats, observed, config,
                               loaded, calib, allow_unsigned, log, notes) \
        if q.uses_sensitivity else None
    plan = make_plan(layers, skipped, tensors, stats, observed, q, allow_unsigned, sensitivity)
    if sensitivity is not None:
        notes.extend(_mixed_notes(plan, q, log))
    smoothed = [a.tensor for a in plan.activations if a.smooth is not None]
    if smoothed:
        note = (f"scale migration (--smooth {q.smooth}, alpha {q.smooth_alpha}) on "
                f"{len(smoothed)} MatMul/Gemm input(s) with outlier channels")
        notes.append(note)
        log.note(note)
    if q.refine != "none":
        plan = _refine(plan, float_model, layers, stats, observed, config, calib, loaded, log,
                       notes)
    if any(s.op in ("LSTM", "GRU", "RNN") for s in plan.skipped):
        plan = _recurrent(plan, float_model, recurrent_x, stats, observed, config, log, notes)
    ensemble = None
    if q.ensemble:
        from rexdeploy.quantize import ensemble_plans

        ensemble = ensemble_plans(plan, layers, stats, observed, q)
        if not any(ensemble[1]):
            raise UserError("--ensemble: no layer has a second order to share among members",
                            "raise --budget or drop --ensemble")
    return plan, notes, ensemble


def _recurrent_inputs(float_model, config: BuildConfig) -> list[str]:
    """The inputs X and the hidden-state outputs of the LSTM/GRU layers the target runs int8
    (rexdeploy/recurrent.py): the tensors they need ranges of."""
    import backends

    if not backends.rules(config.target).int8_recurrent or \
            config.quant.activations != "int8" or config.quant.recurrent != "int8":
        return []
    from rexdeploy.recurrent import candidates, state_output

    nodes = candidates(float_model)
    return list(dict.fromkeys([n.inputs[0].name for n in nodes] +
                              [v.name for v in map(state_output, nodes) if v is not None]))


def _recurrent(plan, float_model, inputs: list[str], stats, observed, config: BuildConfig,
               log: StageLog, notes: list[str]):
    """The plan with the int8 LSTM/GRU layers added (rexdeploy/recurrent.py)."""
    import backends

    from rexdeploy.quantize import use_stats
    from rexdeploy.recurrent import add_to_plan

    q = config.quant
    ranges = {}
    for x in inputs:  # X (statistics or observed) and the hidden states (observed)
        s, o = stats.get(x), observed.get(x)
        if use_stats(s, q.ranges):
            ranges[x] = (s.bound, s.source)
        elif o is not None:
            ranges[x] = (o.bound, f"observed:{q.ranges}")
    plan = add_to_plan(plan, float_model, ranges, q, backends.rules(config.target))
    if plan.recurrent:
        ops = ", ".join(sorted({r.op for r in plan.recurrent}))
        note = (f"{len(plan.recurrent)} recurrent layer(s) ({ops}) int8: the input rescaled onto "
                "the hidden state's grid (its observed peak, at most 1), which OpenVINO's "
                "kernel also rounds the fed-back state to at every step; the ONNX Runtime "
                "reference keeps that state float, so the device check measures it")
        notes.append(note)
        log.note(note)
    return plan


def _sensitivity(float_model, layers, skipped, tensors, stats, observed, config: BuildConfig,
                 loaded, calib, allow_unsigned, log: StageLog, notes: list[str]):
    """Measure each layer's data-free output sensitivity on an order-1 draft of the plan
    (rexdeploy/sensitivity.py), on the build's synthetic inputs (the user's --calib data when
    given)."""
    from rexdeploy.quantize import make_plan
    from rexdeploy.sensitivity import measure_sensitivity

    q = config.quant
    draft = make_plan(layers, skipped, tensors, stats, observed,
                      replace(q, orders=1, budget=None, mixed_precision="off"), allow_unsigned)
    if calib is not None and calib.user:
        samples, what = calib.samples, f"calibration inputs ({calib.source})"
    elif q.ranges == "zeroq":
        samples, what = _synthetic_samples(float_model, config, loaded, log), \
            "BatchNorm-matched images"
    else:
        from rexdeploy.sensitivity import sensitivity_samples

        samples, what = sensitivity_samples(
            _synthetic_samples(float_model, config, loaded, log),
            {name: (lo, hi) for name, lo, hi in q.input_ranges}, q.seed, dict(q.input_grid))
    from rexdeploy.mixed import raises_activations

    sens = measure_sensitivity(float_model, layers, draft, samples, log,
                               activations=raises_activations(q))
    worst = ", ".join(f"{name} ({'weights' if kind == 'weights' else 'input'}, NSR {v:.2g})"
                      for kind, name, v in sens.ranking()[:3])
    note = (f"sensitivity of {len(sens.weights)} layers"
            + (f" and {len(sens.activations)} activations" if sens.activations else "") +
            f" measured on {sens.samples} {what} in {sens.seconds:.1f} s; worst: {worst}")
    notes.append(note)
    log.note(note)
    return sens


def _mixed_notes(plan, q: QuantConfig, log: StageLog) -> list[str]:
    """One line per mixed-precision choice (also in each layer's report row, `mixed`)."""
    lines, seen = [], set()
    for lp in plan.layers:
        for what, choice in lp.metrics.get("mixed", {}).items():
            if what == "activation" and choice["tensor"] in seen:
                continue  # one tensor read by several layers: said once
            seen.add(choice.get("tensor"))
            line = f"mixed precision: {lp.name} {what} -> " + \
                (f"int{choice['bits']}" if what == "weights" else choice["precision"]) + \
                f" (+{choice['bops_delta'] / 1e6:.3g} MBOPs): {choice['why']}"
            lines.append(line)
    if q.mixed_precision != "off" and not lines:
        lines.append(f"mixed precision ({q.mixed_precision}): no raise was worth its BOPs under "
                     f"--budget {q.budget:g}; the budget went to REx orders")
    for line in lines:
        log.note(line)
    return lines


def _calibration(float_model, config: BuildConfig, loaded, log: StageLog):
    """The --calib samples (synthetic by default under --refine), or None without either."""
    from rexdeploy.calib import calibration_data, parse_calib

    q = config.quant
    spec = parse_calib(q.calib or ("synthetic" if q.refine != "none" else None))
    if spec is None:
        return None
    if spec.kind == "synthetic" and q.refine == "none":
        log.note("--calib synthetic without --refine changes nothing: the activation ranges "
                 "stay data-free")
        return None
    with log.stage("calibration data", q.calib or "synthetic"):
        return calibration_data(spec, float_model, config, loaded, log, q.calib_preprocess,
                                q.calib_tokenizer)


def _refine(plan, float_model, layers, stats, observed, config: BuildConfig, calib, loaded,
            log: StageLog, notes: list[str]):
    """--refine: FlexRound or ERQ on the calibration data (rexdeploy/refine.py), kept only
    where it wins end to end: the refined and the round-to-nearest plans' network outputs are
    compared with the float model's (ONNX Runtime), on synthetic calibration data on held-out
    natural synthetic inputs and on the calibration inputs at half their amplitude, on the
    user's data (--calib PATH) on that data; a refinement that loses on any is dropped. Its
    per-layer check passes layers whose errors add up worse, and it fits the calibration
    inputs' scale: EfficientNet-Lite0 W4A8 refined on N(0, 1) inputs (the range
    assumed without --input-range) reads 23.9 dB on them against round-to-nearest's 1.0, and
    loses on inputs half as wide (1.2 vs 2.3 dB) as on the real photos (3.4 vs 4.9)."""
    from rexdeploy.quantize import _input_mean
    from rexdeploy.refine import end_to_end_db, refine_plan

    q = config.quant
    means = {layer.name: _input_mean(stats.get(layer.input), observed.get(layer.input), q,
                                     layer.in_channels) for layer in layers}
    with log.stage("refine", f"{q.refine} on {calib.source}"):
        refined, summary = refine_plan(plan, layers, float_model, calib.samples, q, means, log,
                                       calib.source)
    held_out = replace(config, quant=replace(
        q, seed=q.seed + HOLD_OUT_SEED, synthetic_samples=max(q.synthetic_samples, HOLD_OUT),
        ranges="synthetic" if q.ranges == "zeroq" else q.ranges))
    with log.stage("refine check", "end to end, refined vs round-to-nearest"):
        if calib.user:  # the user's own data is the distribution that matters
            checks = [(f"the {len(calib.samples)} calibration samples ({calib.source})",
                       calib.samples)]
        else:
            natural, what = _natural_samples(float_model, held_out, loaded, log, HOLD_OUT)
            checks = [(f"{len(natural)} held-out {what}", natural),
                      (f"the {len(calib.samples[:HOLD_OUT])} first calibration inputs at half "
                       "amplitude", _half_amplitude(calib.samples[:HOLD_OUT]))]
        scores = [end_to_end_db(float_model, [plan, refined], s) for _, s in checks]
    kept = all(refined_db >= plain_db for plain_db, refined_db in scores)
    verdict = {"kept": kept, "checks": [
        {"inputs": name, "plain_db": round(p, 2), "refined_db": round(r, 2)}
        for (name, _), (p, r) in zip(checks, scores)]}
    note = (f"{q.refine}: {summary['improved']} of {summary['layers']} layers improved on "
            f"{calib.source} in {summary['seconds']:.1f} s")
    if summary["skipped"]:
        note += f"; {summary['skipped']} layers not eligible kept round-to-nearest"
    note += "; end to end against the float model, round-to-nearest -> refined: " + "; ".join(
        f"{p:.2f} -> {r:.2f} dB on {name}" for (name, _), (p, r) in zip(checks, scores))
    if not kept:
        note += f". {q.refine} loses there, so the build keeps round-to-nearest"
    notes.append(note)
    log.note(note)
    # the plan records the refinement asked for and its verdict either way
    asked = {k: refined.config[k] for k in ("refine", "calib", "refine_inputs")
             if k in refined.config}
    chosen = refined if kept else plan
    return replace(chosen, config=dict(chosen.config, **asked, refine_end_to_end=verdict))


# held-out inputs the refinement is judged on: their own seed, never the calibration's
HOLD_OUT, HOLD_OUT_SEED = 16, 7919


def _half_amplitude(samples: list[dict]) -> list[dict]:
    """The samples with every float input halved (token ids and other integer inputs kept)."""
    import numpy as np

    return [{k: (v * np.asarray(0.5, v.dtype) if np.issubdtype(v.dtype, np.floating) else v)
             for k, v in s.items()} for s in samples]


RANGE_IMAGES = 64  # natural synthetic images the auto ranges observe where statistics do not
# reach (EfficientNet-Lite0 from torch.onnx.export: 8 of them 18.6 dB, 32 21.2, 64 22.6, 128 22.0,
# 256 22.3; docs/benchmarks.md, "Ranges without BatchNorm")


def _range_samples(float_model, config: BuildConfig, loaded, log: StageLog
                   ) -> tuple[list[dict], str, bool]:
    """The synthetic inputs the activation ranges are observed on where statistics do not
    reach, what they are, and whether they are natural images. Under --ranges auto an image
    input gets RANGE_IMAGES natural images (1/f noise, natural colour, on the pixel grid:
    rexdeploy.sensitivity's), whose spatial correlations white noise lacks; other inputs and
    modes the build's synthetic ones."""
    from rexdeploy.sensitivity import image_inputs

    q = config.quant
    base = _synthetic_samples(float_model, config, loaded, log)
    if q.ranges != "auto" or not image_inputs(base):
        return base, f"{len(base)} synthetic inputs", False
    more = replace(config, quant=replace(q, synthetic_samples=RANGE_IMAGES))
    samples, what = _natural_samples(float_model, more, loaded, log, RANGE_IMAGES)
    return samples, f"{len(samples)} {what}", True


def _natural_samples(float_model, config: BuildConfig, loaded, log: StageLog, count: int
                     ) -> tuple[list[dict], str]:
    """`count` inputs for the build's checks and ranges, and what they are: an image input as
    natural synthetic images (rexdeploy.sensitivity.sensitivity_samples), others the build's
    synthetic inputs."""
    from rexdeploy.sensitivity import sensitivity_samples

    q = config.quant
    return sensitivity_samples(
        _synthetic_samples(float_model, config, loaded, log),
        {name: (lo, hi) for name, lo, hi in q.input_ranges}, q.seed, dict(q.input_grid),
        count=count)


def _synthetic_samples(float_model, config: BuildConfig, loaded, log: StageLog) -> list[dict]:
    from rexdeploy.inputs import synthetic_inputs
    from rexdeploy.observe import integer_input_ranges

    q = config.quant
    ranges = {name: (lo, hi) for name, lo, hi in q.input_ranges}
    ranges.update(integer_input_ranges(float_model))
    specs = [s.to_dict() for s in config.inputs]
    if q.ranges == "zeroq":
        return _zeroq_samples(config, loaded, log, ranges)
    return [feeds for _, feeds in synthetic_inputs(specs, q.synthetic_samples, q.seed, ranges,
                                                   dict(q.input_grid), dict(config.dims))]


def _zeroq_samples(config: BuildConfig, loaded, log: StageLog, ranges) -> list[dict]:
    from calib_free.synthetic import bn_matched_inputs

    if loaded.kind != "module" or len(config.inputs) != 1:
        raise UserError("--ranges zeroq needs an eager PyTorch model (package.module:factory or "
                        "a Python nn.Module; TorchScript hides its BatchNorm layers) with one "
                        "image input", "use --ranges auto (BatchNorm statistics) instead")
    spec = config.inputs[0]
    q = config.quant
    try:
        x = bn_matched_inputs(loaded.obj, spec.concrete_shape(), n=q.synthetic_samples,
                              steps=q.zeroq_steps, seed=q.seed, bounded=ranges.get(spec.name))
    except ValueError as exc:
        raise UserError(f"--ranges zeroq: {exc}", "use --ranges auto instead") from None
    return [{spec.name: x[i:i + 1].numpy().astype("float32")} for i in range(x.shape[0])]


def _manifest(config: BuildConfig, stages: dict, preprocess: str | None) -> dict:
    loaded = stages["loaded"]
    result = stages["result"]
    return {
        "rexdeploy_version": __version__,
        "target": config.target,
        "device": config.device,
        "config": config.to_dict(),
        "source": {"path": os.path.abspath(loaded.path) if os.path.exists(str(loaded.path))
                   else loaded.path, "kind": loaded.kind, "sha256": loaded.sha256},
        "inputs": [s.to_dict() for s in stages["specs"]],
        "outputs": stages["outputs"],
        "preprocess": preprocess,
        "members": [],
        "ensemble": stages.get("ensemble"),
        "versions": _versions(),
        "backend": result.info,
        "engine": result.info.get("engine"),  # trt: "built" or "deferred"
        "summary": stages["report"]["summary"],
        "stage_seconds": dict(stages["seconds"]),  # here, not in a hashed file: reproducible
        "stage_cpu_seconds": dict(stages.get("cpu_seconds", {})),  # process CPU time
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


def _model_name(model) -> str:
    if isinstance(model, str):
        base = os.path.basename(model.rstrip("/")) if os.path.exists(model) else \
            model.split(":")[-1]
        return os.path.splitext(base)[0] or "model"
    return type(model).__name__.lower()


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

    per_layer: also localise the error layer by layer (rexdeploy.localize: float.onnx vs
    model.onnx in ONNX Runtime, every quantized layer's output marked) under "per_layer";
    threshold_db (default 20) marks a layer bad, top (default 5) worst layers are listed.

    output_slices: "NAME:AXIS:START:END[=LABEL]" parts of outputs compared on their own (a
    detector's head concatenating boxes, objectness and class scores: one SQNR hides a class
    score that collapsed), rexdeploy.fidelity.OutputSlice.

    device_check: where the artifact runs on its device (not ONNX Runtime), also run its Q/DQ
    ONNX in ONNX Runtime (the reference) and report, per output, the reference's fidelity and
    the device's against it ("device_check"); with per_layer the marked Q/DQ model also runs on
    the device, and the first layer where the device loses against ONNX Runtime is named.
    """
    art = load_artifact(artifact)
    from rexdeploy.fidelity import run_compare
    from rexdeploy.inputs import load_inputs, load_labels, synthetic_inputs

    log = StageLog(quiet=quiet)
    specs = art.manifest["inputs"]
    preprocess = preprocess or art.manifest.get("preprocess")
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
        labels = None
        if inputs:
            samples = load_inputs(inputs, specs, preprocess, limit, views=10 if ten_crop else 1)
            labels = load_labels(inputs, specs, limit)
        else:
            ranges = {n: (lo, hi) for n, lo, hi in
                      art.manifest["config"]["quant"].get("input_ranges", [])}
            ranges.update(_integer_ranges(art))
            grids = {n: step for n, step in
                     art.manifest["config"]["quant"].get("input_grid", [])}
            samples = synthetic_inputs(specs, synthetic or 16, 1234, ranges, grids,
                                       {n: v for n, v in art.manifest["config"].get("dims", [])})
    from rexdeploy.fidelity import parse_output_slice

    slices = tuple(parse_output_slice(t) for t in output_slices)
    ref_runner, ref_name = _reference_runner(art, reference)
    test_runner = _artifact_runner(art, backend)
    on_device = _runs_on_device(art, backend)
    qdq_runner = _artifact_runner(art, "reference") if on_device and device_check else None
    with log.stage("compare", f"{len(samples)} samples: {ref_name} vs "
                              f"{backend or art.target}" +
                              (" and its Q/DQ reference (onnxruntime)" if qdq_runner else "")):
        with ref_runner as r, test_runner as t, (qdq_runner or contextlib.nullcontext()) as q:
            result = run_compare(r, t, samples, labels=labels, qdq_runner=q, slices=slices,
                                 tolerance_db=art.manifest["config"].get("device_tolerance",
                                                                         1.0))
    result["reference"] = ref_name
    result["backend"] = backend or art.target
    check = result.get("device_check")
    if check and not check.get("agrees", True):
        from rexdeploy.report import recurrent_count

        recurrent = recurrent_count(art.report())
        if recurrent:
            from rexdeploy.device_check import likely_cause

            check["likely_cause"] = likely_cause(None, None, art.target, recurrent)
    if art.manifest.get("engine") == "deferred" and result["backend"] == art.target:
        result["backend"] = f"reference (deferred {art.target} artifact: its Q/DQ ONNX in " \
                            "ONNX Runtime)"
    result["samples"] = len(samples)
    result["inputs"] = inputs or f"synthetic:{synthetic or 16}"
    if ten_crop:
        result["inputs"] += ", ten crops each"
    if per_layer:
        result["per_layer"] = _per_layer(art, samples, threshold_db, top, log,
                                         on_device and device_check)
    return result


def _runs_on_device(art: Artifact, backend: str | None) -> bool:
    """Whether compare runs the artifact on a device (its compiled model), not on ONNX Runtime."""
    name = backend or art.target
    return name != "reference" and art.manifest.get("engine") != "deferred"


def _per_layer(art: Artifact, samples, threshold_db: float | None, top: int | None,
               log: StageLog, on_device: bool = False) -> dict:
    from rexdeploy.extras import require_build

    require_build("compare --per-layer")
    from rexdeploy.localize import DEFAULT_THRESHOLD_DB, DEFAULT_TOP, localize

    device = None
    if on_device:
        from backends.base import RunOptions

        b = _usable_backend(art, art.target)
        options = RunOptions(device=art.manifest.get("device", "CPU"))
        device = (f"{art.target} {options.device}",
                  lambda path: b.runner(os.path.dirname(path), {"onnx": os.path.basename(path)},
                                        options))
    with log.stage("per-layer", f"{len(samples)} samples: float.onnx vs model.onnx, "
                                "every quantized layer marked (onnxruntime"
                                + (f" and {device[0]}" if device else "") + ")"):
        return localize(art.file("float_onnx"), art.file("onnx"), samples,
                        threshold_db=DEFAULT_THRESHOLD_DB if threshold_db is None
                        else threshold_db, top=top or DEFAULT_TOP, device=device,
                        device_tolerance_db=art.manifest["config"].get("device_tolerance", 1.0))


def _integer_ranges(art: Artifact) -> dict:
    """Token ids in [0, vocab), masks all 1 (as the build drew them), read from float.onnx."""
    if all(s.get("dtype", "float32").startswith("float") for s in art.manifest["inputs"]):
        return {}
    from rexdeploy.extras import require_build

    require_build("compare --synthetic on a model with integer inputs (token ids)")
    import onnx_ir as ir

    from rexdeploy.observe import integer_input_ranges

    return integer_input_ranges(ir.load(art.file("float_onnx")))


def _reference_runner(art: Artifact, reference: str):
    """The float reference: the source torch model when it is still there, else float.onnx."""
    if reference not in ("auto", "torch", "onnx"):
        raise UserError(f"--reference {reference}: use auto, torch or onnx")
    source = art.manifest.get("source", {})
    from rexdeploy.extras import has_build, require_build

    if reference == "torch":
        require_build("--reference torch")
    if reference in ("auto", "torch") and has_build():  # a device-side install: float.onnx
        from rexdeploy.torch_runner import TorchRunner, source_available

        if source_available(source):
            return TorchRunner(source, art.manifest), f"torch ({source['kind']})"
        if reference == "torch":
            raise UserError(f"the source model {source.get('path')} is not available (moved or "
                            "changed since the build)", "use --reference onnx")
    import backends
    from backends.base import RunOptions

    return (backends.get("reference").runner(art.path, {"onnx": art.files["float_onnx"]},
                                             RunOptions()), "float ONNX (onnxruntime)")


def artifact_runner(art: Artifact | str, backend: str | None = None, *,
                    threads: int | None = None, precision: str = "f32"):
    """A runner (context manager with infer/timings/throughput) over the artifact's compiled
    model on its own backend (or `backend="reference"`: ONNX Runtime on its Q/DQ ONNX).
    threads: inference threads per compiled model (None: the runtime's choice)."""
    if isinstance(art, str):
        art = load_artifact(art)
    return _artifact_runner(art, backend, threads=threads, precision=precision)


def _artifact_runner(art: Artifact, backend: str | None, *, threads: int | None = None,
                     precision: str = "f32"):
    from backends.base import RunOptions

    name = backend or art.target
    if name == art.target and art.manifest.get("engine") == "deferred":
        name = "reference"  # no engine yet: its Q/DQ ONNX through ONNX Runtime
    options = RunOptions(device=art.manifest.get("device", "CPU") if name != "reference"
                         else "CPU", threads=threads, precision=precision)
    b = _usable_backend(art, name)
    if art.manifest.get("ensemble"):
        return _ensemble_runner(art, b, options)
    if name == "reference":
        return b.runner(art.path, {"onnx": art.files["onnx"]}, options)
    return b.runner(art.path, art.files, options)


def _usable_backend(art: Artifact, name: str):
    """The backend `name` if it can run this artifact here (its own target, or reference)."""
    import backends

    if name not in (art.target, "reference"):
        raise UserError(f"--backend {name}: this artifact was built for {art.target}; use "
                        f"{art.target} or reference")
    b = backends.get(name)
    ok, why = b.available()
    if not ok:
        raise UserError(f"{name} is unavailable here: {why}")
    return b


def _ensemble_runner(art: Artifact, b, options):
    """Every member on its own runner, run concurrently: each with cores // members threads,
    and (when every member can have a core of its own) cores reserved so members never share."""
    from dataclasses import replace as _replace

    import backends
    from backends.ensemble import EnsembleRunner

    name = b.name
    members = art.manifest["ensemble"]["members"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = options.threads or max(1, (cores or 1) // len(members))
    pin = backends.rules(name).pins_cores and (cores or 1) >= len(members)
    opts = _replace(options, threads=threads, reserve_cores=pin)
    runners = []
    for m in members:
        files = dict(m["files"])
        if name == "reference":
            files = {"onnx": files["onnx"]}
        runners.append(b.runner(art.path, files, opts))
    return EnsembleRunner(runners, [m["weight"] for m in members], [m["name"] for m in members])


def build_from_deferred(artifact: str, *, quiet: bool = False) -> Artifact:
    """Finish a deferred TensorRT artifact on the device: build the engine, update it in place."""
    from rexdeploy.trt_deferred import finish_deferred

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
    from rexdeploy.profile_run import ProfileConfig, run_profile

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
    from rexdeploy.profiler import profile_variants

    trt = backends.get("trt")
    feeds = synthetic_inputs(art.manifest["inputs"], 1, 0)[0][1]
    options = RunOptions(device="GPU")

    def runner():  # an ensemble's members: one engine each, run concurrently
        if art.manifest.get("ensemble"):
            return _ensemble_runner(art, trt, options)
        return trt.runner(art.path, art.files, options)

    variants = [(f"rexdeploy {art.manifest['config']['quant']['weights']} (TensorRT)", runner)]
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
