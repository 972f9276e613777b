"""The build's config resolved: every "auto" and every default a stage would otherwise decide on
its own made concrete, in one module, so that no stage rewrites the config and the manifest
records the choices as made (docs/design.md, "Config").

    for_target(config, inputs, target, preprocess) -> Resolution
        before any stage runs: the target and input specs merged in, validated, the backend
        checked, the device, the int8 ISA (and whether it saturates), the activation scales,
        the default budget (--budget auto), what a --budget counts, no dynamic quantization
        of inputs mixed precision keeps float, the --calib images' preprocessing
    for_model(config, specs, preprocess, log) -> BuildConfig
        once the front end has read the model's inputs: their specs, what --preprocess says
        of an image input's values, how sparse orders are lowered, the ranges' source
        (--calib data) and --smooth auto

A Resolution's config is what every stage reads; `for_model` is its last change.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rexdeploy.config import CALIB_RANGES, BuildConfig
from rexdeploy.errors import UserError
from rexdeploy.inputspec import InputSpec, parse_input_specs


@dataclass(frozen=True)
class Resolution:
    """A config resolved for its target, the backend that builds it and the int8 ISA it builds
    for (backends.cpu_isa.Int8Isa)."""

    config: BuildConfig
    backend: object
    isa: object


def for_target(config: BuildConfig | None, inputs=(), target: str | None = None,
               preprocess: str | None = None) -> Resolution:
    """The config with what depends on the target made concrete (see the module's docstring);
    a UserError for a config that cannot build."""
    import backends

    config = config or BuildConfig()
    specs = tuple(s if isinstance(s, InputSpec) else None for s in inputs)
    if any(s is None for s in specs):
        specs = parse_input_specs([str(s) for s in inputs])
    config = replace(config, target=target or config.target, inputs=specs or config.inputs)
    rules = backends.rules(config.target)
    if config.device == "CPU":  # the CLI's default device; TensorRT's is the GPU
        config = replace(config, device=rules.default_device)
    config.validate()
    check_input_sizes(config.inputs)
    backend = backends.get(config.target)
    ok, why = backend.available()
    if not ok and (config.require_engine or not rules.defers):
        raise UserError(f"target {config.target} is unavailable here: {why}",
                        rules.unavailable_hint)
    isa = backend.int8_isa(config.quant.int8_isa, config.device)
    scales = config.quant.activation_scales
    if scales == "auto":
        scales = "depthwise" if rules.channel_activations else "tensor"
    timed = rules.cpu_cost_models and config.device.upper().startswith("CPU")
    quant = config.quant.with_(int8_isa=isa.name, int8_saturates=isa.saturates,
                               activation_scales=scales,
                               **weight_granularity(config.quant, rules),
                               **default_budget(config.quant, timed=timed))
    quant = quant.with_(**float_inputs_stay_float(quant, timed))
    if quant.budget is None and quant.budget_cost != "auto":
        raise UserError(f"--budget-cost {quant.budget_cost} says what a --budget counts, and "
                        "this build spends none (the default budget is for builds with int8 "
                        "activations for OpenVINO CPU)", "add --budget X, e.g. --budget 1.1")
    if quant.budget is not None:  # what the budget counts on this target and device
        from rexdeploy.planning.cost_models import resolve

        quant = quant.with_(budget_cost=resolve(quant.budget_cost, config.target,
                                                config.device, isa.saturates))
    if preprocess:
        from rexdeploy.inputs import parse_preprocess

        parse_preprocess(preprocess)  # validate before any work
        if quant.calib and not quant.calib_preprocess:  # images under --calib
            quant = quant.with_(calib_preprocess=preprocess)
    return Resolution(replace(config, quant=quant), backend, isa)


def default_budget(q, timed: bool) -> dict:
    """--budget auto made concrete: AUTO_BUDGET spent with --mixed-precision activations on a
    build with integer activations that asked for no cost of its own beyond its --orders (no
    --budget, --sparsity, --ensemble, --mixed-precision, --refine; the uniform operator; the
    sensitivity not turned off), for a target with a measured time model (`timed`: OpenVINO
    CPU, where the 5 % is 5 % of the time; bit-operations cannot say what a float layer between
    int8 ones costs on TensorRT). With --orders K >= 2 every layer keeps its K orders and the
    budget counts from that build's time (budget_from K): the 5 % buys order K + 1 where it
    pays most, and float activations. Otherwise {"auto_budget": False}, so that the resolved
    config says whether its budget came from here."""
    from rexdeploy.config import AUTO_BUDGET

    x = q.expansion
    if x.auto_budget and x.budget == AUTO_BUDGET and x.mixed_precision == "activations" and \
            x.budget_from == x.orders:
        return {}  # resolved already
    plain = x.budget is None and x.sparsity is None and not x.ensemble \
        and x.mixed_precision == "off" and x.sensitivity != "off" and x.budget_from == 1
    int8_inputs = q.activations == "int8" and q.operator == "uniform"
    if not (x.auto_budget and timed and plain and int8_inputs and q.calibration.refine == "none"):
        return {"auto_budget": False}
    return {"budget": AUTO_BUDGET, "mixed_precision": "activations", "budget_from": x.orders}


def float_inputs_stay_float(q, timed: bool) -> dict:
    """--dynamic-quantization 0 for an 8-bit-weight build whose --mixed-precision may keep
    activations float, on OpenVINO CPU, unless the user set it: a MatMul/Gemm whose input stays
    float runs on OpenVINO's compressed FullyConnected, whose own dynamic activation
    quantization would quantize that input again (a test CNN's device check: 21 dB away from
    its reference; equal with 0). With 8-bit weights those are the only compressed layers."""
    if timed and q.dynamic_quantization is None and q.weight_bits == 8 and \
            q.activations == "int8" and q.mixed_precision in ("activations", "all"):
        return {"dynamic_quantization": 0}
    return {}


# input columns per block of --block-size's default for 4-bit weight-only builds: all-MiniLM-L6-v2
# W4 K=1 mean cosine 0.945 per channel, 0.975 per block of 32, 0.960 per block of 128, at 1.02x
# the per-channel latency on OpenVINO (docs/benchmarks.md, "Balanced weight columns")
AUTO_BLOCK = 32


def weight_granularity(q, rules=None) -> dict:
    """granularity "auto" made concrete: per block of AUTO_BLOCK input columns for 4-bit
    weights, of a weight-only build, or beside int8 activations where the target keeps INT4
    tensors there (`rules`: backends.TargetRules; OpenVINO runs those Linears on its
    compressed-weight kernels either way: MiniLM W4A8 K=1 0.885 -> 0.964 mean cosine at the
    same latency); per output channel otherwise; {} when the user chose."""
    if q.granularity != "auto":
        return {}
    four = q.weight_bits == 4 and q.operator == "uniform"
    if four and (q.activations != "int8" or (rules is not None and not rules.int4_weight_only)):
        return {"granularity": "block", "block_size": AUTO_BLOCK}
    return {"granularity": "channel"}


def for_model(config: BuildConfig, specs, preprocess: str | None, log) -> BuildConfig:
    """The config with what depends on the model's inputs made concrete (see the module's
    docstring); `specs`: the input specs the front end read or was given."""
    config = _pixel_input(replace(config, inputs=tuple(specs)), preprocess, log)
    q = config.quant.with_(sparse_form=sparse_form(config))
    if q.calib is not None and not q.calib.startswith("synthetic"):
        q = q.with_(ranges=CALIB_RANGES)  # ranges observed on the user's data
    if q.smooth == "auto" and q.ranges != CALIB_RANGES and \
            any(s.dtype.startswith("float") and len(s.shape) >= 4 for s in config.inputs):
        # Migration follows the per-channel maxima it observes on the synthetic inputs: random
        # token sentences show a token model's channel pattern, Gaussian images do not show an
        # image model's (EfficientNet-Lite0 --ranges synthetic: 13.3 dB without, 1.4 dB with)
        q = q.with_(smooth="off")
    return replace(config, quant=q)


def sparse_form(config: BuildConfig) -> str:
    """How group-sparse orders are lowered for this target: the config's choice, else the
    target's measured preference (TargetRules.sparse_form; tools/bench/rex_latency.py)."""
    import backends

    if config.quant.sparse_form != "auto":
        return config.quant.sparse_form
    return backends.rules(config.target).sparse_form


def _pixel_input(config: BuildConfig, preprocess: str | None, log) -> BuildConfig:
    """What --preprocess says of a one-image-input model's input values: their range, where
    --input-range does not give it (without either, N(0, 1) would be assumed: EfficientNet-Lite0
    17.1 dB instead of 23.7), and their pixel grid (QuantConfig.input_grid), or for channels
    on grids of different steps those grids (QuantConfig.input_pixels: the input alignment)."""
    floats = [s for s in config.inputs if s.dtype.startswith("float")]
    if not preprocess or len(floats) != 1 or len(floats[0].shape) != 4:
        return config
    from rexdeploy.inputs import parse_preprocess

    pre, name, q = parse_preprocess(preprocess), floats[0].name, config.quant
    lo, hi = pre.value_range()
    given = {n: (a, b) for n, a, b in q.input_ranges}
    if name not in given:
        q = q.with_(input_ranges=q.input_ranges + ((name, lo, hi),))
        log.note(f"value range of input {name!r} taken from --preprocess {preprocess}: "
                 f"{lo:.4g} to {hi:.4g}")
    step, (steps, offsets) = pre.pixel_step(), pre.channel_grid()
    glo, ghi = given.get(name, (lo, hi))
    # a given range wider than the pixels' by more than a step says the input may hold other
    # values than these pixels: its scale then follows the range, not the grid
    widest = max(abs(s) for s in steps)
    inside = glo >= lo - 1.001 * widest and ghi <= hi + 1.001 * widest
    if step is not None and inside and name not in {n for n, _ in q.input_grid}:
        q = q.with_(input_grid=q.input_grid + ((name, step),))
    elif step is None and inside and len(set(steps)) > 1 \
            and name not in {n for n, _, _ in q.input_pixels}:
        # channels on grids of different steps (ImageNet's std): one scale fits none of them.
        # Where only the offset is off the grid (mean 0.5, std 0.5: pixels at odd multiples of
        # half the step) the input stays as it is: aligning its pixels would take x = 0 off
        # the grid, and inputs padded with 0 after normalising (PP-OCRv4's text lines, as
        # RapidOCR feeds them) read worse (CTC exact match 0.62 -> 0.56)
        q = q.with_(input_pixels=q.input_pixels + ((name, steps, offsets),))
    return replace(config, quant=q)


_ITEMSIZE = {"float32": 4, "float16": 2, "int64": 8, "int32": 4, "bool": 1, "uint8": 1}


def check_input_sizes(specs) -> None:
    """Refuse inputs too large to export on this machine, before any work (an export that
    swaps for minutes is worse than a clear error)."""
    available = _available_memory()
    for spec in specs:
        n = 1
        for d in spec.concrete_shape():  # named dims at 1: --dim is checked when used
            n *= d
        size = n * _ITEMSIZE.get(spec.dtype, 4)
        # export and statistics hold several activations of this size at once
        if available and size * 16 > available:
            raise UserError(f"--input {spec}: one example of this input is {size / 2**30:.1f} "
                            f"GiB, too large to export with {available / 2**30:.1f} GiB of "
                            "memory available", "check the shape for a typo, or build with a "
                            "smaller example shape (named dims stay dynamic)")


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
