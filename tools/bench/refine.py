#!/usr/bin/env python
"""Calibration-based refinements side by side: RTN, REx K=2, FlexRound (synthetic / real data),
ERQ, on EfficientNet-Lite0 W4A8 (real photos) and all-MiniLM-L6-v2 W4A8 (fortunes quotes).

    nice .venv/bin/python tools/bench/refine.py [--model effnet|minilm|all] [--markdown FILE]

Every row is one `rexdeploy.build` (OpenVINO target), timed whole and per stage (the
`calibration data` and `refine` stages from the manifest), wall and process CPU time (all
threads; less sensitive to other work on the machine than wall time), with the load average
before and after; then run by OpenVINO on CPU with f32 pinned. Real calibration data and
evaluation data never overlap: EfficientNet calibrates on every third photo of .cache/photos and
is evaluated on the others; MiniLM calibrates on quotes of .cache/fortunes/tokens.npz that the
evaluation does not use. EfficientNet is built from the eager module (the BatchNorm-matched
synthetic images need its BatchNorm layers).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, HERE)
# every row without the default budget (--budget auto), which refined builds never get: the
# refinements are judged against plain rounding at the same orders
NO_BUDGET = {"auto_budget": False}


def _rows(real: str, n: int, steps: int, smooth_off_row: bool = False):  # n: synthetic samples
    """label, QuantConfig overrides ({real} is the real calibration data). "sequential": each
    layer refined on the quantized model's inputs (--refine-inputs quantized, the default);
    "float inputs": on the float model's (--refine-inputs float)."""
    syn = f"synthetic:{n}"
    seq, flt = {"refine_inputs": "quantized"}, {"refine_inputs": "float"}
    flex = {"refine": "flexround", "refine_iters": steps}
    rows = [
        ("RTN (data-free)", {}),
        ("REx K=2 (data-free)", {"orders": 2}),
        ("RTN, activation ranges from real data", {"calib": real}),
        (f"FlexRound, synthetic ({n}), sequential", {**flex, "calib": syn, **seq}),
        (f"FlexRound, synthetic ({n}), float inputs", {**flex, "calib": syn, **flt}),
        ("FlexRound, real data, sequential", {**flex, "calib": real, **seq}),
        ("FlexRound, real data, float inputs", {**flex, "calib": real, **flt}),
        (f"ERQ, synthetic ({n}), sequential", {"refine": "erq", "calib": syn, **seq}),
        ("ERQ, real data, sequential", {"refine": "erq", "calib": real, **seq}),
        ("ERQ, real data, float inputs", {"refine": "erq", "calib": real, **flt}),
    ]
    if smooth_off_row:  # MiniLM: what keeping the scale migration under --refine brings
        rows.append(("FlexRound, real data, sequential, --smooth off",
                     {**flex, "calib": real, **seq, "smooth": "off"}))
    return rows


def effnet(args, console) -> list[str]:
    import examples
    import torch
    from common import slug
    from fidelity import _artifact_logits, _metrics

    import rexdeploy
    from rexdeploy.config import BuildConfig, QuantConfig

    torch.set_num_threads(args.threads)
    model = examples.load_effnet_eager()
    names, x, labels = examples.load_photos()
    calib_idx = np.arange(0, len(names), 3)
    eval_idx = np.setdiff1d(np.arange(len(names)), calib_idx)
    tmp = tempfile.mkdtemp(prefix="refine_photos_")
    photo_dir = examples.photo_dir()
    for i in calib_idx:
        shutil.copy(os.path.join(photo_dir, names[i]), tmp)
    xe = x[eval_idx]
    with torch.no_grad():
        ref = model(torch.from_numpy(xe)).numpy()
    names_e = [names[i] for i in eval_idx]
    labelled = np.array([n in labels for n in names_e])
    y = np.array([labels.get(n, -1) for n in names_e])
    decisive = np.ones(len(names_e), bool)
    console.print(f"EfficientNet-Lite0 W4A8: calibrate on {len(calib_idx)} photos, evaluate on "
                  f"{len(eval_idx)}")
    def build(label, kw):
        cfg = BuildConfig(quant=QuantConfig(weights="int4", zeroq_steps=args.zeroq_steps,
                                            input_ranges=(("input", -1.0, 1.0),),
                                            **(NO_BUDGET | kw)))
        return rexdeploy.build(model, ["input:1x3x224x224"], config=cfg, force=True,
                               quiet=args.quiet,
                               output=os.path.join(args.out, "effnet_" + slug(label)),
                               preprocess=examples.EFFNET_PREPROCESS)

    def score(label, art):
        r = _metrics(label, ref, _artifact_logits(art, xe), labelled, y, decisive)
        return [f"{r['agree']:.3f}", f"{r['kl']:.4f}", f"{r['sqnr']:.2f}", f"{r['acc']:.2f}"]

    out = _run(args, console, _rows(tmp, args.n_synthetic, args.iters), build, score)
    shutil.rmtree(tmp)
    head = ["configuration", "top-1 agree", "KL", "logits SQNR dB", "top-1 acc (labelled)"]
    return _table(head, out)


def minilm(args, console) -> list[str]:
    import minilm as mm
    import torch
    from common import slug
    from fidelity_minilm import _metrics, _openvino_embeddings, _torch_embeddings

    import rexdeploy
    from rexdeploy.config import BuildConfig, QuantConfig

    torch.set_num_threads(args.threads)
    model_path, _, _ = mm.export_minilm()
    with np.load(os.path.join(ROOT, ".cache", "fortunes", "tokens.npz")) as z:
        ids, mask, labels = z["input_ids"], z["attention_mask"], z["labels"]
    calib_idx = np.arange(0, len(ids), 4)[:args.n]
    eval_idx = np.setdiff1d(np.arange(len(ids)), np.arange(0, len(ids), 4))[:args.limit]
    tmp = tempfile.mkdtemp(prefix="refine_text_")
    calib = os.path.join(tmp, "calib.npz")
    np.savez(calib, input_ids=ids[calib_idx], attention_mask=mask[calib_idx])
    ide, maske, lab = ids[eval_idx], mask[eval_idx], labels[eval_idx]
    ref = _torch_embeddings(str(model_path), ide, maske)
    console.print(f"MiniLM W4A8: calibrate on {len(calib_idx)} quotes, evaluate on "
                  f"{len(eval_idx)}")
    def build(label, kw):
        cfg = BuildConfig(quant=QuantConfig(weights="int4", **(NO_BUDGET | kw)))
        return rexdeploy.build(str(model_path), ["input_ids:1x128:int64",
                                                 "attention_mask:1x128:int64"], config=cfg,
                               force=True, quiet=args.quiet,
                               output=os.path.join(args.out, "minilm_" + slug(label)))

    def score(label, art):
        r = _metrics(label, ref, _openvino_embeddings(art.path, art.files, ide, maske), lab)
        return [f"{r['cos_mean']:.5f}", f"{r['cos_min']:.5f}", f"{r['sqnr']:.2f}",
                f"{r['topic']:.3f}"]

    out = _run(args, console, _rows(calib, args.n_synthetic, args.iters, True), build,
               score)
    shutil.rmtree(tmp)
    head = ["configuration", "cosine mean", "cosine min", "SQNR dB", "topic 1-NN acc"]
    return _table(head, out)


def _run(args, console, rows, build, score) -> list[str]:
    """One table line per row (label, QuantConfig overrides) that --only keeps: build(label,
    overrides) -> artifact, timed whole (wall and process CPU time); score(label, artifact) ->
    metric cells. The load average (1 min) is read before and after each build."""
    out = []
    for label, kw in rows:
        if args.only and not any(o in label for o in args.only):
            continue
        load0 = os.getloadavg()[0]
        start, cpu = time.perf_counter(), time.process_time()
        art = build(label, kw)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        load = f"{load0:.1f}-{os.getloadavg()[0]:.1f}"
        out.append(_line(label, art, wall, cpu, load, score(label, art)))
        console.print("  " + out[-1])
    return out


def _line(label: str, art, wall: float, cpu: float, load: str, metrics: list[str]) -> str:
    seconds = art.manifest.get("stage_seconds", {})
    cpu_s = art.manifest.get("stage_cpu_seconds", {})
    refine = [r["refine"] for r in art.report()["layers"] if r.get("refine")]
    improved = f"{sum(r['kept'] for r in refine)}/{len(refine)}" if refine else "-"
    gain = "-"
    if refine:
        before = np.mean([r["error_before"] for r in refine])
        after = np.mean([r["error_after"] for r in refine])
        gain = f"{before:.2e} -> {after:.2e}"

    def stage(name):
        return f"{seconds.get(name, 0):.0f} ({cpu_s.get(name, 0):.0f})"

    cells = [label, *metrics, improved, gain, stage("calibration data"), stage("refine"),
             f"{wall:.0f} ({cpu:.0f})", load]
    return "| " + " | ".join(cells) + " |"


def _table(head: list[str], lines: list[str]) -> list[str]:
    head = head + ["layers improved", "mean layer error before -> after",
                   "calib data s (CPU s)", "refine s (CPU s)", "build s (CPU s)", "load avg"]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("effnet", "minilm", "all"), default="all")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench_refine"))
    ap.add_argument("--n", type=int, default=16, help="MiniLM: real calibration quotes")
    ap.add_argument("--n-synthetic", type=int, default=8, help="synthetic calibration samples")
    ap.add_argument("--iters", type=int, default=100, help="FlexRound steps per layer and order")
    ap.add_argument("--zeroq-steps", type=int, default=30,
                    help="optimisation steps of the BatchNorm-matched synthetic images")
    ap.add_argument("--limit", type=int, default=200, help="MiniLM: evaluation quotes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="labels (substring) of rows to run")
    ap.add_argument("--quiet", action="store_true", help="no build stage lines")
    ap.add_argument("--markdown", help="also write the tables to this file")
    args = ap.parse_args()
    from rich.console import Console

    import torch

    console = Console(width=200)
    md = [f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average at start {os.getloadavg()[0]:.1f}; torch {torch.__version__}, "
          f"{args.threads} torch threads; synthetic n={args.n_synthetic}, real n: EfficientNet "
          f"every third photo, MiniLM {args.n} quotes; FlexRound steps={args.iters}, "
          f"BN-matching steps={args.zeroq_steps}", ""]
    if args.model in ("effnet", "all"):
        md += ["EfficientNet-Lite0 W4A8", ""] + effnet(args, console) + [""]
    if args.model in ("minilm", "all"):
        md += ["all-MiniLM-L6-v2 W4A8", ""] + minilm(args, console) + [""]
    md.append(f"load average at end {os.getloadavg()[0]:.1f}")
    print("\n".join(md))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
