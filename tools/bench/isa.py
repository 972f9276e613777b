#!/usr/bin/env python
"""int8 on every x86 CPU: the device against its Q/DQ reference, natively and on AVX2 kernels.

    .venv/bin/python tools/bench/isa.py [--model effnet|minilm|fashion|all] [--isa native avx2]
                                        [--peers] [--markdown FILE]

For each instruction set the whole run happens in a child process under ONEDNN_MAX_CPU_ISA
(`native`: unset, the CPU's own kernels; `avx2`: OpenVINO's pre-VNNI kernels, whose int8 pairs
saturate in int16, on any x86 host). There each configuration is built by rexdeploy with no data
(`--int8-isa auto` detects the ISA, so the overflow fix turns itself on under AVX2), run by
OpenVINO on CPU (f32 pinned for the float parts) on the model's real inputs, and its Q/DQ ONNX
run in ONNX Runtime on the same inputs (the reference that defines what the plan means); both
are compared with the float model in torch:

    device dB    SQNR of OpenVINO's outputs against the float model
    ref dB       SQNR of the reference (ONNX Runtime) against the float model
    loss dB      ref dB - device dB: what the device loses on top of the plan (target <= 1)
    dev vs ref   SQNR of OpenVINO against the reference

plus top-1 agreement (EfficientNet-Lite0 on the photos, the Fashion-MNIST CNN on its 10k test
images with true accuracy) or mean cosine (MiniLM on the fortunes quotes). The `--overflow-fix
off` row shows what the fix avoids. `--peers`: NNCF's post-training quantization calibrated on
the photos themselves, with its OverflowFix disabled / first layer / all layers
(EfficientNet-Lite0). Models and data: tools/fetch_example.py, tools/fetch_photos.py,
tools/fetch_fortunes.py, tools/train_fashion_mnist.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, HERE)

CONFIGS = {  # model -> [(label, QuantConfig overrides)]
    "effnet": [("W8A8 (default)", {}),
               ("W8A8, --overflow-fix off", {"overflow_fix": "off"}),
               ("W8A8, REx K=2", {"orders": 2}),
               ("W8A8, REx budget 1.15", {"budget": 1.15}),
               ("W8A8, REx budget 1.15, mixed activations",
                {"budget": 1.15, "mixed_precision": "activations"})],
    "minilm": [("W8A8 (default)", {}),
               ("W8A8, --overflow-fix off", {"overflow_fix": "off"}),
               ("W8A8, REx K=2", {"orders": 2})],
    "fashion": [("W8A8 (default)", {}),
                ("W8A8, --overflow-fix off", {"overflow_fix": "off"}),
                ("W8A8, REx K=2", {"orders": 2})],
}
NNCF_FIXES = ("DISABLE", "FIRST_LAYER", "ENABLE")  # nncf OverflowFix; FIRST_LAYER is its default
LOSS_TARGET_DB = 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--model", choices=("effnet", "minilm", "fashion", "all"), default="all")
    ap.add_argument("--isa", nargs="+", default=["native", "avx2"],
                    help="instruction sets to run: native (this CPU's own kernels) or a oneDNN "
                         "name (avx2, avx512_core, avx512_core_vnni, ...) this CPU can run")
    ap.add_argument("--peers", action="store_true", help="also NNCF with its OverflowFix modes "
                    "(EfficientNet-Lite0; pip install --no-deps -r "
                    "tools/bench/requirements-peers.txt)")
    ap.add_argument("--limit", type=int, help="use the first N inputs of each model only")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench", "isa"))
    ap.add_argument("--markdown", help="also write the table as markdown to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # JSON result path: run one ISA here
    args = ap.parse_args()
    models = ["fashion", "minilm", "effnet"] if args.model == "all" else [args.model]
    if args.child:
        rows = []
        for model in models:
            rows += run_model(model, args)
        with open(args.child, "w") as f:
            json.dump(rows, f)
        return 0
    rows = []
    for isa in args.isa:
        rows += _run_isa(isa, args)
    return report(rows, args)


def _run_isa(isa: str, args) -> list[dict]:
    """This script as a child under ONEDNN_MAX_CPU_ISA=isa (unset for native)."""
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    if isa != "native":
        env["ONEDNN_MAX_CPU_ISA"] = isa.upper()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        cmd = [sys.executable, __file__, "--child", out, "--model", args.model,
               "--out", os.path.join(args.out, isa)] + (["--peers"] if args.peers else []) + \
            (["--limit", str(args.limit)] if args.limit else [])
        print(f"[isa] {isa}: {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.run(cmd, env=env)
        if proc.returncode:
            raise SystemExit(f"the {isa} run failed (exit {proc.returncode})")
        with open(out) as f:
            return json.load(f)


# -- one ISA, in the child -----------------------------------------------------------------------
def run_model(model: str, args) -> list[dict]:
    from backends.openvino import int8_isa

    isa = int8_isa("auto").to_dict()
    data = _data(model, args.limit)
    print(f"[isa] {model}: {data['what']}; int8 ISA {isa['name']} "
          f"({'saturates' if isa['saturates'] else 'int32'})", flush=True)
    from rexdeploy.errors import UserError

    rows = []
    for label, overrides in CONFIGS[model]:
        start = time.perf_counter()
        try:
            art = _build(model, label, overrides, data, args.out)
        except UserError as exc:  # e.g. a float-input Linear under ONEDNN_MAX_CPU_ISA
            print(f"[isa]   {label}: not run here: {exc.message}", flush=True)
            rows.append({"model": model, "label": label, "isa": isa["name"],
                         "saturates": isa["saturates"], "skipped": exc.message.split(";")[0]})
            continue
        dev = _outputs(model, art, data, None)
        ref = _outputs(model, art, data, "reference")
        rows.append(_row(model, label, isa, data, dev, ref) |
                    {"int8": art.manifest["summary"]["int8_coverage"],
                     "device_check": art.report().get("device_check", {}).get("loss_db"),
                     "seconds": round(time.perf_counter() - start, 1)})
        print(f"[isa]   {label}: device {rows[-1]['device_db']:.1f} dB, reference "
              f"{rows[-1]['ref_db']:.1f} dB", flush=True)
    if args.peers and model == "effnet":
        rows += _nncf_rows(data, isa, args.out)
    return rows


def _data(model: str, limit: int | None) -> dict:
    """The model file, its real inputs (feeds), the float reference outputs and labels."""
    from common import torch_logits

    if model == "effnet":
        import examples

        path = examples.ensure_example_model()
        names, x, labels = examples.load_photos()
        x = x[:limit] if limit else x
        return {"path": path, "feeds": [{"input": x[i:i + 1]} for i in range(len(x))],
                "ref": torch_logits(path, x), "what": f"{len(x)} photos",
                "inputs": ["input:1x3x224x224"], "preprocess": examples.EFFNET_PREPROCESS,
                "input_ranges": (("input", -1.0, 1.0),)}
    if model == "fashion":
        import fashion_fidelity as ff

        if not (os.path.isfile(ff.MODEL) and os.path.isfile(ff.TEST)):
            raise SystemExit(f"{ff.MODEL} or {ff.TEST} is missing: run "
                             ".venv/bin/python tools/train_fashion_mnist.py")
        with np.load(ff.TEST) as z:
            x, y = z["input"], z["labels"]
        x, y = (x[:limit], y[:limit]) if limit else (x, y)
        return {"path": ff.MODEL, "feeds": [{"input": x[i:i + 1]} for i in range(len(x))],
                "ref": torch_logits(ff.MODEL, x), "labels": y, "what": f"{len(x)} test images",
                "inputs": ["input:1x1x28x28"], "input_ranges": (("input", 0.0, 1.0),)}
    import fidelity_minilm as fm
    import minilm

    path, _, _ = minilm.export_minilm()
    tokens = os.path.join(ROOT, ".cache", "fortunes", "tokens.npz")
    if not os.path.isfile(tokens):
        raise SystemExit(f"{tokens} is missing: run .venv/bin/python tools/fetch_fortunes.py")
    with np.load(tokens) as z:
        ids, mask = z["input_ids"], z["attention_mask"]
    ids, mask = (ids[:limit], mask[:limit]) if limit else (ids, mask)
    return {"path": str(path), "ref": fm._torch_embeddings(str(path), ids, mask),
            "feeds": [{"input_ids": ids[i:i + 1], "attention_mask": mask[i:i + 1]}
                      for i in range(len(ids))], "what": f"{len(ids)} quotes",
            "inputs": fm.INPUTS, "input_ranges": ()}


def _float_onnx(out: str) -> str:
    from common import slug

    return os.path.join(out, f"effnet_{slug(CONFIGS['effnet'][0][0])}", "float.onnx")


def _build(model: str, label: str, overrides: dict, data: dict, out: str):
    from common import slug

    import rexdeploy
    from rexdeploy.config import BuildConfig, QuantConfig

    cfg = BuildConfig(quant=QuantConfig(input_ranges=data["input_ranges"], **overrides))
    return rexdeploy.build(str(data["path"]), data["inputs"], config=cfg, force=True,
                           quiet=True, output=os.path.join(out, f"{model}_{slug(label)}"),
                           preprocess=data.get("preprocess"))


def _outputs(model: str, art, data: dict, backend: str | None) -> np.ndarray:
    """The first output of `art` on every feed, on its device (None) or the reference."""
    from rexdeploy.api import artifact_runner

    with artifact_runner(art, backend) as r:
        return np.concatenate([next(iter(r.infer(f).values())) for f in data["feeds"]])


def _row(model: str, label: str, isa: dict, data: dict, dev: np.ndarray,
         ref: np.ndarray) -> dict:
    from rexdeploy.evaluate.fidelity import cosine, sqnr_db

    flt = data["ref"]
    row = {"model": model, "label": label, "isa": isa["name"], "saturates": isa["saturates"],
           "device_db": sqnr_db(flt, dev), "ref_db": sqnr_db(flt, ref),
           "dev_vs_ref_db": sqnr_db(ref, dev), "what": data["what"]}
    row["loss_db"] = max(0.0, row["ref_db"] - row["device_db"])
    if model == "minilm":
        row["device_task"] = float(cosine(flt, dev).mean())
        row["ref_task"] = float(cosine(flt, ref).mean())
        row["task"] = "mean cosine"
    else:
        row["device_task"] = float((flt.argmax(1) == dev.argmax(1)).mean())
        row["ref_task"] = float((flt.argmax(1) == ref.argmax(1)).mean())
        row["task"] = "top-1 agreement"
        if "labels" in data:
            row["accuracy"] = float((dev.argmax(1) == data["labels"]).mean())
            row["float_accuracy"] = float((flt.argmax(1) == data["labels"]).mean())
    return row


def _nncf_rows(data: dict, isa: dict, out: str) -> list[dict]:
    """NNCF W8A8 post-training quantization calibrated on the photos themselves, with each
    OverflowFix mode, run by OpenVINO (its own IR: no reference Q/DQ ONNX to compare with)."""
    from common import openvino_logits
    from peers import missing, nncf_quantize

    from rexdeploy.evaluate.fidelity import sqnr_db

    why = missing(("nncf",))
    if why:
        print(f"[isa]   NNCF skipped: {why}", flush=True)
        return []
    float_onnx = _float_onnx(out)
    x = np.concatenate([f["input"] for f in data["feeds"]])
    rows = []
    for fix in NNCF_FIXES:
        d = os.path.join(out, f"nncf_{fix}")
        os.makedirs(d, exist_ok=True)
        xml = nncf_quantize(float_onnx, d, data["feeds"], overflow_fix=fix)
        logits = openvino_logits(d, {"ir_xml": os.path.basename(xml)}, x)
        rows.append({"model": "effnet", "label": f"NNCF W8A8, {len(x)} photos, OverflowFix "
                     f"{fix}", "isa": isa["name"], "saturates": isa["saturates"],
                     "device_db": sqnr_db(data["ref"], logits), "ref_db": None,
                     "dev_vs_ref_db": None, "loss_db": None, "what": data["what"],
                     "device_task": float((data["ref"].argmax(1) == logits.argmax(1)).mean()),
                     "ref_task": None, "task": "top-1 agreement", "int8": None})
        print(f"[isa]   {rows[-1]['label']}: {rows[-1]['device_db']:.1f} dB", flush=True)
    return rows


# -- the table -----------------------------------------------------------------------------------
HEADERS = ["model", "configuration", "int8 ISA", "device dB", "ref dB", "loss dB",
           "dev vs ref dB", "task (device / ref)", "int8 coverage"]
NAMES = {"effnet": "EfficientNet-Lite0", "minilm": "MiniLM", "fashion": "Fashion-MNIST CNN"}


def _cells(r: dict) -> list[str]:
    def db(v):
        return "-" if v is None else ("inf" if v == float("inf") else f"{v:.1f}")

    isa = r["isa"] + (" (pre-VNNI)" if r["saturates"] else "")
    if r.get("skipped"):
        return [NAMES[r["model"]], r["label"], isa, "not run here: " + r["skipped"][:60],
                "", "", "", "", ""]

    task = f"{r['task']} {r['device_task']:.3f}" + \
        (f" / {r['ref_task']:.3f}" if r.get("ref_task") is not None else "")
    if r.get("accuracy") is not None:
        task += f"; accuracy {r['accuracy']:.2%} (float {r['float_accuracy']:.2%})"
    return [NAMES[r["model"]], r["label"], isa, db(r["device_db"]), db(r["ref_db"]),
            db(r["loss_db"]), db(r["dev_vs_ref_db"]), task,
            "-" if r.get("int8") is None else f"{r['int8']:.0%}"]


def report(rows: list[dict], args) -> int:
    from rich.console import Console
    from common import print_table

    from rexdeploy.devinfo import device_info

    console = Console(width=170)
    info = device_info()
    console.print(f"CPU: {info['cpu_model']}, ISA flags {', '.join(info['isa'])}; load "
                  f"{info['loadavg']}")
    print_table(console, "int8 on OpenVINO CPU against its Q/DQ reference (ONNX Runtime), per "
                         "instruction set", HEADERS, [_cells(r) for r in rows], args.markdown)
    ok = True
    for r in rows:
        if r.get("loss_db") is None or "overflow-fix off" in r["label"]:
            continue
        if r["loss_db"] > LOSS_TARGET_DB:
            ok = False
            console.print(f"[red]{NAMES[r['model']]} {r['label']} on {r['isa']}: the device "
                          f"loses {r['loss_db']:.1f} dB against the reference[/]")
    console.print(f"every rexdeploy build within {LOSS_TARGET_DB:g} dB of its reference on "
                  f"every ISA: {'[green]met' if ok else '[red]missed'}[/]")
    for r in rows:
        if r["model"] == "effnet" and r["label"] == "W8A8 (default)":
            met = r["saturates"] and r["device_db"] >= 22 and r["device_task"] >= 0.95
            if r["saturates"]:
                console.print(f"EfficientNet-Lite0 default on {r['isa']}: {r['device_db']:.1f} "
                              f"dB >= 22 and agreement {r['device_task']:.3f} >= 0.95: "
                              f"{'[green]met' if met else '[red]missed'}[/]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
