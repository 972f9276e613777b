"""Build configuration: small frozen dataclasses that serialise to JSON with a version.

`BuildConfig` is what `rexdeploy.build` takes and what the artifact manifest records; the CLI
only maps flags onto it. Pure Python: no torch import.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Literal, get_args, get_origin, get_type_hints

from rexdeploy.errors import UserError
from rexdeploy.inputspec import InputSpec

CONFIG_VERSION = 2  # 2: QuantConfig nested by concern (1: flat)
# Every choice a field takes is its Literal type: the CLI offers choices(cls, field) and
# validate() checks every Literal-typed field the same way (check_choices).
Weights = Literal["int8", "int6", "int5", "int4", "int3", "int2"]
WEIGHT_BITS = {"int8": 8, "int6": 6, "int5": 5, "int4": 4, "int3": 3, "int2": 2}
Activations = Literal["int8", "none", "fp16"]
FloatPrecision = Literal["auto", "fp16", "fp32"]
Centering = Literal["auto", "all", "pointwise", "off"]
Operator = Literal["uniform", "power"]
RefineInputs = Literal["quantized", "float"]  # rexdeploy/planning/refine_sequential.py
RangeSource = Literal["auto", "stats", "synthetic", "zeroq"]  # --ranges
# what a build records when the user's --calib data gave the ranges: never a --ranges choice,
# but a valid value of a resolved config (the manifest's config validates as it was built)
CALIB_RANGES = "calib"
Ranges = Literal[RangeSource, "calib"]
Granularity = Literal["auto", "channel", "tensor", "block"]
Partition = Literal["balanced", "contiguous", "bops"]
SparseForm = Literal["auto", "dense", "compact", "gather"]
BudgetCostChoice = Literal["auto", "bops", "time"]  # --budget-cost (or a FILE.json)
SmoothMode = Literal["auto", "all", "off"]
Rounding = Literal["auto", "nearest", "dc"]
MixedMode = Literal["off", "weights", "activations", "all"]
SensitivityMode = Literal["auto", "on", "off"]
Refine = Literal["none", "flexround", "erq"]
OverflowFix = Literal["auto", "on", "off"]
ActivationScales = Literal["auto", "depthwise", "tensor"]
Equalize = Literal["auto", "off"]
Recurrent = Literal["float", "int8"]
Attention = Literal["scores", "int8", "float"]
Balance = Literal["auto", "sinkhorn", "off"]
Rotate = Literal["auto", "off", "ffn"]
SplitIdentity = Literal["auto", "all", "off"]

BUDGET_COST_CHOICES = get_args(BudgetCostChoice)
BUDGET_COSTS = BUDGET_COST_CHOICES + ("openvino-cpu", "openvino-cpu-avx2")  # + resolved
# names (cost_models.py)
MAX_ENSEMBLE = 8
MAX_ORDERS = 4  # the highest REx order (--orders 1..MAX_ORDERS)
# the budget a build with int8 activations gets when none is given (--budget auto, the default;
# rexdeploy/resolve.py default_budget), spent with --mixed-precision activations: the activations
# whose int8 grid hurts the output most on the build's synthetic inputs stay float, REx second
# orders where they pay more (with --orders K: counted from the K-order build, order K + 1).
# Measured against order 1 everywhere (docs/benchmarks.md, "A small budget by default"):
# EfficientNet-Lite0 23.7 -> 25.8 dB at 1.02x the CPU time; ddddocr's detector keeps 0.92 -> 0.98
# of the float detections, PP-OCRv4's recogniser reads 0.62 -> 0.87 of the lines exactly;
# EfficientNet-Lite0 W4A8 K=2 23.4 -> 25.5 dB ("The default budget over --orders K")
AUTO_BUDGET = 1.05
# a hint beside the "use one of" error, where the choices alone do not say enough
_CHOICE_HINTS = {"refine_inputs": "quantized (default): each layer on the inputs the quantized "
                                  "model gives it; float: on the float model's inputs"}


@functools.cache
def _hints(cls) -> dict:
    return get_type_hints(cls)


def choices(cls, name: str) -> tuple[str, ...]:
    """What the flag of the Literal-typed field `name` of the dataclass `cls` offers (the CLI's
    choices); () for a field of another type. CALIB_RANGES is a resolved value, never offered."""
    hint = _hints(cls)[name]
    if get_origin(hint) is not Literal:
        return ()
    return tuple(c for c in get_args(hint) if c != CALIB_RANGES)


def flat_field(name: str) -> tuple[type, str]:
    """(dataclass, its field) of a QuantConfig flat name (the flag's, --orders: "orders"): a
    group's field, or QuantConfig's own; KeyError for a name that is neither."""
    if name in _FLAT:
        group, fname = _FLAT[name]
        return _GROUPS[group], fname
    if name in QUANT_FLAGS:
        return QuantConfig, name
    raise KeyError(name)


def check_choices(config) -> None:
    """Every Literal-typed field of the dataclass `config` holds one of its values; else one
    UserError naming the flag (--field-name) and its choices."""
    flags = _FLAG_NAMES.get(type(config), {})
    for f in dataclasses.fields(config):
        hint, value = _hints(type(config))[f.name], getattr(config, f.name)
        if get_origin(hint) is Literal and value not in get_args(hint):
            name = flags.get(f.name, f.name)
            flag = name if name == "granularity" else "--" + name.replace("_", "-")
            raise UserError(f"{flag} {value}: use one of "
                            f"{', '.join(choices(type(config), f.name))}",
                            _CHOICE_HINTS.get(name))


# -- the quantization config, by concern ----------------------------------------------------------
@dataclass(frozen=True)
class WeightConfig:
    """How each layer's weights are quantized."""

    format: Weights = "int8"            # --weights
    operator: Operator = "uniform"      # uniform grid, or PowerQuant's power operator (a lookup
                                        # table per layer; runs in float)
    # scales per output channel, per tensor, per block of input columns (MatMul/Gemm weights;
    # a convolution keeps per-channel scales); auto: blocks of AUTO_BLOCK for 4-bit weights
    # where the target keeps them INT4, per channel otherwise (rexdeploy/resolve.py)
    granularity: Granularity = "auto"
    block_size: int | None = None       # input columns per block (granularity="block")
    clip_search: bool = False           # MSE-optimal weight clip instead of max-abs
    rounding: Rounding = "auto"         # nearest, or dc: each conv kernel keeps its code sum
                                        # (calib_free.weights.quantizer.preserve_sums); auto: dc for
                                        # the uniform operator, nearest for power
    # int8 kernels without VNNI add pairs of products in a saturating int16
    # (calib_free.weights.saturation): auto limits weight-code pairs where the target's int8 ISA
    # (QuantConfig.int8_isa) saturates, on / off always / never
    overflow_fix: OverflowFix = "auto"
    # OpenVINO compressed FullyConnected: group size of its dynamic activation quantization (0 =
    # off, None = the runtime's default)
    dynamic_quantization: int | None = None
    # balanced weight columns (calib_free.weights.balance) of MatMul/Gemm layers whose input
    # stays float, the input multiplied by the inverse in front of them: sinkhorn at any bits,
    # auto below 8 bits with the uniform operator, off never
    balance: Balance = "auto"           # --weight-balance
    # a convolution's dominant diagonal (a reparameterised block's folded identity) computed
    # beside it as a float per-channel Mul (rexdeploy/passes/split_identity.py): auto where that
    # raises the layer's weight SQNR by 3 dB or more, off never
    split_identity: SplitIdentity = "auto"

    def validate(self) -> None:
        check_choices(self)
        if self.balance == "sinkhorn" and self.operator != "uniform":
            raise UserError("--weight-balance sinkhorn applies to the uniform quantizer; "
                            "--operator power fits its exponent to the weights as they are",
                            "drop --weight-balance")
        if self.granularity == "block" and not self.block_size:
            raise UserError("per-block weight scales need a block size (e.g. 32, 64 or 128)")
        if self.operator == "power" and self.clip_search:
            raise UserError("--clip-search applies to the uniform operator; --operator power "
                            "searches its exponent instead (max-abs clips)",
                            "drop --clip-search")
        if self.rounding == "dc" and self.operator != "uniform":
            raise UserError("--rounding dc applies to the uniform quantizer only",
                            "drop --rounding or --operator power")
        if self.dynamic_quantization is not None and not 0 <= self.dynamic_quantization <= 4096:
            raise UserError(f"--dynamic-quantization {self.dynamic_quantization}: a group size "
                            "(e.g. 32, 64, 128) or 0 to turn it off")


@dataclass(frozen=True)
class ExpansionConfig:
    """REx: how many low-bit kernels each weight is a sum of, and how they are spent."""

    orders: int = 1                     # REx expansion order K (1 = plain rounding)
    sparsity: float | None = None       # gamma: orders >= 2 cover this fraction of channels
    budget: float | None = None         # total BOPs <= budget x order-1 BOPs (greedy allocation)
    budget_cost: str = "auto"           # what --budget counts: auto (the target's measured time
                                        # model where there is one, else bops) | bops | time |
                                        # FILE.json; resolved at build time to a
                                        # rexdeploy.planning.cost_models name or the file's
                                        # absolute path
    ensemble: int = 0                   # M >= 2: layer-partition ensemble of M members + base
    # how layers are split among the members (measured best: docs/benchmarks.md)
    ensemble_partition: Partition = "contiguous"
    sparse_form: SparseForm = "auto"    # lowering of sparse orders: auto (the target's), dense,
                                        # compact
    # auto mixed precision (rexdeploy/planning/sensitivity.py, rexdeploy/planning/mixed.py,
    # calib_free/mixed.py): measure each layer's data-free output sensitivity and let --budget
    # use it (weigh the order allocation; --mixed-precision also buys int8 weights / float
    # activations); auto: on with --mixed-precision, and with a --budget that buys whole layers
    sensitivity: SensitivityMode = "auto"
    mixed_precision: MixedMode = "off"  # off | weights | activations | all
    # --budget auto (the default): a build with int8 activations given no --budget, --sparsity,
    # --ensemble or --mixed-precision gets AUTO_BUDGET with --mixed-precision activations
    # (rexdeploy/resolve.py default_budget; over --orders K when K >= 2); --budget off (False):
    # exactly --orders and int8 activations everywhere
    auto_budget: bool = True
    # the orders every layer keeps under a --budget, which then counts from that build's cost
    # (budget x the cost at budget_from orders) and buys order budget_from + 1 and float
    # activations above it; set by --budget auto for a build with --orders K >= 2 (1: the budget
    # counts from order 1, as a --budget the user gives)
    budget_from: int = 1

    def validate(self) -> None:
        check_choices(self)
        if not 1 <= self.orders <= MAX_ORDERS:
            raise UserError(f"--orders {self.orders}: the expansion order must be 1..{MAX_ORDERS}")
        if not 1 <= self.budget_from <= self.orders:
            raise UserError(f"budget_from {self.budget_from}: the orders every layer keeps under "
                            f"a budget must be 1..--orders ({self.orders})")
        if self.budget_from > 1 and (self.budget is None or self.mixed_precision == "off"):
            raise UserError(f"budget_from {self.budget_from} counts a --budget from REx "
                            f"K={self.budget_from}, spent by --mixed-precision; this build has "
                            "no budget or no --mixed-precision", "drop budget_from")
        if self.sparsity is not None:
            if not 0.0 < self.sparsity <= 1.0:
                raise UserError(f"--sparsity {self.sparsity}: the kept fraction of channels must "
                                "be in (0, 1], e.g. 0.25")
            if self.orders < 2:
                raise UserError("--sparsity applies to orders 2 and up, but --orders is 1",
                                "add --orders 2 (or more)")
            if self.budget is not None:
                raise UserError("give either --sparsity (the same fraction in every layer) or "
                                "--budget (the allocator chooses), not both")
        if self.budget is not None and not 1.0 <= self.budget <= 16.0:
            raise UserError(f"--budget {self.budget}: a multiple of the order-1 "
                            "bit-operations, from 1 (no expansion) to 16, e.g. 1.25")
        if self.ensemble:
            if not 2 <= self.ensemble <= MAX_ENSEMBLE:
                raise UserError(f"--ensemble {self.ensemble}: the number of members must be 2.."
                                f"{MAX_ENSEMBLE}")
            if self.orders > 2:
                raise UserError(f"--ensemble expands to order 2 (members share order 1 and split "
                                f"order 2 among them); --orders {self.orders} cannot be combined",
                                "drop --orders, or build the exact expansion without --ensemble")
        if self.budget_cost not in BUDGET_COSTS and not self.budget_cost.endswith(".json"):
            raise UserError(f"--budget-cost {self.budget_cost}: use one of "
                            f"{', '.join(BUDGET_COST_CHOICES)} or a FILE.json")
        if self.budget_cost != "auto" and self.budget is None and not self.auto_budget:
            raise UserError(f"--budget-cost {self.budget_cost} says what a --budget counts, and "
                            "no --budget was given", "add --budget X, e.g. --budget 1.1")

    @property
    def whole_layers(self) -> bool:
        """Whether --budget buys whole layers: where sparse orders are lowered as dense kernels
        with zero rows (--sparse-form dense; auto unresolved counts as dense, every backend's
        choice), a layer with one kept channel runs its whole second branch and pays for it."""
        return self.sparse_form in ("auto", "dense")

    @property
    def max_orders(self) -> int:
        """The highest order any layer gets: --orders, at least 2 under a budget or ensemble,
        and one more than budget_from (up to MAX_ORDERS) when the budget counts from there."""
        if self.budget is not None or self.ensemble:
            return max(self.orders, 2, min(self.budget_from + 1, MAX_ORDERS))
        return self.orders


@dataclass(frozen=True)
class ActivationConfig:
    """How activations are quantized and where their ranges come from."""

    format: Activations = "int8"        # --activations
    ranges: Ranges = "auto"             # BN statistics (+ synthetic fallback), "stats" (BN+LN),
                                        # "synthetic", "zeroq"
    range_sigma: float = 4.0            # range = max_c |mean_c| + sigma * std_c for moment sources
    synthetic_samples: int = 8
    zeroq_steps: int = 100
    input_ranges: tuple[tuple[str, float, float], ...] = ()  # (input name, lo, hi)
    # (input name, step): the input's values are integer multiples of step (8-bit pixels through
    # --preprocess, rexdeploy.inputs.Preprocess.pixel_step); its int8 scale is step where the
    # pixel codes fit the integer range, so quantizing the input loses nothing
    input_grid: tuple[tuple[str, float], ...] = ()
    # (input name, steps, offsets): an image input normalised per channel, x_c = (p - offsets_c)
    # * steps_c for 8-bit pixels p (--preprocess with ImageNet's mean and std); unless
    # align_input is off, the first convolution reads it moved onto one grid where every pixel is
    # an exact int8 code (rexdeploy/passes/align_input.py)
    input_pixels: tuple[tuple[str, tuple[float, ...], tuple[float, ...]], ...] = ()
    align_input: bool = True
    bias_correction: bool = True        # data-free DFQ-style correction from BN statistics
    unsigned: bool = True               # uint8 (zero-point 0) for non-negative tensors where the
                                        # target allows it (OpenVINO); TensorRT forces int8
    # uint8 with a zero point for a tensor bounded below by a small negative value whatever the
    # input (swish, hard-swish, GELU outputs: rexdeploy/planning/bounds.py), where the target
    # runs one (TargetRules.zero_point_activations: OpenVINO); off: int8 over [-hi, hi] there
    zero_points: bool = True
    smooth: SmoothMode = "auto"         # scale migration on MatMul/Gemm inputs with
                                        # synthetic ranges (calib_free.activations.smooth):
                                        # auto (outlier-heavy ones), all, off
    smooth_alpha: float = 0.7           # migration strength (0: none to the weights, 1: all)
    # cross-layer range equalization of depthwise inputs (rexdeploy/passes/equalize.py):
    # auto: where a convolution (and a ReLU) makes a depthwise input whose channels' ranges
    # differ by 1.5x or more; off: never
    equalize: Equalize = "auto"
    # one int8 scale per channel on the inputs of depthwise convolutions ("depthwise"), or one
    # per tensor everywhere ("tensor"); auto: depthwise where the target runs it
    # (TargetRules.channel_activations), resolved at build time
    scales: ActivationScales = "auto"   # --activation-scales
    # LSTM/GRU layers (rexdeploy/planning/recurrent.py): float keeps them float (listed); int8 runs
    # them on OpenVINO's int8 RNN kernel, which also quantizes the fed-back hidden state
    recurrent: Recurrent = "float"
    # MatMuls whose two inputs are activations (attention Q x K^T and P x V;
    # rexdeploy/planning/attention.py), where the target runs them int8
    # (TargetRules.int8_attention; elsewhere they stay float, listed): scores quantizes both
    # inputs of those that read no Softmax output (Q x K^T), int8 all of them, float none
    attention: Attention = "scores"
    # block Hadamard rotation of the inputs of FFN output Linears (GELU/SiLU outputs;
    # rexdeploy/passes/rotate.py), exact in float, with int8 activations: ffn rotates them all,
    # auto the most outlier-heavy (rexdeploy.planning.stage.ROTATE_SHARE; all six cost MiniLM
    # 9-17 % latency, its four worst 6 %), off none
    rotate: Rotate = "auto"

    def validate(self) -> None:
        check_choices(self)
        if not 0.0 <= self.smooth_alpha <= 1.0:
            raise UserError(f"--smooth-alpha {self.smooth_alpha}: must be in [0, 1]",
                            "drop it for the default 0.7")
        if not 0.5 <= self.range_sigma <= 20:
            raise UserError(f"--range-sigma {self.range_sigma}: expected 0.5..20",
                            "drop it for the default 4")
        for name, lo, hi in self.input_ranges:
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise UserError(f"--input-range {name}:{lo},{hi}: bounds must be finite",
                                f"e.g. --input-range {name}:-1,1")
            if not lo < hi:
                raise UserError(f"--input-range {name}:{lo},{hi}: low must be below high",
                                f"e.g. --input-range {name}:-1,1")
        for name, step in self.input_grid:
            if not (math.isfinite(step) and step > 0):
                raise UserError(f"input grid step {step} of {name}: must be a positive number")


@dataclass(frozen=True)
class CalibConfig:
    """Data the user gives (or synthetic inputs) and the refinements that use it
    (rexdeploy/planning/calib_data.py, rexdeploy/planning/refine.py)."""

    data: str | None = None             # --calib synthetic[:N] | PATH (user data also sets the
                                        # activation ranges)
    preprocess: str | None = None       # images under --calib (default: --preprocess)
    tokenizer: str | None = None        # tokenizer.json for a --calib .txt file
    refine: Refine = "none"             # none | flexround | erq
    refine_iters: int = 100             # FlexRound Adam steps per layer and order (cosine decay)
    # quantized (sequential) | float (refine_sequential.py)
    refine_inputs: RefineInputs = "quantized"

    def validate(self) -> None:
        check_choices(self)
        if not 1 <= self.refine_iters <= 100000:
            raise UserError(f"--refine-iters {self.refine_iters}: expected 1..100000",
                            "drop it for the default 100")
        if self.data is not None:
            from rexdeploy.planning.calib_data import parse_calib

            parse_calib(self.data)


_GROUPS = {"weight": WeightConfig, "expansion": ExpansionConfig, "activation": ActivationConfig,
           "calibration": CalibConfig}
# flat names (the flags' and the version-1 manifest's) whose field in their group is named
# differently
_RENAMED = {"weights": ("weight", "format"), "activations": ("activation", "format"),
            "unsigned_activations": ("activation", "unsigned"),
            "activation_scales": ("activation", "scales"), "calib": ("calibration", "data"),
            "weight_balance": ("weight", "balance"),
            "calib_preprocess": ("calibration", "preprocess"),
            "calib_tokenizer": ("calibration", "tokenizer")}
# flat name -> (group, field), for every field of every group
_FLAT = {f.name: (g, f.name) for g, cls in _GROUPS.items() for f in dataclasses.fields(cls)
         if (g, f.name) not in _RENAMED.values()} | _RENAMED
# every flat name QuantConfig takes: its groups' fields (by flag name) and its own
QUANT_FLAGS = frozenset(_FLAT) | {"exclude", "seed", "int8_isa", "int8_saturates"}
_FLAG_NAMES = {_GROUPS[g]: {f: flat for flat, (gg, f) in _FLAT.items() if gg == g}
               for g in _GROUPS}


@dataclass(frozen=True, init=False)
class QuantConfig:
    """What to quantize and how, by concern: weights, REx expansion, activations, calibration
    data; plus what applies to all (layers kept float, seed, the target's int8 ISA). Defaults are
    the data-free W8A8 recipe.

    Built nested (`QuantConfig(weight=WeightConfig(format="int4"))`) or by the flags' flat
    names (`QuantConfig(weights="int4", orders=2)`), which also read back (`q.orders` is
    `q.expansion.orders`); `with_(**flat)` is the copy with some changed. Serialised nested
    (to_dict / from_dict; a version-1 manifest's flat dict reads too)."""

    weight: WeightConfig = WeightConfig()
    expansion: ExpansionConfig = ExpansionConfig()
    activation: ActivationConfig = ActivationConfig()
    calibration: CalibConfig = CalibConfig()
    exclude: tuple[str, ...] = ()       # layer (node) names kept in float
    seed: int = 0
    # the target CPU's int8 instruction set (backends/cpu_isa.py): auto detects it on this host
    # at build time and is replaced by the name (the plan records it); a name builds for
    # another CPU (a cross-build)
    int8_isa: str = "auto"
    int8_saturates: bool = False        # resolved at build time with int8_isa

    def __init__(self, weight: WeightConfig | None = None,
                 expansion: ExpansionConfig | None = None,
                 activation: ActivationConfig | None = None,
                 calibration: CalibConfig | None = None, exclude: tuple[str, ...] = (),
                 seed: int = 0, int8_isa: str = "auto", int8_saturates: bool = False, **flat):
        groups = {"weight": weight or WeightConfig(), "expansion": expansion or ExpansionConfig(),
                  "activation": activation or ActivationConfig(),
                  "calibration": calibration or CalibConfig()}
        changes: dict[str, dict] = {}
        for name, value in flat.items():
            if name not in _FLAT:
                raise TypeError(f"QuantConfig got an unexpected keyword argument {name!r}")
            group, fname = _FLAT[name]
            changes.setdefault(group, {})[fname] = value
        for group, values in changes.items():
            groups[group] = dataclasses.replace(groups[group], **values)
        for name, value in {**groups, "exclude": exclude, "seed": seed, "int8_isa": int8_isa,
                            "int8_saturates": int8_saturates}.items():
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str):
        """A flat name reads its group's field (`q.orders`: `q.expansion.orders`)."""
        if name in _FLAT:
            group, fname = _FLAT[name]
            return getattr(object.__getattribute__(self, group), fname)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def with_(self, **changes) -> "QuantConfig":
        """This config with some fields changed, by group or by flat name."""
        current = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        flat = {k: v for k, v in changes.items() if k not in current}
        return QuantConfig(**{**current, **{k: v for k, v in changes.items() if k in current}},
                           **flat)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        """The config a manifest recorded: nested (version 2) or flat (version 1). A field this
        version does not have is dropped; a missing one takes its default."""
        top = {f.name for f in dataclasses.fields(cls)} - set(_GROUPS)
        # version 1 wrote the flat names; they apply on top of any group (as in __init__)
        kwargs = {k: v for k, v in d.items() if k in top or k in _FLAT}
        for group, gcls in _GROUPS.items():
            if isinstance(d.get(group), dict):
                kwargs[group] = gcls(**_known(gcls, d[group]))
        if "auto_budget" not in (d.get("expansion") or d):  # written before --budget auto: its
            kwargs["auto_budget"] = False                   # build had no default budget
        q = cls(**kwargs)
        a = q.activation  # JSON wrote the tuples as lists
        return q.with_(input_ranges=tuple(tuple(r) for r in a.input_ranges),
                       input_grid=tuple(tuple(r) for r in a.input_grid),
                       input_pixels=tuple((n, tuple(st), tuple(of))
                                          for n, st, of in a.input_pixels),
                       exclude=tuple(q.exclude))

    @property
    def pair_limit(self) -> int | None:
        """The largest |sum| of a same-sign pair of int8 weight codes (128), or None where no
        limit applies (--overflow-fix off, or auto on an ISA that does not saturate)."""
        fix = self.weight.overflow_fix
        if not (fix == "on" or (fix == "auto" and self.int8_saturates)):
            return None
        from calib_free.weights.saturation import PAIR_LIMIT

        return PAIR_LIMIT

    @property
    def uses_sensitivity(self) -> bool:
        """auto: on with --mixed-precision, and with a --budget that buys whole layers (the
        dense sparse form): there the plain score, the share of a layer's own error an order
        removes, is about 1 for every layer and ranks them by BOPs alone. Measured
        (docs/benchmarks.md, whole-layer rerun): the sensitivity gave as much or more in all 10
        EfficientNet-Lite0 and MiniLM budget builds, e.g. W8A8 1.25 24.5 -> 25.0 dB."""
        x = self.expansion
        if x.sensitivity != "auto":
            return x.sensitivity == "on"
        if x.mixed_precision != "off":
            return True
        return x.budget is not None and x.whole_layers and not x.ensemble \
            and self.calibration.refine == "none"

    @property
    def rounding_mode(self) -> str:
        """The rounding applied: "dc" or "nearest" (auto: dc for the uniform operator, whose
        kernels it keeps flat-input exact; PowerQuant's codes have no sum to keep)."""
        if self.weight.rounding == "auto":
            return "dc" if self.weight.operator == "uniform" else "nearest"
        return self.weight.rounding

    @property
    def balances_weights(self) -> bool:
        """Whether MatMul/Gemm layers whose input stays float get balanced weight columns
        (WeightConfig.balance; auto: below 8 bits, uniform operator, no ensemble or
        refinement)."""
        w = self.weight
        if w.balance != "auto":
            return w.balance == "sinkhorn"
        return WEIGHT_BITS[w.format] < 8 and w.operator == "uniform" and \
            not self.expansion.ensemble and self.calibration.refine == "none"

    @property
    def weight_bits(self) -> int:
        return WEIGHT_BITS[self.weight.format]

    @property
    def activation_bits(self) -> int:
        """Activation bits of the BOPs cost model (float activations count as 32)."""
        return {"int8": 8, "fp16": 16}.get(self.activation.format, 32)

    @property
    def budget_whole_layers(self) -> bool:
        return self.expansion.whole_layers

    @property
    def max_orders(self) -> int:
        return self.expansion.max_orders

    @property
    def orders_label(self) -> str:
        """K=n, K<=n where a budget or an ensemble gives some layers fewer orders, or K=m..n
        where every layer keeps m orders under the budget."""
        x = self.expansion
        if x.budget_from > 1:  # validated: only under a budget
            return f"K={x.budget_from}..{x.max_orders}"
        if x.budget or x.ensemble:
            return f"K<={x.max_orders}"
        return f"K={x.orders}"

    def validate(self) -> None:
        for group in _GROUPS:
            getattr(self, group).validate()
        self._validate_across()
        self._validate_mixed()
        from backends.cpu_isa import RESOLVED, check_choice

        if self.int8_isa not in RESOLVED:  # a resolved config names what was detected
            check_choice(self.int8_isa)
        if self.activation.ranges == CALIB_RANGES and (
                not self.calibration.data or self.calibration.data.startswith("synthetic")):
            raise UserError(f"ranges {CALIB_RANGES!r} come from --calib DATA (your samples): "
                            "give the data, or a --ranges source")

    def _validate_across(self) -> None:
        """Combinations across the groups that cannot be built."""
        w, x = self.weight, self.expansion
        if w.operator == "power" and (x.sparsity is not None or x.budget is not None
                                      or x.ensemble):
            raise UserError("--operator power expands every channel: it cannot be combined "
                            "with --sparsity, --budget or --ensemble", "use --orders K alone")
        if x.ensemble and self.activation.smooth == "all":
            raise UserError("--smooth all cannot be combined with --ensemble yet (members "
                            "share order 1; migration is off in ensembles)",
                            "drop --smooth all")
        if w.balance == "sinkhorn" and (x.ensemble or self.calibration.refine != "none"):
            raise UserError("--weight-balance sinkhorn cannot be combined with --ensemble or "
                            "--refine yet", "drop --weight-balance")
        if (x.sparsity is not None or x.budget is not None) and w.granularity == "tensor":
            raise UserError("group-sparse orders need per-channel (or per-block) weight scales, "
                            "not per-tensor")


    def _validate_mixed(self) -> None:
        """--sensitivity and --mixed-precision."""
        mixed = self.mixed_precision != "off"
        if mixed and self.sensitivity == "off":
            raise UserError("--mixed-precision chooses by the measured sensitivity; it cannot "
                            "be combined with --sensitivity off",
                            "drop --sensitivity off")
        if not self.uses_sensitivity:
            return
        flag = "--mixed-precision" if mixed else "--sensitivity on"
        if self.budget is None:
            raise UserError(f"{flag} steers how a --budget is spent, and no --budget was given",
                            "add --budget X, e.g. --budget 1.1")
        if self.ensemble:
            raise UserError(f"{flag} cannot be combined with --ensemble (its members share "
                            "order 1 and split order 2 by a partition)", f"drop {flag}")
        if self.refine != "none":
            raise UserError(f"{flag} cannot be combined with --refine yet",
                            f"drop {flag} or --refine")
        if self.mixed_precision == "weights" and self.weight_bits >= 8:
            raise UserError("--mixed-precision weights raises weights to int8, and they are "
                            f"--weights {self.weights} already",
                            "use --mixed-precision activations (float activations where they "
                            "hurt most), or --weights int4")
        if self.mixed_precision == "activations" and self.activations != "int8":
            raise UserError("--mixed-precision activations keeps some int8 activations float, "
                            f"but --activations is {self.activations}",
                            "use --mixed-precision weights, or --activations int8")
        if self.mixed_precision == "all" and self.weight_bits >= 8 and \
                self.activations != "int8":
            raise UserError(f"--mixed-precision all: nothing to raise with --weights "
                            f"{self.weights} and --activations {self.activations}",
                            "drop --mixed-precision")


@dataclass(frozen=True)
class BuildConfig:
    """Everything `build` needs besides the model file."""

    target: str = "openvino"
    inputs: tuple[InputSpec, ...] = ()
    quant: QuantConfig = field(default_factory=QuantConfig)
    opset: int = 21
    device: str = "CPU"
    keep_intermediates: bool = False
    trust_pickle: bool = False
    factory_weights: str | None = None  # state dict for a `package.module:factory` model
    # target trt: DLA core (GPU fallback on), dynamic dim ranges (name, min, opt, max), and
    # whether a missing TensorRT is an error instead of a deferred engine build
    dla_core: int | None = None
    # precision of what is not quantized: "auto" is fp16 for trt (written into the graph, which
    # strongly typed TensorRT follows; ModelOpt's default too), fp32 for the other targets
    float_precision: FloatPrecision = "auto"
    # trt: centre non-negative activations (rexdeploy.passes.center_activations) so signed int8
    # uses all 8 bits: "all" (auto for trt), "pointwise" (no extra node: not before padded
    # Convs), "off"
    centering: Centering = "auto"
    dim_ranges: tuple[tuple[str, int, int, int], ...] = ()
    require_engine: bool = False
    # after compiling, run the compiled model and the Q/DQ ONNX (ONNX Runtime) on the build's
    # synthetic inputs: a device that loses more than device_tolerance dB of SQNR against the
    # float model is a warning, or with strict_device_check an error
    device_check: bool = True
    device_tolerance: float = 1.0
    strict_device_check: bool = False
    # example values of named dynamic dims (--dim W=256): the synthetic inputs of the
    # statistics and the device check take them, and so do the multiply-add counts; 1 without
    dims: tuple[tuple[str, int], ...] = ()

    def validate(self) -> None:
        if self.opset < 21:
            raise UserError(f"--opset {self.opset}: rexdeploy writes opset 21 or newer "
                            "(blocked and INT4 DequantizeLinear need it)",
                            "drop --opset (21 is the default) or give 21 or newer; older ONNX "
                            "models are upgraded automatically")
        self.quant.validate()
        check_choices(self)
        import backends

        rules = backends.rules(self.target)
        if not rules.centering and self.centering in ("all", "pointwise"):
            raise UserError(f"--centering {self.centering} applies to --target trt only: "
                            "OpenVINO quantizes non-negative activations to uint8 already")
        if not rules.channel_activations and self.quant.activation_scales == "depthwise":
            raise UserError(f"--activation-scales depthwise: --target {self.target} quantizes "
                            "activations per tensor only", "drop --activation-scales")
        if not rules.float16_graph and self.float_precision == "fp16":
            raise UserError("--float-precision fp16 applies to --target trt only: OpenVINO "
                            "picks the float precision when it compiles",
                            "for a weight-only build with f16 float parts use --activations fp16")
        if self.quant.activations == "fp16" and self.float_precision == "fp32":
            raise UserError("--activations fp16 with --float-precision fp32: the float parts "
                            "cannot be both", "drop --float-precision")
        if not rules.engine_options and (self.dla_core is not None or self.dim_ranges
                                         or self.require_engine):
            raise UserError("--dla-core, --dim-range and --require-engine apply to --target trt "
                            "only")
        if not rules.cpu_isa and self.quant.int8_isa not in ("auto", "gpu"):
            raise UserError(f"--int8-isa {self.quant.int8_isa} names a CPU instruction set; "
                            "--target trt runs int8 on the GPU (int32 accumulation)",
                            "drop --int8-isa")
        if not 0 < self.device_tolerance <= 60:
            raise UserError(f"--device-tolerance {self.device_tolerance}: expected dB in (0, 60]",
                            "drop it for the default 1 dB")
        if self.strict_device_check and not self.device_check:
            raise UserError("--strict-device-check with --no-device-check: nothing to be strict "
                            "about", "drop one of them")
        for name, value in self.dims:
            if not 1 <= value <= 1_000_000:
                raise UserError(f"--dim {name}={value}: a dimension from 1 to 1000000")
        if len({n for n, _ in self.dims}) != len(self.dims):
            raise UserError("--dim given twice for one name", "give each dynamic dim once")
        if self.dla_core is not None and self.dla_core < 0:
            raise UserError(f"--dla-core {self.dla_core}: DLA cores are numbered from 0")
        for name, lo, opt, hi in self.dim_ranges:
            if not 1 <= lo <= opt <= hi:
                raise UserError(f"--dim-range {name}={lo}:{opt}:{hi}: need 1 <= MIN <= OPT <= MAX")

    @property
    def float_dtype(self) -> str:
        """"fp16" when the lowered graph is written in float16 (see float_precision)."""
        if self.float_precision == "auto":
            import backends

            return "fp16" if backends.rules(self.target).float16_graph else "fp32"
        return self.float_precision

    @property
    def centering_mode(self) -> str:
        """The centring actually applied: "all", "pointwise" or "off" (see centering)."""
        if self.centering == "auto":
            import backends

            return "all" if backends.rules(self.target).centering else "off"
        return self.centering

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["inputs"] = [s.to_dict() for s in self.inputs]
        d["version"] = CONFIG_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BuildConfig":
        d = dict(d)
        version = d.pop("version", CONFIG_VERSION)
        if version > CONFIG_VERSION:
            raise UserError(f"config version {version} is newer than this rexdeploy understands "
                            f"({CONFIG_VERSION}); upgrade rexdeploy")
        quant = QuantConfig.from_dict(d.pop("quant", {}))
        inputs = tuple(InputSpec.from_dict(s) for s in d.pop("inputs", ()))
        d["dim_ranges"] = tuple(tuple(r) for r in d.get("dim_ranges", ()))
        d["dims"] = tuple(tuple(r) for r in d.get("dims", ()))
        return cls(inputs=inputs, quant=quant, **_known(cls, d))


def _known(cls, d: dict) -> dict:
    """The entries of `d` that are fields of the dataclass `cls`: a manifest written by another
    version may carry a field this one does not have (it is dropped; what is missing takes the
    field's default)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}
