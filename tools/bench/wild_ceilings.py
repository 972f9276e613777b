#!/usr/bin/env python
"""What limits a wild model's data-free W8A8 build: the weight error and the activation error
apart, and the activation ranges measured on the evaluation inputs themselves (an oracle).

    .venv/bin/python tools/bench/wild_ceilings.py [--only det rec ddd_det ddd_rec]
                                                  [--markdown FILE]

Every row runs the Q/DQ ONNX in ONNX Runtime (the reference, `--target reference`) on the same
real inputs as tools/bench/wild.py, against the float model, by the model's task:

    default                     the data-free W8A8 build
    weights int8 only           --activations fp16 (float activations, int8 weights); also
                                with --split-identity off and all (reparameterised kernels'
                                diagonals left in, or split in depthwise layers too)
    weights REx K=2 only        --activations fp16 --orders 2
    activations int8 only       --orders 3 (weights near exact: three int8 kernels)
    activations, real ranges    the build above with each activation's scale set from the
                                largest |value| the evaluation inputs reach there (per-channel
                                scales keep their shape): an oracle no data-free build has

If the oracle row stays far under the target, no choice of per-tensor range meets it: what is
left is the granularity (one scale per tensor) or the weights.

    float, input +- half a pixel level   the float model itself, each input value moved by
                                uniform noise of at most half a level of the 8-bit image it
                                came from (what re-encoding the image, or rounding the input
                                to int8, does): the float model's own noise floor. A target
                                above this row asks the quantized model to agree with float
                                better than float agrees with itself on invisible changes.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import wild  # noqa: E402  (tools/bench/wild.py: the models, inputs and task metrics)

ROWS = (("default", {}), ("weights int8 only", {"activations": "fp16"}),
        ("weights int8 only, --split-identity off", {"activations": "fp16",
                                                     "split_identity": "off"}),
        ("weights int8 only, --split-identity all", {"activations": "fp16",
                                                     "split_identity": "all"}),
        ("weights REx K=2 only", {"activations": "fp16", "orders": 2}),
        ("activations int8 only", {"orders": 3, "auto_budget": False}))


def _build(key: str, out: str, tag: str, quant: dict):
    import rexdeploy
    from rexdeploy.config import BuildConfig, QuantConfig

    file, spec, rng, *_ = wild.MODELS[key]
    dims = wild.dims_for(key)
    return rexdeploy.build(os.path.join(wild.WILD, "models", file), [spec], force=True,
                           quiet=True, output=os.path.join(out, f"ceiling_{key}_{tag}"),
                           preprocess=wild.PREPROCESS.get(key),
                           config=BuildConfig(target="reference", dims=dims,
                                              quant=QuantConfig(input_ranges=(rng,), **quant)))


def _oracle_model(art, feeds: list[dict]):
    """The artifact's Q/DQ ONNX with every activation scale set from the largest |value| the
    float model reaches there on `feeds` (qmax 127 signed, 255 unsigned)."""
    import onnx
    from onnx import numpy_helper

    from calib_free.plan import QuantPlan
    from rexdeploy.ort_session import session, with_outputs

    acts = QuantPlan.load(art.path).activations
    names = [a.tensor for a in acts]
    marked = with_outputs(onnx.load(art.file("float_onnx")), names)
    s = session(marked.SerializeToString(), "the float model, activations marked", "basic")
    peak = {n: 0.0 for n in names}
    for f in feeds:
        for n, x in zip(names, s.run(names, f)):
            peak[n] = max(peak[n], float(np.abs(x).max()))
    model = onnx.load(art.file("onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    for a in acts:
        init = inits.get(a.tensor + "/scale")
        if init is None:
            continue
        old = numpy_helper.to_array(init).astype(np.float64)
        new = old * (peak[a.tensor] / a.qmax) / old.max()
        zero = inits.get(a.tensor + "/zero_point")
        if a.zero_point and zero is not None:  # uint8 from the floor: [floor, peak]
            floor = -a.zero_point * a.scale
            new = np.asarray((peak[a.tensor] - floor) / 255.0)
            zero.CopyFrom(numpy_helper.from_array(
                np.asarray(round(-floor / float(new)), np.uint8), zero.name))
        init.CopyFrom(numpy_helper.from_array(new.astype(np.float32), init.name))
    return model


def _row(key: str, label: str, flt, out_list) -> dict:
    from rexdeploy.evaluate.fidelity import sqnr_db

    m = wild.MODELS[key][4](flt, out_list)
    row = {"model": wild.MODELS[key][5], "config": label, **m,
           "sqnr": wild._pooled_sqnr(flt, out_list, sqnr_db)}
    print(f"[ceilings] {row['model']}, {label}: {m['task']} {m['value']:.3f}, "
          f"{row['sqnr']:.1f} dB", flush=True)
    return row


def run(key: str, out: str) -> list[dict]:
    from rexdeploy.api import artifact_runner
    from rexdeploy.ort_session import session

    feeds = wild.MODELS[key][3]()
    rows, flt, art = [], None, None
    for label, quant in ROWS:
        art = _build(key, out, label.split()[0] + str(len(quant)), quant)
        flt = flt or wild._run_onnx(art.file("float_onnx"), feeds)
        with artifact_runner(art, None) as r:
            rows.append(_row(key, label, flt, [next(iter(r.infer(f).values())) for f in feeds]))
    s = session(_oracle_model(art, feeds).SerializeToString(), "the oracle model", "basic")
    rows.append(_row(key, "activations int8 only, ranges from these inputs (oracle)", flt,
                     [s.run(None, f)[0] for f in feeds]))
    s = session(art.file("float_onnx"), "the float model", "basic")
    noisy = jittered(feeds, wild.PIXEL_LEVEL[key], np.random.default_rng(0))
    rows.append(_row(key, "float, input +- half a pixel level (its noise floor)", flt,
                     [s.run(None, f)[0] for f in noisy]))
    return rows


def jittered(feeds: list[dict], level, rng) -> list[dict]:
    """Each float input moved by uniform noise in [-level / 2, level / 2] (level: one pixel
    level in the input's units, a scalar or broadcastable per channel)."""
    return [{k: (v + 0.5 * np.asarray(level, np.float32) * rng.uniform(-1, 1, v.shape))
             .astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v
             for k, v in f.items()} for f in feeds]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", choices=list(wild.MODELS), default=["det", "rec"])
    ap.add_argument("--out", default=os.path.join(wild.ROOT, "out", "bench", "wild"))
    ap.add_argument("--markdown")
    args = ap.parse_args()
    if not os.path.isdir(os.path.join(wild.WILD, "models")):
        raise SystemExit("no models: run .venv/bin/python tools/fetch_wild.py first")
    from rich.console import Console

    from common import print_table
    from rexdeploy.devinfo import device_info

    rows = [r for key in args.only for r in run(key, args.out)]
    console = Console(width=150)
    info = device_info()
    console.print(f"CPU: {info['cpu_model']}; load {info['loadavg']}")
    cells = [[r["model"], r["config"], f"{r['task']} {r['value']:.3f}"
              + (f"; per position {r['per_position']:.3f}" if "per_position" in r else ""),
              f"{r['sqnr']:.1f}"] for r in rows]
    print_table(console, "What limits the data-free W8A8 build (ONNX Runtime reference)",
                ["model", "configuration", "task metric vs float", "SQNR dB"], cells,
                args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
