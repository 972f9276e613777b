"""What a `--budget` counts: bit-operations, or a runtime's measured time per layer.

BOPs (M x b_w x b_a per layer, docs/algorithms.md section 2.1) leave out what a runtime pays besides
the multiply-accumulates: reading the weights, writing the outputs and, for every further REx
order, its float output and the sum of the orders. On OpenVINO's CPU plugin those dominate the
layers with few MACs per output element: a depthwise convolution's second order costs about 4x
its BOPs share, the 1280 x 1000 classifier's (batch 1, its weights read once per MAC) about 15x.

The coefficients below are int8-MAC equivalents per weight and per output element
(calib_free.weights.sparse.CostModel), fitted by least squares to the per-layer PERF_COUNT times of
EfficientNet-Lite0 built at K=1 and K=2 (50 layers each; the float input from the difference
one float depthwise input makes), one inference thread, AMD EPYC Zen 4 (AVX512-VNNI), openvino
2026.4.1: `tools/bench/cost_model.py` refits and checks them (docs/benchmarks.md, section "What a
`--budget` counts"; the refits scatter by up to 30 %, the check holds to 0.05 of the budget).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, fields

from calib_free.weights.sparse import BOPS, CostModel

OPENVINO_CPU = CostModel("openvino-cpu", per_weight=17.0, per_output=40.0,
                         per_extra_output=86.0, per_float_input=40.0, min_bits=8)
# The same fit on OpenVINO's pre-VNNI kernels (ONEDNN_MAX_CPU_ISA=AVX2 on an Intel Xeon with
# AMX, one inference thread, openvino 2026.4.1; two fits: per weight 10 / 10, per output 40 /
# 39, per extra-order output 62 / 68, per float input 0 / 0): `tools/bench/cost_model.py
# --mixed-precision off` run under the cap, whose check lands budgets 1.1 / 1.25 / 1.5 at
# 1.07 / 1.19 / 1.44x the order-1 time where BOPs land at 1.14 / 1.33 / 1.59x
# (docs/benchmarks.md, "int8 on CPUs without VNNI"). A CPU whose int8 ISA saturates
# (backends/cpu_isa.py) gets this one.
OPENVINO_CPU_AVX2 = CostModel("openvino-cpu-avx2", per_weight=10.0, per_output=40.0,
                              per_extra_output=65.0, per_float_input=0.0, min_bits=8)

MODELS = {m.name: m for m in (BOPS, OPENVINO_CPU, OPENVINO_CPU_AVX2)}  # config.BUDGET_COSTS


def for_target(target: str, device: str = "CPU", saturating_isa: bool = False
               ) -> CostModel | None:
    """The measured time model of a target and device (for OpenVINO CPU: the one of its int8
    instruction set's kind), None where there is none."""
    import backends

    if backends.rules(target).cpu_cost_models and device.upper().startswith("CPU"):
        return OPENVINO_CPU_AVX2 if saturating_isa else OPENVINO_CPU
    return None


def resolve(choice: str, target: str, device: str = "CPU", saturating_isa: bool = False) -> str:
    """The cost model's name for `--budget-cost choice`: auto is the target's time model where
    one is measured (on OpenVINO CPU, the one fitted on the target's kind of int8 ISA), else
    BOPs; time where none is measured is an error; a FILE.json (a model
    `tools/bench/cost_model.py --write` fitted on another machine) is read now, and its absolute
    path is the name. A resolved name stays."""
    from rexdeploy.errors import UserError

    if choice in MODELS:
        return choice
    if choice.endswith(".json"):
        path = os.path.abspath(choice)
        load(path)
        return path
    model = for_target(target, device, saturating_isa)
    if choice == "time" and model is None:
        raise UserError(f"--budget-cost time: no time model is measured for target {target} "
                        f"on {device}", "use --budget-cost bops")
    return (model or BOPS).name


def get(name: str) -> CostModel:
    if name.endswith(".json"):
        return load(name)
    return MODELS.get(name, BOPS)


def describe(name: str) -> dict:
    """What plan.json records of a cost model: its name and coefficients (none for BOPs)."""
    model = get(name)
    return {"budget_cost": name} | ({} if model is BOPS else {"budget_cost_model": asdict(model)})


@functools.lru_cache(maxsize=8)
def load(path: str) -> CostModel:
    """A CostModel from a JSON file of its fields (name, per_weight, per_output,
    per_extra_output, per_float_input, min_bits); one clear error for anything else."""
    from rexdeploy.errors import UserError

    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"--budget-cost {path}: cannot read a cost model: {exc}",
                        "write one with tools/bench/cost_model.py --write FILE.json") from None
    known = {f.name for f in fields(CostModel)}
    unknown = sorted(set(data) - known - {"fitted"}) if isinstance(data, dict) else data
    if unknown or not isinstance(data, dict):
        raise UserError(f"--budget-cost {path}: not a cost model (unknown: {unknown}); "
                        f"expected the fields {', '.join(sorted(known))}")
    values = {k: v for k, v in data.items() if k in known}
    for key, v in values.items():
        ok = isinstance(v, str) if key == "name" else \
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1e6
        if not ok or (key == "min_bits" and not (isinstance(v, int) and 1 <= v <= 32)):
            raise UserError(f"--budget-cost {path}: {key} = {v!r} is not valid")
    values.setdefault("name", os.path.basename(path))
    return CostModel(**values)


def layer_metrics(layer, name: str, bits_w: int, bits_a: int, fractions: list[float],
                  base_bits: tuple[int, int] | None = None) -> dict:
    """`cost` and `cost_order1` of a LayerInfo in the named model, for report.json; {} for
    BOPs, which the `bops` metrics already give. base_bits: the build's (b_w, b_a) of order 1
    where the layer runs at others (a mixed-precision raise)."""
    model = get(name)
    if model is BOPS:
        return {}
    row = layer.cost(None, bits_w, bits_a)
    return {"cost": model.layer(row, bits_w, bits_a, sum(fractions)),
            "cost_order1": model.order1(row, *(base_bits or (bits_w, bits_a)))}
