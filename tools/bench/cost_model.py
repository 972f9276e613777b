#!/usr/bin/env python
"""Fit and check the time model a `--budget` counts on OpenVINO CPU
(rexdeploy/planning/cost_models.py).

    .venv/bin/python tools/bench/cost_model.py [--rounds 7] [-n 40] [--budgets 1.1 1.25 1.5]
                                               [--write FILE.json]
                                               [--model M --input SPEC [--input-range R]
                                                [--preprocess P]]

1. Fit. EfficientNet-Lite0 (or --model) built at K=1, at K=2 (every layer's second order)
   and at K=1 with the first depthwise convolution kept float, where it has one (its input
   float: the one every `--mixed-precision activations` build keeps), each compiled on OpenVINO
   CPU with one inference thread and PERF_COUNT on; per-layer times (the nodes named after the
   layer) are fitted by least squares:
       order 1:        t = a M + b W + c O          (M MACs, W weights, O output elements)
       a further order: t = a2 M + b2 W + c2 O, plus the sum of the orders (the time of the
                        nodes no layer owns, K=2 minus K=1) spread as e per output element
       a float input:  the extra time of the layer, of the layer writing its input and of the
                       conversions, beyond 3 a M (f32 compute), per input element
   The per-layer split between terms moves by 30 % from run to run (2 noisy cores); what
   counts is the check below.
   and printed in int8-MAC units (per_weight = b / a, per_output = c / a, per_extra_output =
   (c2 + e) / a, per_float_input), beside the coefficients the code uses.
2. Check. `--budget X --mixed-precision activations` builds under both cost models (BOPs and
   the time model), timed interleaved with the K=1 build (CPU ms per inference, one thread,
   median of rounds: tools/bench/cpu_time.py): the ratio each model planned beside the ratio
   measured. A budget means what it says when the two agree. With --write, the fitted model
   is saved for `rexdeploy build --budget-cost FILE.json` and checked the same way.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, HERE)


@dataclass
class _Builder:
    """Builds the model under test (its inputs, preprocessing and input ranges) with QuantConfig
    overrides into --out/NAME; without the default budget unless asked (the fit needs exactly
    K=1 and K=2 with every activation int8)."""

    model: str
    inputs: list
    preprocess: str | None
    ranges: tuple
    out: str

    def __call__(self, name: str, **quant):
        import rexdeploy
        from rexdeploy.config import BuildConfig, QuantConfig

        cfg = BuildConfig(quant=QuantConfig(input_ranges=self.ranges,
                                            **({"auto_budget": False} | quant)))
        print(f"building {name} ...", flush=True)
        return rexdeploy.build(self.model, self.inputs, config=cfg, force=True, quiet=True,
                               output=os.path.join(self.out, name), preprocess=self.preprocess)


@dataclass
class _Fit:
    """The per-layer least-squares fit, ms per million: X the layers' (MACs, weights, outputs),
    own1 and own2 their measured times at order 1 and of a further order, (a, b, c) and
    (a2, b2, c2) the coefficients, e the sum of the orders per output element."""

    names: list
    X: np.ndarray
    own1: np.ndarray
    own2: np.ndarray
    a: float
    b: float
    c: float
    a2: float
    b2: float
    c2: float
    e: float


def main() -> int:
    """Fit the time model on the per-layer times, then check it on budget builds."""
    ap = _parser()
    args = ap.parse_args()

    from backends.openvino import int8_isa
    from rexdeploy.planning.cost_models import for_target

    isa = int8_isa("auto")
    OPENVINO_CPU = for_target("openvino", "CPU", isa.saturates)  # the model of this ISA's kind
    print(f"int8 ISA {isa.describe()}: the code's time model is {OPENVINO_CPU.name}")
    build = _builder(ap, args)

    k1, k2 = build("k1"), build("k2", orders=2)
    layers = _float_layers(k1)  # every build here shares this float graph
    dw = [n for n, l in layers.items() if 1 < l.groups == l.in_channels][:1]
    fdw = build("k1_float_dw", exclude=tuple(dw)) if dw else None
    t1, t2 = (_perf(a, args.profile_n) for a in (k1, k2))

    fit = _fit(layers, t1, t2)
    per_float_input = OPENVINO_CPU.per_float_input
    if fdw is not None:
        per_float_input = _fit_float_input(fit, layers, dw[0], _perf(fdw, args.profile_n), t1)
    else:
        print("no depthwise convolution: per_float_input kept from "
              "rexdeploy/planning/cost_models.py")
    _print_fit_errors(fit)
    fitted = {"per_weight": fit.b / fit.a, "per_output": fit.c / fit.a,
              "per_extra_output": (fit.c2 + fit.e) / fit.a, "per_float_input": per_float_input}
    print("\n| coefficient (int8-MAC units) | fitted now | in rexdeploy/planning/cost_models.py |")
    print("|---|---|---|")
    for key, val in fitted.items():
        print(f"| {key} | {val:.0f} | {getattr(OPENVINO_CPU, key):.0f} |")
    _check(args, build, k1, layers, fitted)
    return 0


def _parser() -> argparse.ArgumentParser:
    """The command line (see the module's docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (check)")
    ap.add_argument("-n", type=int, default=40, help="inferences per build per round (check)")
    ap.add_argument("--profile-n", type=int, default=200,
                    help="inferences averaged for the per-layer times (fit)")
    ap.add_argument("--budgets", type=float, nargs="*", default=[1.1, 1.25, 1.5])
    ap.add_argument("--write", metavar="FILE.json",
                    help="save the fitted model, for `rexdeploy build --budget-cost FILE.json` "
                         "on this machine; the check then also builds with it")
    ap.add_argument("--model", help="fit on this model (as `rexdeploy build` takes it) instead "
                                    "of the example EfficientNet-Lite0; needs --input")
    ap.add_argument("--input", action="append", default=[], metavar="NAME:DIMS[:DTYPE]",
                    help="input spec of --model (repeat per input)")
    ap.add_argument("--input-range", action="append", default=[], metavar="NAME:LO,HI")
    ap.add_argument("--preprocess", help="--preprocess of --model's image input")
    ap.add_argument("--mixed-precision", default="activations",
                    choices=("off", "activations"),
                    help="the check's budget builds: with float inputs bought where they pay "
                         "(activations, default) or orders only (off: under ONEDNN_MAX_CPU_ISA "
                         "OpenVINO cannot compile a float-input Linear with int8 weights, whose "
                         "kernel it picks by the CPU's own features)")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench", "cost_model"))
    return ap


def _builder(ap: argparse.ArgumentParser, args) -> _Builder:
    """The builder of --model (which needs --input), or of the example EfficientNet-Lite0."""
    import examples

    if args.model:
        if not args.input:
            ap.error("--model needs --input")
        model, inputs, preprocess = args.model, args.input, args.preprocess
        ranges = tuple(_range(r) for r in args.input_range)
    else:
        model, inputs = examples.ensure_example_model(), ["input:1x3x224x224"]
        preprocess, ranges = examples.EFFNET_PREPROCESS, (("input", -1.0, 1.0),)
    return _Builder(model, inputs, preprocess, ranges, args.out)


def _fit(layers: dict, t1: dict, t2: dict) -> _Fit:
    """Least squares of the layers' owned times at K=1 and K=2 on their MACs, weights and
    outputs, and the unowned time K=2 adds spread per output element; printed."""
    names = list(layers)
    X = np.array([[layers[n].macs, layers[n].weight_array.size, layers[n].outputs] for n in names],
                 float) / 1e6
    own1 = np.array([_owned(t1, n) for n in names])
    own2 = np.array([_owned(t2, n) for n in names]) - own1
    cond = np.linalg.cond(X / np.linalg.norm(X, axis=0))
    if cond > 100:  # e.g. a transformer's Linear layers: MACs = tokens x weights exactly
        print(f"warning: this model's layers have nearly proportional MACs, weights and outputs "
              f"(condition {cond:.0f}): the split between the terms is arbitrary; fit on a "
              "model with varied layers (the default EfficientNet-Lite0)")
    (a, b, c), *_ = np.linalg.lstsq(X, own1, rcond=None)
    (a2, b2, c2), *_ = np.linalg.lstsq(X, own2, rcond=None)
    unowned = _unowned(t2, names) - _unowned(t1, names)
    e = unowned / X[:, 2].sum()
    print(f"\nper-layer fit, ms per million: order 1 a={a:.4f} (MACs) b={b:.4f} (weights) "
          f"c={c:.4f} (outputs); further order a2={a2:.4f} b2={b2:.4f} c2={c2:.4f}; "
          f"sum of orders e={e:.4f} per output ({unowned:.3f} ms in all)")
    return _Fit(names, X, own1, own2, a, b, c, a2, b2, c2, e)


def _fit_float_input(fit: _Fit, layers: dict, dw: str, tf: dict, t1: dict) -> float:
    """per_float_input in int8-MAC units, from the build with depthwise layer `dw`'s input float
    (times `tf`) against K=1 (times `t1`); printed."""
    # the float input's own cost: the layer, its producer's float output, the conversions
    # (the nodes no layer owns); the other layers' times only add their noise
    names = fit.names
    prev = names[names.index(dw) - 1]
    extra_f = sum(_owned(tf, n) - _owned(t1, n) for n in (dw, prev)) + \
        _unowned(tf, names) - _unowned(t1, names)
    macs_dw = layers[dw].macs / 1e6
    inputs_dw = layers[dw].inputs / 1e6
    per_float_input = max(extra_f - 3 * fit.a * macs_dw, 0.0) / inputs_dw / fit.a
    print(f"float input of {dw}: {extra_f:.3f} ms over {inputs_dw:.2f} M elements")
    return per_float_input


def _print_fit_errors(fit: _Fit) -> None:
    """The fit's relative error per layer, beside that of BOPs alone (time proportional to
    MACs)."""
    X = fit.X
    for label, pred, meas in (("order 1", X @ [fit.a, fit.b, fit.c], fit.own1),
                              ("further order", X @ [fit.a2, fit.b2, fit.c2], fit.own2)):
        rel = np.abs(pred - meas) / np.maximum(meas, 1e-6)
        bops = X[:, 0] * (meas.sum() / X[:, 0].sum())
        rel_bops = np.abs(bops - meas) / np.maximum(meas, 1e-6)
        print(f"  {label}: median relative error {np.median(rel):.0%} (BOPs alone: "
              f"{np.median(rel_bops):.0%}), worst {rel.max():.0%} (BOPs alone: "
              f"{rel_bops.max():.0%})")


def _check(args, build: _Builder, k1, layers: dict, fitted: dict) -> None:
    """The check: budget builds under each cost model (and the fitted one with --write), timed
    interleaved with K=1; the ratios planned beside the ratio measured, as a table."""
    costs = ["bops", "time"]
    if args.write:
        _write(args.write, fitted)
        costs.append(os.path.abspath(args.write))
    checks = [("K=1", k1)]
    for x in args.budgets:
        for cost in costs:
            tag = "fitted" if cost.endswith(".json") else cost
            checks.append((f"budget {x:g}, {tag}",
                           build(f"b{x:g}_{tag}", budget=x,
                                 mixed_precision=args.mixed_precision, budget_cost=cost)))
    print(f"\ntiming {len(checks)} builds, {args.rounds} interleaved rounds x {args.n} ...",
          flush=True)
    from cpu_time import interleaved_cpu_ms

    from rexdeploy.api import artifact_runner

    ms = interleaved_cpu_ms([lambda a_=a_: artifact_runner(a_, threads=1) for _, a_ in checks],
                            [_feeds(a_) for _, a_ in checks], args.rounds, args.n)
    print("\n| build | planned BOPs x | planned time x (its own model; BOPs builds: the code's) "
          "| measured CPU time x K=1 |")
    print("|---|---|---|---|")
    for (label, art), t in zip(checks, ms):
        s = art.manifest["summary"]
        timed = s["cost_ratio"] if "cost_ratio" in s else _planned_time(art, layers)
        print(f"| {label} | {s.get('bops_ratio', 1.0):.2f} | {timed:.2f} | {t / ms[0]:.2f} |")


def _range(text: str) -> tuple[str, float, float]:
    name, _, bounds = text.partition(":")
    lo, hi = (float(v) for v in bounds.split(","))
    return name, lo, hi


def _feeds(art) -> dict:
    """Inputs of the artifact's shapes: values in [-1, 1] for float inputs, zeros for integer
    ones (token ids, masks); timing does not depend on them."""
    rng = np.random.default_rng(0)
    feeds = {}
    for i in art.manifest["inputs"]:
        shape = [d if isinstance(d, int) else 1 for d in i["shape"]]
        dtype = np.dtype(i.get("dtype", "float32"))
        feeds[i["name"]] = rng.uniform(-1, 1, shape).astype(dtype) if dtype.kind == "f" \
            else np.zeros(shape, dtype)
    return feeds


def _write(path: str, fitted: dict) -> None:
    """The fitted coefficients as a cost model file (rexdeploy.planning.cost_models.load reads
    it)."""
    import json
    import platform

    import openvino as ov

    from rexdeploy.devinfo import device_info

    from backends.openvino import int8_isa

    model = {"name": f"openvino-cpu fitted on {platform.node() or 'this machine'} "
                     f"({int8_isa('auto').name})",
             **{k: round(max(v, 0.0), 1) for k, v in fitted.items()}, "min_bits": 8,
             "fitted": {"cpu": device_info().get("cpu_model", "?"),
                        "openvino": ov.get_version(), "by": "tools/bench/cost_model.py"}}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(model, f, indent=1)
    print(f"wrote {path}")


def _float_layers(art) -> dict:
    """name -> LayerInfo of the build's float ONNX (sizes: MACs, weights, outputs, inputs)."""
    import onnx_ir as ir

    from rexdeploy.planning.analyze import find_layers

    return {l.name: l for l in find_layers(ir.load(art.file("float_onnx")))[0]}


def _model_of(art):
    """The code's time model for the artifact's int8 ISA."""
    from rexdeploy.planning.cost_models import for_target

    return for_target("openvino", "CPU", art.manifest["summary"]["int8_isa"]["saturates"])


def _planned_time(art, layers: dict) -> float:
    """What the time model says of a build planned in BOPs (its layers' orders and inputs)."""
    from rexdeploy.planning.cost_models import layer_metrics

    OPENVINO_CPU = _model_of(art)
    cost = base = 0.0
    for r in art.report()["layers"]:
        bits_a = 8 if r["activation"] is not None else 32
        m = layer_metrics(layers[r["name"]], OPENVINO_CPU.name, max(r["bits"]), bits_a,
                          r["kept_fraction"], (8, 8))  # the build's order 1: W8A8
        cost, base = cost + m["cost"], base + m["cost_order1"]
    return cost / base


def _perf(art, n: int) -> dict[str, float]:
    """Node name -> mean ms per inference (PERF_COUNT, one inference thread)."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(art.file("ir_xml")), "CPU",
                                  {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": 1,
                                   "INFERENCE_PRECISION_HINT": "f32"})
    req = compiled.create_infer_request()
    feeds = _feeds(art)
    for _ in range(20):
        req.infer(feeds)
    acc: dict[str, float] = {}
    for _ in range(n):
        req.infer(feeds)
        for p in req.profiling_info:
            acc[p.node_name] = acc.get(p.node_name, 0.0) + p.real_time.total_seconds() * 1e3 / n
    return acc


def _owned(perf: dict, layer: str) -> float:
    return sum(t for name, t in perf.items() if name.startswith(layer + "/"))


def _unowned(perf: dict, layers: list[str]) -> float:
    return sum(t for name, t in perf.items()
               if not any(name.startswith(layer + "/") for layer in layers))


if __name__ == "__main__":
    sys.exit(main())
