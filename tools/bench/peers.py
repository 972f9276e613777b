"""Other quantization tools on the same models, in the same run (issue 6): `fidelity.py --peers`.

Every peer starts from the float ONNX that rexdeploy itself quantizes (the artifact's
`float_onnx`, so all tools see one graph), writes its own artifact under OUT/peers/, and is run
by the same OpenVINO CPU runner (f32 pinned for the float parts) on the same inputs as the
rexdeploy rows, and timed in the same interleaved latency pass. The peers:

- NNCF `quantize` (PTQ W8A8, OpenVINO backend, defaults; TRANSFORMER model type with its
  SmoothQuant on MiniLM) calibrated on real data: the evaluation inputs themselves for the photos
  and the quotes (an upper bound, not a fair data-aware result), 300 training images for
  Fashion-MNIST; and the same on random stand-in data (data-free).
- NNCF `compress_weights` (data-free, weight-only): INT8_SYM; on MiniLM also INT4_SYM
  (group 128 and per channel, all layers).
- NVIDIA ModelOpt ONNX `quantize` int8 with its default random calibration (and with the real
  data on EfficientNet-Lite0; with random tokens on MiniLM, where its random mode draws ids
  beyond the vocabulary), and int4 `rtn_dq` (MiniLM).
- ONNX Runtime `quantize_static` (QDQ, per-channel int8, MinMax) on random data (and on the real
  photos for EfficientNet-Lite0).
- PyTorch dynamic int8 (`torch.ao.quantization.quantize_dynamic` on an eager copy, MiniLM; run
  and timed in torch, not OpenVINO).

Random stand-in data use what rexdeploy is told and nothing more: images uniform over the
declared input range, token sequences of random ids (32 samples, seed 0). A peer whose package
does not import is skipped with the reason (in the output and in the table), never faked; one
that raises is shown as failed with its error. Pinned versions: tools/bench/requirements-peers.txt.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REQUIREMENTS = os.path.join(HERE, "requirements-peers.txt")
INSTALL_HINT = ("install the pinned peers with .venv/bin/pip install --no-deps -r "
                "tools/bench/requirements-peers.txt")
N_RANDOM = 32


@dataclass
class Peer:
    label: str
    modules: tuple[str, ...]            # must import, or the peer is skipped
    build: Callable[..., str]           # build(float_onnx, out_dir, data) -> model path
    data: str = "none"                  # "real", "random" or "none" (data-free)
    kind: str = "openvino"              # "openvino" (the path runs on OpenVINO) or "torch"
    options: dict = field(default_factory=dict)
    cls: str = "W8A8"                   # what it is compared with: W8A8, W8 or W4 (weight-only)


@functools.lru_cache(maxsize=None)
def missing(modules: tuple[str, ...]) -> str | None:
    """Why the peer cannot run here (a module that does not import, tried in a child process so
    that nothing a peer patches at import touches this one), or None."""
    for name in modules:
        done = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True,
                              text=True)
        if done.returncode:
            lines = done.stderr.strip().splitlines() or ["?"]
            return f"{name} does not import ({lines[-1][:90]})"
    return None


def version_of(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    return {d: version_of(d) for d in ("nncf", "nvidia-modelopt", "onnxruntime", "openvino",
                                         "torch", "onnx")}


# ---------------------------------------------------------------------------------------------
# the peers' own calls (each writes one artifact and returns the path OpenVINO reads)

def _save_ov(model, path: str) -> str:
    import openvino as ov

    ov.save_model(model, path, compress_to_fp16=False)
    return path


def nncf_quantize(float_onnx: str, out_dir: str, data: list[dict], transformer: bool = False,
                  overflow_fix: str | None = None) -> str:
    """NNCF post-training W8A8 on `data`; overflow_fix: an nncf OverflowFix name (DISABLE,
    FIRST_LAYER: its default, ENABLE: 7-bit weights in every layer) or None for the default."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(float_onnx)
    kwargs = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    if overflow_fix:
        from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters,
                                                           OverflowFix)

        kwargs["advanced_parameters"] = AdvancedQuantizationParameters(
            overflow_fix=getattr(OverflowFix, overflow_fix))
    q = nncf.quantize(model, nncf.Dataset(data), subset_size=len(data), **kwargs)
    return _save_ov(q, os.path.join(out_dir, "model.xml"))


def nncf_compress(float_onnx: str, out_dir: str, data, mode: str = "INT8_SYM",
                  group_size: int | None = None) -> str:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(float_onnx)
    kwargs = {}
    if mode.startswith("INT4"):
        kwargs = {"group_size": group_size or 128, "ratio": 1.0, "all_layers": True}
    q = nncf.compress_weights(model, mode=getattr(nncf.CompressWeightsMode, mode), **kwargs)
    return _save_ov(q, os.path.join(out_dir, "model.xml"))


def modelopt_quantize(float_onnx: str, out_dir: str, data: list[dict] | None,
                      mode: str = "int8", method: str | None = None) -> str:
    """`python -m modelopt.onnx.quantization` in a child process: ModelOpt patches ONNX
    Runtime's quantizer classes in the process that runs it (quantize_static then fails)."""
    out = os.path.join(out_dir, "model.onnx")
    cmd = [sys.executable, "-m", "modelopt.onnx.quantization", "--onnx_path", float_onnx,
           "--quantize_mode", mode, "--calibration_eps", "cpu", "--high_precision_dtype", "fp32",
           "--output_path", out]
    if data is not None:  # stacked along the batch axis; ModelOpt splits it into steps
        calib = os.path.join(out_dir, "calibration.npz")
        np.savez(calib, **{k: np.concatenate([d[k] for d in data]) for k in data[0]})
        cmd += ["--calibration_data_path", calib]
    if method:
        cmd += ["--calibration_method", method]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=out_dir)
    with open(os.path.join(out_dir, "modelopt.log"), "w") as f:
        f.write(done.stdout + done.stderr)
    if done.returncode or not os.path.isfile(out):
        lines = [l for l in (done.stdout + done.stderr).splitlines()
                 if "Error" in l or "error" in l] or (done.stdout + done.stderr).splitlines()
        raise RuntimeError(f"ModelOpt exited {done.returncode}: "
                           f"{lines[-1].strip() if lines else 'no output'}")
    return out


def ort_static(float_onnx: str, out_dir: str, data: list[dict],
               op_types: list[str] | None = None) -> str:
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(data)

        def get_next(self):
            return next(self.it, None)

    pre = os.path.join(out_dir, "pre.onnx")
    try:
        quant_pre_process(float_onnx, pre)
    except Exception:  # the preprocessing is optional; quantize the graph as it is
        pre = float_onnx
    out = os.path.join(out_dir, "model.onnx")
    kwargs = {"op_types_to_quantize": op_types} if op_types else {}
    quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, **kwargs)
    return out


# ---------------------------------------------------------------------------------------------
# which peers run on which model

def peer_list(model: str, n_real: int, real_what: str) -> list[Peer]:
    nncf_ptq = ("nncf", "openvino")
    mo = ("modelopt.onnx.quantization", "onnxruntime")
    ort = ("onnxruntime.quantization",)
    tf = model == "minilm"
    rand = "random tokens" if tf else "uniform random inputs"
    peers = [
        Peer(f"NNCF quantize W8A8, {n_real} real {real_what}"
             + (" (eval inputs: upper bound)" if model != "fashion" else ""),
             nncf_ptq, nncf_quantize, "real", options={"transformer": tf}),
        Peer(f"NNCF quantize W8A8, {N_RANDOM} {rand}", nncf_ptq, nncf_quantize, "random",
             options={"transformer": tf}),
        Peer("NNCF compress_weights INT8_SYM (data-free)", nncf_ptq, nncf_compress, cls="W8"),
    ]
    if tf:
        peers += [
            Peer("NNCF compress_weights INT4_SYM g128 (data-free)", nncf_ptq, nncf_compress,
                 options={"mode": "INT4_SYM", "group_size": 128}, cls="W4"),
            Peer("NNCF compress_weights INT4_SYM per-channel (data-free)", nncf_ptq,
                 nncf_compress, options={"mode": "INT4_SYM", "group_size": -1}, cls="W4"),
        ]
    # ONNX Runtime before ModelOpt: importing ModelOpt's ONNX quantization patches ONNX
    # Runtime's quantizer in this process (quantize_static then fails)
    peers.append(Peer(f"ORT quantize_static int8, {N_RANDOM} {rand}", ort, ort_static,
                      "random"))
    if tf:
        peers.append(Peer(f"ORT quantize_static int8 MatMul only, {N_RANDOM} {rand}", ort,
                          ort_static, "random", options={"op_types": ["MatMul", "Gemm"]}))
    if model == "effnet":
        peers.append(Peer(f"ORT quantize_static int8, {n_real} real {real_what} (upper bound)",
                          ort, ort_static, "real"))
    peers.append(Peer("ModelOpt int8, its default random calibration", mo, modelopt_quantize,
                      "default"))
    if tf:
        peers.append(Peer(f"ModelOpt int8, {N_RANDOM} random tokens", mo, modelopt_quantize,
                          "random"))
        peers.append(Peer("ModelOpt int4 rtn_dq (data-free)", mo, modelopt_quantize,
                          options={"mode": "int4", "method": "rtn_dq"}, cls="W4"))
    if model == "effnet":
        peers.append(Peer(f"ModelOpt int8, {n_real} real {real_what} (upper bound)", mo,
                          modelopt_quantize, "real"))
    if tf:
        peers.append(Peer("PyTorch dynamic int8 (torch, not OpenVINO)", ("torch",), None,
                          kind="torch"))
    return peers


def random_images(shape: tuple[int, ...], low: float, high: float, n: int = N_RANDOM,
                  name: str = "input") -> list[dict]:
    rng = np.random.default_rng(0)
    return [{name: rng.uniform(low, high, shape).astype(np.float32)} for _ in range(n)]


def random_tokens(length: int, n: int = N_RANDOM, vocab: int = 30522) -> list[dict]:
    """Random sentences: L uniform in [8, 64], ids uniform in [1000, vocab), [CLS] .. [SEP]."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        n_tok = int(rng.integers(8, min(64, length) + 1))
        ids = np.zeros((1, length), np.int64)
        mask = np.zeros((1, length), np.int64)
        ids[0, :n_tok] = rng.integers(1000, vocab, n_tok)
        ids[0, 0], ids[0, n_tok - 1] = 101, 102
        mask[0, :n_tok] = 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


# ---------------------------------------------------------------------------------------------
# running them

def run_peers(console, model: str, float_onnx: str, out_dir: str, *, real: list[dict],
              random: list[dict], real_what: str, evaluate: Callable[[str, dict], np.ndarray],
              metrics: Callable[[str, np.ndarray], dict], torch_peer: Callable | None = None,
              only: list[str] | None = None) -> list[dict]:
    """One row per peer: metrics(label, evaluate(dir, files)) plus "data", "build_s", "files"
    (for the latency pass and the BOPs), or {"label", "skipped": why}."""
    rows = []
    for peer in peer_list(model, len(real), real_what):
        if only and not any(o in peer.label for o in only):
            continue
        why = missing(peer.modules)
        if why:
            console.print(f"  [yellow]skipped[/] {peer.label}: {why}; {INSTALL_HINT}")
            rows.append({"label": peer.label, "skipped": f"skipped: {why}", "peer": True})
            continue
        start = time.perf_counter()
        try:
            if peer.kind == "torch":
                out, extra = torch_peer()
                rows.append(metrics(peer.label, out) | extra |
                            {"peer": True, "data": "none", "cls": peer.cls,
                             "build_s": time.perf_counter() - start})
                console.print(f"  {_progress(rows[-1])}")
                continue
            directory = os.path.join(out_dir, "peers", model, _slug(peer.label))
            os.makedirs(directory, exist_ok=True)
            data = {"real": real, "random": random}.get(peer.data)
            with _quiet():
                path = peer.build(float_onnx, directory, data, **peer.options)
            build_s = time.perf_counter() - start
            files = {("ir_xml" if path.endswith(".xml") else "onnx"): os.path.basename(path)}
            out = evaluate(os.path.dirname(path), files)
        except Exception as e:
            last = traceback.format_exception_only(type(e), e)[-1].strip().splitlines()[0]
            console.print(f"  [red]failed[/] {peer.label}: {last[:300]}")
            rows.append({"label": peer.label, "skipped": f"failed: {last[:160]}", "peer": True})
            continue
        rows.append(metrics(peer.label, out) | {"peer": True, "data": peer.data, "cls": peer.cls,
                                                "build_s": build_s, "int8": runtime_int8(path),
                                                "dir": os.path.dirname(path), "files": files})
        console.print(f"  {_progress(rows[-1])}")
    return rows


def runtime_int8(path: str) -> float:
    """Fraction of the compute layers OpenVINO CPU runs with an int8 kernel (f32 pinned), by
    the kernel's name: compressed int8/int4 weights under an f32 kernel do not count."""
    from backends.openvino import runtime_layers, shared_core

    compiled = shared_core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    layers = runtime_layers(compiled)
    return sum(l.kernel.upper().endswith("_I8") for l in layers) / len(layers) if layers else 0.0


def _progress(row: dict) -> str:
    parts = [row["label"] + ":"]
    if "cos_mean" in row:
        parts.append(f"cosine mean {row['cos_mean']:.5f}, min {row['cos_min']:.5f},")
    if "acc" in row and "drop" in row:
        parts.append(f"accuracy {row['acc']:.2%} (drop {row['drop']:.2f}),")
    if "agree" in row:
        parts.append(f"agreement {row['agree']:.3f},")
    parts.append(f"{row['sqnr']:.1f} dB [{row.get('build_s', 0):.0f} s]")
    return " ".join(parts)


@contextlib.contextmanager
def _quiet():
    """The peers' own progress bars and banners go to a buffer, not the benchmark's output."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        yield


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")[:60]
