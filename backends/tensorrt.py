"""TensorRT backend: a Q/DQ ONNX -> a TensorRT engine through Polygraphy's loaders.

    spec = build_spec("model.onnx", options)           what to build (pure data, JSON-able)
    network, config, engine = loader_chain(spec, 10)    Polygraphy loaders, lazy: nothing runs
    SaveEngine(engine, spec.engine)()                   the build (needs tensorrt and a GPU)

Strongly typed on TensorRT 10.x and 11.x: the precision comes from the graph (Q/DQ for int8,
INT4 blocked DequantizeLinear for MatMul/Gemm weights, fp16 only where the ONNX says fp16); no
precision builder flags (deprecated in 10.12, removed in 11.0). The one exception is DLA on
TensorRT 10.x, which builds weakly typed with the int8+fp16 flags (DLA runs fp16/int8 only; the
Q/DQ still fixes where int8 runs) and falls back to the GPU for what DLA cannot run.

Where `tensorrt` does not import, `build` defers: it writes the checked Q/DQ ONNX, the build spec
(trt_build.json) and build_engine.sh with the exact trtexec commands for TensorRT 10 and 11 and
the Polygraphy equivalent, and marks the artifact `engine: deferred`. `rexdeploy build
--from-deferred ARTIFACT` (or the script) finishes it on the device. Never fakes an engine.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from backends.base import (BuildOptions, BuildResult, LayerPrecision, LayerTiming, RunnerBase,
                           RunOptions, TargetRules)
from rexdeploy.errors import UserError

ENGINE, TIMING_CACHE, LAYER_INFO = "model.engine", "timing.cache", "layers.json"
SPEC, SCRIPT = "trt_build.json", "build_engine.sh"
DEFAULT_DIM_RANGE = (1, 1, 8)  # min, opt, max of a named dynamic dim without --dim-range


def tensorrt_status() -> tuple[bool, str]:
    """(imports, version or the reason it does not)."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or a broken install raising anything
        return False, (f"tensorrt does not import ({type(exc).__name__}: {exc}); on a Jetson use "
                       "JetPack's Python (venv --system-site-packages)")
    return True, f"tensorrt {trt.__version__}"


@dataclass(frozen=True)
class Profile:
    """One input's optimization-profile shapes."""

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class TrtBuildSpec:
    """Everything the engine build needs; paths are relative to the artifact directory."""

    onnx: str = "model.onnx"
    engine: str = ENGINE
    timing_cache: str = TIMING_CACHE
    layer_info: str = LAYER_INFO
    max_aux_streams: int | None = None   # None: TensorRT's heuristic
    profiles: tuple[Profile, ...] = ()   # one optimization profile over the dynamic inputs
    dla_core: int | None = None
    gpu_fallback: bool = True
    int4: bool = False                   # the graph has INT4 weights (needs opset 21 parsers)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrtBuildSpec":
        d = dict(d)
        d["profiles"] = tuple(Profile(p["input"], tuple(p["min"]), tuple(p["opt"]),
                                      tuple(p["max"])) for p in d.get("profiles", ()))
        d["notes"] = tuple(d.get("notes", ()))
        return cls(**d)

    def strongly_typed(self, major: int) -> bool:
        return not (self.dla_core is not None and major < 11)


def build_spec(onnx_path: str, out_dir: str, options: BuildOptions) -> TrtBuildSpec:
    """The spec for `onnx_path`: profiles from its dynamic input dims, aux streams from the
    number of parallel branches (REx orders), DLA from the options. Reads the ONNX with `onnx`
    (the core install's, as on a Jetson: no onnx-ir there)."""
    import onnx

    graph = onnx.load(onnx_path, load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    ranges = {name: (lo, opt, hi) for name, lo, opt, hi in options.dim_ranges}
    used, profiles = set(), []
    for value in graph.input:
        if value.name in initializers or not value.type.tensor_type.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in value.type.tensor_type.shape.dim]
        if all(isinstance(d, int) for d in dims):
            continue
        lo, opt, hi = [], [], []
        for d in dims:
            if isinstance(d, int):
                lo.append(d), opt.append(d), hi.append(d)
                continue
            name = d
            r = ranges.get(name, DEFAULT_DIM_RANGE)
            used.add(name)
            lo.append(r[0]), opt.append(r[1]), hi.append(r[2])
        profiles.append(Profile(value.name, tuple(lo), tuple(opt), tuple(hi)))
    unknown = set(ranges) - used
    if unknown:
        raise UserError(f"--dim-range names {', '.join(sorted(unknown))}, not a dynamic dim of "
                        "the model's inputs")
    int4_tensors = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT4}
    int4 = any(n.op_type == "DequantizeLinear" and n.input[0] in int4_tensors for n in graph.node)
    aux = options.parallel_branches - 1 if options.parallel_branches > 1 else None
    notes = []
    if aux is not None:
        notes.append(f"max_aux_streams={aux}: {options.parallel_branches} expansion orders run "
                     "as parallel branches")
    if profiles and not options.dim_ranges:
        notes.append(f"dynamic dims without --dim-range use min/opt/max {DEFAULT_DIM_RANGE}")
    return TrtBuildSpec(onnx=os.path.relpath(onnx_path, out_dir), max_aux_streams=aux,
                        profiles=tuple(profiles), dla_core=options.dla_core, int4=int4,
                        notes=tuple(notes))


# -- Polygraphy loader chain -------------------------------------------------------------------
def loader_chain(spec: TrtBuildSpec, major: int, root: str = ".", trt=None):
    """(network, config, engine) Polygraphy loaders for `spec` on TensorRT `major` (10 or 11).

    Constructing them runs nothing: TensorRT is called only when the engine loader is called.
    `trt` (the tensorrt module) is needed only to pin the DLA core; None leaves core 0.
    """
    from polygraphy.backend.trt import (CreateConfig, EngineFromNetwork, NetworkFromOnnxPath,
                                        PostprocessConfig)
    from polygraphy.backend.trt import Profile as PgProfile

    path = lambda rel: os.path.join(root, rel)  # noqa: E731
    strong = spec.strongly_typed(major)
    network = NetworkFromOnnxPath(path(spec.onnx), strongly_typed=strong)
    profiles = []
    if spec.profiles:
        profile = PgProfile()
        for p in spec.profiles:
            profile.add(p.input, min=p.min, opt=p.opt, max=p.max)
        profiles.append(profile)
    cache = path(spec.timing_cache)
    # the same file is read (Polygraphy warns and starts empty when it is missing) and written
    kwargs = dict(profiles=profiles or None, max_aux_streams=spec.max_aux_streams,
                  load_timing_cache=cache)
    dla = spec.dla_core is not None
    if dla:
        kwargs.update(use_dla=True, allow_gpu_fallback=spec.gpu_fallback)
        if not strong:  # TensorRT 10 DLA: weakly typed, Q/DQ still decides where int8 runs
            kwargs.update(int8=True, fp16=True)
    config = CreateConfig(**kwargs)
    if dla and spec.dla_core:  # Polygraphy always picks core 0
        core = spec.dla_core

        def set_core(builder, network, config):
            config.DLA_core = core

        config = PostprocessConfig(config, set_core)
    engine = EngineFromNetwork(network, config, save_timing_cache=cache)
    return network, config, engine


# -- deferred build: commands and script -----------------------------------------------------
def _shapes(spec: TrtBuildSpec, which: str, sep: str = "x") -> str:
    return ",".join(f"{p.input}:{sep.join(map(str, getattr(p, which)))}" for p in spec.profiles)


def trtexec_command(spec: TrtBuildSpec, major: int) -> list[str]:
    """trtexec argv for TensorRT `major` (10: --stronglyTyped; 11: strongly typed always, the
    precision flags are gone)."""
    cmd = ["trtexec", f"--onnx={spec.onnx}", f"--saveEngine={spec.engine}",
           f"--timingCacheFile={spec.timing_cache}", "--profilingVerbosity=detailed",
           f"--exportLayerInfo={spec.layer_info}", "--skipInference"]
    if major < 11:
        cmd.insert(3, "--stronglyTyped" if spec.strongly_typed(major) else "--int8")
        if not spec.strongly_typed(major):
            cmd.insert(4, "--fp16")
    if spec.max_aux_streams is not None:
        cmd.append(f"--maxAuxStreams={spec.max_aux_streams}")
    if spec.profiles:
        cmd += [f"--minShapes={_shapes(spec, 'min')}", f"--optShapes={_shapes(spec, 'opt')}",
                f"--maxShapes={_shapes(spec, 'max')}"]
    if spec.dla_core is not None:
        cmd.append(f"--useDLACore={spec.dla_core}")
        if spec.gpu_fallback:
            cmd.append("--allowGPUFallback")
    return cmd


def polygraphy_command(spec: TrtBuildSpec) -> list[str]:
    """The `polygraphy convert` equivalent (strongly typed, as on TensorRT 11)."""
    cmd = ["polygraphy", "convert", spec.onnx, "--convert-to", "trt", "-o", spec.engine,
           "--save-timing-cache", spec.timing_cache, "--profiling-verbosity", "detailed"]
    if spec.strongly_typed(11):
        cmd.append("--strongly-typed")
    if spec.max_aux_streams is not None:
        cmd += ["--max-aux-streams", str(spec.max_aux_streams)]
    for which in ("min", "opt", "max"):
        if spec.profiles:
            cmd += [f"--trt-{which}-shapes"] + [
                f"{p.input}:[{','.join(map(str, getattr(p, which)))}]" for p in spec.profiles]
    if spec.dla_core is not None:
        cmd += ["--use-dla"] + (["--allow-gpu-fallback"] if spec.gpu_fallback else [])
    return cmd


def build_script(spec: TrtBuildSpec, reason: str) -> str:
    q = lambda argv: " ".join(shlex.quote(a) for a in argv)  # noqa: E731
    dla_note = ""
    if spec.dla_core:
        dla_note = (f"# Polygraphy's CLI always uses DLA core 0; `rexdeploy build --from-deferred` "
                    f"uses core {spec.dla_core}.\n")
    notes = "".join(f"# note: {n}\n" for n in spec.notes)
    return f"""#!/usr/bin/env bash
# Finish this deferred rexdeploy TensorRT build ON THE TARGET DEVICE (engines are not portable).
# No engine was built when this artifact was written: {reason}
# The Q/DQ ONNX ({spec.onnx}) passed rexdeploy's TensorRT rule checker.
# Preferred: rexdeploy build --from-deferred "$(dirname "$0")"   (updates manifest and report)
# This script runs trtexec (TensorRT 10.x or 11.x, picked from `trtexec --version`).
{notes}{dla_note}set -euo pipefail
cd "$(dirname "$0")"
# trtexec: $TRTEXEC, else on PATH, else JetPack's /usr/src/tensorrt/bin
JETPACK_BIN=${{JETPACK_TENSORRT_BIN:-/usr/src/tensorrt/bin}}
if [ -z "${{TRTEXEC:-}}" ]; then
    if command -v trtexec >/dev/null 2>&1; then
        TRTEXEC=$(command -v trtexec)
    elif [ -x "$JETPACK_BIN/trtexec" ]; then
        TRTEXEC=$JETPACK_BIN/trtexec
    else
        echo "error: trtexec not found on PATH nor in $JETPACK_BIN (JetPack's place); install TensorRT or set TRTEXEC=/path/to/trtexec" >&2
        exit 1
    fi
elif [ ! -x "$TRTEXEC" ]; then
    echo "error: TRTEXEC=$TRTEXEC is not an executable file" >&2
    exit 1
fi
# the version as trtexec prints it: v100300 (10.3.0) or v8601 (8.6.1)
ver=$("$TRTEXEC" --version 2>&1 | sed -n 's/.*TensorRT v\\([0-9][0-9]*\\).*/\\1/p' | head -n1)
major=""
if [ "${{#ver}}" -ge 6 ]; then major=${{ver:0:${{#ver}}-4}}; elif [ "${{#ver}}" -ge 4 ]; then major=${{ver:0:1}}; fi
trt10() {{
    {q(trtexec_command(spec, 10)).replace("trtexec ", '"$TRTEXEC" ', 1)}
}}
trt11() {{
    {q(trtexec_command(spec, 11)).replace("trtexec ", '"$TRTEXEC" ', 1)}
}}
case "${{major:-}}" in
    10) trt10 ;;
    11) trt11 ;;
    "") echo "error: cannot tell the TensorRT version from '$TRTEXEC --version' (it printed no 'TensorRT vNNNN')" >&2
        exit 1 ;;
    *) echo "error: TensorRT $major.x is not supported: this build needs TensorRT 10.x or 11.x (JetPack 6 or 7 on a Jetson; JetPack 5 ships TensorRT 8.5)" >&2
       exit 1 ;;
esac
echo "engine written: $(pwd)/{spec.engine} (the manifest does not list it: prefer --from-deferred)"
# The same build with Polygraphy:
#   {q(polygraphy_command(spec))}
"""


# -- engine inspector --------------------------------------------------------------------------
_PRECISIONS = (("int8", "i8"), ("uint8", "u8"), ("int4", "i4"), ("fp8", "f8"), ("bfloat16", "bf16"),
               ("fp16", "f16"), ("half", "f16"), ("fp32", "f32"), ("float", "f32"),
               ("int32", "i32"), ("int64", "i64"), ("bool", "bool"))
_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")


def _precision(fmt: str) -> str:
    low = fmt.lower()
    for word, short in _PRECISIONS:
        if re.search(rf"\b{word}\b", low):
            return short
    return fmt or "?"


def layers_from_inspector(info: dict) -> tuple[LayerPrecision, ...]:
    """Per-layer precision from the engine inspector's JSON (built with detailed profiling
    verbosity): the precision of a layer's first input, its tactic and the ONNX nodes fused
    into it (from `Metadata`)."""
    out = []
    for layer in info.get("Layers", []):
        if not isinstance(layer, dict):  # layer_names_only verbosity: bare names
            continue
        ltype = layer.get("LayerType", "")
        if ltype in ("NoOp", "Reformat", "Shuffle", "Constant"):
            continue
        inputs = layer.get("Inputs") or []
        precision = _precision(inputs[0].get("Format/Datatype", "")) if inputs else "?"
        out.append(LayerPrecision(
            name=layer.get("Name", ""), type=layer.get("ParameterType", ltype),
            precision=precision, kernel=layer.get("TacticName", ""),
            original_names=tuple(_ONNX_LAYER.findall(layer.get("Metadata", "") or ""))))
    return tuple(out)


# -- the backend -------------------------------------------------------------------------------
class TensorRTBackend:
    name = "trt"
    description = "TensorRT engine (strongly typed, 10.x/11.x) via Polygraphy; deferred build " \
                  "(ONNX + build_engine.sh) where tensorrt does not import"

    def int8_isa(self, choice: str, device: str = "GPU"):
        """TensorRT's int8 layers (IMMA / DP4A) accumulate in int32: nothing saturates."""
        from backends.cpu_isa import Int8Isa

        return Int8Isa("gpu", False, "TensorRT: int8 products accumulate in int32")

    def available(self) -> tuple[bool, str]:
        return tensorrt_status()

    def build(self, onnx_path: str, out_dir: str, options: BuildOptions) -> BuildResult:
        from backends.trt_rules import check_trt_rules

        check = check_trt_rules(onnx_path)
        if check.errors:
            listed = "; ".join(str(f) for f in check.errors[:5])
            more = f" (+{len(check.errors) - 5} more)" if len(check.errors) > 5 else ""
            raise UserError(f"the Q/DQ ONNX breaks TensorRT's rules: {listed}{more}",
                            "run `rexdeploy inspect --check trt` on it for the full list")
        spec = build_spec(onnx_path, out_dir, options)
        ok, why = tensorrt_status()
        if not ok and options.require_engine:
            raise UserError(f"--require-engine: no TensorRT engine can be built here: {why}",
                            "build on the device, or drop --require-engine for a deferred build")
        with open(os.path.join(out_dir, SPEC), "w") as f:
            json.dump(spec.to_dict(), f, indent=1)
        script = os.path.join(out_dir, SCRIPT)
        with open(script, "w") as f:
            f.write(build_script(spec, why if not ok else "built in the same run"))
        os.chmod(script, 0o755)
        files = {"onnx": spec.onnx, "trt_build": SPEC, "build_script": SCRIPT}
        info = {"device": options.device, "trt_check": check.to_dict(), "spec": spec.to_dict(),
                "trtexec_10": trtexec_command(spec, 10), "trtexec_11": trtexec_command(spec, 11),
                "polygraphy": polygraphy_command(spec)}
        if not ok:
            info.update(engine="deferred", reason=why,
                        notes=[f"no TensorRT engine was built: {why}. Finish on the device with "
                               f"`rexdeploy build --from-deferred ARTIFACT` or ./{SCRIPT}"])
            return BuildResult(files=files, info=info)
        layers, built = build_engine(spec, out_dir)
        files.update(engine=spec.engine, timing_cache=spec.timing_cache,
                     layer_info=spec.layer_info)
        info.update(engine="built", **built)
        return BuildResult(files=files, layers=layers, info=info)

    def runner(self, out_dir: str, files: dict[str, str], options: RunOptions) -> "TrtRunner":
        if "engine" not in files:
            raise UserError(f"{out_dir} has no TensorRT engine (a deferred build)",
                            "finish it on the device with `rexdeploy build --from-deferred`, "
                            "or compare its ONNX with --backend reference")
        ok, why = tensorrt_status()
        if not ok:
            raise UserError(f"cannot run the TensorRT engine here: {why}")
        return TrtRunner(os.path.join(out_dir, files["engine"]), options)


def build_engine(spec: TrtBuildSpec, out_dir: str) -> tuple[tuple[LayerPrecision, ...], dict]:
    """Build and save the engine (and timing cache, layer info) for `spec` under `out_dir`.
    Needs tensorrt and a GPU."""
    import tensorrt as trt
    from polygraphy.backend.trt import SaveEngine

    major = int(trt.__version__.split(".")[0])
    _, _, engine_loader = loader_chain(spec, major, out_dir, trt)
    start = time.perf_counter()
    engine = SaveEngine(engine_loader, os.path.join(out_dir, spec.engine))()
    seconds = time.perf_counter() - start
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    with open(os.path.join(out_dir, spec.layer_info), "w") as f:
        json.dump(info, f, indent=1)
    return layers_from_inspector(info), {
        "tensorrt": trt.__version__, "strongly_typed": spec.strongly_typed(major),
        "build_seconds": round(seconds, 2), "aux_streams": getattr(engine, "num_aux_streams", None)}


class TrtRunner(RunnerBase):
    """Polygraphy's TrtRunner over the saved engine; per-layer times from an IProfiler."""

    def __init__(self, path: str, options: RunOptions):
        super().__init__(path, options)
        self.runner = None
        self.profiler = None

    @property
    def active(self) -> bool:
        return self.runner is not None

    def __enter__(self) -> "TrtRunner":
        import tensorrt as trt
        from polygraphy.backend.trt import EngineFromPath
        from polygraphy.backend.trt import TrtRunner as PgRunner

        self.runner = PgRunner(EngineFromPath(self.path))
        self.runner.activate()
        if self.options.perf_count:
            self.profiler = _layer_profiler(trt)
            self.runner.context.profiler = self.profiler
        self.info = {"backend": "trt", "tensorrt": trt.__version__}
        # names and shapes for the input check (None: a dynamic dim); Polygraphy's dtypes are
        # its own DataType, so dtypes are left to TensorRT
        self.inputs = {name: None if meta.shape is None else
                       tuple(d if isinstance(d, int) and d >= 0 else None for d in meta.shape)
                       for name, meta in self.runner.get_input_metadata().items()}
        return self

    def __exit__(self, *exc) -> None:
        if self.runner is not None:
            self.runner.deactivate()
            self.runner = None

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check(feeds)
        return {k: np.asarray(v) for k, v in self.runner.infer(feeds).items()}

    def timings(self) -> list[LayerTiming]:
        if self.profiler is None:
            return []
        return [LayerTiming(name, "", "", "", float(np.mean(ms)))
                for name, ms in self.profiler.times.items()]

    def throughput(self, feeds: dict[str, np.ndarray], seconds: float) -> tuple[int, float]:
        self.infer(feeds)
        completed, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            self.runner.infer(feeds)
            completed += 1
        return completed, time.perf_counter() - start


def _layer_profiler(trt):
    class LayerProfiler(trt.IProfiler):
        """Collects report_layer_time(layer, ms) calls, once per layer per inference."""

        def __init__(self):
            trt.IProfiler.__init__(self)
            self.times: dict[str, list[float]] = {}

        def report_layer_time(self, layer_name, ms):
            self.times.setdefault(layer_name, []).append(ms)

    return LayerProfiler()


BACKEND = TensorRTBackend()
# a GPU engine from a strongly typed graph: signed int8 activations (centred), float16 float
# parts, INT4 weight-only, engine options, the engine built on the device when tensorrt does
# not import here; recurrent layers float; profiled alone (no float engine to compare with)
RULES = TargetRules(
    default_device="GPU", defers=True,
    unavailable_hint="for trt, drop --require-engine to write a deferred artifact (Q/DQ ONNX + "
                     "build_engine.sh) and build the engine on the device",
    unsigned_activations=False, centering=True, float16_graph=True, int4_weight_only=True,
    table_dtype="float16", engine_options=True, cpu_isa=False,
    recurrent_float_reason="TensorRT has no int8 recurrent layer (it runs LSTM/GRU in float); "
                           "kept in float",
    attention_float_reason="attention MatMuls stay float for TensorRT (int8 attention there "
                           "is not verified: this project builds no engine without TensorRT); "
                           "kept in float",
    profile="engine", runtime="TensorRT", runtime_package="tensorrt")
