"""Reference backend: ONNX Runtime on CPU running the (Q/DQ or float) ONNX as it is.

The numerical oracle of the tests and of `compare --backend reference`. It builds nothing: the
ONNX is the artifact. ORT's default graph optimizations stay on; they fuse Q/DQ into QLinear ops
without changing what the graph computes beyond rounding.
"""

from __future__ import annotations

import os
import time

import numpy as np

from backends.base import BuildOptions, BuildResult, RunnerBase, RunOptions, TargetRules
from rexdeploy.errors import UserError

PROVIDERS = ["CPUExecutionProvider"]
_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
           "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
           "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def _session(path: str, threads: int | None):
    """The oracle's session: basic optimisations only (rexdeploy.ort_session), none for an f16
    graph: ORT's CPU provider has few f16 kernels and casts around them, and at the basic level
    its rewrites of f16 Q/DQ give wrong numbers (onnxruntime 1.32, EfficientNet-Lite0: -6 dB
    against the same graph unoptimized)."""
    from rexdeploy.ort_session import session

    return session(path, path, "none" if _has_float16(path) else "basic", threads)


def _has_float16(path: str) -> bool:
    """Whether the model holds float16 initializers (a --float-precision fp16 graph)."""
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # unreadable: the session reports it
        return False
    return any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)


class ReferenceBackend:
    name = "reference"
    description = "ONNX Runtime CPU running the Q/DQ ONNX: the numerical reference"

    def int8_isa(self, choice: str, device: str = "CPU"):
        """The reference runs the Q/DQ graph in float (unfused): exact sums, no saturation."""
        from backends.cpu_isa import Int8Isa

        return Int8Isa("reference", False, "ONNX Runtime runs Q/DQ unfused, in float")

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return False, f"onnxruntime does not import: {exc}"
        return True, f"onnxruntime {ort.__version__}, providers: CPUExecutionProvider"

    def build(self, onnx_path: str, out_dir: str, options: BuildOptions) -> BuildResult:
        """Check that ORT loads the model; the artifact is the ONNX itself."""
        import onnxruntime as ort

        if not os.path.isfile(onnx_path):
            raise UserError(f"no ONNX file at {onnx_path}")
        if options.device.upper() != "CPU":
            raise UserError(f"the reference backend runs on CPU only (asked: {options.device})")
        _session(onnx_path, 1)
        return BuildResult(files={"onnx": os.path.relpath(onnx_path, out_dir)},
                           info={"onnxruntime": ort.__version__, "device": "CPU"})

    def runner(self, out_dir: str, files: dict[str, str], options: RunOptions
               ) -> "ReferenceRunner":
        if "onnx" not in files:
            raise UserError(f"no ONNX file for the reference backend in {out_dir}")
        path = os.path.join(out_dir, files["onnx"])
        if not os.path.isfile(path):
            raise UserError(f"{path} is missing", "rebuild the artifact")
        return ReferenceRunner(path, options)


class ReferenceRunner(RunnerBase):
    """One ORT session, created on `__enter__`. Float parts run in f32 whatever the options say."""

    def __init__(self, path: str, options: RunOptions):
        super().__init__(path, options)
        self.session = None
        self.outputs: list[str] = []

    @property
    def active(self) -> bool:
        return self.session is not None

    def __enter__(self) -> "ReferenceRunner":
        import onnxruntime as ort

        self.session = _session(self.path, self.options.threads)
        self.inputs = {i.name: None if i.shape is None else
                       tuple(d if isinstance(d, int) else None for d in i.shape)
                       for i in self.session.get_inputs()}
        self.dtypes = {i.name: np.dtype(_DTYPES[i.type]) for i in self.session.get_inputs()
                       if i.type in _DTYPES}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.info = {"backend": "reference", "onnxruntime": ort.__version__,
                     "inference_precision": "f32",
                     "threads": self.options.threads}  # None: ORT's choice, one per core
        return self

    def __exit__(self, *exc) -> None:
        self.session = None

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check(feeds)
        return dict(zip(self.outputs, self.session.run(self.outputs, feeds)))

    # timings: none (ORT writes its profile to a file only when profiling ends)

    def throughput(self, feeds: dict[str, np.ndarray], seconds: float) -> tuple[int, float]:
        """Sync `run` in a loop (ORT parallelises inside one run): (completed, elapsed s)."""
        self.infer(feeds)  # warm-up, and validates the feeds once
        completed, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            self.session.run(self.outputs, feeds)
            completed += 1
        return completed, time.perf_counter() - start


BACKEND = ReferenceBackend()
RULES = TargetRules(device_check=False,  # the reference is the device
                    profile="none",      # ONNX Runtime is an oracle, not a deployment target
                    channel_activations=True,  # per-axis QuantizeLinear runs here
                    int8_attention=True,  # as the OpenVINO build quantizes them
                    zero_point_activations=True)
