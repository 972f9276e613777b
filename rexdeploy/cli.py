"""`rexdeploy` command line: one thin click command per verb over rexdeploy.api.

Imports nothing heavy at module level: `rexdeploy --help` stays instant (a test checks that
neither torch nor openvino gets imported).
"""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from rexdeploy import __version__
from backends.cpu_isa import CHOICES as ISA_CHOICES
from rexdeploy.config import (  # the choices the config validates (pure Python, no torch)
    ACTIVATIONS, BUDGET_COST_CHOICES, CENTERINGS, FLOAT_PRECISIONS, MIXED_MODES, OPERATORS,
    OVERFLOW_FIXES, PARTITIONS, RANGE_SOURCES, REFINE_INPUTS, REFINES, ROUNDINGS,
    SENSITIVITY_MODES, SMOOTH_MODES, SPARSE_FORMS, WEIGHT_BITS)
from rexdeploy.errors import UserError

WEIGHT_CHOICES = tuple(WEIGHT_BITS)


def user_errors(fn):
    """User mistakes: one clear message, exit 1, no traceback. Bugs keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import signal

        from rexdeploy.interrupts import exit_code, interrupted_by, signals_as_interrupts

        try:
            with signals_as_interrupts():  # SIGTERM unwinds (and cleans up) like Ctrl-C
                return fn(*args, **kwargs)
        except (KeyboardInterrupt, Exception) as exc:
            signum = interrupted_by(exc)
            if signum:
                what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
                click.secho(f"{what}: stopped; no partial output was left behind",
                            fg="yellow", err=True)
                sys.exit(exit_code(signum))
            if not isinstance(exc, UserError):
                raise
            click.secho(f"error: {exc.message}", fg="red", err=True)
            if exc.hint:
                click.echo(f"  hint: {exc.hint}", err=True)
            sys.exit(1)

    return wrapper


def _console():
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # logs and pipes: do not squeeze tables into 80 columns
        console = Console(width=120)
    return console


def _budget_cost(ctx, param, value: str) -> str:
    if value in BUDGET_COST_CHOICES or value.endswith(".json"):
        return value
    raise click.BadParameter(f"{value!r}: use one of {', '.join(BUDGET_COST_CHOICES)} or a "
                             "FILE.json")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rexdeploy")
def cli():
    """rexdeploy: data-free quantization compiler for edge targets.

    \b
    Quantize a trained PyTorch model without any data, lower it to a Q/DQ ONNX, compile it for
    OpenVINO or TensorRT, prove which precision each layer really runs in, compare it
    with the float model and profile it.

    \b
    Typical session:
      rexdeploy build model.pt --input input:1x3x224x224 --input-range input:-1,1 -o out/m.openvino
      rexdeploy compare out/m.openvino --inputs photos/
      rexdeploy profile out/m.openvino
      rexdeploy inspect out/m.openvino --layers
    """


# -- build -------------------------------------------------------------------------------------
@cli.command()
@click.argument("model", required=False)
@click.option("--target", "-t", type=click.Choice(["openvino", "reference", "trt"]),
              default="openvino", show_default=True,
              help="openvino: IR compiled for the device; reference: the Q/DQ ONNX checked in "
                   "ONNX Runtime only; trt: TensorRT engine (deferred: ONNX + build_engine.sh "
                   "where tensorrt does not import).")
@click.option("-o", "--output", help="Artifact directory [default: out/<model>.<target>].")
@click.option("--input", "inputs", multiple=True, metavar="NAME:DIMS[:DTYPE]",
              help="Model input, e.g. input:1x3x224x224 or ids:Bx128:int64 (named dims are "
                   "dynamic). Required for PyTorch models; optional for ONNX. Repeatable.")
@click.option("--input-range", "input_ranges", multiple=True, metavar="NAME:LO,HI",
              help="Value range of a float input (e.g. input:-1,1). Without it: for an image "
                   "input, what --preprocess makes of pixels 0..255; else N(0,1) is assumed "
                   "for the data-free activation ranges.")
@click.option("--weights", default="int8", show_default=True, metavar="PRECISION",
              help=f"Weight precision: {', '.join(WEIGHT_CHOICES)} (int2 = ternary). Codes below 8 "
                   "bits are stored in int8 tensors on Conv (int8 kernels run them) and as INT4 "
                   "on MatMul/Gemm for int4 and below. (For a package.module:factory "
                   "model a state-dict file here is taken as --state-dict.)")
@click.option("--state-dict", type=click.Path(), help="Weights for a package.module:factory "
              "model (loaded with torch.load(weights_only=True)).")
@click.option("--activations", type=click.Choice(ACTIVATIONS), default="int8",
              show_default=True, help="none: weight-only quantization (float activations); "
              "fp16: weight-only with the float parts at f16 (OpenVINO: inference precision "
              "f16 in the IR; a CPU without f16 kernels runs bf16, the report says which; "
              "TensorRT: an f16 graph, see --float-precision).")
@click.option("--rounding", type=click.Choice(ROUNDINGS), default="auto",
              show_default=True,
              help="Weight rounding. dc: round to nearest, then move the few codes nearest to .5 "
                   "by one step so every convolution kernel keeps its sum (its response to a "
                   "flat input); data-free, for Conv kernels with more than one tap. auto: dc, "
                   "or nearest with --operator power.")
@click.option("--operator", type=click.Choice(OPERATORS), default="uniform",
              show_default=True, help="Weight quantizer. power: PowerQuant's non-uniform power "
              "operator (exponent searched per layer and order; works with --orders K). Its "
              "codes + lookup table have no integer kernel: those layers compute in float "
              "(f32 weights on OpenVINO, f16 on TensorRT) and the report lists them.")
@click.option("--block-size", type=click.IntRange(1), metavar="G",
              help="Per-block weight scales over G input columns (e.g. 32, 64, 128) instead of "
                   "per output channel: INT4 MatMul/Gemm weights for TensorRT need it.")
@click.option("--dynamic-quantization", type=click.IntRange(0), metavar="GROUP",
              help="OpenVINO int4/int8 weight-only MatMuls (compressed FullyConnected): group "
                   "size of the runtime's dynamic activation quantization (0 = off, exact "
                   "float activations); default: the runtime's own (32 on CPU). Stored in the "
                   "IR and reported.")
@click.option("--orders", type=click.IntRange(1, 4), default=1, show_default=True,
              help="REx residual expansion order K: each weight as a sum of K int8 kernels "
                   "(the highest order under --budget / --ensemble; they use 2 at least).")
@click.option("--sparsity", type=float, metavar="GAMMA",
              help="Orders 2..K cover only this fraction of each layer's output channels (those "
                   "with the largest residual error), e.g. 0.25. Needs --orders >= 2.")
@click.option("--budget", type=float, metavar="X",
              help="Cost <= X times the order-1 model's (e.g. 1.25), counted as the target runs "
                   "it (--budget-cost: OpenVINO CPU's measured time, else bit-operations); the "
                   "second order goes greedily where it removes the largest share of the "
                   "error per unit of cost. With the dense sparse "
                   "form (OpenVINO's and TensorRT's, where one kept channel runs the layer's "
                   "whole second branch) it buys whole layers; with --sparse-form compact or "
                   "gather, single channels. Not with --sparsity.")
@click.option("--budget-cost", default="auto", show_default=True,
              metavar="[auto|bops|time|FILE.json]", callback=_budget_cost,
              help="What --budget counts. bops: bit-operations (M x b_w x b_a per layer). "
                   "time: the target's measured time model, which also prices reading the "
                   "weights, writing the outputs and adding the orders (OpenVINO CPU; a "
                   "second order of a layer with few MACs per output costs far more than its "
                   "BOPs). FILE.json: a time model fitted on your machine "
                   "(tools/bench/cost_model.py --write). auto: time where the target has a "
                   "measured model, else bops.")
@click.option("--sensitivity", type=click.Choice(SENSITIVITY_MODES), default="auto",
              show_default=True,
              help="With --budget: measure each layer's data-free output sensitivity (output "
                   "noise when only its weights, or only its input activation, are quantized, "
                   "on the build's synthetic inputs) and give the budget where it lowers the "
                   "measured output error most per bit-operation. auto: on with "
                   "--mixed-precision and with a --budget that buys whole layers (the dense "
                   "sparse form, the targets' default), else off (the plain allocation: the "
                   "share of each layer's own error, per bit-operation).")
@click.option("--mixed-precision", type=click.Choice(MIXED_MODES),
              default="off", show_default=True,
              help="With --budget: the budget may also raise the precision of the layers the "
                   "measured sensitivity ranks worst: weights to int8 in an int4/int6 build "
                   "(counted M x 8 x b_a BOPs), activations kept float (no Q/DQ; counted "
                   "M x b_w x 32), or both (all). Every raise, its reason and BOP cost are in "
                   "report.json and the build summary.")
@click.option("--ensemble", type=int, metavar="M",
              help="Layer-partition ensemble: the base (order 1) plus M members, each adding the "
                   "second order of one group of layers; output = sum of members - (M-1) x "
                   "base. The M+1 models run concurrently. Approximates --orders 2 at about "
                   "(1 + 1/M) x the base cost per model.")
@click.option("--ensemble-partition", type=click.Choice(PARTITIONS),
              default="contiguous", show_default=True,
              help="How layers are split among ensemble members: contiguous (consecutive "
                   "layers together, equal BOPs: the most faithful measured), balanced (most "
                   "sensitive layers spread, BOPs balanced), bops (BOPs only).")
@click.option("--sparse-form", type=click.Choice(SPARSE_FORMS), default="auto",
              show_default=True,
              help="Lowering of sparse orders: dense (zero rows), compact (kept channels only, "
                   "ScatterElements back), gather (kept channels only, Gather back), auto (the "
                   "form measured fastest on the target).")
@click.option("--ranges", type=click.Choice(RANGE_SOURCES), default="auto", show_default=True,
              help="Activation ranges without data. auto: BatchNorm statistics where they reach, "
                   "synthetic inputs elsewhere; stats: BatchNorm/LayerNorm statistics wherever "
                   "they reach; synthetic: Gaussian/random-token inputs; zeroq: images optimised "
                   "to match the BatchNorm statistics (slow).")
@click.option("--range-sigma", type=float, default=4.0, show_default=True,
              help="Range = |mean| + SIGMA * std for statistics-derived ranges.")
@click.option("--smooth", type=click.Choice(SMOOTH_MODES), default="auto",
              show_default=True,
              help="Data-free scale migration (SmoothQuant-style) on the int8 inputs of "
                   "MatMul/Gemm layers whose ranges come from synthetic inputs (transformers): "
                   "input channel j is divided by max|x_j|^ALPHA / max|W_j|^(1-ALPHA) and the "
                   "weights carry the factor. auto: only inputs with outlier channels (largest "
                   "channel >= 4x the median), except on image inputs without --calib data "
                   "(Gaussian images do not show an image model's channel pattern); all: "
                   "every such input; off: none.")
@click.option("--smooth-alpha", type=float, default=0.7, show_default=True, metavar="ALPHA",
              help="Migration strength in [0, 1]: 0 keeps the activations' spread, 1 moves it "
                   "all into the weights.")
@click.option("--no-bias-correction", is_flag=True, help="Skip the data-free bias correction.")
@click.option("--clip-search", is_flag=True, help="MSE-optimal weight clipping per channel.")
@click.option("--exclude", multiple=True, metavar="NODE",
              help="Keep this layer (ONNX node name) in float. Repeatable.")
@click.option("--preprocess", metavar="SPEC",
              help="How images become inputs, e.g. resize=256,crop=224,mean=127,std=128: "
                   "recorded for compare; it also gives an image input its value range "
                   "(unless --input-range does) and, when it maps pixels onto one grid (one "
                   "std, integer mean), the input's int8 scale: every pixel then quantizes "
                   "exactly.")
@click.option("--calib", metavar="synthetic[:N]|PATH",
              help="Calibration data for --refine (and, when it is yours, the activation "
                   "ranges). synthetic[:N]: made without data (CNN: images matching the "
                   "BatchNorm statistics; token models: random ids with sentence-like lengths; "
                   "else Gaussian), N=32 by default; PATH: a folder of images (with "
                   "--preprocess), .npy/.npz samples, or a .txt file of sentences (with "
                   "--tokenizer). Without --calib everything stays data-free.")
@click.option("--refine", type=click.Choice(REFINES), default="none",
              show_default=True,
              help="Refine the rounding on the calibration data (synthetic unless --calib): "
                   "flexround (learned rounding, every Conv/Linear and every order) or erq "
                   "(ridge weight update + rounding refinement, Linear and 1x1 Conv layers). "
                   "A layer keeps round-to-nearest where refining did not lower its error.")
@click.option("--refine-iters", type=click.IntRange(1, 100000), default=100, show_default=True,
              help="FlexRound optimisation steps per layer and order.")
@click.option("--refine-inputs", type=click.Choice(REFINE_INPUTS), default="quantized",
              show_default=True,
              help="What each layer is refined on: quantized (sequential: the inputs the "
                   "quantized model, with the layers before it already refined, gives it) or "
                   "float (the float model's inputs, every layer independently). The target "
                   "is the float layer's output either way. Measured (docs/benchmarks.md): "
                   "quantized gives FlexRound the better logits; with --refine erq, float "
                   "gave the better decisions on both benchmark models.")
@click.option("--tokenizer", type=click.Path(), metavar="TOKENIZER.JSON",
              help="Tokenizer for a --calib text file (Hugging Face tokenizers format).")
@click.option("--device", default="CPU", show_default=True, help="Device to compile for.")
@click.option("--int8-isa", type=click.Choice(ISA_CHOICES), default="auto", show_default=True,
              help="The target CPU's int8 instruction set (oneDNN's names). Without VNNI "
                   "(sse41, avx, avx2, avx512_core) int8 kernels add pairs of products in a "
                   "saturating int16, and full-range weights overflow. auto: detected on this "
                   "host (CPU flags under ONEDNN_MAX_CPU_ISA, confirmed by running one int8 "
                   "layer); name another CPU's to build for it (its device check then runs "
                   "here under ONEDNN_MAX_CPU_ISA where this CPU can run those kernels).")
@click.option("--overflow-fix", type=click.Choice(OVERFLOW_FIXES), default="auto",
              show_default=True,
              help="Keep every pair of int8 weight codes a pre-VNNI kernel adds in int16 "
                   "within +-128 (255 x 128 fits int16): only the pairs that can overflow "
                   "change, each output channel choosing a slightly coarser scale or moving "
                   "those codes, whichever loses less. auto: where --int8-isa saturates; "
                   "nothing changes on VNNI/AMX CPUs. EfficientNet-Lite0 on AVX2: 6.7 dB "
                   "without, 23.3 dB with.")
@click.option("--recurrent", type=click.Choice(("float", "int8")), default="float",
              show_default=True,
              help="LSTM/GRU layers. float: kept float and listed. int8 (OpenVINO): weights "
                   "and input int8 on OpenVINO's int8 RNN kernel, faster (ddddocr's "
                   "recogniser: see docs/benchmarks.md) but that kernel also rounds the hidden "
                   "state it feeds back to 8 bits, which the ONNX Runtime reference cannot "
                   "model: the device check shows what it costs.")
@click.option("--equalize", type=click.Choice(("auto", "off")), default="auto",
              show_default=True,
              help="Cross-layer range equalization of depthwise inputs: where a convolution "
                   "(and a ReLU) makes a depthwise convolution's input whose channel ranges "
                   "(from BatchNorm statistics) differ, scale each channel up to the largest "
                   "there and down in the depthwise kernel: exact in float, free for weights "
                   "with a scale per channel, and every channel gets the whole int8 range.")
@click.option("--activation-scales", type=click.Choice(("auto", "depthwise", "tensor")),
              default="auto", show_default=True,
              help="depthwise: one int8 scale per channel on the inputs of depthwise "
                   "convolutions (each channel computes alone there, so its scale folds into "
                   "the output channel's: still the int8 depthwise kernel), ranges per channel "
                   "from the same data-free source; tensor: one scale per activation tensor "
                   "everywhere. auto: depthwise on OpenVINO and the reference, tensor on "
                   "TensorRT (per-tensor activations only).")
@click.option("--no-device-check", is_flag=True,
              help="Skip running the compiled model against its Q/DQ reference (ONNX "
                   "Runtime) on the build's synthetic inputs.")
@click.option("--device-tolerance", type=float, default=1.0, show_default=True, metavar="DB",
              help="The device check warns when the compiled model's departure from its Q/DQ "
                   "reference costs more than DB of SQNR against the float model "
                   "(10 log10(1 + device error / reference error), both measured as power).")
@click.option("--strict-device-check", is_flag=True,
              help="A device check beyond --device-tolerance is an error (exit 1, nothing "
                   "written) instead of a warning.")
@click.option("--opset", type=int, default=21, show_default=True)
@click.option("--trust-pickle", is_flag=True,
              help="Allow a pickled nn.Module (torch.save(model)); loading it runs code from "
                   "the file.")
@click.option("--dla-core", type=int, help="trt: build for this DLA core (Jetson), with GPU "
              "fallback for layers DLA cannot run.")
@click.option("--float-precision", type=click.Choice(FLOAT_PRECISIONS), default="auto",
              show_default=True,
              help="trt: precision of the parts that are not quantized, written into the ONNX "
                   "(strongly typed TensorRT takes precision from the graph, not from builder "
                   "flags). auto: fp16 for --target trt, I/O kept float32.")
@click.option("--centering", type=click.Choice(CENTERINGS),
              default="auto", show_default=True,
              help="trt: TensorRT has signed int8 activations only, so a ReLU/ReLU6 output "
                   "would use 7 bits. Centring quantizes it minus half its range and adds that "
                   "back in the next layers' bias (exact; EfficientNet-Lite0 W8A8 +2.6 dB). all "
                   "(auto): also before padded Convs, with one constant border-correction Add "
                   "each; pointwise: only where no padding reads it (no node added); off.")
@click.option("--dim", "dims", multiple=True, metavar="NAME=VALUE",
              help="A typical value of a named dynamic dim (e.g. --input x:1x1x64xW --dim "
                   "W=256): the synthetic inputs of the statistics and of the device check take "
                   "it, the multiply-add counts too, and profile/compare default to it; without "
                   "it a dynamic dim takes 1. Repeatable.")
@click.option("--dim-range", "dim_ranges", multiple=True, metavar="DIM=MIN:OPT:MAX",
              help="trt: optimization-profile range of a named dynamic dim, e.g. B=1:4:16 "
                   "[default 1:1:8]. Repeatable.")
@click.option("--require-engine", is_flag=True, help="trt: fail (exit 1, nothing written) "
              "instead of writing a deferred artifact when tensorrt does not import.")
@click.option("--from-deferred", type=click.Path(), metavar="ARTIFACT",
              help="trt: finish a deferred artifact here (where tensorrt imports): build its "
                   "engine and update it in place. Takes no MODEL.")
@click.option("--keep-intermediates", is_flag=True,
              help="Also write each stage's output under intermediates/.")
@click.option("--force", is_flag=True, help="Replace an existing artifact.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
@user_errors
def build(model, target, output, inputs, input_ranges, weights, state_dict, activations,
          rounding, operator, block_size, dynamic_quantization, orders,
          sparsity, budget, budget_cost, sensitivity, mixed_precision, ensemble,
          ensemble_partition, sparse_form, ranges, range_sigma,
          smooth, smooth_alpha, no_bias_correction, clip_search, exclude, preprocess, calib,
          refine, refine_iters, refine_inputs, tokenizer, device, int8_isa, overflow_fix,
          equalize, activation_scales, recurrent,
          no_device_check, device_tolerance, strict_device_check, opset, dla_core,
          float_precision, centering, dims, dim_ranges, require_engine,
          from_deferred, trust_pickle, keep_intermediates, force, quiet, as_json):
    """Quantize MODEL without data and compile it for a target.

    MODEL is a TorchScript file (torch.jit.save), a torch.export program (.pt2), an ONNX file,
    or package.module:factory with --state-dict. Pickled whole modules are refused unless
    --trust-pickle.
    """
    import os

    from rexdeploy.config import BuildConfig, QuantConfig
    from rexdeploy.inputspec import parse_input_specs

    if from_deferred:
        if model:
            raise click.UsageError("--from-deferred takes the artifact, not a MODEL")
        from rexdeploy import api

        _show_build(api.build_from_deferred(from_deferred, quiet=quiet), as_json, quiet,
                    indent=None)
        return
    if not model:
        raise click.UsageError("missing argument MODEL")

    if weights not in WEIGHT_CHOICES:
        if os.path.isfile(weights) and not state_dict:
            state_dict, weights = weights, "int8"
        else:
            raise click.BadParameter(f"{weights!r}: use one of {', '.join(WEIGHT_CHOICES)}",
                                     param_hint="--weights")
    specs = parse_input_specs(inputs)
    quant = QuantConfig(weights=weights, activations=activations, orders=orders,
                        sparsity=sparsity, budget=budget, budget_cost=budget_cost,
                        ensemble=ensemble or 0,
                        ensemble_partition=ensemble_partition, sparse_form=sparse_form,
                        ranges=ranges,
                        range_sigma=range_sigma, smooth=smooth, smooth_alpha=smooth_alpha,
                        bias_correction=not no_bias_correction,
                        clip_search=clip_search, exclude=tuple(exclude),
                        input_ranges=tuple(_parse_range(r) for r in input_ranges),
                        operator=operator, rounding=rounding,
                        dynamic_quantization=dynamic_quantization,
                        granularity="block" if block_size else "channel",
                        block_size=block_size,
                        calib=calib, refine=refine, refine_iters=refine_iters,
                        refine_inputs=refine_inputs,
                        calib_preprocess=preprocess if calib else None,
                        calib_tokenizer=tokenizer, sensitivity=sensitivity,
                        mixed_precision=mixed_precision, int8_isa=int8_isa,
                        overflow_fix=overflow_fix, equalize=equalize,
                        activation_scales=activation_scales, recurrent=recurrent)
    config = BuildConfig(target=target, inputs=specs, quant=quant, opset=opset, device=device,
                         keep_intermediates=keep_intermediates, trust_pickle=trust_pickle,
                         factory_weights=state_dict, dla_core=dla_core,
                         float_precision=float_precision, centering=centering,
                         dim_ranges=tuple(_parse_dim_range(r) for r in dim_ranges),
                         dims=tuple(parse_dim(d) for d in dims),
                         require_engine=require_engine, device_check=not no_device_check,
                         device_tolerance=device_tolerance,
                         strict_device_check=strict_device_check)
    config.validate()
    from rexdeploy import api

    _show_build(api.build(model, specs, target=target, output=output, config=config,
                          force=force, quiet=quiet, preprocess=preprocess), as_json, quiet)


def _show_build(artifact, as_json: bool, quiet: bool, indent: int | None = 1) -> None:
    """The built artifact's summary: JSON, or its table unless quiet."""
    if as_json:
        click.echo(json.dumps({"path": artifact.path, **artifact.manifest["summary"]},
                              indent=indent))
    elif not quiet:
        from rexdeploy.render import build_table

        _console().print(build_table(artifact))


def parse_dim(text: str) -> tuple[str, int]:
    """NAME=VALUE of --dim: a named dynamic dim and a positive size."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip().isdigit() or int(value) < 1:
        raise click.BadParameter(f"{text!r}: expected NAME=VALUE, e.g. W=256",
                                 param_hint="--dim")
    return name.strip(), int(value)


def _parse_range(text: str) -> tuple[str, float, float]:
    import math

    try:
        name, rest = text.rsplit(":", 1)
        lo, hi = (float(v) for v in rest.split(","))
        if not name or not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("a name and finite bounds are needed")
    except ValueError:
        raise UserError(f"bad --input-range {text!r}: expected NAME:LO,HI (finite numbers)",
                        "e.g. --input-range input:-1,1 for images scaled to [-1, 1]") from None
    return name, lo, hi


def _parse_dim_range(text: str) -> tuple[str, int, int, int]:
    try:
        name, rest = text.split("=", 1)
        lo, opt, hi = (int(v) for v in rest.split(":"))
    except ValueError:
        raise UserError(f"bad --dim-range {text!r}: expected DIM=MIN:OPT:MAX, e.g. B=1:4:16") \
            from None
    return name, lo, opt, hi


# -- compare -----------------------------------------------------------------------------------
@cli.command(epilog="""\b
Exit status: 0 done; 1 user error; 2 usage error; 3 a --min-sqnr / --min-cosine floor was
missed (each output's figure against its floor is named on stderr).""")
@click.argument("artifact", type=click.Path())
@click.option("--inputs", type=click.Path(), help="Directory of images (needs a preprocess spec, "
              "recorded at build or given here) or of .npy/.npz files.")
@click.option("--synthetic", type=click.IntRange(1, 100000), help="N synthetic inputs instead.")
@click.option("--preprocess", metavar="SPEC", help="Override the artifact's preprocess spec.")
@click.option("--reference", type=click.Choice(["auto", "torch", "onnx"]), default="auto",
              show_default=True, help="Float reference: the source torch model (auto: when it "
                                      "is still there unchanged) or the artifact's float.onnx.")
@click.option("--backend", type=click.Choice(["openvino", "reference", "trt"]),
              help="Run the artifact on this backend [default: its target].")
@click.option("--limit", type=int, help="Use at most N inputs.")
@click.option("--per-layer", is_flag=True,
              help="Also compare every quantized layer's output (float.onnx vs model.onnx in "
                   "ONNX Runtime, all layer outputs marked) and name the first bad layer. Two "
                   "columns: 'SQNR' is the quantized model's layer output against the float "
                   "model's, so it accumulates the error of every earlier layer (where the "
                   "damage shows); 'local SQNR' runs the layer alone (its input Q/DQ, weights "
                   "and bias) on the float model's input to it, so it is that layer's own "
                   "quantization error: the layers it ranks worst are the ones to keep in higher "
                   "precision (--exclude at build). Also lists layers whose bias overflows "
                   "int32 at input scale x weight scale. Where the artifact runs on a device "
                   "(not --backend reference), the marked model also runs there: 'device SQNR' "
                   "and 'device vs ref' per layer, and the first layer where the device loses "
                   "against ONNX Runtime is named (a runtime-only loss, e.g. int8 saturation "
                   "on a CPU without VNNI).")
@click.option("--device-check/--no-device-check", default=True, show_default=True,
              help="Where the artifact runs on a device, also run its Q/DQ ONNX in ONNX "
                   "Runtime (the reference that defines what the plan means) on the same inputs: "
                   "two more columns, the reference's SQNR and the device's against it, and a "
                   "loud line when the device loses more than the build's --device-tolerance.")
@click.option("--threshold", "threshold_db", type=float, default=20.0, show_default=True,
              metavar="DB", help="With --per-layer: a layer below this SQNR is bad. 20 dB is "
                                 "noise at 1% of the signal power, 20 dB under the ~40 dB a "
                                 "clean int8 tensor keeps; EfficientNet-Lite0's int8 logits at "
                                 "23 dB already flip 4% of its top-1 answers.")
@click.option("--top", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="With --per-layer: list the N worst layers (by local SQNR).")
@click.option("--ten-crop", is_flag=True,
              help="Judge each image of --inputs through its ten standard crops (centre and four "
                   "corners of the resized image, each mirrored; needs crop= in the preprocess "
                   "spec): ten times the decisions. Top-1 agreement on a few dozen images moves "
                   "by whole flips (48/50 = 96%, 95% interval 87-99%); ten crops narrow it about "
                   "threefold.")
@click.option("--output-slice", "output_slices", multiple=True,
              metavar="NAME:AXIS:START:END[=LABEL]",
              help="Also compare a part of an output on its own row: elements START to END of "
                   "its axis AXIS (the sample axis not counted), e.g. output:2:5:6=classes for "
                   "a detector head [1, anchors, 6] whose last column is the class score. One "
                   "SQNR over a whole concatenated head can hide a collapsed part. Repeatable.")
@click.option("--min-sqnr", "min_sqnr", multiple=True, metavar="[OUTPUT:]DB",
              help="Fail (exit 3) when an output's SQNR against the float model is below DB; "
                   "OUTPUT: one output or --output-slice label, else every output. Repeatable.")
@click.option("--min-cosine", "min_cosine", multiple=True, metavar="[OUTPUT:]VALUE",
              help="Fail (exit 3) when an output's mean cosine similarity to the float model "
                   "is below VALUE (e.g. 0.99). Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--save", type=click.Path(), help="Also write the metrics as JSON to this file.")
@click.option("--quiet", "-q", is_flag=True)
@user_errors
def compare(artifact, inputs, synthetic, preprocess, reference, backend, limit, per_layer,
            device_check, threshold_db, top, ten_crop, output_slices, min_sqnr, min_cosine,
            as_json, save, quiet):
    """Fidelity of ARTIFACT against the float model: SQNR, cosine, top-1 agreement, KL; on a
    device, also against its own Q/DQ reference (ONNX Runtime). With --min-sqnr/--min-cosine,
    a pass/fail gate for CI."""
    from rexdeploy import api
    from rexdeploy.evaluate.floors import check_floors, parse_floor

    floors = tuple(parse_floor(t, "sqnr_db") for t in min_sqnr) + \
        tuple(parse_floor(t, "cosine_mean") for t in min_cosine)

    result = api.compare(artifact, inputs, synthetic=synthetic, preprocess=preprocess,
                         reference=reference, backend=backend, limit=limit, quiet=quiet or as_json,
                         per_layer=per_layer, threshold_db=threshold_db, top=top,
                         ten_crop=ten_crop, device_check=device_check,
                         output_slices=output_slices)
    findings = check_floors(result, floors)
    if floors:
        result["floors"] = [{"floor": str(f.floor), "output": f.output, "measured": f.measured,
                             "passed": not f.missed} for f in findings]
    _save(save, result)
    if as_json:
        click.echo(json.dumps(result, indent=1, default=_json_default))
    else:
        from rexdeploy.evaluate.fidelity import render_table

        _console().print(render_table(result))
        if "per_layer" in result:
            from rexdeploy.evaluate.localize import render_per_layer

            _console().print(render_per_layer(result["per_layer"]))
    _floor_gate(findings, quiet)


def _floor_gate(findings, quiet: bool) -> None:
    from rexdeploy.evaluate.floors import EXIT_FLOOR

    failed = [f for f in findings if f.missed]
    for f in findings if not quiet else failed:
        click.echo(("BELOW FLOOR " if f.missed else "ok ") + f.describe(), err=True)
    if failed:
        click.secho(f"fidelity gate failed: {len(failed)} of {len(findings)} figure(s) below "
                    "their floor", fg="red", err=True)
        sys.exit(EXIT_FLOOR)


# -- profile -----------------------------------------------------------------------------------
class _ProfileCommand(click.Command):
    """`--json` takes an optional FILE, so `profile --json ART` would read ART as the file and
    then miss the artifact. An existing artifact directory right after `--json` is the
    artifact: the JSON goes to stdout, as `--json - ART` says."""

    def parse_args(self, ctx, args):
        args = list(args)
        for i, arg in enumerate(args[:-1]):
            if arg == "--json" and os.path.isfile(os.path.join(args[i + 1], "manifest.json")):
                args[i] = "--json=-"
        return super().parse_args(ctx, args)


@cli.command(cls=_ProfileCommand, epilog="""\b
Exit status: 0 done; 1 user error (e.g. a missing or invalid --baseline); 2 usage error;
3 the regression gate failed: a median latency or throughput is worse than --baseline's by more
than --max-regression (the figures are named on stderr).""")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(), metavar="ARTIFACT...")
@click.option("--device", help="OpenVINO device: CPU, GPU, NPU [default: the build's]. "
                               "DLA0 is for TensorRT artifacts.")
@click.option("--batch", type=click.IntRange(1, 4096), help="Reshape the inputs to this batch; "
              "FPS counts frames [default: the artifact's shapes].")
@click.option("--warmup", type=click.FloatRange(0, 60000), default=200.0, show_default=True,
              metavar="MS", help="Untimed inferences before each variant's round, in ms.")
@click.option("--duration", type=click.FloatRange(0.1, 600),
              help="Seconds of timed inference per variant per round, for latency and again for "
                   "throughput [default: 3].")
@click.option("--iterations", type=click.IntRange(1), help="Instead of --duration: timed sync "
              "inferences per variant, split over the rounds.")
@click.option("--rounds", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Interleaved rounds (variants alternate, so machine noise hits all alike).")
@click.option("--streams", type=click.IntRange(1, 256), help="Streams (= requests in flight) "
              "for async throughput [default: OpenVINO's THROUGHPUT hint].")
@click.option("--dim", "dims", multiple=True, metavar="NAME=VALUE",
              help="Size of a named dynamic dim of the inputs (e.g. W=256) [default: the "
                   "build's --dim, else 1]; the run says which sizes it timed. Repeatable.")
@click.option("--inputs", metavar="DIR|random", help="Inputs: a folder/file as for compare, or "
              "random (synthetic, in the build's input ranges) [default: random].")
@click.option("--compare", is_flag=True, help="Also profile the float model, f32 pinned and at "
              "the device default precision, interleaved, with ratios against float f32.")
@click.option("--no-baselines", is_flag=True, hidden=True, help="Kept for old scripts: the "
              "float baselines now run only with --compare.")
@click.option("--top", type=click.IntRange(0), default=10, show_default=True,
              help="Slowest layers to show per variant (0: all).")
@click.option("--no-layers", is_flag=True, help="Skip the per-layer times (PERF_COUNT).")
@click.option("--json", "json_path", is_flag=False, flag_value="-", metavar="[FILE]",
              help="Write the versioned JSON result to FILE (alone, or '-': print it).")
@click.option("--save", type=click.Path(), help="Same as --json FILE (kept for old scripts).")
@click.option("--markdown", is_flag=True, help="Print markdown tables instead of rich tables.")
@click.option("--plot", type=click.Path(), metavar="FILE.png",
              help="Latency distribution and per-layer bars (needs matplotlib).")
@click.option("--baseline", type=click.Path(), metavar="FILE.json",
              help="Regression gate: compare with this earlier --json result (exit 3 if worse).")
@click.option("--max-regression", default="10%", show_default=True, metavar="PERCENT",
              help="The gate's bound on the median latency rise and the throughput drop.")
@click.option("--quiet", "-q", is_flag=True)
@user_errors
def profile(artifacts, device, batch, warmup, duration, iterations, rounds, streams, dims,
            inputs, compare, no_baselines, top, no_layers, json_path, save, markdown, plot,
            baseline, max_regression, quiet):
    """Latency (sync, 1 request), async throughput and per-layer times of each ARTIFACT,
    interleaved in one run; with --compare also the float model, with ratios."""
    from rexdeploy import api
    from rexdeploy.profiling.run import ProfileConfig
    from rexdeploy.profiling.schema import load_profile, save_profile
    from rexdeploy.evaluate.regression import parse_bound

    if duration is not None and iterations is not None:
        raise click.UsageError("give --duration or --iterations, not both")
    bound = parse_bound(max_regression)
    base_doc = load_profile(baseline) if baseline else None  # fail before any timing
    config = ProfileConfig(device=device, batch=batch, warmup_ms=warmup,
                           duration=duration or 3.0, iterations=iterations, rounds=rounds,
                           streams=streams, inputs=inputs, layers=not no_layers,
                           keep_times=bool(plot), dims=tuple(parse_dim(d) for d in dims))
    to_stdout = json_path == "-"
    doc = api.profile(list(artifacts), config, compare=compare,
                      quiet=quiet or to_stdout or markdown)
    for path in filter(None, (save, None if to_stdout else json_path)):
        save_profile(doc, path)
    if plot:
        from rexdeploy.profiling.plot import plot_profile

        plot_profile(doc, plot)
    if to_stdout:
        click.echo(json.dumps(doc, indent=1, default=_json_default))
    elif markdown:
        from rexdeploy.profiling.render import markdown_tables

        click.echo(markdown_tables(doc, top))
    elif not quiet:
        _print_profile(doc, top)
    if base_doc is not None:
        _gate(doc, base_doc, bound, baseline, quiet)


def _print_profile(doc: dict, top: int) -> None:
    from rexdeploy.profiling.render import device_line, render_layer_table
    from rexdeploy.profiling.timing import render_profile_table

    console = _console()
    for v in doc["variants"]:
        if v.get("layers"):
            console.print(render_layer_table(v, top))
    console.print(render_profile_table(doc["variants"]))
    console.print(device_line(doc), style="dim")


def _gate(doc: dict, base_doc: dict, bound: float, baseline: str, quiet: bool) -> None:
    from rexdeploy.evaluate.regression import EXIT_REGRESSION, check_regression

    findings = check_regression(doc, base_doc, bound)
    failed = [f for f in findings if f.regressed]
    for f in findings if not quiet else failed:
        click.echo(("REGRESSION " if f.regressed else "ok ") + f.describe(), err=True)
    if failed:
        click.secho(f"regression gate failed: {len(failed)} figure(s) worse than {baseline} by "
                    f"more than {bound:.0%}", fg="red", err=True)
        sys.exit(EXIT_REGRESSION)


# -- inspect -----------------------------------------------------------------------------------
@cli.command()
@click.argument("artifact", type=click.Path())
@click.option("--layers", is_flag=True, help="Per-layer table: quantization, error, runtime "
                                             "precision.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check every file's sha256 against the manifest.")
@click.option("--json", "as_json", is_flag=True, help="Print manifest and report as JSON.")
@click.option("--check", type=click.Choice(["trt"]), help="Check an ONNX file (or the "
              "artifact's model.onnx) against TensorRT's Q/DQ rules; exit 1 on errors.")
@user_errors
def inspect(artifact, layers, verify, as_json, check):
    """Show what ARTIFACT holds: config, versions, int8 coverage, layers kept in float."""
    from rexdeploy import api

    if check:
        _check_trt(artifact, as_json)
        return

    info = api.inspect(artifact, verify=verify)
    if as_json:
        click.echo(json.dumps(info, indent=1, default=_json_default))
        return
    from rexdeploy.render import inspect_tables

    for table in inspect_tables(info, layers):
        _console().print(table)
    if info["verified"]:
        v = info["verified"]
        click.echo(f"verified: {v['files']} files (sha256), "
                   f"{'manifest digest, ' if v['manifest_digest'] else ''}"
                   f"schema {v['schema_version']}")


def _check_trt(path: str, as_json: bool) -> None:
    import os

    from backends.trt_rules import check_trt_rules

    if os.path.isdir(path):
        path = api_artifact_onnx(path)
    if not os.path.isfile(path):
        raise UserError(f"no ONNX file at {path}")
    try:
        result = check_trt_rules(path)
    except Exception as exc:  # not an ONNX file
        raise UserError(f"cannot read {path} as ONNX: {exc}") from None
    if as_json:
        click.echo(json.dumps({"path": path, **result.to_dict()}, indent=1))
    else:
        for finding in result.findings:
            click.secho(str(finding), fg="red" if finding.level == "error" else "yellow")
        click.echo(f"{path}: {len(result.errors)} errors, {len(result.warnings)} warnings "
                   f"against TensorRT's Q/DQ rules")
    if result.errors:
        sys.exit(1)


def api_artifact_onnx(path: str) -> str:
    from rexdeploy.artifact import load_artifact

    return load_artifact(path).file("onnx")


# -- backends ----------------------------------------------------------------------------------
@cli.command("backends")
@user_errors
def backends_cmd():
    """List the targets and whether their runtimes are available here."""
    import backends
    from rich.table import Table

    table = Table(title="rexdeploy targets")
    for col in ("target", "status", "details"):
        table.add_column(col)
    for name, ok, why in backends.status():
        if not ok and backends.rules(name).defers:
            table.add_row(name, "[yellow]deferred[/]", f"{why}; builds write the ONNX and "
                          "build_engine.sh for the device")
        else:
            table.add_row(name, "[green]available[/]" if ok else "[red]unavailable[/]", why)
    _console().print(table)


def _save(path: str | None, result: dict) -> None:
    if path:
        from rexdeploy.artifact import write_json_atomic

        write_json_atomic(path, result, "choose a writable --save path")


def _json_default(obj):
    from rexdeploy.artifact import _json_default as default

    return default(obj)


def main(argv: list[str] | None = None) -> None:
    import signal

    from rexdeploy import interrupts

    interrupts.after_command = signal.SIG_IGN
    try:
        cli.main(args=argv, prog_name="rexdeploy")
    except KeyboardInterrupt:  # after the command finished (its output is complete)
        sys.stderr.write("interrupted\n")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    except SystemExit as exc:
        if exc.code in (130, 143):
            # Interrupted; the artifact's temp dir is already gone (ArtifactWriter.__exit__).
            # Skip the interpreter's teardown: an interrupt that landed inside `import torch`
            # or an OpenVINO compile leaves native state whose finalizers can crash (seen:
            # SIGSEGV, or death by the re-raised SIGINT).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.code)
        # The command has finished and its exit code stands: an interrupt during the
        # interpreter's shutdown would otherwise end the process by the signal (exit -2/-15).
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        raise


if __name__ == "__main__":
    main()
