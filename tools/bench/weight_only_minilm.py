#!/usr/bin/env python
"""W4 weight-only on MiniLM (fortunes), side by side in one run (issue 7).

    .venv/bin/python tools/bench/weight_only_minilm.py [--limit N] [--markdown FILE]

Rows: rexdeploy uniform W4 RTN (per channel, block 128), PowerQuant (--operator power), REx K=2,
PowerQuant + REx K=2, HQQ (the `hqq` package, torch fake-quant: it has no OpenVINO export) and
NNCF `compress_weights` INT4_SYM (per channel and group 128), each against the float TorchScript
model on the tokenized quotes of .cache/fortunes/tokens.npz. A peer whose package does not
import is skipped with a line saying so (they are benchmark-only: pip install --no-deps
nncf==3.4.0 hqq==0.2.8.post1 termcolor).

Fidelity is measured on OpenVINO CPU with f32 pinned and the compressed FullyConnected's
dynamic activation quantization off (DYNAMIC_QUANTIZATION_GROUP_SIZE=0, stored in each IR), so
the numbers are the weights' own error. Latency: batch 1, sync, median over interleaved rounds,
(a) f32 with dynamic quantization off, (b) the CPU's defaults (bf16 here, dynamic quantization
group 32); the float model's latency in the same run is the reference.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for p in (HERE, os.path.join(ROOT, "tools")):
    if p not in sys.path:
        sys.path.insert(0, p)

W4 = {"weights": "int4", "activations": "none", "dynamic_quantization": 0}
CONFIGS = [  # label, QuantConfig overrides
    ("rexdeploy W4 uniform RTN, per channel", {}),
    ("rexdeploy W4 uniform RTN, block 128", {"granularity": "block", "block_size": 128}),
    ("rexdeploy W4 uniform RTN, block 128, dyn-quant 32 (runtime default)",
     {"granularity": "block", "block_size": 128, "dynamic_quantization": None}),
    ("rexdeploy W4 PowerQuant, per channel", {"operator": "power"}),
    ("rexdeploy W4 PowerQuant, block 128", {"operator": "power", "granularity": "block",
                                            "block_size": 128}),
    ("rexdeploy W4 REx K=2, per channel", {"orders": 2}),
    ("rexdeploy W4 PowerQuant + REx K=2, per channel", {"operator": "power", "orders": 2}),
]
PEERS = [("NNCF INT4_SYM, per channel", -1), ("NNCF INT4_SYM, group 128", 128)]
HQQ = [("HQQ W4 (torch fake-quant), per channel", None), ("HQQ W4 (torch fake-quant), group 128",
                                                         128)]
HEADERS = ["configuration", "cosine mean", "cosine min", "SQNR dB", "topic 1-NN acc",
           "runtime (Linear layers)", "latency f32, dyn-quant off (ms)",
           "latency default bf16, dyn-quant 32 (ms)", "build s"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--limit", type=int, help="first N quotes only (quick check)")
    ap.add_argument("--rounds", type=int, default=5, help="latency rounds (interleaved)")
    ap.add_argument("--iters", type=int, default=60, help="timed inferences per round")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench_weight_only"))
    ap.add_argument("--markdown", help="also write the table here")
    args = ap.parse_args()

    from rich.console import Console

    import fidelity_minilm as fm
    import minilm
    from common import print_table, slug

    import rexdeploy
    from rexdeploy.config import BuildConfig, QuantConfig

    console = Console()
    model_path, _, _ = minilm.export_minilm()
    with np.load(os.path.join(ROOT, ".cache", "fortunes", "tokens.npz")) as z:
        ids, mask, labels = z["input_ids"], z["attention_mask"], z["labels"]
    if args.limit:
        ids, mask, labels = ids[:args.limit], mask[:args.limit], labels[:args.limit]
    ref = fm._torch_embeddings(str(model_path), ids, mask)
    rows, timed = [], {}
    float_onnx = None
    for label, overrides in CONFIGS:
        start = time.perf_counter()
        art = rexdeploy.build(str(model_path), fm.INPUTS, force=True, quiet=True,
                              config=BuildConfig(quant=QuantConfig(**(W4 | overrides))),
                              output=os.path.join(args.out, slug(label)))
        build_s = time.perf_counter() - start
        float_onnx = art.file("float_onnx")
        emb = fm._openvino_embeddings(art.path, art.files, ids, mask)
        row = fm._metrics(label, ref, emb, labels) | fm._runtime(art) | {"build_s": build_s}
        dq = art.report()["backend"].get("dynamic_quantization_group_size")
        row["runtime"] += f" (dyn-quant {dq})"
        rows.append(row)
        timed[label] = art.file("ir_xml")
        console.print(f"  {label}: cosine mean {row['cos_mean']:.5f} [build {build_s:.0f} s]")
    float_xml = _float_ir(float_onnx, args.out)
    emb = fm._openvino_embeddings(os.path.dirname(float_xml),
                                  {"ir_xml": os.path.basename(float_xml)}, ids, mask)
    rows.insert(0, fm._metrics("OpenVINO float, f32", ref, emb, labels) |
                {"runtime": "f32", "build_s": 0.0})
    timed["OpenVINO float, f32"] = float_xml
    rows += _nncf_rows(float_xml, args.out, ref, ids, mask, labels, timed, console, fm)
    rows += _hqq_rows(ref, ids, mask, labels, console, fm)
    console.print(f"latency: {args.rounds} interleaved rounds x {args.iters} inferences ...")
    lat = _latencies(timed, ids, mask, args.rounds, args.iters)
    cells = []
    for r in rows:
        la, lb = lat.get(r["label"], (None, None))
        cells.append([r["label"], f"{r['cos_mean']:.5f}", f"{r['cos_min']:.5f}",
                      f"{r['sqnr']:.1f}", f"{r['topic']:.3f}", r["runtime"],
                      "-" if la is None else f"{la:.2f}", "-" if lb is None else f"{lb:.2f}",
                      f"{r['build_s']:.0f}"])
    print_table(console, f"all-MiniLM-L6-v2 W4 weight-only, {len(ids)} fortunes quotes (L=128)",
                HEADERS, cells, args.markdown)
    print(_versions())
    return 0


def _float_ir(float_onnx: str, out: str) -> str:
    """The float model as an f32 IR (what NNCF compresses and the latency reference)."""
    import openvino as ov

    from backends.openvino import telemetry_off

    xml = os.path.join(out, "float", "model.xml")
    os.makedirs(os.path.dirname(xml), exist_ok=True)
    telemetry_off()
    ov.save_model(ov.convert_model(float_onnx), xml, compress_to_fp16=False)
    return xml


def _nncf_rows(float_xml, out, ref, ids, mask, labels, timed, console, fm) -> list[dict]:
    try:
        import nncf
    except Exception as exc:  # noqa: BLE001 - any import failure means: skip this peer
        console.print(f"  NNCF skipped: does not import ({type(exc).__name__}: {exc})")
        return []
    import openvino as ov

    from backends.openvino import shared_core

    rows = []
    for label, group in PEERS:
        start = time.perf_counter()
        model = shared_core().read_model(float_xml)
        compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_SYM,
                                           ratio=1.0, group_size=group)
        compressed.set_rt_info("0", ["runtime_options", "DYNAMIC_QUANTIZATION_GROUP_SIZE"])
        xml = os.path.join(out, "nncf_" + str(group).replace("-", "m"), "model.xml")
        os.makedirs(os.path.dirname(xml), exist_ok=True)
        ov.save_model(compressed, xml, compress_to_fp16=False)
        build_s = time.perf_counter() - start
        emb = fm._openvino_embeddings(os.path.dirname(xml), {"ir_xml": "model.xml"}, ids, mask)
        rows.append(fm._metrics(label, ref, emb, labels) |
                    {"runtime": _nncf_runtime(xml), "build_s": build_s})
        timed[label] = xml
        console.print(f"  {label}: cosine mean {rows[-1]['cos_mean']:.5f}")
    return rows


def _nncf_runtime(xml: str) -> str:
    from collections import Counter

    from backends.openvino import runtime_layers, shared_core

    compiled = shared_core().compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    kinds = Counter(f"{l.precision} {l.type}" for l in runtime_layers(compiled))
    return ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))


def _hqq_rows(ref, ids, mask, labels, console, fm) -> list[dict]:
    """HQQ's optimised zero-point int4 on every nn.Linear, dequantized into the torch model
    (HQQ has no OpenVINO path; fidelity only)."""
    try:
        from hqq.core.quantize import Quantizer
    except Exception as exc:  # noqa: BLE001
        console.print(f"  HQQ skipped: does not import ({type(exc).__name__}: {exc})")
        return []
    import minilm
    import torch

    rows = []
    for label, group in HQQ:
        start = time.perf_counter()
        model = minilm.load_minilm().eval()
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.Linear):
                    w = module.weight.data
                    q, meta = Quantizer.quantize(w, nbits=4, channel_wise=True, group_size=group,
                                                 optimize=True, axis=1, bitpack=False,
                                                 compute_dtype=torch.float32, device="cpu")
                    module.weight.data = Quantizer.dequantize(q, meta).reshape(w.shape)
            build_s = time.perf_counter() - start
            emb = np.concatenate([model(torch.from_numpy(ids[i:i + 32]),
                                        torch.from_numpy(mask[i:i + 32])).numpy()
                                  for i in range(0, len(ids), 32)])
        rows.append(fm._metrics(label, ref, emb, labels) |
                    {"runtime": "torch f32 (fake-quant, asymmetric u4 + zero point)",
                     "build_s": build_s})
        console.print(f"  {label}: cosine mean {rows[-1]['cos_mean']:.5f}")
    return rows


def _latencies(models: dict[str, str], ids, mask, rounds: int, iters: int) -> dict:
    """label -> (median ms f32 dyn-quant off, median ms at the CPU defaults with dyn-quant 32),
    each the median over rounds of per-round medians; variants interleaved per round."""
    from backends.openvino import shared_core

    core = shared_core()
    feeds = {"input_ids": ids[:1], "attention_mask": mask[:1]}
    settings = [{"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0},
                {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 32}]
    requests = {}
    for label, xml in models.items():
        for k, cfg in enumerate(settings):
            compiled = core.compile_model(xml, "CPU", cfg | {"PERFORMANCE_HINT": "LATENCY"})
            requests[label, k] = compiled.create_infer_request()
    samples = {key: [] for key in requests}
    for r in range(rounds):
        keys = list(requests)
        keys = keys[r % len(keys):] + keys[:r % len(keys)]
        for key in keys:
            req = requests[key]
            for _ in range(10):
                req.infer(feeds)
            times = []
            for _ in range(iters):
                t = time.perf_counter()
                req.infer(feeds)
                times.append(time.perf_counter() - t)
            samples[key].append(1000 * float(np.median(times)))
    return {label: tuple(float(np.median(samples[label, k])) for k in range(len(settings)))
            for label in models}


def _versions() -> str:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for name in ("openvino", "torch", "nncf", "hqq"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} not installed")
    return f"versions: {', '.join(parts)}; {platform.processor() or platform.machine()}, " \
           f"{os.cpu_count()} CPUs"


if __name__ == "__main__":
    raise SystemExit(main())
