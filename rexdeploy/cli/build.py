"""`rexdeploy build`: its options, in sections (--help shows them grouped), mapped onto a
BuildConfig; the work is rexdeploy.api.build's."""

from __future__ import annotations

import json
import os

import click

import backends
from backends.cpu_isa import CHOICES as ISA_CHOICES
from rexdeploy.cli.common import (SectionedCommand, console, dim_option, field_option,
                                  parse_dim, parse_dim_range, parse_range, quiet_option, section,
                                  user_errors)
from rexdeploy.config import BUDGET_COST_CHOICES, MAX_ORDERS, WEIGHT_BITS  # pure Python, no torch

WEIGHT_CHOICES = tuple(WEIGHT_BITS)


def _budget_cost(ctx, param, value: str) -> str:
    if value in BUDGET_COST_CHOICES or value.endswith(".json"):
        return value
    raise click.BadParameter(f"{value!r}: use one of {', '.join(BUDGET_COST_CHOICES)} or a "
                             "FILE.json")


def _budget(ctx, param, value: str) -> str | float:
    if value in ("auto", "off"):
        return value
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: a multiple of the order-1 cost (e.g. 1.25), "
                                 "auto or off") from None


_TARGET_AND_OUTPUT = section(
    'Target and output',
    click.option("--target", "-t", type=click.Choice(backends.names()),
                 default="openvino", show_default=True,
                 help="openvino: IR compiled for the device; reference: the Q/DQ ONNX checked in "
                      "ONNX Runtime only; trt: TensorRT engine (deferred: ONNX + build_engine.sh "
                      "where tensorrt does not import)."),
    click.option("-o", "--output", help="Artifact directory [default: out/<model>.<target>]."),
    click.option("--device", default="CPU", show_default=True, help="Device to compile for."),
    click.option("--int8-isa", type=click.Choice(ISA_CHOICES), default="auto", show_default=True,
                 help="The target CPU's int8 instruction set (oneDNN's names). Without VNNI "
                      "(sse41, avx, avx2, avx512_core) int8 kernels add pairs of products in a "
                      "saturating int16, and full-range weights overflow. auto: detected on this "
                      "host (CPU flags under ONEDNN_MAX_CPU_ISA, confirmed by running one int8 "
                      "layer); name another CPU's to build for it (its device check then runs "
                      "here under ONEDNN_MAX_CPU_ISA where this CPU can run those kernels)."),
    click.option("--opset", type=int, default=21, show_default=True),
    field_option("--float-precision",
                 help="trt: precision of the parts that are not quantized, written into the ONNX "
                      "(strongly typed TensorRT takes precision from the graph, not from builder "
                      "flags). auto: fp16 for --target trt, I/O kept float32."),
    field_option("--centering",
                 help="trt: TensorRT has signed int8 activations only, so a ReLU/ReLU6 output "
                      "would use 7 bits. Centring quantizes it minus half its range and adds that "
                      "back in the next layers' bias (exact; EfficientNet-Lite0 W8A8 +2.6 dB). all "
                      "(auto): also before padded Convs, with one constant border-correction Add "
                      "each; pointwise: only where no padding reads it (no node added); off."),
    click.option("--dla-core", type=int, help="trt: build for this DLA core (Jetson), with GPU "
                 "fallback for layers DLA cannot run."),
    click.option("--dim-range", "dim_ranges", multiple=True, metavar="DIM=MIN:OPT:MAX",
                 help="trt: optimization-profile range of a named dynamic dim, e.g. B=1:4:16 "
                      "[default 1:1:8]. Repeatable."),
    click.option("--require-engine", is_flag=True, help="trt: fail (exit 1, nothing written) "
                 "instead of writing a deferred artifact when tensorrt does not import."),
    click.option("--from-deferred", type=click.Path(), metavar="ARTIFACT",
                 help="trt: finish a deferred artifact here (where tensorrt imports): build its "
                      "engine and update it in place. Takes no MODEL."),
    click.option("--keep-intermediates", is_flag=True,
                 help="Also write each stage's output under intermediates/."),
    click.option("--force", is_flag=True, help="Replace an existing artifact."),
)

_MODEL_AND_INPUTS = section(
    'Model and inputs',
    click.option("--input", "inputs", multiple=True, metavar="NAME:DIMS[:DTYPE]",
                 help="Model input, e.g. input:1x3x224x224 or ids:Bx128:int64 (named dims are "
                      "dynamic). Required for PyTorch models; optional for ONNX. Repeatable."),
    click.option("--input-range", "input_ranges", multiple=True, metavar="NAME:LO,HI",
                 help="Value range of a float input (e.g. input:-1,1). Without it: for an image "
                      "input, what --preprocess makes of pixels 0..255; else N(0,1) is assumed "
                      "for the data-free activation ranges."),
    dim_option("A typical value of a named dynamic dim (e.g. --input x:1x1x64xW --dim W=256): "
               "the synthetic inputs of the statistics and of the device check take it, the "
               "multiply-add counts too, and profile/compare default to it; without it a "
               "dynamic dim takes 1. Repeatable."),
    click.option("--preprocess", metavar="SPEC",
                 help="How images become inputs, e.g. resize=256,crop=224,mean=127,std=128: "
                      "recorded for compare; it also gives an image input its value range "
                      "(unless --input-range does) and, when it maps pixels onto one grid (one "
                      "std, integer mean), the input's int8 scale: every pixel then quantizes "
                      "exactly."),
    click.option("--state-dict", type=click.Path(), help="Weights for a package.module:factory "
                 "model (loaded with torch.load(weights_only=True))."),
    click.option("--trust-pickle", is_flag=True,
                 help="Allow a pickled nn.Module (torch.save(model)); loading it runs code from "
                      "the file."),
)

_WEIGHTS = section(
    'Weights',
    click.option("--weights", default="int8", show_default=True, metavar="PRECISION",
                 help=f"Weight precision: {', '.join(WEIGHT_CHOICES)} (int2 = ternary). Codes "
                      "below 8 bits are stored in int8 tensors on Conv (int8 kernels run them) "
                      "and as INT4 on MatMul/Gemm for int4 and below. (For a "
                      "package.module:factory model a state-dict file here is taken as "
                      "--state-dict.)"),
    field_option("--rounding",
                 help="Weight rounding. dc: round to nearest, then move the few codes nearest to "
                      ".5 by one step so every convolution kernel keeps its sum (its response to a "
                      "flat input); data-free, for Conv kernels with more than one tap. auto: dc, "
                      "or nearest with --operator power."),
    field_option("--operator",
                 help="Weight quantizer. power: PowerQuant's non-uniform power operator "
                      "(exponent searched per layer and order; works with --orders K). Its codes "
                      "+ lookup table have no integer kernel: those layers compute in float (f32 "
                      "weights on OpenVINO, f16 on TensorRT) and the report lists them."),
    click.option("--block-size", type=click.IntRange(0), metavar="G",
                 help="Per-block weight scales over G input columns (e.g. 32, 64, 128) instead of "
                      "per output channel, on MatMul/Gemm weights (convolutions keep a scale per "
                      "channel); 0: per output channel. Default: blocks of 32 for 4-bit weights "
                      "(all-MiniLM-L6-v2 mean cosine, weight-only 0.945 per channel -> 0.975, "
                      "W4A8 0.881 -> 0.962; TensorRT's INT4 MatMul/Gemm weights need blocks), "
                      "except W4A8 for TensorRT (its INT4 is weight-only) and 8-bit weights: "
                      "per channel."),
    click.option("--clip-search", is_flag=True, help="MSE-optimal weight clipping per channel."),
    field_option("--weight-balance",
                 help="Balance the weight columns of MatMul/Gemm layers whose input stays float "
                      "(weight-only builds): divide each input column by a factor found from the "
                      "weights alone (Sinkhorn-normalised row and column spread, as SINQ), and "
                      "multiply the input by it in front of the layer (a float Mul), exact in "
                      "float. auto: below 8 bits with the uniform operator. MiniLM W4 weight-only, "
                      "mean cosine to float: per channel 0.904 -> 0.945, per block of 32 with "
                      "--clip-search 0.957 -> 0.977."),
    field_option("--overflow-fix",
                 help="Keep every pair of int8 weight codes a pre-VNNI kernel adds in int16 "
                      "within +-128 (255 x 128 fits int16): only the pairs that can overflow "
                      "change, each output channel choosing a slightly coarser scale or moving "
                      "those codes, whichever loses less. auto: where --int8-isa saturates; "
                      "nothing changes on VNNI/AMX CPUs. EfficientNet-Lite0 on AVX2: 6.7 dB "
                      "without, 23.3 dB with."),
    click.option("--dynamic-quantization", type=click.IntRange(0), metavar="GROUP",
                 help="OpenVINO int4/int8 weight-only MatMuls (compressed FullyConnected): group "
                      "size of the runtime's dynamic activation quantization (0 = off, exact "
                      "float activations); default: the runtime's own (32 on CPU). Stored in the "
                      "IR and reported."),
    click.option("--exclude", multiple=True, metavar="NODE",
                 help="Keep this layer (ONNX node name) in float. Repeatable."),
)

_ACTIVATIONS = section(
    'Activations',
    field_option("--activations",
                 help="none: weight-only quantization (float activations); fp16: weight-only "
                      "with the float parts at f16 (OpenVINO: inference precision f16 in the IR; "
                      "a CPU without f16 kernels runs bf16, the report says which; TensorRT: an "
                      "f16 graph, see --float-precision)."),
    field_option("--ranges",
                 help="Activation ranges without data. auto: BatchNorm statistics where they "
                      "reach, natural synthetic images (or the build's synthetic inputs) "
                      "elsewhere; stats: BatchNorm/LayerNorm statistics wherever they reach; "
                      "synthetic: Gaussian/random-token inputs; zeroq: images optimised to match "
                      "the BatchNorm statistics (slow)."),
    click.option("--range-sigma", type=float, default=4.0, show_default=True,
                 help="Range = |mean| + SIGMA * std for statistics-derived ranges."),
    field_option("--activation-scales",
                 help="depthwise: one int8 scale per channel on the inputs of depthwise "
                      "convolutions (each channel computes alone there, so its scale folds into "
                      "the output channel's: still the int8 depthwise kernel), ranges per channel "
                      "from the same data-free source; tensor: one scale per activation tensor "
                      "everywhere. auto: depthwise on OpenVINO and the reference, tensor on "
                      "TensorRT (per-tensor activations only)."),
    field_option("--equalize",
                 help="Cross-layer range equalization of depthwise inputs: where a convolution "
                      "(and a ReLU) makes a depthwise convolution's input whose channel ranges "
                      "(from BatchNorm statistics) differ, scale each channel up to the largest "
                      "there and down in the depthwise kernel: exact in float, free for weights "
                      "with a scale per channel, and every channel gets the whole int8 range."),
    field_option("--split-identity",
                 help="Reparameterised networks (RepVGG, MobileOne, PP-LCNetV3) fold an identity "
                      "branch onto a convolution's diagonal, where one weight can dwarf its row "
                      "and coarsen that row's int8 scale. auto: where it raises the layer's "
                      "weight SQNR by 3 dB or more, that diagonal runs beside the layer as a "
                      "float per-channel multiply of its input (exact); off: never."),
    field_option("--smooth",
                 help="Data-free scale migration (SmoothQuant-style) on the int8 inputs of "
                      "MatMul/Gemm layers whose ranges come from synthetic inputs (transformers): "
                      "input channel j is divided by max|x_j|^ALPHA / max|W_j|^(1-ALPHA) and the "
                      "weights carry the factor. auto: only inputs with outlier channels (largest "
                      "channel >= 4x the median), except on image inputs without --calib data "
                      "(Gaussian images do not show an image model's channel pattern); all: "
                      "every such input; off: none."),
    click.option("--smooth-alpha", type=float, default=0.7, show_default=True, metavar="ALPHA",
                 help="Migration strength in [0, 1]: 0 keeps the activations' spread, 1 moves it "
                      "all into the weights."),
    click.option("--no-bias-correction", is_flag=True, help="Skip the data-free bias correction."),
    click.option("--no-zero-points", is_flag=True,
                 help="Quantize a tensor bounded below by a small negative value (a swish, "
                      "hard-swish or GELU output) as int8 over [-max, max], as TensorRT must. By "
                      "default, on OpenVINO, it takes uint8 with a zero point over [its lower "
                      "bound, max]: about half the step."),
    click.option("--no-align-input", is_flag=True,
                 help="Keep an image input normalised with a std per channel (--preprocess, e.g. "
                      "ImageNet's) as it is: one int8 scale then rounds every pixel. By default "
                      "the convolution that alone reads it reads it moved onto one grid where "
                      "every pixel is an exact int8 code (exact in float; a Pad, Mul and Add on "
                      "the input)."),
    field_option("--recurrent",
                 help="LSTM/GRU layers. float: kept float and listed. int8 (OpenVINO): weights "
                      "and input int8 on OpenVINO's int8 RNN kernel, faster (ddddocr's "
                      "recogniser: see docs/benchmarks.md) but that kernel also rounds the hidden "
                      "state it feeds back to 8 bits, which the ONNX Runtime reference cannot "
                      "model: the device check shows what it costs."),
    field_option("--attention",
                 help="MatMuls whose two inputs are activations (attention's Q x K^T and P x V), "
                      "run by OpenVINO's int8 attention kernels (TensorRT keeps them float). "
                      "scores: both inputs of Q x K^T quantized per tensor, P x V (it reads the "
                      "Softmax probabilities) float. int8: P x V too, the Softmax output as "
                      "uint8 on [0, 1]. float: all kept float and listed."),
    field_option("--rotate",
                 help="Rotate the input of a transformer FFN's output Linear (a GELU/SiLU "
                      "output) by a block Hadamard matrix with random signs, 32 channels a "
                      "block: exact in float (the weights carry the inverse), and its int8 "
                      "input then has no outlier channels. The rotation runs as a small float "
                      "MatMul, listed. auto (the default, int8 activations): the FFN inputs "
                      "with the worst outlier channels on the build's synthetic inputs (at "
                      "least half the worst one's outlier ratio); ffn: all of them; off: none. "
                      "MiniLM W8A8 mean cosine 0.9952 (off) -> 0.9984 (auto, 4 of 6, 1.06x "
                      "the latency) -> 0.9988 (ffn, 1.14x; Xeon with AMX)."),
)

_REX_EXPANSION_AND_BUDGET = section(
    'REx expansion and budget',
    click.option("--orders", type=click.IntRange(1, MAX_ORDERS), default=1, show_default=True,
                 help="REx residual expansion order K: each weight as a sum of K int8 kernels "
                      "(the highest order under --budget X / --ensemble; they use 2 at least). "
                      "Under the default --budget auto every layer keeps its K orders and a few "
                      "get K+1."),
    click.option("--sparsity", type=float, metavar="GAMMA",
                 help="Orders 2..K cover only this fraction of each layer's output channels (those "
                      "with the largest residual error), e.g. 0.25. Needs --orders >= 2."),
    click.option("--budget", default="auto", show_default=True, metavar="[auto|off|X]",
                 callback=_budget,
                 help="Cost <= X times the order-1 model's (e.g. 1.25), counted as the target runs "
                      "it (--budget-cost: OpenVINO CPU's measured time, else bit-operations); the "
                      "second order goes greedily where it removes the largest share of the "
                      "error per unit of cost. With the dense sparse "
                      "form (OpenVINO's and TensorRT's, where one kept channel runs the layer's "
                      "whole second branch) it buys whole layers; with --sparse-form compact or "
                      "gather, single channels. Not with --sparsity. auto: a build for "
                      "OpenVINO CPU with int8 activations that chose no --sparsity, --ensemble, "
                      "--mixed-precision or --refine gets 1.05 with --mixed-precision "
                      "activations (the few activations that hurt most stay float: "
                      "EfficientNet-Lite0 23.7 -> 25.8 dB at 1.02x the time); with --orders "
                      "K >= 2 every layer keeps its K orders and the 5 % counts from that "
                      "build's time, for order K+1 where it pays and float activations "
                      "(EfficientNet-Lite0 W4A8 K=2 23.4 -> 25.5 dB); other builds none. off: "
                      "exactly --orders everywhere and int8 activations."),
    click.option("--budget-cost", default="auto", show_default=True,
                 metavar="[auto|bops|time|FILE.json]", callback=_budget_cost,
                 help="What --budget counts. bops: bit-operations (M x b_w x b_a per layer). "
                      "time: the target's measured time model, which also prices reading the "
                      "weights, writing the outputs and adding the orders (OpenVINO CPU; a "
                      "second order of a layer with few MACs per output costs far more than its "
                      "BOPs). FILE.json: a time model fitted on your machine "
                      "(tools/bench/cost_model.py --write). auto: time where the target has a "
                      "measured model, else bops."),
    field_option("--sensitivity",
                 help="With --budget: measure each layer's data-free output sensitivity (output "
                      "noise when only its weights, or only its input activation, are quantized, "
                      "on the build's synthetic inputs) and give the budget where it lowers the "
                      "measured output error most per bit-operation. auto: on with "
                      "--mixed-precision and with a --budget that buys whole layers (the dense "
                      "sparse form, the targets' default), else off (the plain allocation: the "
                      "share of each layer's own error, per bit-operation)."),
    field_option("--mixed-precision",
                 help="With --budget: the budget may also raise the precision of the layers the "
                      "measured sensitivity ranks worst: weights to int8 in an int4/int6 build "
                      "(counted M x 8 x b_a BOPs), activations kept float (no Q/DQ; counted "
                      "M x b_w x 32), or both (all). Every raise, its reason and BOP cost are in "
                      "report.json and the build summary."),
    click.option("--ensemble", type=int, metavar="M",
                 help="Layer-partition ensemble: the base (order 1) plus M members, each adding "
                      "the second order of one group of layers; output = sum of members - (M-1) x "
                      "base. The M+1 models run concurrently. Approximates --orders 2 at about "
                      "(1 + 1/M) x the base cost per model."),
    field_option("--ensemble-partition",
                 help="How layers are split among ensemble members: contiguous (consecutive "
                      "layers together, equal BOPs: the most faithful measured), balanced (most "
                      "sensitive layers spread, BOPs balanced), bops (BOPs only)."),
    field_option("--sparse-form",
                 help="Lowering of sparse orders: dense (zero rows), compact (kept channels only, "
                      "ScatterElements back), gather (kept channels only, Gather back), auto (the "
                      "form measured fastest on the target)."),
)

_CALIBRATION_DATA_AND_REFINEMENT = section(
    'Calibration data and refinement (optional; data-free without)',
    click.option("--calib", metavar="synthetic[:N]|PATH",
                 help="Calibration data for --refine (and, when it is yours, the activation "
                      "ranges BatchNorm statistics do not give: from the 0.01 % tail "
                      "quantiles of the values on your samples or their extremes, whichever "
                      "brings the output on them closer to float; BatchNorm statistics "
                      "measured better than real samples and stay). "
                      "synthetic[:N]: made without data (CNN: images matching the "
                      "BatchNorm statistics; token models: random ids with sentence-like lengths; "
                      "else Gaussian), N=32 by default; PATH: a folder of images (with "
                      "--preprocess), .npy/.npz samples, or a .txt file of sentences (with "
                      "--tokenizer). Without --calib everything stays data-free."),
    click.option("--tokenizer", type=click.Path(), metavar="TOKENIZER.JSON",
                 help="Tokenizer for a --calib text file (Hugging Face tokenizers format)."),
    field_option("--refine",
                 help="Refine the rounding on the calibration data (synthetic unless --calib): "
                      "flexround (learned rounding, every Conv/Linear and every order) or erq "
                      "(ridge weight update + rounding refinement, Linear and 1x1 Conv layers). "
                      "A layer keeps round-to-nearest where refining did not lower its error."),
    click.option("--refine-iters", type=click.IntRange(1, 100000), default=100, show_default=True,
                 help="FlexRound optimisation steps per layer and order."),
    field_option("--refine-inputs",
                 help="What each layer is refined on: quantized (sequential: the inputs the "
                      "quantized model, with the layers before it already refined, gives it) or "
                      "float (the float model's inputs, every layer independently). The target "
                      "is the float layer's output either way. Measured (docs/benchmarks.md): "
                      "quantized gives FlexRound the better logits; with --refine erq, float "
                      "gave the better decisions on both benchmark models."),
)

_DEVICE_CHECK = section(
    'Device check',
    click.option("--no-device-check", is_flag=True,
                 help="Skip running the compiled model against its Q/DQ reference (ONNX "
                      "Runtime) on the build's synthetic inputs."),
    click.option("--device-tolerance", type=float, default=1.0, show_default=True, metavar="DB",
                 help="The device check warns when the compiled model's departure from its Q/DQ "
                      "reference costs more than DB of SQNR against the float model "
                      "(10 log10(1 + device error / reference error), both measured as power)."),
    click.option("--strict-device-check", is_flag=True,
                 help="A device check beyond --device-tolerance is an error (exit 1, nothing "
                      "written) instead of a warning."),
)

_OUTPUT = section(
    'Output',
    quiet_option(),
    click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON."),
)


@click.command(cls=SectionedCommand)
@click.argument("model", required=False)
@_TARGET_AND_OUTPUT
@_MODEL_AND_INPUTS
@_WEIGHTS
@_ACTIVATIONS
@_REX_EXPANSION_AND_BUDGET
@_CALIBRATION_DATA_AND_REFINEMENT
@_DEVICE_CHECK
@_OUTPUT
@user_errors
def build(model, from_deferred, output, force, quiet, as_json, **options):
    """Quantize MODEL without data and compile it for a target.

    MODEL is a TorchScript file (torch.jit.save), a torch.export program (.pt2), an ONNX file,
    or package.module:factory with --state-dict. Pickled whole modules are refused unless
    --trust-pickle.
    """
    from rexdeploy import api

    if from_deferred:
        if model:
            raise click.UsageError("--from-deferred takes the artifact, not a MODEL")
        show_build(api.build_from_deferred(from_deferred, quiet=quiet), as_json, quiet,
                   indent=None)
        return
    if not model:
        raise click.UsageError("missing argument MODEL")
    config = build_config(options)
    show_build(api.build(model, config.inputs, target=config.target, output=output,
                         config=config, force=force, quiet=quiet,
                         preprocess=options["preprocess"]), as_json, quiet)


def build_config(o: dict):
    """The validated BuildConfig the build options `o` (click's parameter names) ask for."""
    from rexdeploy.config import BuildConfig, QuantConfig
    from rexdeploy.inputspec import parse_input_specs

    weights, state_dict = o["weights"], o["state_dict"]
    if weights not in WEIGHT_CHOICES:
        if os.path.isfile(weights) and not state_dict:
            state_dict, weights = weights, "int8"
        else:
            raise click.BadParameter(f"{weights!r}: use one of {', '.join(WEIGHT_CHOICES)}",
                                     param_hint="--weights")
    same = ("activations", "orders", "sparsity", "budget_cost", "ensemble_partition",
            "sparse_form", "ranges", "range_sigma", "smooth", "smooth_alpha", "clip_search",
            "operator", "rounding", "dynamic_quantization", "calib", "refine",
            "refine_iters", "refine_inputs", "sensitivity", "mixed_precision", "int8_isa",
            "overflow_fix", "equalize", "activation_scales", "recurrent", "attention",
            "weight_balance", "rotate", "split_identity")
    quant = QuantConfig(
        weights=weights, ensemble=o["ensemble"] or 0, exclude=tuple(o["exclude"]),
        block_size=o["block_size"] or None,
        bias_correction=not o["no_bias_correction"], align_input=not o["no_align_input"],
        zero_points=not o["no_zero_points"],
        budget=None if isinstance(o["budget"], str) else o["budget"],
        auto_budget=o["budget"] == "auto",
        input_ranges=tuple(parse_range(r) for r in o["input_ranges"]),
        granularity="block" if o["block_size"] else "channel" if o["block_size"] == 0
        else "auto",
        calib_preprocess=o["preprocess"] if o["calib"] else None,
        calib_tokenizer=o["tokenizer"], **{k: o[k] for k in same})
    config = BuildConfig(
        target=o["target"], inputs=parse_input_specs(o["inputs"]), quant=quant,
        opset=o["opset"], device=o["device"], keep_intermediates=o["keep_intermediates"],
        trust_pickle=o["trust_pickle"], factory_weights=state_dict, dla_core=o["dla_core"],
        float_precision=o["float_precision"], centering=o["centering"],
        dim_ranges=tuple(parse_dim_range(r) for r in o["dim_ranges"]),
        dims=tuple(parse_dim(d) for d in o["dims"]), require_engine=o["require_engine"],
        device_check=not o["no_device_check"], device_tolerance=o["device_tolerance"],
        strict_device_check=o["strict_device_check"])
    config.validate()
    return config


def show_build(artifact, as_json: bool, quiet: bool, indent: int | None = 1) -> None:
    """The built artifact's summary: JSON, or its table unless quiet."""
    if as_json:
        click.echo(json.dumps({"path": artifact.path, **artifact.manifest["summary"]},
                              indent=indent))
    elif not quiet:
        from rexdeploy.render import build_table

        console().print(build_table(artifact))
