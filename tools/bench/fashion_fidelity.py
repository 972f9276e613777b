"""Fashion-MNIST rows of tools/bench/fidelity.py (`--model fashion`): true accuracy on 10k images.

The CNN of tools/train_fashion_mnist.py (.cache/models/fashion_cnn.pt, input 1x1x28x28 in 0..1)
is built by rexdeploy with no data (`--input-range input:0,1`), run by OpenVINO on CPU (f32
pinned for the float parts) on every test image of .cache/fashion-mnist/test.npz, and compared
with the float TorchScript model in torch: top-1 accuracy against the true labels, the drop in
points, top-1 agreement, mean KL(float||q) and logits SQNR. Issue target: drop <= 0.5 point.
"""

from __future__ import annotations

import os
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, ".cache", "models", "fashion_cnn.pt")
TEST = os.path.join(ROOT, ".cache", "fashion-mnist", "test.npz")
TARGET_DROP = 0.5  # points
# the same model as users often bring it: torch.onnx.export in eval mode folds its BatchNorm into
# the convolutions, so no BatchNorm statistics are left to read the ranges from
EXPORTED = "rexdeploy W8A8 (default), from torch.onnx.export (BatchNorm folded)"
CONFIGS = [  # label, QuantConfig overrides
    ("rexdeploy W8A8 (default)", {}),
    ("rexdeploy W8A8, --budget off (order 1, every activation int8)", {"auto_budget": False}),
    (EXPORTED, {}),
    ("rexdeploy W8A8, REx K=2", {"orders": 2}),
    ("rexdeploy W8 weight-only", {"activations": "none"}),
    ("rexdeploy W4A8, REx K=1", {"weights": "int4"}),
    ("rexdeploy W4A8, REx K=2", {"weights": "int4", "orders": 2}),
]
HEADERS = ["configuration", "top-1 acc", "drop (points)", "agreement", "KL", "SQNR dB",
           "int8 coverage"]


def run(args) -> int:
    from rich.console import Console
    from common import openvino_logits, print_table, slug, torch_logits

    import rexdeploy
    from rexdeploy.config import BuildConfig, QuantConfig

    console = Console(width=160)
    if not (os.path.isfile(MODEL) and os.path.isfile(TEST)):
        console.print(f"[red]{MODEL} or {TEST} is missing[/]: run "
                      ".venv/bin/python tools/train_fashion_mnist.py first")
        return 1
    with np.load(TEST) as z:
        x, y = z["input"], z["labels"]
    console.print(f"{len(x)} Fashion-MNIST test images, model {MODEL}")
    ref = torch_logits(MODEL, x)
    rows, float_onnx = [], None
    for label, overrides in CONFIGS:
        if args.only and not any(o in label for o in args.only):
            continue
        start = time.perf_counter()
        cfg = BuildConfig(quant=QuantConfig(input_ranges=(("input", 0.0, 1.0),), **overrides))
        model = _exported(args.out) if label == EXPORTED else MODEL
        art = rexdeploy.build(model, ["input:1x1x28x28"], output=os.path.join(
            args.out, "fashion_" + slug(label)), config=cfg, force=True, quiet=True)
        logits = openvino_logits(art.path, art.files, x)
        rows.append(_metrics(label, ref, logits, y) |
                    {"int8": art.manifest["summary"]["int8_coverage"],
                     "seconds": time.perf_counter() - start, "art": art})
        float_onnx = art.file("float_onnx")
        console.print(f"  {label}: accuracy {rows[-1]['acc']:.2%} (drop "
                      f"{rows[-1]['drop']:.2f} points), {rows[-1]['sqnr']:.1f} dB")
    headers = HEADERS
    if float_onnx and (getattr(args, "peers", False) or getattr(args, "latency", 0)
                       or getattr(args, "plot", None)):  # issue 6
        headers = HEADERS + _issue6(console, args, rows, str(float_onnx), x, y, ref)
    rows.append(_metrics("float torch (reference)", ref, ref, y) | {"int8": 0.0})
    print_table(console, f"Fashion-MNIST CNN, {len(x)} test images, OpenVINO CPU", headers,
                [_cells(r, len(headers)) for r in rows], args.markdown)
    default = next((r for r in rows if r["label"] == CONFIGS[0][0]), None)
    if default:
        ok = default["drop"] <= TARGET_DROP
        console.print(f"issue target, W8A8 accuracy drop <= {TARGET_DROP} point: "
                      f"{'[green]met' if ok else '[red]missed'}[/] ({default['drop']:.2f})")
    if getattr(args, "peers", False):
        import pareto

        for line in pareto.peer_verdicts("fashion", rows):
            console.print(line)
    return 0


def _exported(out: str) -> str:
    """The TorchScript model through torch.onnx.export (eval mode: BatchNorm folded)."""
    import warnings

    import torch

    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "fashion_cnn_exported.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.jit.load(MODEL).eval(), (torch.rand(1, 1, 28, 28),), path,
                          dynamo=False, opset_version=17, input_names=["input"])
    return path


def _issue6(console, args, rows, float_onnx, x, y, ref) -> list[str]:
    """The OpenVINO float row, the peers (NNCF calibrated on 300 training images, the
    data-free ones), BOPs and latency; returns the extra headers."""
    import pareto
    from common import openvino_logits
    from peers import random_images, run_peers

    files = {"onnx": os.path.basename(float_onnx)}
    logits = openvino_logits(os.path.dirname(float_onnx), files, x)
    rows.append(_metrics("OpenVINO float, f32", ref, logits, y) |
                {"int8": 0.0, "float": True, "dir": os.path.dirname(float_onnx), "files": files})
    if args.peers:
        import fetch_fashion_mnist

        train, _ = fetch_fashion_mnist.load("train")
        real = [{"input": (train[i][None, None] / 255.0).astype(np.float32)}
                for i in range(300)]
        rows += run_peers(console, "fashion", float_onnx, args.out, real=real,
                          real_what="training images", random=random_images((1, 1, 28, 28),
                                                                            0.0, 1.0),
                          evaluate=lambda d, f: openvino_logits(d, f, x),
                          metrics=lambda label, out: _metrics(label, ref, out, y),
                          only=args.only)
    pareto.finish(console, args, rows, float_onnx, {"input": x[:1]},
                  f"Fashion-MNIST CNN, {len(x)} test images", "acc")
    return pareto.EXTRA_HEADERS


def _metrics(label: str, ref: np.ndarray, test: np.ndarray, y: np.ndarray) -> dict:
    from rexdeploy.evaluate.fidelity import kl_divergence, sqnr_db, top1_accuracy

    acc_ref, acc = top1_accuracy(ref, y), top1_accuracy(test, y)
    return {"label": label, "acc": acc, "drop": 100 * (acc_ref - acc),
            "agree": float(np.mean(ref.argmax(1) == test.argmax(1))),
            "kl": kl_divergence(ref, test), "sqnr": sqnr_db(ref, test)}


def _cells(r: dict, n: int = len(HEADERS)) -> list[str]:
    import pareto

    if r.get("skipped"):
        return pareto.skipped_cells(r, n)
    sq = "inf" if not np.isfinite(r["sqnr"]) else f"{r['sqnr']:.1f}"
    out = [r["label"], f"{r['acc']:.2%}", f"{r['drop']:.2f}", f"{r['agree']:.4f}",
           f"{r['kl']:.5f}", sq, f"{r['int8']:.0%}"]
    return out + (pareto.extra_cells(r) if n > len(out) else [])
