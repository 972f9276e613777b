"""The one small interface every backend implements.

A backend sees only a Q/DQ ONNX file and build options; it knows nothing of REx or plans.

    backend = backends.get("openvino")
    ok, reason = backend.available()
    result = backend.build("model.onnx", out_dir, BuildOptions())
    with backend.runner(out_dir, result.files, RunOptions()) as r:
        outputs = r.infer({"input": x})
        layers = r.timings()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from backends.cpu_isa import Int8Isa


@dataclass(frozen=True)
class BuildOptions:
    device: str = "CPU"
    model_name: str = "model"
    # TensorRT (other backends ignore these)
    parallel_branches: int = 1         # most parallel branches of one layer (REx orders K)
    dla_core: int | None = None        # build for this DLA core, GPU fallback on
    dim_ranges: tuple[tuple[str, int, int, int], ...] = ()  # dynamic dim -> min, opt, max
    require_engine: bool = False       # fail instead of deferring the engine build
    # OpenVINO: properties stored in the IR (rt_info runtime_options) so every runner gets them,
    # e.g. (("DYNAMIC_QUANTIZATION_GROUP_SIZE", "0"), ("INFERENCE_PRECISION_HINT", "f16"))
    runtime_options: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LayerPrecision:
    """What one compute layer really runs as, read from the compiled model."""

    name: str              # runtime layer name (OpenVINO keeps the ONNX node name where it can)
    type: str              # Convolution, FullyConnected, MatMul, ...
    precision: str         # runtime precision: u8, i8, f32, bf16, i4, ...
    kernel: str = ""       # primitive / tactic, e.g. brgconv_avx512_I8
    original_names: tuple[str, ...] = ()  # ONNX nodes fused into this layer (Conv, Relu, Q, ...)

    @property
    def is_int8(self) -> bool:
        return self.precision in ("u8", "i8") or self.kernel.upper().endswith("_I8")


@dataclass(frozen=True)
class BuildResult:
    files: dict[str, str]                  # role -> path relative to the output dir
    layers: tuple[LayerPrecision, ...] = ()  # runtime precision of every compute layer
    info: dict = field(default_factory=dict)  # versions, device, notes

    @property
    def int8_coverage(self) -> float:
        return (sum(l.is_int8 for l in self.layers) / len(self.layers)) if self.layers else 0.0


@dataclass(frozen=True)
class RunOptions:
    device: str = "CPU"
    precision: str = "f32"        # inference precision for float parts: f32 (pinned) | default
    mode: str = "latency"         # latency (1 stream, sync) | throughput (N streams, async)
    streams: int | None = None    # None: the backend's choice for the mode
    perf_count: bool = False      # collect per-layer timings
    threads: int | None = None
    reserve_cores: bool = False   # pin this model's threads to cores no other model uses
    throughput_streams: int | None = None  # streams (= requests) of the async throughput path
    batch: int | None = None      # reshape every input's first dim to this batch (None: as built)


@dataclass(frozen=True)
class LayerTiming:
    name: str
    type: str
    kernel: str
    precision: str
    time_ms: float


@dataclass(frozen=True)
class TargetRules:
    """What a target asks of the build, declared by its backend (module attribute `RULES`, read
    through `backends.rules(name)`): the pipeline asks these instead of testing the target's
    name."""

    default_device: str = "CPU"          # the device when the user names none
    defers: bool = False                 # builds without its runtime, the engine left to the device
    unavailable_hint: str | None = None  # the hint when the runtime is missing and it cannot defer
    unsigned_activations: bool = True    # non-negative activations may be uint8 (else signed only)
    zero_point_activations: bool = False  # uint8 activations may carry a zero point
    centering: bool = False              # --centering applies (signed-only int8 activations)
    float16_graph: bool = False          # the float parts are written as float16 by default
    int4_weight_only: bool = False       # INT4 tensors only where a layer's input stays float
    table_dtype: str = "float32"         # storage of PowerQuant lookup-table weights
    engine_options: bool = False         # --dla-core, --dim-range, --require-engine apply
    cpu_isa: bool = True                 # int8 runs on a CPU whose instruction set matters
    cpu_cost_models: bool = False        # the measured CPU time models price a --budget
    int8_recurrent: bool = False         # LSTM/GRU can run int8 (--recurrent int8)
    recurrent_float_reason: str | None = None  # why its recurrent layers stay float, if always
    int8_attention: bool = False         # activation x activation MatMuls can run int8
    attention_float_reason: str | None = None  # why they stay float on it, if always
    device_check: bool = True            # its compiled model is checked against the reference
    profile: str = "variants"            # variants (with float baselines) | engine (alone) | none
    pins_cores: bool = False             # ensemble members each get their own cores
    channel_activations: bool = False    # per-channel int8 scales on depthwise convolution inputs
    runtime: str | None = None           # the runtime's name as users know it ("OpenVINO")
    runtime_package: str | None = None   # its Python distribution, for its version ("openvino")
    sparse_form: str = "dense"           # how group-sparse REx orders are lowered by default:
    # dense zero rows, or compact (kept channels only); measured: tools/bench/rex_latency.py


INACTIVE = "runner is not active: use it as `with backend.runner(...) as r`"


class RunnerBase:
    """What every runner shares, so that callers never probe for it: the
    `with backend.runner(...) as r` lifecycle guard, the input check against the model's inputs
    (`inputs` / `dtypes`, set when the runner is entered), `info` (what ran: backend, precision,
    threads) and `throughput_info` (streams of the last `throughput` call), and defaults for
    `sync_call` (one inference on fixed feeds, as a no-argument function) and `timings` (none).
    A subclass says whether it is entered (`active`) and implements `__enter__`, `__exit__`,
    `infer` (calling `check` first) and `throughput`."""

    def __init__(self, path: str = "", options: RunOptions | None = None):
        self.path, self.options = path, options or RunOptions()
        self.inputs: dict = {}
        self.dtypes: dict = {}
        self.info: dict = {}
        self.throughput_info: dict = {}

    @property
    def active(self) -> bool:
        raise NotImplementedError

    def check(self, feeds: dict[str, np.ndarray]) -> None:
        """RuntimeError unless entered; UserError unless `feeds` fit the model's inputs."""
        if not self.active:
            raise RuntimeError(INACTIVE)
        if self.inputs:
            import os

            check_feeds(feeds, self.inputs, os.path.basename(self.path) or "the model",
                        self.dtypes or None)

    def sync_call(self, feeds: dict[str, np.ndarray]):
        """A no-argument function running one inference on `feeds`, for a timed loop; runtimes
        that can bind the inputs once override it (OpenVINO)."""
        self.check(feeds)
        return lambda: self.infer(feeds)

    def timings(self) -> list[LayerTiming]:
        return []


@runtime_checkable
class Runner(Protocol):
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
    def timings(self) -> list[LayerTiming]: ...
    def throughput(self, feeds: dict[str, np.ndarray], seconds: float) -> tuple[int, float]: ...
    def __enter__(self) -> "Runner": ...
    def __exit__(self, *exc) -> None: ...


class Backend(Protocol):
    name: str
    description: str

    def available(self) -> tuple[bool, str]: ...
    def int8_isa(self, choice: str, device: str) -> "Int8Isa": ...
    def build(self, onnx_path: str, out_dir: str, options: BuildOptions) -> BuildResult: ...
    def runner(self, out_dir: str, files: dict[str, str], options: RunOptions) -> Runner: ...


def check_feeds(feeds: dict[str, np.ndarray], inputs: dict[str, tuple[int | None, ...] | None],
                where: str, dtypes: dict[str, np.dtype] | None = None) -> None:
    """Raise UserError unless `feeds` holds exactly the model's `inputs` with matching shapes
    (and dtypes, where `dtypes` gives them).

    inputs: name -> shape, None for a dynamic dim (or for the whole shape when its rank is
    dynamic). `where` names the model in the message.
    """
    from rexdeploy.errors import UserError

    missing = [n for n in inputs if n not in feeds]
    extra = [n for n in feeds if n not in inputs]
    if missing or extra:
        raise UserError(f"{where}: the inputs given ({', '.join(feeds) or 'none'}) do not match "
                        f"the model's ({', '.join(inputs)})",
                        "name every model input exactly once")
    for name, want in inputs.items():
        got = tuple(np.shape(feeds[name]))
        if want is not None and (len(got) != len(want) or
                                 any(w is not None and w != g for w, g in zip(want, got))):
            shown = "x".join("?" if w is None else str(w) for w in want)
            raise UserError(f"{where}: input {name!r} has shape "
                            f"{'x'.join(map(str, got)) or 'scalar'}, the model expects {shown}")
        want_dtype = (dtypes or {}).get(name)
        if want_dtype is not None and np.asarray(feeds[name]).dtype != want_dtype:
            raise UserError(f"{where}: input {name!r} is {np.asarray(feeds[name]).dtype}, the "
                            f"model expects {np.dtype(want_dtype)}",
                            f"convert it with .astype(np.{np.dtype(want_dtype)})")
