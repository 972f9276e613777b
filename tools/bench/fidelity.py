#!/usr/bin/env python
"""Fidelity of data-free int8 EfficientNet-Lite0 against the float model on real photos.

    .venv/bin/python tools/bench/fidelity.py [--markdown docs/fidelity_table.md]
    .venv/bin/python tools/bench/fidelity.py --model fashion     # Fashion-MNIST CNN, 10k images
    .venv/bin/python tools/bench/fidelity.py --model all --peers --latency 0.5 --plot PNG
        # issue 6: the three models, the other tools beside rexdeploy (tools/bench/peers.py),
        # every artifact's OpenVINO latency and bit-operations, the Pareto plot

Every configuration is built by rexdeploy from the TorchScript file with no data, run by
OpenVINO on CPU (f32 pinned for the float parts, so the int8 effect is what is measured) on every
photo of .cache/photos (tools/fetch_photos.py), and compared with the float TorchScript model in
torch. The OpenVINO float model at the device default precision (bf16 here) is shown for scale.
Metrics: top-1 agreement (all photos, labelled ImageNet photos, the others), mean KL(float||q),
logits SQNR (pooled), top-1 accuracy on the labelled photos, runtime int8 coverage.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, HERE)

# NEAR_TIE: the top-1/top-2 probability gap below which a photo is a coin toss; `rexdeploy
# compare` reports the same near ties
from rexdeploy.evaluate.fidelity import NEAR_TIE as MARGIN  # noqa: E402
CONFIGS = [  # label, QuantConfig overrides
    ("rexdeploy W8A8 (default)", {}),
    # the default before --budget auto: order 1 everywhere, every activation int8
    ("rexdeploy W8A8, --budget off (order 1, every activation int8)", {"auto_budget": False}),
    ("rexdeploy W8A8, per-tensor depthwise inputs", {"activation_scales": "tensor"}),
    ("rexdeploy W8A8, no bias correction", {"bias_correction": False}),
    ("rexdeploy W8A8, ranges from Gaussian inputs", {"ranges": "synthetic"}),
    # --orders K gets the default budget over K (5 % for order K + 1 and float activations);
    # "--budget off": exactly K everywhere
    ("rexdeploy W8A8, REx K=2", {"orders": 2}),
    ("rexdeploy W8A8, REx K=2, --budget off", {"orders": 2, "auto_budget": False}),
    ("rexdeploy W8A8, REx K=2 gamma=0.25", {"orders": 2, "sparsity": 0.25}),
    ("rexdeploy W8A8, REx budget 1.1", {"budget": 1.1}),
    ("rexdeploy W8A8, REx budget 1.25", {"budget": 1.25}),
    # the budget channel by channel, as runtimes that compute only the kept channels pay it
    # (on OpenVINO CPU the compact form runs slower than dense: docs/benchmarks.md, REx latency)
    ("rexdeploy W8A8, REx budget 1.25, per channel (compact form)",
     {"budget": 1.25, "sparse_form": "compact"}),
    ("rexdeploy W8A8, REx ensemble M=2", {"ensemble": 2}),
    ("rexdeploy W8A8, REx ensemble M=2, balanced partition",
     {"ensemble": 2, "ensemble_partition": "balanced"}),
    ("rexdeploy W8A8, REx ensemble M=2, BOPs partition",
     {"ensemble": 2, "ensemble_partition": "bops"}),
    ("rexdeploy W8 weight-only", {"activations": "none"}),
    ("rexdeploy W6A8, REx K=2", {"weights": "int6", "orders": 2}),
    ("rexdeploy W4A8, REx K=1", {"weights": "int4"}),
    ("rexdeploy W4A8, REx K=1, --budget off", {"weights": "int4", "auto_budget": False}),
    ("rexdeploy W4A8, REx K=2", {"weights": "int4", "orders": 2}),
    ("rexdeploy W4A8, REx K=2, --budget off",
     {"weights": "int4", "orders": 2, "auto_budget": False}),
    ("rexdeploy W4A8, REx K=3", {"weights": "int4", "orders": 3}),
    ("rexdeploy W4A8, REx K=3, --budget off",
     {"weights": "int4", "orders": 3, "auto_budget": False}),
    ("rexdeploy W4A8, REx K=2 gamma=0.25", {"weights": "int4", "orders": 2, "sparsity": 0.25}),
    ("rexdeploy W4A8, REx budget 1.25", {"weights": "int4", "budget": 1.25}),
    ("rexdeploy W4A8, REx ensemble M=2", {"weights": "int4", "ensemble": 2}),
]
# issue 6, item 5: the budget steered by measured sensitivity (the default where the budget buys
# whole layers), the plain score beside it, and mixed precision (--only "budget" runs them all)
for _w, _raise in (("8", "activations"), ("4", "all")):
    for _b in (1.05, 1.1, 1.25):
        _base = {"weights": f"int{_w}", "budget": _b}
        if (_w, _b) not in (("8", 1.1), ("8", 1.25), ("4", 1.25)):  # those rows exist above
            CONFIGS.append((f"rexdeploy W{_w}A8, REx budget {_b}", _base))
        CONFIGS.append((f"rexdeploy W{_w}A8, REx budget {_b}, plain score",
                        _base | {"sensitivity": "off"}))
        CONFIGS.append((f"rexdeploy W{_w}A8, REx budget {_b}, mixed {_raise}",
                        _base | {"mixed_precision": _raise}))
CONFIGS += [("rexdeploy W8A8, REx budget 1.15, mixed activations",  # issue 2: fidelity within
             {"budget": 1.15, "mixed_precision": "activations"}),  # the <= 0.5x f32 latency
            ("rexdeploy W8A8, REx budget 1.5", {"budget": 1.5}),  # room for a float input
            ("rexdeploy W8A8, REx budget 1.5, mixed activations",
             {"budget": 1.5, "mixed_precision": "activations"})]
# the rows above count the budget in bit-operations, as they were measured (docs/algorithms.md 2.1);
# OpenVINO CPU builds now count it in the runtime's measured time model by default
# (rexdeploy/planning/cost_models.py, --budget-cost): the rows below
CONFIGS = [(label, q | {"budget_cost": "bops"} if "budget" in q else q) for label, q in CONFIGS]
CONFIGS += [(f"rexdeploy W8A8, REx budget {_b}, mixed activations, time budget",
             {"budget": _b, "mixed_precision": "activations", "budget_cost": "time"})
            for _b in (1.1, 1.15, 1.25, 1.5)]
# issue 2's build for both fidelity and latency: the one tools/bench/latency.py times
ISSUE2_BUILD = "rexdeploy W8A8, REx budget 1.15, mixed activations, time budget"
# MobileNetV2 (tools/mobilenet_v2.py; issue 22, item 5: the second depthwise CNN, so that no
# default is tuned to EfficientNet-Lite0 alone): the default, each of its data-free levers
# switched off, and the wider builds
MOBILENET_CONFIGS = [
    ("rexdeploy W8A8 (default)", {}),
    ("rexdeploy W8A8, --budget off (order 1, every activation int8)", {"auto_budget": False}),
    ("rexdeploy W8A8, input not aligned", {"align_input": False}),
    ("rexdeploy W8A8, per-tensor depthwise inputs", {"activation_scales": "tensor"}),
    ("rexdeploy W8A8, no depthwise equalization", {"equalize": "off"}),
    ("rexdeploy W8A8, per-tensor depthwise inputs, no equalization",
     {"activation_scales": "tensor", "equalize": "off"}),
    ("rexdeploy W8A8, no bias correction", {"bias_correction": False}),
    ("rexdeploy W8 weight-only", {"activations": "none"}),
    ("rexdeploy W8A8, REx K=2", {"orders": 2}),
    ("rexdeploy W8A8, REx budget 1.25, mixed activations",
     {"budget": 1.25, "mixed_precision": "activations"}),
    ("rexdeploy W8A8, REx K=2, --budget off", {"orders": 2, "auto_budget": False}),
    ("rexdeploy W4A8, REx K=1", {"weights": "int4"}),
    ("rexdeploy W4A8, REx K=2", {"weights": "int4", "orders": 2}),
    ("rexdeploy W4A8, REx K=2, --budget off",
     {"weights": "int4", "orders": 2, "auto_budget": False}),
    ("rexdeploy W4A8, REx K=2, per-tensor depthwise inputs, no equalization",
     {"weights": "int4", "orders": 2, "activation_scales": "tensor", "equalize": "off"}),
]


@dataclass(frozen=True)
class _Cnn:
    """An ImageNet CNN of the benchmark: its TorchScript file (made on demand), preprocessing,
    the normalised input's bounds (the data-free build's --input-range), and its rows."""

    key: str
    title: str
    path: Callable[[], str]
    preprocess: str
    input_range: tuple[float, float]
    configs: list


def _effnet_spec() -> _Cnn:
    import examples

    return _Cnn("effnet", "EfficientNet-Lite0", examples.ensure_example_model,
                examples.EFFNET_PREPROCESS, (-1.0, 1.0), CONFIGS)


def _mobilenet_spec() -> _Cnn:
    import fetch_second
    import mobilenet_v2

    return _Cnn("mobilenetv2", "MobileNetV2", fetch_second.mobilenet_v2_path,
                mobilenet_v2.PREPROCESS, mobilenet_v2.INPUT_RANGE, MOBILENET_CONFIGS)


@dataclass
class _Photos:
    """The photos, the float TorchScript reference on them and on their ten crops, and what the
    metrics split them by (labelled, decisive, the labels)."""

    names: list
    x: np.ndarray
    labels: dict
    ref: np.ndarray
    labelled: np.ndarray
    decisive: np.ndarray
    y: np.ndarray
    views: np.ndarray
    ref_views: np.ndarray

    def metrics(self, label: str, logits: np.ndarray, view_logits: np.ndarray) -> dict:
        """A row's metrics: agreement, KL, SQNR and accuracy on the photos, 10-crop agreement."""
        return (_metrics(label, self.ref, logits, self.labelled, self.y, self.decisive) |
                _ten_crop(self.ref_views, view_logits))


def main() -> int:
    """The fashion and MiniLM tables (--model), then EfficientNet-Lite0's; the exit code."""
    args = _parse_args()
    if args.model in ("fashion", "all"):
        import fashion_fidelity

        markdown = args.markdown
        if markdown and args.model == "all":
            base, ext = os.path.splitext(markdown)
            args.markdown = f"{base}_fashion{ext}"
        rc = fashion_fidelity.run(args)
        args.markdown = markdown
        if args.model == "fashion" or rc:
            return _plot(args, rc)
    if args.model in ("minilm", "all"):
        _minilm(args)
        if args.model == "minilm":
            return _plot(args, 0)
    if args.model == "mobilenetv2":
        return _cnn(args, _mobilenet_spec())
    if args.model == "paraphrase":
        import fidelity_minilm as fm

        _minilm(args, fm.paraphrase_encoder())
        return _plot(args, 0)
    return _cnn(args, _effnet_spec())


def _parse_args() -> argparse.Namespace:
    """The command line (see the module's docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench"))
    ap.add_argument("--markdown", help="also write the table as markdown to this file")
    ap.add_argument("--only", nargs="*", help="labels (substring) of configurations to run")
    ap.add_argument("--model", choices=("effnet", "minilm", "fashion", "mobilenetv2", "paraphrase",
                                           "all"),
                    default="effnet",
                    help="effnet: EfficientNet-Lite0 on the photos (default); mobilenetv2: "
                         "MobileNetV2 (tools/fetch_second.py) on the same photos; minilm: "
                         "all-MiniLM-L6-v2 on the fortunes quotes (fidelity_minilm.py); "
                         "paraphrase: paraphrase-MiniLM-L3-v2 in ONNX (tools/fetch_second.py) on "
                         "the same quotes; fashion: "
                         "the Fashion-MNIST CNN (tools/train_fashion_mnist.py) on its 10k test "
                         "images; all: the three (fashion, minilm, effnet)")
    ap.add_argument("--limit", type=int, help="minilm: use the first N quotes only")
    # issue 6: the peers in the same run, every artifact's latency, the Pareto plot
    ap.add_argument("--peers", action="store_true",
                    help="also run the other tools (NNCF, ModelOpt, ONNX Runtime, torch dynamic; "
                         "tools/bench/peers.py) on the same model; one not installed is skipped "
                         "and said so (install: pip install --no-deps -r "
                         "tools/bench/requirements-peers.txt)")
    ap.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                    help="time every artifact on OpenVINO CPU, interleaved, SECONDS per artifact "
                         "per round (3 rounds); 0 (default): no latency column")
    ap.add_argument("--plot", metavar="PNG", help="write the Pareto plot (fidelity vs "
                    "bit-operations and vs latency, every model that ran) to this PNG")
    return ap.parse_args()


def _cnn(args, spec: _Cnn) -> int:
    """An ImageNet CNN on the photos: every configuration's row, the OpenVINO float and torch
    reference rows, the peers and the Pareto columns if asked, the table, the verdicts."""
    from common import print_table
    from rich.console import Console

    console = Console(width=160)
    model_path = spec.path()
    photos = _load_photos(console, model_path, spec.preprocess)
    rows, float_onnx = _rexdeploy_rows(console, args, spec, model_path, photos)
    if float_onnx:
        rows += _openvino_float_rows(float_onnx, photos)
    rows.append(photos.metrics("float torch (reference)", photos.ref, photos.ref_views) |
                {"int8": 0.0, "build_s": 0, "bops": float("nan")})

    headers = ["configuration", "agree all", "agree labelled", "agree other",
               f"agree decisive (margin >= {MARGIN})",
               f"agree 10-crop ({len(photos.views)} views; 95% interval)", "KL", "SQNR dB",
               "top-1 acc (labelled)", "int8 coverage", "BOPs x"]
    if float_onnx and (args.peers or args.latency or args.plot):  # issue 6
        headers += _peers_and_pareto(console, args, spec, rows, float_onnx, photos)
    print_table(console, f"{spec.title}, {len(photos.names)} real photos, OpenVINO CPU",
                headers, [_cells(r, len(headers)) for r in rows], args.markdown)
    if spec.key == "effnet":
        _verdicts(console, args, rows, len(photos.views))
    else:
        _lever_verdicts(console, rows)
    return _plot(args, 0)


def _load_photos(console, model_path: str, preprocess: str) -> _Photos:
    """The photos (.cache/photos) and their ten crops, with the float TorchScript logits on both;
    says how many photos are near ties."""
    import examples
    from common import torch_logits

    from rexdeploy.evaluate.fidelity import near_ties

    names, x, labels = examples.load_photos(preprocess)
    console.print(f"{len(names)} photos ({len(labels)} labelled), model {model_path}")
    ref = torch_logits(model_path, x)
    labelled = np.array([n in labels for n in names])
    decisive = ~near_ties(ref, MARGIN)
    console.print(f"{(~decisive).sum()} photos have a float top-1/top-2 probability margin below "
                  f"{MARGIN}: any perturbation may flip them (see 'agree decisive')")
    y = np.array([labels.get(n, -1) for n in names])
    views = examples.load_photo_views(preprocess)  # 10 crops per photo: the agreement's precision
    ref_views = torch_logits(model_path, views)
    return _Photos(names, x, labels, ref, labelled, decisive, y, views, ref_views)


def _rexdeploy_rows(console, args, spec: _Cnn, model_path: str,
                    photos: _Photos) -> tuple[list, str | None]:
    """Build every configuration of the spec (those --only names), run it on the photos and their
    crops; the rows, and the float ONNX of the last build (None if none ran)."""
    from common import slug

    import rexdeploy
    from rexdeploy.config import BuildConfig, QuantConfig

    rows = []
    float_onnx = None
    prefix = "" if spec.key == "effnet" else spec.key + "_"
    for label, overrides in spec.configs:
        if args.only and not any(o in label for o in args.only):
            continue
        start = time.perf_counter()
        cfg = BuildConfig(quant=QuantConfig(input_ranges=(("input", *spec.input_range),),
                                            **overrides))
        art = rexdeploy.build(model_path, ["input:1x3x224x224"], output=os.path.join(
            args.out, prefix + slug(label)), config=cfg, force=True, quiet=True,
            preprocess=spec.preprocess)
        build_s = time.perf_counter() - start
        float_onnx = art.file("float_onnx")
        logits = _artifact_logits(art, photos.x)
        rows.append(photos.metrics(label, logits, _artifact_logits(art, photos.views)) |
                    {"int8": art.manifest["summary"]["int8_coverage"], "build_s": build_s,
                     "bops": art.manifest["summary"].get("bops_ratio", 1.0), "art": art})
        console.print(f"  {label}: {rows[-1]['sqnr']:.1f} dB, agreement {rows[-1]['agree']:.3f}"
                      f", 10-crop {rows[-1]['agree10']:.3f}")
    return rows, float_onnx


def _openvino_float_rows(float_onnx: str, photos: _Photos) -> list[dict]:
    """The float ONNX on OpenVINO, f32 pinned and at the device default precision: for scale."""
    from common import openvino_logits

    rows = []
    files = {"onnx": os.path.basename(float_onnx)}
    for label, precision in (("OpenVINO float, f32", "f32"),
                             ("OpenVINO float, device default (bf16)", "default")):
        logits = openvino_logits(os.path.dirname(float_onnx), files, photos.x, precision)
        rows.append(photos.metrics(label, logits,
                                   openvino_logits(os.path.dirname(float_onnx), files,
                                                   photos.views, precision)) |
                    {"int8": 0.0, "build_s": 0, "bops": float("nan"), "float": True,
                     "dir": os.path.dirname(float_onnx), "files": files,
                     "precision": precision})
    return rows


def _peers_and_pareto(console, args, spec: _Cnn, rows: list, float_onnx: str,
                      photos: _Photos) -> list[str]:
    """Issue 6: the peers' rows (--peers) inserted before the torch reference row, and the
    latency and bit-operation columns of every row (tools/bench/pareto.py); the extra headers."""
    import pareto
    from common import openvino_logits
    from peers import random_images, run_peers

    x, views = photos.x, photos.views
    if args.peers:
        rows[-1:-1] = run_peers(
            console, spec.key, float_onnx, args.out, real_what="photos",
            real=[{"input": x[i:i + 1]} for i in range(len(x))],
            random=random_images((1, 3, 224, 224), *spec.input_range),
            # the photos, then their ten crops: the peers get the 10-crop column too
            evaluate=lambda d, files: openvino_logits(d, files, np.concatenate([x, views])),
            metrics=lambda label, out: photos.metrics(label, out[:len(x)], out[len(x):]) |
            {"int8": float("nan"), "bops": float("nan")}, only=args.only)
    pareto.finish(console, args, rows, float_onnx, {"input": x[:1]},
                  f"{spec.title}, {len(photos.names)} photos", "sqnr")
    return pareto.EXTRA_HEADERS


def _verdicts(console, args, rows: list, n_views: int) -> None:
    """Issue 2's target for the default build and the one latency.py times, issue 3's REx
    targets, and the peers' verdicts (--peers)."""
    by_label = {r["label"]: r for r in rows}
    for label in (rows[0]["label"], ISSUE2_BUILD):  # the default, and the build latency.py times
        row = by_label.get(label)
        if row is None:
            continue
        ok = row["agree"] >= 0.97 and row["sqnr"] >= 18.0
        lo, hi = row["agree10_ci"]
        console.print(f"issue target, W8A8 agreement >= 0.97 and SQNR >= 18 dB, {label}: "
                      f"{'[green]met' if ok else '[red]missed'}[/] ({row['agree']:.3f}, "
                      f"{row['sqnr']:.1f} dB); on the {n_views} ten-crop views "
                      f"{row['agree10']:.3f} (95% interval {lo:.3f}-{hi:.3f})")
    _rex_verdicts(console, by_label)
    if args.peers:
        import pareto

        for line in pareto.peer_verdicts("effnet", rows):
            console.print(line)


def _lever_verdicts(console, rows: list) -> None:
    """Issue 22: each default lever measured against the build without it (on the second CNN,
    the default no worse than the build without the lever)."""
    by = {r["label"]: r for r in rows}
    default = by.get("rexdeploy W8A8 (default)")
    if default is None:
        return
    for label in (r["label"] for r in rows):
        if not label.startswith("rexdeploy W8A8, ") or not any(
                w in label for w in ("per-tensor depthwise", "no depthwise equalization")):
            continue
        off = by[label]
        ok = default["sqnr"] >= off["sqnr"] - 0.1
        console.print(f"default {default['sqnr']:.1f} dB vs {label[len('rexdeploy W8A8, '):]} "
                      f"{off['sqnr']:.1f} dB: {'[green]no worse' if ok else '[red]worse'}[/]")


def _plot(args, rc: int) -> int:
    if getattr(args, "plot", None):
        import pareto

        if pareto.PANELS:
            print(f"Pareto plot: {pareto.plot(args.plot)}")
    return rc


def _rex_verdicts(console, by: dict) -> None:
    """Issue 3's fidelity targets, for the rows that ran."""
    def sq(label):
        row = by.get(f"rexdeploy {label}")
        return None if row is None else row["sqnr"]

    def exact(label):  # exactly the orders asked: the row without the default budget
        off = sq(f"{label}, --budget off")
        return sq(label) if off is None else off

    def say(text, ok):
        console.print(f"{text}: {'[green]met' if ok else '[red]missed'}[/]")

    k2 = exact("W8A8, REx K=2")
    if k2 is not None:
        say(f"W8A8 K=2 SQNR {k2:.1f} dB >= 25", k2 >= 25)
    w4k3 = exact("W4A8, REx K=3")
    w8k1 = sq("W8A8, --budget off (order 1, every activation int8)") or sq("W8A8 (default)")
    if w4k3 is not None and w8k1 is not None:
        say(f"W4A8 K=3 {w4k3:.1f} dB >= 25 and >= W8A8 K=1 ({w8k1:.1f} dB)",
            w4k3 >= 25 and w4k3 >= w8k1)
    w4k2 = sq("W4A8, REx K=2")
    if w4k2 is not None:  # issue 22, as a user builds it (the default budget over K=2)
        say(f"W4A8 K=2 {w4k2:.1f} dB >= 25", w4k2 >= 25)
    for bits, k1 in (("W8A8", w8k1), ("W4A8", exact("W4A8, REx K=1"))):
        dense, budget = exact(f"{bits}, REx K=2"), sq(f"{bits}, REx budget 1.25")
        if None not in (k1, dense, budget) and dense > k1:
            kept = (budget - k1) / (dense - k1)
            say(f"{bits} budget 1.25 keeps {kept:.0%} of dense K=2's gain "
                f"({budget - k1:+.1f} of {dense - k1:+.1f} dB), target >= 80%", kept >= 0.8)
        ens = sq(f"{bits}, REx ensemble M=2")
        if None not in (k1, dense, ens):
            say(f"{bits} ensemble M=2 {ens:.1f} dB between RTN {k1:.1f} and exact {dense:.1f}",
                k1 < ens <= dense + 0.5)


def _minilm(args, enc=None) -> None:
    import fidelity_minilm as fm
    from rich.console import Console

    console = Console(width=160)
    enc = enc or fm.minilm_encoder()
    rows = fm.run(args, console, enc)
    console.print(fm.table(rows, enc.title))
    md = fm.markdown(rows)
    if args.markdown:
        base, ext = os.path.splitext(args.markdown)
        path = args.markdown if args.model == enc.key else f"{base}_{enc.key}{ext}"
        with open(path, "w") as f:
            f.write("\n".join(md) + "\n")
    print("\n".join(md))
    for line in fm.verdicts(rows, enc):
        console.print(line)


def _artifact_logits(art, x: np.ndarray) -> np.ndarray:
    """Logits of any artifact (ensembles included) on its own backend, f32 pinned."""
    from rexdeploy.api import artifact_runner

    with artifact_runner(art) as r:
        outs = [next(iter(r.infer({"input": x[i:i + 1]}).values())) for i in range(len(x))]
    return np.concatenate(outs)


def _metrics(label, ref, test, labelled, y, decisive) -> dict:
    from rexdeploy.evaluate.fidelity import kl_divergence, sqnr_db

    agree = ref.argmax(1) == test.argmax(1)
    return {"label": label, "agree": agree.mean(), "agree_lab": agree[labelled].mean(),
            "agree_other": agree[~labelled].mean() if (~labelled).any() else float("nan"),
            "agree_decisive": agree[decisive].mean(),
            "kl": kl_divergence(ref, test), "sqnr": sqnr_db(ref, test),
            "acc": (test.argmax(1)[labelled] == y[labelled]).mean()}


def _ten_crop(ref: np.ndarray, test: np.ndarray) -> dict:
    from rexdeploy.evaluate.fidelity import agreement_interval

    rate = float((ref.argmax(1) == test.argmax(1)).mean())
    return {"agree10": rate, "agree10_ci": agreement_interval(rate, len(ref))}


def _cells(r: dict, n: int = 11) -> list[str]:
    import pareto

    if r.get("skipped"):
        return pareto.skipped_cells(r, n)
    sq = "inf" if not np.isfinite(r["sqnr"]) else f"{r['sqnr']:.1f}"
    cells = [r["label"], f"{r['agree']:.3f}", f"{r['agree_lab']:.3f}", f"{r['agree_other']:.3f}",
             f"{r['agree_decisive']:.3f}",
             "{:.3f} ({:.3f}-{:.3f})".format(r["agree10"], *r["agree10_ci"])
             if "agree10" in r else "",
             f"{r['kl']:.4f}", sq, f"{r['acc']:.2f}",
             f"{r['int8']:.0%}" if np.isfinite(r["int8"]) else "",
             "" if not np.isfinite(r.get("bops", np.nan)) else f"{r['bops']:.2f}"]
    return cells + (pareto.extra_cells(r) if n > len(cells) else [])


if __name__ == "__main__":
    sys.exit(main())
