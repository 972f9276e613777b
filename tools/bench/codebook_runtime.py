#!/usr/bin/env python
"""Does OpenVINO keep lookup-table (codebook) weights compressed? The check behind lowering
PowerQuant weights as float (issue 7).

    .venv/bin/python tools/bench/codebook_runtime.py [--model FLOAT.onnx]

Compresses the MatMul weights of a float model with NNCF `compress_weights` in its CODEBOOK
mode (OpenVINO's codebook form: u4/u8 indices -> Gather from a table -> Multiply by group
scales), using the PowerQuant levels of a 4-bit power operator as the codebook, and, for
comparison, INT4_SYM; compiles both on the CPU and prints what every FullyConnected runs (the
runtime model's `runtimePrecision`, kernel and weight input type). NNCF is a benchmark-only
peer: without it the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--model", help="float ONNX [default: a 2-Linear FFN block built here]")
    ap.add_argument("--exponent", type=float, default=0.7, help="power operator exponent a")
    ap.add_argument("--group", type=int, default=32, help="NNCF group size")
    args = ap.parse_args()
    try:
        import nncf
    except Exception as exc:  # noqa: BLE001 - benchmark-only peer
        print(f"NNCF does not import ({type(exc).__name__}: {exc}); nothing to check")
        return 0
    import numpy as np
    import openvino as ov

    from calib_free.weights.power import levels

    core = ov.Core()
    model = core.read_model(args.model) if args.model else _ffn_model()
    codebook = levels(4, args.exponent).numpy().astype(np.float16)
    variants = {
        f"NNCF CODEBOOK (PowerQuant levels, a={args.exponent})": dict(
            mode=nncf.CompressWeightsMode.CODEBOOK, group_size=args.group,
            advanced_parameters=nncf.AdvancedCompressionParameters(codebook=codebook)),
        "NNCF INT4_SYM": dict(mode=nncf.CompressWeightsMode.INT4_SYM, group_size=args.group),
    }
    for label, kwargs in variants.items():
        compressed = nncf.compress_weights(model.clone(), ratio=1.0, all_layers=True, **kwargs)
        graph = Counter(op.get_type_name() for op in compressed.get_ordered_ops()
                        if op.get_type_name() in ("Gather", "Multiply", "Convert"))
        compiled = core.compile_model(compressed, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        runtime = Counter()
        for op in compiled.get_runtime_model().get_ops():
            rt = op.get_rt_info()
            kind = rt["layerType"].astype(str) if "layerType" in rt else ""
            if kind.startswith("FullyConnected"):
                weight = op.input(1).get_element_type().get_type_name()
                runtime[f"{kind} {rt['runtimePrecision'].astype(str)} "
                        f"(weight input {weight}, {rt['primitiveType'].astype(str)})"] += 1
        print(f"{label}\n  IR decompression ops: {dict(graph)}\n  runtime: {dict(runtime)}")
    print(f"openvino {ov.__version__}, nncf {nncf.__version__}")
    return 0


def _ffn_model():
    """Linear(256->512) -> GELU -> Linear(512->256) as an OpenVINO model (no file needed)."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([1, 16, 256], np.float32, name="x")
    w1 = ops.constant((rng.standard_normal((512, 256)) * 0.05).astype(np.float32))
    w2 = ops.constant((rng.standard_normal((256, 512)) * 0.05).astype(np.float32))
    h = ops.gelu(ops.matmul(x, w1, False, True), "erf")
    return ov.Model([ops.matmul(h, w2, False, True)], [x], "ffn")


if __name__ == "__main__":
    raise SystemExit(main())
