#!/usr/bin/env python
"""Models in the wild: four OCR models from other packages, their task metrics against float.

    .venv/bin/python tools/bench/wild.py [--only det rec ddd_det ddd_rec] [--peers]
                                         [--markdown FILE]

The models and inputs come from tools/fetch_wild.py (pinned wheels, never imported) and
tools/fetch_photos.py. Each is built by rexdeploy with the defaults (data-free W8A8), run by
OpenVINO on CPU (f32 for the float parts) and, as its reference, the same Q/DQ ONNX in ONNX
Runtime; both are compared with the float model (the build's float.onnx in ONNX Runtime) on
real inputs, by the model's task:

    det       PP-OCRv4 text detector (rapidocr-onnxruntime 1.4.4), 640x640, on the 4 printed-text
              pages and 16 photos: text-mask IoU (probability > 0.3) against float, pooled
    rec       PP-OCRv4 recogniser (SVTR), height 48 and width by aspect as RapidOCR feeds it
              (each line at its own width, built for width W=dynamic), on the lines of text:
              CTC greedy string exact match against float, and per-position top-1 agreement
    ddd_det   ddddocr's YOLOX-style detector, 416x416 in 0..255, on the pages and photos:
              float detections kept (score > 0.3 after NMS; a quantized one of IoU >= 0.5)
    ddd_rec   ddddocr's CNN + LSTM CTC recogniser, grey 64 x W with W dynamic (each line at its
              own width), built for width W=dynamic: string exact match

plus the SQNR of the first output (pooled over the inputs, and the median input's), int8
coverage by count and by multiply-adds, the build's
device check, and the latency against OpenVINO f32 on the float model (one request at a time,
interleaved; the first input's shape). A task metric that is a rate (lines read exactly,
detections kept) is given with its 95 % interval, and each configuration beside the default
with the items it turned right and wrong against the default (`vs default +2 -1`): on 77
lines one line is 0.013, well inside the interval. Each is also built with `--no-zero-points` (every
activation int8 over [-hi, hi]), ddddocr's recogniser with
`--recurrent int8` (its LSTM on OpenVINO's int8 RNN kernel), the two PP-OCRv4 models (whose
reparameterised convolutions carry folded identities) with `--split-identity off` and with
`--budget 1.5 --mixed-precision all --split-identity all`. `--peers`: NNCF's post-training
quantization of the same float graph with the same real inputs and with 32 random ones, run by
OpenVINO, beside each row.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, HERE)
WILD = os.path.join(ROOT, ".cache", "wild")
PHOTOS = os.path.join(ROOT, ".cache", "photos")
IMAGENET = ("mean=0.485/0.456/0.406,std=0.229/0.224/0.225", (0.485, 0.456, 0.406),
            (0.229, 0.224, 0.225))


# -- inputs ---------------------------------------------------------------------------------------
def _images(limit_photos: int = 16) -> list[str]:
    pages = sorted(os.path.join(WILD, "text", f) for f in os.listdir(os.path.join(WILD, "text")))
    photos = sorted(os.path.join(PHOTOS, f) for f in os.listdir(PHOTOS)
                    if f.lower().endswith((".jpg", ".jpeg", ".png")))[:limit_photos]
    return pages + photos


def _lines() -> list[str]:
    d = os.path.join(WILD, "lines")
    return sorted(os.path.join(d, f) for f in os.listdir(d))


def _rgb(path: str, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(img, np.float32)


def det_feeds() -> list[dict]:
    _, mean, std = IMAGENET
    out = []
    for p in _images():
        x = (_rgb(p, (640, 640)) / 255.0 - np.array(mean)) / np.array(std)
        out.append({"x": x.transpose(2, 0, 1)[None].astype(np.float32)})
    return out


def rec_feeds() -> list[dict]:
    """PP-OCRv4 recogniser input as RapidOCR makes it for one line: height 48, width by aspect,
    (x / 255 - 0.5) / 0.5, zero-padded (mid-grey) to at least 320. RapidOCR widens the input to
    the line's aspect rather than squeezing the line into 320: squeezed 5x, as most of these
    lines would be, even the float model reads nothing (its mean top-1 probability drops from
    0.97 to 0.6-0.8), and agreeing with it there measures noise, not the task."""
    from PIL import Image

    out = []
    for p in _lines():
        img = Image.open(p).convert("RGB")
        w = max(8, int(np.ceil(48 * img.width / img.height)))
        x = np.asarray(img.resize((w, 48), Image.BILINEAR), np.float32) / 255.0
        x = (x - 0.5) / 0.5
        padded = np.zeros((48, max(w, 320), 3), np.float32)
        padded[:, :w] = x
        out.append({"x": padded.transpose(2, 0, 1)[None]})
    return out


def ddd_det_feeds() -> list[dict]:
    return [{"images": _rgb(p, (416, 416)).transpose(2, 0, 1)[None].copy()} for p in _images()]


def ddd_rec_feeds() -> list[dict]:
    """ddddocr's recogniser input: grey, height 64, width by aspect, in [0, 1]."""
    from PIL import Image

    out = []
    for p in _lines():
        img = Image.open(p).convert("L")
        w = max(16, int(round(64 * img.width / img.height)))
        x = np.asarray(img.resize((w, 64), Image.LANCZOS), np.float32) / 255.0
        out.append({"input1": x[None, None]})
    return out


# -- task metrics ---------------------------------------------------------------------------------
def mask_iou(ref: list[np.ndarray], test: list[np.ndarray], thresh: float = 0.3) -> dict:
    inter = sum(float(((r > thresh) & (t > thresh)).sum()) for r, t in zip(ref, test))
    union = sum(float(((r > thresh) | (t > thresh)).sum()) for r, t in zip(ref, test))
    return {"task": "text-mask IoU", "value": inter / union if union else 1.0}


def ctc_greedy(probs: np.ndarray, blank: int = 0) -> tuple[int, ...]:
    """Greedy CTC decoding of per-step class scores (any layout with classes last and one
    sequence: [1, T, C] or [T, 1, C]): arg-max per step, repeats merged, blanks dropped."""
    out, last = [], None
    for s in np.argmax(probs.reshape(-1, probs.shape[-1]), axis=-1).tolist():
        if s != last and s != blank:
            out.append(s)
        last = s
    return tuple(out)


def ctc_match(ref: list[np.ndarray], test: list[np.ndarray]) -> dict:
    exact = [ctc_greedy(r) == ctc_greedy(t) for r, t in zip(ref, test)]
    pos = [float(np.mean(np.argmax(r.reshape(-1, r.shape[-1]), -1)
                         == np.argmax(t.reshape(-1, t.shape[-1]), -1))) for r, t in zip(ref, test)]
    return {"task": "CTC exact match", "value": float(np.mean(exact)),
            "per_position": float(np.mean(pos)), "items": exact}


def yolox_detections(out: np.ndarray, size: int = 416, score: float = 0.3,
                     iou: float = 0.45) -> np.ndarray:
    """[N, 5] (x1, y1, x2, y2, score) of a YOLOX head [1, A, 4 + 1 + classes] (sigmoids
    applied), decoded over strides 8, 16, 32 and non-max suppressed."""
    grids, strides = [], []
    for s in (8, 16, 32):
        n = size // s
        yv, xv = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grids.append(np.stack((xv, yv), -1).reshape(-1, 2))
        strides.append(np.full((n * n, 1), s))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    o = out.reshape(-1, out.shape[-1])
    xy = (o[:, :2] + grid) * stride
    wh = np.exp(o[:, 2:4]) * stride
    conf = o[:, 4] * o[:, 5:].max(axis=1)
    keep = conf > score
    boxes = np.concatenate((xy - wh / 2, xy + wh / 2), 1)[keep]
    conf = conf[keep]
    order, picked = np.argsort(-conf), []
    while order.size:
        i = order[0]
        picked.append(i)
        order = order[1:][_iou(boxes[i], boxes[order[1:]]) < iou]
    return np.concatenate((boxes[picked], conf[picked, None]), 1) if picked else np.zeros((0, 5))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:4], boxes[:, 2:4])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: np.prod(b[..., 2:4] - b[..., :2], axis=-1)  # noqa: E731
    return inter / (area(box) + area(boxes) - inter + 1e-9)


def detections_kept(ref: list[np.ndarray], test: list[np.ndarray]) -> dict:
    items = []
    for r, t in zip(ref, test):
        a, b = yolox_detections(r), yolox_detections(t)
        items += [bool(len(b)) and float(_iou(box, b).max()) >= 0.5 for box in a]
    kept, total = sum(items), len(items)
    return {"task": "detections kept", "value": kept / total if total else 1.0,
            "detail": f"{kept}/{total}", "items": items}


def with_intervals(rows: list[dict]) -> list[dict]:
    """Each row whose task metric is a rate over items (lines read exactly, detections kept)
    gains its 95 % Wilson interval ("ci"), and each non-default row of a model gains how many
    items it turned right and wrong against that model's default row on the same backend
    ("flips": (gained, lost)). 77 lines give an interval of about +-0.08 at 0.86; a row that
    differs from the default by one line differs by nothing the table can tell."""
    from rexdeploy.evaluate.fidelity import agreement_interval

    default = {(r["key"], _backend(r)): r for r in rows
               if r.get("items") is not None and "(default)" in r["config"]}
    for r in rows:
        items = r.get("items")
        if items is None or not items:
            continue
        r["ci"] = list(agreement_interval(r["value"], len(items)))
        base = default.get((r["key"], _backend(r)))
        if base is not None and base is not r and len(base["items"]) == len(items):
            r["flips"] = [sum(b and not a for a, b in zip(base["items"], items)),
                          sum(a and not b for a, b in zip(base["items"], items))]
    return rows


def _backend(row: dict) -> str:
    return row["config"].rsplit(", ", 1)[-1]


MODELS = {  # key: (file, --input, input range, feeds, metric, label)
    "det": ("ch_PP-OCRv4_det_infer.onnx", "x:1x3x640x640",
            ("x", (0 - 0.485) / 0.229, (1 - 0.406) / 0.225), det_feeds, mask_iou,
            "PP-OCRv4 detector (DBNet)"),
    "rec": ("ch_PP-OCRv4_rec_infer.onnx", "x:1x3x48xW", ("x", -1.0, 1.0), rec_feeds,
            ctc_match, "PP-OCRv4 recogniser (SVTR)"),
    "ddd_det": ("common_det.onnx", "images:1x3x416x416", ("images", 0.0, 255.0),
                ddd_det_feeds, detections_kept, "ddddocr detector (YOLOX)"),
    "ddd_rec": ("common.onnx", "input1:1x1x64xW", ("input1", 0.0, 1.0), ddd_rec_feeds,
                ctc_match, "ddddocr recogniser (CNN + LSTM)"),
}


# how an image model's pixels are normalised (--preprocess), where the build can use it: the
# detector's ImageNet std per channel (the input alignment puts every pixel on an int8 code)
PREPROCESS = {"det": "scale=1/255," + IMAGENET[0]}

# one level of the 8-bit image in each model's input units (tools/bench/wild_ceilings.py: the
# float model's own noise floor, its inputs moved by up to half a level)
PIXEL_LEVEL = {"det": 1 / 255 / np.array(IMAGENET[2], np.float32).reshape(1, 3, 1, 1),
               "rec": 2 / 255, "ddd_det": 1.0, "ddd_rec": 1 / 255}

# a dynamic width's typical value: where the build observes ranges and times the model
TYPICAL_W = {"rec": 320, "ddd_rec": 256}


def dims_for(key: str) -> tuple:
    return (("W", TYPICAL_W[key]),) if MODELS[key][1].endswith("xW") else ()


# -- runs -----------------------------------------------------------------------------------------
# extra configurations beside the default, for the models they apply to
# (--budget 1.5 --mixed-precision all: the fidelity-first recipe, docs/benchmarks.md)
# (--no-zero-points: every activation int8 over [-hi, hi], as before the zero points)
# (--budget off: order 1 everywhere and every activation int8, the default before --budget auto)
MIXED = ("--budget 1.5 --mixed-precision all", {"budget": 1.5, "mixed_precision": "all"})
NO_ZERO_POINTS = ("--no-zero-points", {"zero_points": False})
BUDGET_OFF = ("--budget off", {"auto_budget": False})
# (--split-identity off: the reparameterised convolutions' diagonals left in their kernels;
# all: the depthwise ones split too, with the fidelity-first recipe)
SPLIT_OFF = ("--split-identity off", {"split_identity": "off"})
MIXED_SPLIT = ("--budget 1.5 --mixed-precision all --split-identity all",
               {"budget": 1.5, "mixed_precision": "all", "split_identity": "all"})
EXTRA = {"det": [BUDGET_OFF, NO_ZERO_POINTS, SPLIT_OFF, MIXED, MIXED_SPLIT],
         "rec": [BUDGET_OFF, NO_ZERO_POINTS, SPLIT_OFF, MIXED, MIXED_SPLIT],
         "ddd_det": [BUDGET_OFF, NO_ZERO_POINTS, MIXED],
         "ddd_rec": [BUDGET_OFF, NO_ZERO_POINTS, ("--recurrent int8", {"recurrent": "int8"}),
                     MIXED]}


def run_model(key: str, out: str, peers: bool) -> list[dict]:
    file, spec, rng, feeds_fn, metric, label = MODELS[key]
    feeds = feeds_fn()
    rows, flt = [], None
    for flag, quant in [("(default)", {})] + EXTRA.get(key, []):
        built, flt = _rexdeploy_rows(key, out, feeds, flag, quant)
        rows += built
    if peers:
        rows += _nncf_rows(key, flt_path(out, key), feeds, flt, metric, label, rng, out)
    return rows


def flt_path(out: str, key: str) -> str:
    return os.path.join(out, f"wild_{key}.openvino", "float.onnx")


def _rexdeploy_rows(key: str, out: str, feeds: list[dict], flag: str, quant: dict):
    """The device and reference rows of one rexdeploy build, and the float outputs."""
    import rexdeploy
    from rexdeploy.api import artifact_runner
    from rexdeploy.config import BuildConfig, QuantConfig
    from rexdeploy.evaluate.fidelity import sqnr_db

    file, spec, rng, _, metric, label = MODELS[key]
    start = time.perf_counter()
    dims = dims_for(key)
    suffix = "" if not quant else "_" + "_".join(f"{k}{v}" for k, v in quant.items())
    art = rexdeploy.build(os.path.join(WILD, "models", file), [spec], force=True, quiet=True,
                          output=os.path.join(out, f"wild_{key}{suffix}.openvino"),
                          preprocess=PREPROCESS.get(key),
                          config=BuildConfig(quant=QuantConfig(input_ranges=(rng,), **quant),
                                             dims=dims))
    build_s = time.perf_counter() - start
    flt = _run_onnx(art.file("float_onnx"), feeds)
    s = art.manifest["summary"]
    # where the build saw OpenVINO crash on the model (its device check says so), only the
    # reference runs: the device row says why
    crashed = (s.get("device_check") or {}).get("crashed")
    backends_run = (("reference", "reference"),) if crashed else \
        (("device", None), ("reference", "reference"))
    outs = {}
    for name, backend in backends_run:
        with artifact_runner(art, backend) as r:
            outs[name] = [next(iter(r.infer(f).values())) for f in feeds]
    latency = None if crashed else latency_ratio(art, feeds[0])
    rows = [] if not crashed else [{
        "model": label, "key": key, "config": f"rexdeploy W8A8 {flag}, device", "n": 0,
        "task": "OpenVINO crashed running it (the build's device check: " +
                art.report()["device_check"]["skipped"].split(";")[0] + ")"}]
    for name, _ in backends_run:
        m = metric(flt, outs[name])
        rows.append({"model": label, "key": key, "config": f"rexdeploy W8A8 {flag}, {name}",
                     "n": len(feeds), "sqnr": _pooled_sqnr(flt, outs[name], sqnr_db),
                     "median": _median_sqnr(flt, outs[name], sqnr_db), **m,
                     "int8": s["int8_coverage"], "int8_macs": s.get("int8_coverage_macs"),
                     "check": (art.report().get("device_check") or {}).get("loss_db"),
                     "latency": latency if name == "device" else None, "build_s": build_s})
        print(f"[wild] {label} {flag} {name}: {m['task']} {m['value']:.3f}, "
              f"{rows[-1]['sqnr']:.1f} dB", flush=True)
    return rows, flt


def latency_ratio(art, feed: dict, rounds: int = 5, seconds: float = 0.5) -> float:
    """Median latency of the compiled artifact over OpenVINO f32 on its float model, one
    request at a time, the two interleaved round by round (batch 1, the first input)."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    requests = [core.compile_model(path, "CPU", config).create_infer_request()
                for path in (art.file("float_onnx"), art.file("ir_xml"))]
    times: list[list[float]] = [[], []]
    for r in requests:
        r.infer(feed)
    for _ in range(rounds):
        for r, t in zip(requests, times):
            start, n = time.perf_counter(), 0
            while time.perf_counter() - start < seconds:
                r.infer(feed)
                n += 1
            t.append((time.perf_counter() - start) / n)
    return float(np.median(times[1]) / np.median(times[0]))


def isolated(key: str, out: str, peers: bool) -> list[dict]:
    """run_model in a child process, so that a runtime crash costs one model's rows, not the
    run: OpenVINO 2026.4 segfaults running PP-OCRv4's recogniser (its float f32 model too)
    under ONEDNN_MAX_CPU_ISA=AVX2; that model then gets one row saying so."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rows.json")
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--only", key,
                               "--out", out, "--rows-json", path] + (["--peers"] if peers else []),
                              check=False)
        if proc.returncode == 0 and os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
    why = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    print(f"[wild] {MODELS[key][-1]}: the run crashed ({why})", flush=True)
    return [{"model": MODELS[key][-1], "key": key, "config": "-", "n": 0,
             "task": f"the run crashed ({why})" + (f" under ONEDNN_MAX_CPU_ISA={isa}" if isa
                                                   else "")}]


def _pooled_sqnr(ref: list[np.ndarray], test: list[np.ndarray], sqnr_db) -> float:
    return sqnr_db(np.concatenate([r.ravel() for r in ref]),
                   np.concatenate([t.ravel() for t in test]))


def _median_sqnr(ref: list[np.ndarray], test: list[np.ndarray], sqnr_db) -> float:
    """The median over the inputs of each one's SQNR: the pooled figure is the error energy of
    all inputs over their signal, which the few inputs whose float output is near zero (a photo
    with no text for a text detector) can set alone."""
    return float(np.median([sqnr_db(r.ravel(), t.ravel()) for r, t in zip(ref, test)]))


def _run_onnx(path: str, feeds: list[dict]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    s = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return [s.run(None, f)[0] for f in feeds]


def _nncf_rows(key, float_onnx, feeds, flt, metric, label, rng, out) -> list[dict]:
    from peers import missing, nncf_quantize

    from rexdeploy.evaluate.fidelity import sqnr_db

    why = missing(("nncf",))
    if why:
        print(f"[wild] NNCF skipped: {why}", flush=True)
        return []
    import openvino as ov

    rows = []
    gen = np.random.default_rng(0)
    name = next(iter(feeds[0]))
    shape = feeds[0][name].shape
    random = [{name: gen.uniform(rng[1], rng[2], shape).astype(np.float32)} for _ in range(32)]
    for what, data in (("real inputs", feeds), ("32 random inputs", random)):
        d = os.path.join(out, f"wild_{key}_nncf_{what.split()[0]}")
        os.makedirs(d, exist_ok=True)
        try:
            xml = nncf_quantize(float_onnx, d, data)
            compiled = ov.Core().compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            test = [compiled(f)[compiled.outputs[0]] for f in feeds]
        except Exception as exc:  # a peer failing is a result, not a crash of the benchmark
            print(f"[wild] NNCF on {label} with {what}: failed: {str(exc).splitlines()[0]}")
            continue
        m = metric(flt, test)
        rows.append({"model": label, "key": key, "config": f"NNCF W8A8, {what}", "n": len(feeds),
                     "sqnr": _pooled_sqnr(flt, test, sqnr_db),
                     "median": _median_sqnr(flt, test, sqnr_db), **m})
        print(f"[wild] {label} NNCF ({what}): {m['task']} {m['value']:.3f}", flush=True)
    return rows


# -- report ---------------------------------------------------------------------------------------
HEADERS = ["model", "configuration", "inputs", "task metric vs float",
           "SQNR dB: pooled / median input",
           "int8 layers", "int8 MACs", "device check loss dB", "latency vs f32"]


def _cells(r: dict) -> list[str]:
    if r["n"] == 0:  # a crashed model (isolated)
        return [r["model"], r["config"], "-", r["task"]] + ["-"] * (len(HEADERS) - 4)
    task = f"{r['task']} {r['value']:.3f}" + (f" ({r['detail']})" if r.get("detail") else "") + \
        (f" [95% {r['ci'][0]:.2f}-{r['ci'][1]:.2f}]" if r.get("ci") else "") + \
        (f", vs default +{r['flips'][0]} -{r['flips'][1]}" if r.get("flips") else "") + \
        (f"; per position {r['per_position']:.3f}" if r.get("per_position") is not None else "")
    pct = lambda v: "-" if v is None else f"{v:.0%}"  # noqa: E731
    sqnr = f"{r['sqnr']:.1f}" + (f" / {r['median']:.1f}" if r.get("median") is not None else "")
    return [r["model"], r["config"], str(r["n"]), task, sqnr, pct(r.get("int8")),
            pct(r.get("int8_macs")), "-" if r.get("check") is None else f"{r['check']:.2f}",
            "-" if r.get("latency") is None else f"{r['latency']:.2f}x"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", choices=list(MODELS))
    ap.add_argument("--peers", action="store_true", help="also NNCF with real and random data")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench", "wild"))
    ap.add_argument("--markdown")
    ap.add_argument("--rows-json", help=argparse.SUPPRESS)  # a child's rows (see isolated)
    args = ap.parse_args()
    if not os.path.isdir(os.path.join(WILD, "models")):
        raise SystemExit("no models: run .venv/bin/python tools/fetch_wild.py first")
    if args.rows_json:  # the child of `isolated`: one model, its rows as JSON
        import json

        rows = run_model(args.only[0], args.out, args.peers)
        with open(args.rows_json, "w") as f:
            json.dump(rows, f)
        return 0
    from rich.console import Console
    from common import print_table

    from rexdeploy.devinfo import device_info

    rows = []
    for key in args.only or list(MODELS):
        rows += isolated(key, args.out, args.peers)
    rows = with_intervals(rows)
    console = Console(width=170)
    info = device_info()
    console.print(f"CPU: {info['cpu_model']}; load {info['loadavg']}")
    print_table(console, "Models in the wild, data-free W8A8 against float (OpenVINO CPU and its "
                "ONNX Runtime reference)", HEADERS, [_cells(r) for r in rows], args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
