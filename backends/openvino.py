"""OpenVINO backend: Q/DQ ONNX -> IR (model.xml/.bin), compiled on a device, with proof of what
precision every Conv/MatMul really runs in.

Facts this relies on (docs/backends.md, measured with openvino 2026.4 on CPU):
- A Conv/MatMul runs an int8 kernel only when both its data and weight inputs carry Q/DQ; the
  compiled model's runtime graph says so per layer (rt_info `runtimePrecision`, `primitiveType`).
- The CPU's default inference precision may be bf16: the build pins f32 so the reported
  precision of layers left in float is the one a fidelity reference uses; a runner reports the
  precision it really got.
- One `ov.Core` per process; several compiled models share it.
"""

from __future__ import annotations

import functools
import os
import time

import numpy as np

from backends.base import (INACTIVE, BuildOptions, BuildResult, LayerPrecision, LayerTiming,
                           RunnerBase, RunOptions, TargetRules)
from rexdeploy.errors import UserError

# Runtime layer types that do the multiply-accumulate work; variants (GroupConvolution,
# FullyConnectedCompressed, FullyConnectedQuantizedLegacy, ...) match by prefix.
COMPUTE_TYPES = ("Convolution", "GroupConvolution", "Deconvolution", "GroupDeconvolution",
                 "FullyConnected", "MatMul", "LSTMSequence", "GRUSequence", "RNNSequence",
                 "AUGRUSequence", "LSTMCell", "GRUCell", "RNNCell", "AUGRUCell", "RNNSeq")
PRECISIONS = {"f32": "f32", "bf16": "bf16", "f16": "f16", "default": None}
MODES = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
# Name decorations OpenVINO adds to a node it splits or renames (e.g. Conv + bias Add).
_SUFFIXES = ("/WithoutBiases", "/sink_port_0", "_original")


@functools.lru_cache(maxsize=None)
def shared_core():
    """The process's one `ov.Core` (compiled models share its plugins and thread pools)."""
    import openvino as ov

    return ov.Core()


def version() -> str:
    import openvino as ov

    return ov.__version__.split("-")[0]


def is_compute(layer_type: str) -> bool:
    return layer_type.startswith(COMPUTE_TYPES)


def onnx_node_names(graph) -> dict[str, str]:
    """Map every ONNX node name and output tensor name of `graph` (an onnx GraphProto) to its
    node name.

    OpenVINO names a runtime layer after the ONNX node or, for a graph output, after the tensor,
    so both keys are needed to map a runtime layer back to the ONNX node.
    """
    names: dict[str, str] = {}
    for node in graph.node:
        if node.name:
            for out in node.output:
                names.setdefault(out, node.name)
            names[node.name] = node.name
    names.update(_affine_followers(graph))
    return names


_COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
_AFFINE_OPS = ("Mul", "Add", "Sub", "Div", "BatchNormalization")


def _affine_followers(graph) -> dict[str, str]:
    """Node name -> the compute node it follows, for the per-channel affine ops (Mul/Add/Sub/Div
    by a constant, BatchNormalization) right after a Conv/MatMul/Gemm: a folded BatchNorm as
    Paddle2ONNX writes it. OpenVINO folds them into the layer and may name the fused layer after
    the last of them, dropping the layer's own name from `originalLayersNames`."""
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in _COMPUTE_OPS or not node.name:
            continue
        value = node.output[0]
        while len(consumers.get(value, [])) == 1:
            nxt = consumers[value][0]
            others = [i for i in nxt.input if i != value]
            if nxt.op_type not in _AFFINE_OPS or not nxt.name or \
                    not all(i in constants for i in others if i):
                break
            out[nxt.name] = node.name
            value = nxt.output[0]
    return out


def _resolve(raw: str, node_names: dict[str, str] | None) -> tuple[str, ...]:
    """ONNX node names behind a runtime `originalLayersNames` value ("a,b/WithoutBiases,...")."""
    out: list[str] = []
    for token in filter(None, (t.strip() for t in raw.split(","))):
        candidates = [token] + [token[: -len(s)] for s in _SUFFIXES if token.endswith(s)]
        if node_names is None:
            found = candidates[-1]
        else:
            found = next((node_names[c] for c in candidates if c in node_names), None)
        if found and found not in out:
            out.append(found)
    return tuple(out)


def activation_matmuls(graph) -> frozenset[str]:
    """Names of the MatMul nodes of `graph` (an onnx GraphProto) whose two inputs are
    activations (attention): neither a constant nor a dequantized constant; and of the
    DequantizeLinear nodes feeding them (a fused attention kernel may keep only those names)."""
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    constants |= {o for n in graph.node if n.op_type == "DequantizeLinear"
                  and n.input[0] in constants for o in n.output}
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.name
               and not any(i in constants for i in n.input)]
    feeds = {i for n in matmuls for i in n.input}
    return frozenset([n.name for n in matmuls] + [n.name for n in graph.node if n.name and
                                                  n.op_type == "DequantizeLinear" and
                                                  n.output[0] in feeds])


def _holds_matmul(op, original: tuple[str, ...], fused_matmuls: frozenset[str]) -> bool:
    """Whether a runtime Subgraph holds an activation x activation MatMul: it names one, or it
    names the DequantizeLinear of one's input and reads several tensors (the MHA kernel keeps
    only that name of its first MatMul; a lone dequantization reads one)."""
    hits = fused_matmuls.intersection(original)
    return any("/DequantizeLinear" not in h for h in hits) or \
        (bool(hits) and op.get_input_size() >= 2)


def runtime_layers(compiled, node_names: dict[str, str] | None = None,
                   fused_matmuls: frozenset[str] = frozenset()) -> tuple[LayerPrecision, ...]:
    """Every compute layer of a compiled model with the precision and kernel it runs.

    node_names: from `onnx_node_names`, to map each layer back to ONNX node names; without it,
    `original_names` holds OpenVINO's names with its decorations stripped.
    fused_matmuls: from `activation_matmuls`; a Subgraph (a fused kernel, e.g. the CPU plugin's
    MHA) holding one of them is a compute layer too.
    """
    layers = []
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        get = lambda key: rt[key].astype(str) if key in rt else ""  # noqa: E731
        layer_type = get("layerType")
        original = _resolve(get("originalLayersNames"), node_names)
        if not is_compute(layer_type) and not (layer_type == "Subgraph" and
                                               _holds_matmul(op, original, fused_matmuls)):
            continue
        layers.append(LayerPrecision(
            name=op.get_friendly_name(), type=layer_type, precision=get("runtimePrecision"),
            kernel=get("primitiveType"), original_names=original))
    return tuple(layers)


def telemetry_off() -> None:
    """Keep OpenVINO from sending usage telemetry from this process.

    OpenVINO's converter reports its import and every conversion to Google Analytics
    (openvino_telemetry: on wherever no consent file exists, i.e. on every fresh machine), each
    event from a forked process. A build must not phone home from a user's machine, and without
    a network the fork can hang: this project's test suite once stopped for good in a forked
    sender blocked in getaddrinfo("www.google-analytics.com"). The converter falls back to its
    own no-op stub when openvino_telemetry does not import: block that import before openvino
    loads, and point an already loaded converter at the stub."""
    import sys

    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # `import openvino_telemetry` raises ImportError
    ovc = sys.modules.get("openvino.tools.ovc.telemetry_utils")
    if ovc is not None and ovc.tm.__name__ != "openvino.tools.ovc.telemetry_stub":
        from openvino.tools.ovc import convert_impl, telemetry_stub, telemetry_utils

        convert_impl.tm = telemetry_stub
        telemetry_utils.tm = telemetry_stub


telemetry_off()  # this module is where rexdeploy's OpenVINO use starts


def _check_device(device: str) -> None:
    base = device.split(":")[0].split(".")[0].upper()
    if base in ("AUTO", "MULTI", "HETERO", "BATCH"):
        return
    available = shared_core().available_devices
    if not any(d == device or d.split(".")[0] == base for d in available):
        raise UserError(f"OpenVINO device {device!r} is not available here",
                        f"available devices: {', '.join(available) or 'none'}")


def _precision_name(compiled) -> str:
    try:
        return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    except RuntimeError:  # a device without the property (e.g. some NPUs)
        return "unknown"


def _read(path: str):
    try:
        return shared_core().read_model(path)
    except RuntimeError as exc:
        raise UserError(f"OpenVINO cannot read {path}: {str(exc).strip().splitlines()[-1]}",
                        "rebuild the artifact, or check the ONNX with onnx.checker") from exc


def _compile(model, device: str, config: dict, what: str):
    """compile_model, its failures one UserError naming the model (and, under
    ONEDNN_MAX_CPU_ISA, why a capped host may refuse what a real CPU of that ISA runs)."""
    from backends.cpu_isa import cap_note

    try:
        return shared_core().compile_model(model, device, config)
    except RuntimeError as exc:
        lines = [l.strip() for l in str(exc).strip().splitlines() if l.strip()]
        detail = next((l for l in reversed(lines) if not l.startswith("Exception from")),
                      lines[-1] if lines else "unknown error")
        raise UserError(f"OpenVINO cannot compile {os.path.basename(what)} for {device}: "
                        f"{detail}{cap_note()}") from exc


def _stable_names(model, onnx_names) -> None:
    """Rename the nodes OpenVINO named from its process-wide counter (Constant_3952,
    Reshape_11695) by their position instead, so that building the same model twice gives a
    byte-identical IR. Names that came from the ONNX file are kept."""
    import re

    auto = re.compile(r"^[A-Za-z][A-Za-z0-9]*_\d+$")
    for index, op in enumerate(model.get_ordered_ops()):
        name = op.get_friendly_name()
        if auto.match(name) and name not in onnx_names:
            op.set_friendly_name(f"{op.get_type_name()}_rx{index}")


def _name_recurrent(model, graph) -> None:
    """Name each LSTMSequence/GRUSequence after its ONNX node in `graph` (the frontend names it
    from a counter and the plugin keeps no original name for it), found through its weight
    input W: the ONNX W tensor (an initializer or a DequantizeLinear's output) names a node
    behind it."""
    by_weight = {n.input[1]: n.name for n in graph.node
                 if n.op_type in ("LSTM", "GRU", "RNN") and n.name and len(n.input) > 1}
    for node in model.get_ordered_ops():
        kind = node.get_type_name()
        if kind not in ("LSTMSequence", "GRUSequence", "RNNSequence"):
            continue
        stack, seen = [node.input_value(4 if kind == "LSTMSequence" else 3).get_node()], 0
        while stack and seen < 16:
            up = stack.pop()
            seen += 1
            names = {up.get_friendly_name()} | set().union(*(o.get_names() for o in up.outputs()))
            found = next((by_weight[n] for n in names if n in by_weight), None)
            if found:
                node.set_friendly_name(found)
                break
            stack += [up.input_value(i).get_node() for i in range(up.get_input_size())]


def fold_gate_reorder(model) -> int:
    """Give each LSTMSequence/GRUSequence its int8 weights in the form the CPU plugin's int8 RNN
    pass matches (i8 Constant -> Convert -> Multiply by a Constant scale); returns how many
    weights were rewired.

    The ONNX frontend reorders an LSTM's gates (ONNX iofc, OpenVINO fico) with Split -> Concat
    after the weight's DequantizeLinear. The dequantization is kept from constant folding, so
    the plugin would see a non-constant weight and refuse to compile; the reorder is applied
    to the codes and to the scale instead."""
    import openvino as ov
    import openvino.opset13 as ops

    rewired = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() not in ("LSTMSequence", "GRUSequence"):
            continue
        first = 4 if node.get_type_name() == "LSTMSequence" else 3  # W, R follow X, H[, C], lens
        for port in (first, first + 1):
            found = _reordered_codes(node.input_value(port))
            if found is None:
                continue
            codes, scale = found
            weight = ops.multiply(ops.convert(ops.constant(codes), ov.Type.f32),
                                  ops.constant(scale))
            node.input(port).replace_source_output(weight.output(0))
            rewired += 1
    return rewired


def _reordered_codes(value):
    """(int8 codes, float32 scale [..., 1]) behind Concat(Split(Multiply(Convert(i8 Constant),
    scale Constant))) with the Split/Concat applied to both, or None for any other form."""
    concat = value.get_node()
    if concat.get_type_name() != "Concat":
        return None
    parts = [concat.input_value(i) for i in range(concat.get_input_size())]
    split = parts[0].get_node()
    if split.get_type_name() != "Split" or any(p.get_node() is not split for p in parts):
        return None
    rank = len(concat.get_output_partial_shape(0))
    axis = split.input_value(1).get_node()
    if axis.get_type_name() != "Constant" or \
            int(axis.get_data()) % rank != concat.get_axis() % rank:
        return None
    mul = split.input_value(0).get_node()
    if mul.get_type_name() != "Multiply":
        return None
    convert, scale = (mul.input_value(i).get_node() for i in (0, 1))
    while scale.get_type_name() == "Reshape":
        scale = scale.input_value(0).get_node()
    codes = convert.input_value(0).get_node() if convert.get_type_name() == "Convert" else None
    if codes is None or codes.get_type_name() != "Constant" or \
            codes.get_output_element_type(0).get_type_name() != "i8" or \
            scale.get_type_name() != "Constant":
        return None
    codes = codes.get_data()
    full = np.broadcast_to(scale.get_data().astype(np.float32).reshape(
        _scale_shape(scale.get_data().shape, codes.shape)), codes.shape)
    order = [p.get_index() for p in parts]
    cut = concat.get_axis() % rank

    def reorder(a):
        pieces = np.split(a, split.get_output_size(), axis=cut)
        return np.concatenate([pieces[k] for k in order], axis=cut)

    codes, full = reorder(codes), reorder(full)
    if not np.array_equal(full, np.broadcast_to(full[..., :1], full.shape)):
        return None  # not one scale per row (this project's lowering never writes that)
    return np.ascontiguousarray(codes), np.ascontiguousarray(full[..., :1])


def _scale_shape(shape, codes_shape):
    """A DequantizeLinear scale's shape made broadcastable to the codes: a per-row [G*H] scale
    of a [1, G*H, I] weight goes on axis 1; anything else keeps its rank."""
    if len(shape) == len(codes_shape):
        return shape
    if len(shape) == 1 and len(codes_shape) == 3:
        return (1, shape[0], 1)
    return (1,) * (len(codes_shape) - len(shape)) + tuple(shape)


def _weight_only_properties(compiled, layers) -> dict:
    """The compressed FullyConnected's dynamic activation quantization group size as the
    compiled model really has it (0: off), when any layer reads compressed int4/int8 weights."""
    compressed = [l for l in layers if l.type.startswith("FullyConnected")
                  and l.precision in ("i4", "u4", "i8", "u8") and not l.is_int8]
    if not compressed:
        return {}
    try:
        group = int(compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE"))
    except RuntimeError:  # a device without the property
        return {"compressed_fully_connected": len(compressed)}
    return {"compressed_fully_connected": len(compressed),
            "dynamic_quantization_group_size": group}


class OpenVINOBackend:
    name = "openvino"
    description = "OpenVINO IR (.xml/.bin) for CPU (GPU/NPU where present)"

    def available(self) -> tuple[bool, str]:
        try:
            import openvino  # noqa: F401
        except ImportError as exc:
            return False, f"openvino does not import: {exc}"
        devices = shared_core().available_devices
        return True, f"openvino {version()}, devices: {', '.join(devices)}"

    def int8_isa(self, choice: str, device: str = "CPU"):
        """The target's int8 instruction set (module function `int8_isa`)."""
        return int8_isa(choice, device)

    def build(self, onnx_path: str, out_dir: str, options: BuildOptions) -> BuildResult:
        """Convert to IR in `out_dir`, compile it with f32 pinned and read back every compute
        layer's runtime precision. The saved IR is what gets compiled (not the in-memory model):
        the two can differ, e.g. int4 conv weights fold to float only after saving."""
        import openvino as ov

        if not os.path.isfile(onnx_path):
            raise UserError(f"no ONNX file at {onnx_path}")
        _check_device(options.device)
        telemetry_off()
        try:
            model = ov.convert_model(onnx_path)
        except Exception as exc:  # the ONNX frontend raises plain Exception subclasses
            raise UserError(f"OpenVINO cannot convert {onnx_path}: "
                            f"{str(exc).strip().splitlines()[-1]}",
                            "check that every op is supported by OpenVINO's ONNX frontend") \
                from exc
        files = {"ir_xml": f"{options.model_name}.xml", "ir_bin": f"{options.model_name}.bin"}
        xml = os.path.join(out_dir, files["ir_xml"])
        import onnx

        graph = onnx.load(onnx_path, load_external_data=False).graph  # read once, for names
        node_names = onnx_node_names(graph)
        _name_recurrent(model, graph)  # before the reorder replaces the weights' nodes
        fold_gate_reorder(model)
        _stable_names(model, node_names)
        for key, value in options.runtime_options:  # read by compile_model from the IR
            model.set_rt_info(str(value), ["runtime_options", key])
        # int8/int4 weights stay integer either way; float weights stay f32 (no silent fp16).
        ov.save_model(model, xml, compress_to_fp16=False)
        # f32 pinned unless the build asks for a precision (weight-only fp16 builds)
        asked = dict(options.runtime_options).get("INFERENCE_PRECISION_HINT")
        pinned = {"INFERENCE_PRECISION_HINT": "f32"}
        if asked:
            from backends.cpu_isa import capped_precision

            pinned = {} if capped_precision(asked) == asked else pinned
        compiled = _compile(_read(xml), options.device, pinned, onnx_path)
        layers = runtime_layers(compiled, node_names, activation_matmuls(graph))
        info = {"openvino": version(), "device": options.device,
                "device_name": shared_core().get_property(options.device.split(":")[0],
                                                          "FULL_DEVICE_NAME"),
                "inference_precision": _precision_name(compiled),
                "compute_layers": len(layers), "int8_layers": sum(l.is_int8 for l in layers),
                **_weight_only_properties(compiled, layers)}
        if options.runtime_options:
            info["runtime_options"] = dict(options.runtime_options)
            asked = dict(options.runtime_options).get("INFERENCE_PRECISION_HINT")
            if asked and asked != info["inference_precision"]:
                info["notes"] = [f"inference precision {asked} was asked; {options.device} "
                                 f"runs {info['inference_precision']} (no {asked} kernels)"]
        return BuildResult(files=files, layers=layers, info=info)

    def runner(self, out_dir: str, files: dict[str, str], options: RunOptions
               ) -> "OpenVINORunner":
        """A runner over the IR (`ir_xml`) or, failing that, a float/Q/DQ `onnx` file."""
        for role in ("ir_xml", "onnx"):
            if role in files:
                path = os.path.join(out_dir, files[role])
                if not os.path.isfile(path):
                    raise UserError(f"{path} is missing", "rebuild the artifact")
                return OpenVINORunner(path, options)
        raise UserError(f"nothing OpenVINO can run in {out_dir} (no ir_xml or onnx file)")


def compile_config(options: RunOptions, mode: str | None = None,
                   perf_count: bool | None = None) -> dict:
    """RunOptions -> OpenVINO compile properties (mode/perf_count override the options')."""
    mode = mode or options.mode
    if options.precision not in PRECISIONS:
        raise UserError(f"precision {options.precision!r}: use one of {', '.join(PRECISIONS)}")
    if mode not in MODES:
        raise UserError(f"mode {mode!r}: use latency or throughput")
    config: dict = {"PERFORMANCE_HINT": MODES[mode]}
    from backends.cpu_isa import capped_precision

    precision = PRECISIONS[options.precision]
    if options.device.upper().startswith("CPU"):
        precision = capped_precision(precision or "default")
        precision = None if precision == "default" else precision
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    streams = options.throughput_streams if mode == "throughput" and options.throughput_streams \
        else options.streams
    if streams:
        config["NUM_STREAMS"] = int(streams)
    if options.threads:
        config["INFERENCE_NUM_THREADS"] = int(options.threads)
    if options.reserve_cores:  # ensemble members: each its own cores (one ov.Core for all)
        config["ENABLE_CPU_PINNING"] = True
        config["ENABLE_CPU_RESERVATION"] = True
    if options.perf_count if perf_count is None else perf_count:
        config["PERF_COUNT"] = True
    return config


class OpenVINORunner(RunnerBase):
    """Compiles on `__enter__`, releases on `__exit__`; one sync infer request for `infer`, an
    `AsyncInferQueue` on a THROUGHPUT-compiled twin for `throughput`."""

    def __init__(self, path: str, options: RunOptions):
        super().__init__(path, options)
        self.config = compile_config(options)  # validate before any work
        self.compiled = None
        self.request = None
        self._tput = None
        self._precision_of: dict[str, str] = {}
        self.outputs: list[str] = []

    @property
    def active(self) -> bool:
        return self.request is not None

    def __enter__(self) -> "OpenVINORunner":
        _check_device(self.options.device)
        model = self._model()
        # the outputs' names as the model declares them: compiling merges the tensor names of
        # an output with those of the ops it folds (an ONNX output made by Identity(Div) gets
        # the Div's name too), and get_any_name would then pick the first in sorted order
        declared = [p.get_any_name() if p.get_names() else f"output{i}"
                    for i, p in enumerate(model.outputs)]
        self.compiled = _compile(model, self.options.device, self.config, self.path)
        self.request = self.compiled.create_infer_request()
        self.inputs = {p.get_any_name(): None if p.get_partial_shape().rank.is_dynamic else
                       tuple(d.get_length() if d.is_static else None
                             for d in p.get_partial_shape())
                       for p in self.compiled.inputs}
        self.dtypes = {p.get_any_name(): np.dtype(p.get_element_type().to_dtype())
                       for p in self.compiled.inputs if not p.get_element_type().is_dynamic()}
        self.outputs = declared
        self._precision_of = {op.get_friendly_name(): op.get_rt_info()["runtimePrecision"]
                              .astype(str) for op in self.compiled.get_runtime_model().get_ops()
                              if "runtimePrecision" in op.get_rt_info()}
        self.info = self._describe(self.compiled)
        return self

    def __exit__(self, *exc) -> None:
        self.request = self.compiled = self._tput = None

    def _model(self):
        """The model read from disk, its inputs' first dim set to options.batch if given; an
        ONNX file gets its int8 recurrent weights in the form the build gives them."""
        model = _read(self.path)
        if self.path.endswith(".onnx"):
            fold_gate_reorder(model)
        batch = self.options.batch
        if batch:
            import openvino as ov

            shapes = {}
            for port in model.inputs:
                shape = port.get_partial_shape()
                if shape.rank.is_dynamic or len(shape) == 0:
                    raise UserError(f"cannot set batch {batch}: input {port.get_any_name()!r} "
                                    "has no batch dim", "profile without --batch")
                shapes[port] = ov.PartialShape([batch] + [shape[i] for i in range(1, len(shape))])
            try:
                model.reshape(shapes)
            except RuntimeError as exc:
                raise UserError(f"this model cannot run at batch {batch}: "
                                f"{str(exc).strip().splitlines()[-1]}",
                                "rebuild it with a dynamic batch dim "
                                "(e.g. --input input:Bx3x224x224)") from exc
        return model

    @staticmethod
    def _describe(compiled) -> dict:
        prop = compiled.get_property
        return {"backend": "openvino", "openvino": version(),
                "inference_precision": _precision_name(compiled),
                "performance_hint": str(prop("PERFORMANCE_HINT")),
                "streams": int(prop("NUM_STREAMS")),
                "threads": int(prop("INFERENCE_NUM_THREADS")),
                "optimal_requests": int(prop("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))}

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One synchronous inference; outputs keyed by the model's output names (copies)."""
        self.check(feeds)
        result = self.request.infer(feeds)
        # The request reuses its output buffers: copy before the next infer overwrites them.
        return {name: np.array(result[port], copy=True)
                for name, port in zip(self.outputs, self.compiled.outputs)}

    def sync_call(self, feeds: dict[str, np.ndarray]):
        """A no-argument function running one sync inference on `feeds`, set once here: the
        timed loop of benchmark_app (-inference_only), without the per-call input and output
        copies of `infer`. Valid until the next `infer` or `sync_call`."""
        import openvino as ov

        self.check(feeds)
        for name, value in feeds.items():
            self.request.set_tensor(name, ov.Tensor(np.ascontiguousarray(value)))
        return self.request.infer

    def timings(self) -> list[LayerTiming]:
        """Per-layer times of the last `infer` (needs RunOptions.perf_count): executed nodes
        only, in execution order."""
        if not self.options.perf_count:
            return []
        if not self.active:
            raise RuntimeError(INACTIVE)
        import openvino as ov

        executed = ov.ProfilingInfo.Status.EXECUTED
        return [LayerTiming(name=p.node_name, type=p.node_type, kernel=p.exec_type,
                            precision=self._precision_of.get(p.node_name, ""),
                            time_ms=p.real_time.total_seconds() * 1e3)
                for p in self.request.profiling_info if p.status == executed]

    def throughput(self, feeds: dict[str, np.ndarray], seconds: float) -> tuple[int, float]:
        """Inferences completed in about `seconds` with as many requests in flight as OpenVINO
        finds optimal (PERFORMANCE_HINT THROUGHPUT unless the runner already is). Returns
        (completed, elapsed seconds)."""
        import openvino as ov

        self.check(feeds)
        if self._tput is None:
            self._tput = self.compiled if self.options.mode == "throughput" else \
                _compile(self._model(), self.options.device,
                         compile_config(self.options, "throughput", False), self.path)
        jobs = int(self._tput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.throughput_info = {"streams": int(self._tput.get_property("NUM_STREAMS")),
                                "requests": jobs,
                                "threads": int(self._tput.get_property("INFERENCE_NUM_THREADS")),
                                "inference_precision": _precision_name(self._tput)}
        queue = ov.AsyncInferQueue(self._tput, jobs)
        # Inputs set once per request and reused, no Python callback: the loop benchmark_app
        # runs (-inference_only), so the figure is the model's, not Python's copying.
        for i in range(jobs):
            for name, value in feeds.items():
                queue[i].set_tensor(name, ov.Tensor(np.ascontiguousarray(value)))
        for _ in range(jobs):  # warm-up: every request once, untimed
            queue.start_async()
        queue.wait_all()
        started = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or started % jobs:
            queue.start_async()  # blocks while all requests are busy
            started += 1
        queue.wait_all()
        return started, time.perf_counter() - start


BACKEND = OpenVINOBackend()
# uint8 activations, f32 float parts, CPU int8 kernels whose ISA matters and whose time was
# measured (rexdeploy/planning/cost_models.py), int8 LSTM/GRU, ensemble members pinned to their
# cores
# channel_activations: a per-channel FakeQuantize before a GroupConvolution runs OpenVINO's int8
# depthwise kernel (its scale folds into the output's dequantization), measured natively and
# under ONEDNN_MAX_CPU_ISA=AVX2 (docs/algorithms.md section 3.0); int8_attention: with both
# inputs dequantized, the CPU plugin fuses attention into one int8 MHA kernel (AMX/VNNI) or runs
# int8 MatMuls (AVX2), measured as faithful as the reference on both (docs/algorithms.md section 10)
RULES = TargetRules(cpu_cost_models=True, int8_recurrent=True, pins_cores=True,
                    channel_activations=True, int8_attention=True, zero_point_activations=True,
                    runtime="OpenVINO", runtime_package="openvino")


def _probe_onnx() -> bytes:
    """A 1x1 int8 convolution whose first output channel pairs two weight codes of 127 against
    activations of 255: 64770 exactly where int8 products accumulate in int32, 32767 where a
    pre-VNNI kernel adds the pair in a saturating int16 (calib_free.weights.saturation)."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.zeros((8, 8, 1, 1), np.int8)
    w[0, 0, 0, 0] = w[0, 1, 0, 0] = 127
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "xs"),
             helper.make_tensor("xz", TensorProto.UINT8, [], [0]),
             numpy_helper.from_array(w, "wq"),
             numpy_helper.from_array(np.ones(8, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(8, np.int8), "wz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"], name="probe")]
    graph = helper.make_graph(nodes, "int8_probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             [1, 8, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]) \
        .SerializeToString()


@functools.lru_cache(maxsize=None)
def int8_probe(device: str = "CPU") -> dict:
    """Run the probe layer on `device`: {"saturates": bool, "kernel": its int8 kernel, or None
    where it did not run int8}. About 0.1 s, once per process and device."""
    import openvino as ov

    core = shared_core()
    model = core.read_model(_probe_onnx(), ov.Tensor(np.empty(0, np.uint8)))
    compiled = core.compile_model(model, device, {"INFERENCE_PRECISION_HINT": "f32"})
    layers = runtime_layers(compiled)
    kernel = next((l.kernel for l in layers if l.is_int8), None)
    y = compiled({"x": np.full((1, 8, 2, 2), 255, np.float32)})[compiled.outputs[0]]
    return {"saturates": bool(float(y[0, 0, 0, 0]) < 64770 - 0.5), "kernel": kernel}


def int8_isa(choice: str, device: str = "CPU"):
    """The target's int8 instruction set (backends.cpu_isa.Int8Isa) for `--int8-isa choice`:
    auto detects it on this host (CPU flags under ONEDNN_MAX_CPU_ISA, confirmed by running
    the probe layer); a name is the user's, for a target CPU other than this host."""
    from backends import cpu_isa

    if not device.upper().startswith("CPU"):
        if choice != "auto":
            raise UserError(f"--int8-isa {choice} names a CPU instruction set, and the device is "
                            f"{device}", "drop --int8-isa")
        return cpu_isa.Int8Isa("unknown", False, f"OpenVINO {device}: not a CPU")
    if choice != "auto":
        cpu_isa.check_choice(choice)
        return cpu_isa.Int8Isa(choice, cpu_isa.saturates(choice), "--int8-isa")
    name = cpu_isa.host_isa() or "unknown"
    probe = int8_probe(device)
    capped = os.environ.get(cpu_isa.ENV)
    source = "detected on this host" + (f" under {cpu_isa.ENV}={capped}" if capped else "")
    if name != "unknown" and probe["saturates"] != cpu_isa.saturates(name):
        source += f"; the probe layer {'saturated' if probe['saturates'] else 'did not'}"
    return cpu_isa.Int8Isa(name, probe["saturates"], source, probe["kernel"])
