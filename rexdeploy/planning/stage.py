"""The quantize stage of a build: activation statistics and ranges (BatchNorm moments, natural
synthetic images, the user's --calib data), range equalization, sensitivity, the QuantPlan,
its refinement and its recurrent layers. Input: the float graph (BN folded) and its layers;
output: the frozen plan and the notes the build reports."""

from __future__ import annotations

from dataclasses import replace

from rexdeploy.config import CALIB_RANGES, BuildConfig, QuantConfig
from rexdeploy.errors import UserError
from rexdeploy.progress import StageLog


def equalize_ranges(float_model, layers, stats: dict, config: BuildConfig, log: StageLog
              ) -> str | None:
    """Cross-layer range equalization of depthwise inputs (rexdeploy/passes/equalize.py), for
    int8 activations with per-channel weight scales; the note saying what it did, None when
    it changed nothing."""
    q = config.quant
    # (convolutions keep per-channel weight scales under any granularity but "tensor")
    if q.equalize == "off" or q.activations != "int8" or q.granularity == "tensor":
        return None
    from rexdeploy.passes.equalize import equalize_depthwise
    from rexdeploy.planning.quantize import use_stats

    planned = {layer.name for layer in layers if layer.name not in set(q.exclude)}
    # the BatchNorm statistics equalize where they reach, also when the user's --calib data
    # gives the ranges (those are observed after it, on the equalized graph)
    basis = "auto" if q.ranges == CALIB_RANGES else q.ranges
    done = equalize_depthwise(float_model, stats, q.range_sigma, planned,
                              lambda s: use_stats(s, basis))
    if not done:
        return None
    worst = max(spread for _, spread in done)
    note = (f"range equalization: {len(done)} depthwise convolution input(s) equalized through "
            f"the layer before (channel ranges up to {worst:.0f}x the median before; exact in "
            "float, the weight scales per channel absorb it)")
    log.note(note)
    return note


def align_inputs(float_model, stats: dict, config: BuildConfig, log: StageLog
                 ) -> tuple[str | None, BuildConfig]:
    """The image inputs normalised per channel (QuantConfig.input_pixels) moved onto one int8
    grid before the convolution that reads them (rexdeploy/passes/align_input.py): the note
    saying what it did (None when nothing) and the config with the aligned tensors' grids."""
    import numpy as np

    from rexdeploy.passes.align_input import ZERO, align_input, alignable
    from rexdeploy.planning.stats import TensorStats

    q = config.quant
    if not (q.input_pixels and q.align_input and q.activations == "int8"):
        return None, config
    grids, done = [], []
    for name, steps, offsets in q.input_pixels:
        conv = alignable(float_model, name, len(steps))
        if conv is None or conv.name in set(q.exclude):
            continue
        aligned, step = align_input(float_model, conv, steps, offsets)
        # the pixels' codes p - ZERO, uniform over the 256 levels
        stats[aligned] = TensorStats(np.zeros(1), np.full(1, (256 * step) ** 2 / 12.0),
                                     -ZERO * step, (255 - ZERO) * step, frozenset({"input"}))
        grids.append((aligned, step))
        done.append(f"{name!r} (read by {conv.name})")
    if not done:
        return None, config
    note = (f"input alignment: {', '.join(done)} normalised per channel by --preprocess, moved "
            f"onto one int8 grid (x' = a x + d per channel, exact in float, the convolution "
            f"takes 1/a): every pixel is an exact int8 code, the padding ring the one rounded "
            f"value (--no-align-input: one scale rounds every pixel)")
    log.note(note)
    return note, replace(config, quant=q.with_(input_grid=q.input_grid + tuple(grids)))


# --rotate auto rotates the FFN inputs whose outlier ratio (largest channel maximum over the
# median one, on the build's synthetic inputs) is at least this share of the worst one's: the
# layers where rotation pays, at a fraction of the latency of rotating all. all-MiniLM-L6-v2
# (random tokens: 20.3, 20.9, 17.1, 13.2, 5.1, 4.0) rotates 4 of 6: W8A8 mean cosine 0.9952 ->
# 0.9984 at 1.06x the latency, against 0.9988 at 1.14x for all six (docs/benchmarks.md)
ROTATE_SHARE = 0.5


def split_identities(float_model, layers, config: BuildConfig, log: StageLog) -> str | None:
    """A reparameterised block's folded identity taken off its convolution's diagonal where
    --split-identity says (rexdeploy/passes/split_identity.py): the note saying what it did,
    None when it changed nothing."""
    q = config.quant
    if q.split_identity == "off" or q.operator != "uniform":
        return None
    from rexdeploy.passes.split_identity import identity_splits, split_identity

    planned = {layer.name for layer in layers if layer.name not in set(q.exclude)}
    splits = identity_splits(float_model, planned, q.weight_bits, q.split_identity)
    if not splits:
        return None
    split_identity(float_model, splits)
    worst = min(splits, key=lambda s: s.before_db)
    note = (f"identity split: {len(splits)} convolution(s) carry a dominant diagonal (as a "
            f"reparameterised block's folded identity leaves it), now computed beside them as a "
            f"float per-channel multiply of their input (exact in float); their weight SQNR "
            f"rises {min(s.after_db - s.before_db for s in splits):.1f}-"
            f"{max(s.after_db - s.before_db for s in splits):.1f} dB ({worst.layer}: "
            f"{worst.before_db:.1f} -> {worst.after_db:.1f} dB, {worst.rows} of "
            f"{worst.channels} rows)")
    log.note(note)
    return note


def rotate_ffn_inputs(float_model, layers, config: BuildConfig, loaded, log: StageLog
                      ) -> str | None:
    """Block Hadamard rotation of the inputs of FFN output Linears (rexdeploy/passes/rotate.py),
    for int8 activations: all of them (ffn) or the most outlier-heavy (auto); the note saying
    what it did, None when it changed nothing (then --rotate ffn says why it found nothing)."""
    q = config.quant
    if q.rotate == "off" or q.activations != "int8":
        return None
    from rexdeploy.passes.rotate import BLOCK, ffn_outputs, rotate_inputs

    planned = {layer.name for layer in layers if layer.name not in set(q.exclude)}
    found = ffn_outputs(float_model, planned)
    chosen, why = (found, "") if q.rotate == "ffn" or not found else \
        _outlier_heavy(float_model, found, config, loaded, log)
    done = rotate_inputs(float_model, chosen, q.seed)
    if not done:
        if q.rotate == "ffn":
            log.note(f"rotation: --rotate ffn found no FFN output Linear to rotate (a MatMul/"
                     f"Gemm with constant weights reading a GELU/SiLU output, its input "
                     f"channels a multiple of {BLOCK}); nothing rotated")
        return None  # the graph is unchanged
    note = (f"rotation: the inputs of {len(done)} of {len(found)} FFN output Linear(s) rotated "
            f"by a block Hadamard matrix ({BLOCK} channels a block, float MatMuls; exact in "
            f"float, the weights carry the inverse), so their int8 inputs have no outlier "
            f"channels{why}")
    log.note(note)
    return note


def _outlier_heavy(float_model, found: list, config: BuildConfig, loaded, log: StageLog
                   ) -> tuple[list, str]:
    """The FFN output Linears of `found` whose input's outlier ratio on the build's synthetic
    inputs is at least ROTATE_SHARE of the worst one's (and marks outliers at all), and the
    note's reason."""
    from rexdeploy.planning.observe import observe
    from rexdeploy.planning.quantize import OUTLIER_RATIO, outlier_ratio

    samples, what, natural = _range_samples(float_model, config, loaded, log)
    names = [node.inputs[0].name for node in found]
    observed = observe(float_model, names, samples, natural=natural)
    ratios = [0.0 if observed[n].channel_absmax is None else
              outlier_ratio(observed[n].channel_absmax) for n in names]
    floor = max(OUTLIER_RATIO, ROTATE_SHARE * max(ratios))
    chosen = [node for node, r in zip(found, ratios) if r >= floor]
    return chosen, (f" (--rotate auto: outlier ratios {', '.join(f'{r:.0f}' for r in ratios)} "
                    f"on {what}; those of at least {floor:.0f} rotated, --rotate ffn rotates "
                    "all, off none)")


def range_statistics(float_model, config: BuildConfig) -> dict:
    from rexdeploy.planning.stats import propagate_stats

    ranges = {name: (lo, hi) for name, lo, hi in config.quant.input_ranges}
    known = {v.name for v in float_model.graph.inputs}
    for name in ranges:
        if name not in known:
            raise UserError(f"--input-range names {name!r}, which is not a model input "
                            f"(inputs: {', '.join(sorted(known))})",
                            "name one of the model's inputs, e.g. --input-range "
                            f"{sorted(known)[0]}:-1,1")
    return propagate_stats(float_model, ranges, config.quant.range_sigma)


def _observed_ranges(float_model, layers, tensors, recurrent_x, stats, calib,
                     config: BuildConfig, loaded, log: StageLog) -> tuple[dict, list[str]]:
    """The tensors the statistics do not reach (and the layer inputs whose means bias
    correction needs), observed on the user's samples (tail quantiles) or the build's synthetic
    ones; the note saying which ranges came from where."""
    from rexdeploy.planning.quantize import observed_means, use_stats

    q = config.quant
    ranged = set(tensors + recurrent_x)
    missing = [t for t in dict.fromkeys(tensors + recurrent_x)
               if not use_stats(stats.get(t), q.ranges)]
    means_missing = [layer.input for layer in layers if q.bias_correction
                     and observed_means(q) and not use_stats(stats.get(layer.input), q.ranges)]
    need = list(dict.fromkeys(missing + means_missing))
    user = calib is not None and calib.user
    if not need:
        return {}, ([f"all {len(ranged)} activation ranges from statistics (BatchNorm): kept "
                     "under --calib, they measured better than real samples' extremes; the "
                     "samples serve the rest of the build"] if user and tensors else [])
    from rexdeploy.planning.observe import NATURAL_MARGIN, TAIL, observe

    natural, tail = False, None
    if user:
        samples, what, tail = calib.samples, calib.source, TAIL
    else:
        samples, what, natural = _range_samples(float_model, config, loaded, log)
    observed = observe(float_model, need, samples, natural=natural, tail=tail)
    widened = f", widened {NATURAL_MARGIN:g}x (such images reach less far than real " \
        "inputs)" if natural else (f", the {TAIL:.2%} tail quantiles in place of the "
                                   "extremes" if tail else "")
    return observed, [f"{len(missing)} activation ranges observed on {what} ({q.ranges}"
                      f"{widened}); {len(ranged) - len(missing)} from statistics"]


def zero_point_floors(float_model, config: BuildConfig) -> dict[str, float]:
    """tensor -> hard lower bound, for the tensors that may take uint8 with a zero point: those
    bounded below by a negative value whatever the input (rexdeploy/planning/bounds.py), where
    the target runs a zero point and neither zero points nor uint8 activations are turned off;
    else {}."""
    import backends
    from rexdeploy.planning.bounds import zero_point_floors as floors

    q = config.quant
    if not (q.zero_points and q.unsigned_activations and q.activations == "int8"
            and backends.rules(config.target).zero_point_activations):
        return {}
    return floors(float_model)


def _zero_point_notes(plan, log: StageLog) -> list[str]:
    """One note naming how many activations took uint8 with a zero point, and where their grids
    start."""
    moved = [a for a in plan.activations if a.zero_point]
    if not moved:
        return []
    starts = sorted({round(-a.zero_point * a.scale, 3) for a in moved})
    shown = ", ".join(f"{f:g}" for f in starts[:4]) + (", ..." if len(starts) > 4 else "")
    note = (f"{len(moved)} activation(s) bounded below by a small negative value (swish, "
            f"hard-swish, GELU outputs) as uint8 with a zero point, their grids starting at "
            f"{shown}: about half the step of int8 over [-max, max] (--no-zero-points: int8)")
    log.note(note)
    return [note]


# samples of the user's data the two range candidates are judged on (the first ones)
RANGE_CHECK_SAMPLES = 16


def _user_ranges(float_model, layers, skipped, tensors, stats, tails: dict, calib,
                 config: BuildConfig, allow_unsigned: bool, floors: dict,
                 notes: list[str]) -> dict:
    """The ranges observed on the user's samples: their tail quantiles (`tails`) or their
    extremes, whichever gives the network output closer to the float model's on those samples
    (each as an order-1 plan lowered and run in ONNX Runtime). Neither wins everywhere: the tail
    quantiles took MobileNetV2 exported with BatchNorm folded from 16.0 to 19.8 dB and the PP-OCRv4
    recogniser from 0.237 to 0.289 CTC exact match, and cost ddddocr's CNN + LSTM recogniser 0.789
    -> 0.632, where the rare strong values are the text."""
    from rexdeploy.planning.quantize import make_plan
    from rexdeploy.planning.refine import end_to_end_db

    extremes = {n: o.at_extremes() for n, o in tails.items()}
    if all((o.lo, o.hi) == (tails[n].lo, tails[n].hi) for n, o in extremes.items()):
        return tails
    q = config.quant.with_(budget=None, mixed_precision="off", orders=1, ensemble=0)
    plans = [make_plan(layers, skipped, tensors, stats, obs, q, allow_unsigned, floors=floors)
             for obs in (tails, extremes)]
    db_tails, db_extremes = end_to_end_db(float_model, plans,
                                          calib.samples[:RANGE_CHECK_SAMPLES])
    keep_tails = db_tails >= db_extremes
    notes.append(f"ranges from your samples: their tail quantiles give {db_tails:.1f} dB on "
                 f"them, their extremes {db_extremes:.1f} dB (order-1 plans in ONNX Runtime): "
                 f"the {'tail quantiles' if keep_tails else 'extremes'} kept")
    return tails if keep_tails else extremes


def plan_quantization(float_model, layers, skipped, stats, config: BuildConfig, loaded,
                      log: StageLog):
    from rexdeploy.planning.quantize import activation_tensors, make_plan

    q = config.quant  # resolved (rexdeploy/resolve.py): every stage below reads the same choices
    calib = _calibration(float_model, config, loaded, log)  # --calib / --refine (None: neither)
    tensors = activation_tensors(float_model, layers) if q.activations == "int8" else []
    tensors += [t for t in _attention_inputs(float_model, config) if t not in tensors]
    recurrent_x = _recurrent_inputs(float_model, config)  # ranged too, planned apart
    observed, notes = _observed_ranges(float_model, layers, tensors, recurrent_x, stats, calib,
                                       config, loaded, log)
    import backends

    allow_unsigned = backends.rules(config.target).unsigned_activations
    floors = zero_point_floors(float_model, config)
    if calib is not None and calib.user and observed:
        observed = _user_ranges(float_model, layers, skipped, tensors, stats, observed, calib,
                                config, allow_unsigned, floors, notes)
    assumed = [s.name for s in config.inputs if s.dtype.startswith("float")
               and s.name not in {n for n, _, _ in q.input_ranges}]
    if assumed and q.activations == "int8":
        notes.append(f"input value range not given for {', '.join(assumed)}: assumed N(0, 1) "
                     f"(pass --input-range NAME:LO,HI, e.g. input:-1,1 for images in [-1, 1])")
    for n in notes:
        log.note(n)
    sensitivity = _sensitivity(float_model, layers, skipped, tensors, stats, observed, config,
                               loaded, calib, allow_unsigned, floors, log, notes) \
        if q.uses_sensitivity else None
    plan = make_plan(layers, skipped, tensors, stats, observed, q, allow_unsigned, sensitivity,
                     floors)
    notes.extend(_zero_point_notes(plan, log))
    if sensitivity is not None:
        notes.extend(_mixed_notes(plan, q, log))
    balanced = [lp.name for lp in plan.layers if lp.input_scale is not None]
    if balanced or q.weight_balance == "sinkhorn":
        note = (f"balanced weight columns (--weight-balance {q.weight_balance}) on "
                f"{len(balanced)} MatMul/Gemm layer(s) with a float input: each input column "
                "divided by a factor from the weights alone, the input multiplied by it (a "
                "float Mul in front; exact in float)")
        notes.append(note)
        log.note(note)
    smoothed = [a.tensor for a in plan.activations if a.smooth is not None]
    if smoothed:
        note = (f"scale migration (--smooth {q.smooth}, alpha {q.smooth_alpha}) on "
                f"{len(smoothed)} MatMul/Gemm input(s) with outlier channels")
        notes.append(note)
        log.note(note)
    if q.refine != "none":
        plan = _refine(plan, float_model, layers, stats, observed, config, calib, loaded, log,
                       notes)
    if any(s.op in ("LSTM", "GRU", "RNN") for s in plan.skipped):
        plan = _recurrent(plan, float_model, recurrent_x, stats, observed, config, log, notes)
    if any(s.op == "MatMul" for s in plan.skipped):
        plan = _attention(plan, float_model, config, log, notes)
    ensemble = None
    if q.ensemble:
        from rexdeploy.planning.quantize import ensemble_plans

        ensemble = ensemble_plans(plan, layers, stats, observed, q)
        if not any(ensemble[1]):
            raise UserError("--ensemble: no layer has a second order to share among members",
                            "raise --budget or drop --ensemble")
    return plan, notes, ensemble


def _recurrent_inputs(float_model, config: BuildConfig) -> list[str]:
    """The inputs X and the hidden-state outputs of the LSTM/GRU layers the target runs int8
    (rexdeploy/planning/recurrent.py): the tensors they need ranges of."""
    import backends

    if not backends.rules(config.target).int8_recurrent or \
            config.quant.activations != "int8" or config.quant.recurrent != "int8":
        return []
    from rexdeploy.planning.recurrent import candidates, state_output

    nodes = candidates(float_model)
    return list(dict.fromkeys([n.inputs[0].name for n in nodes] +
                              [v.name for v in map(state_output, nodes) if v is not None]))


def _attention_inputs(float_model, config: BuildConfig) -> list[str]:
    """Both inputs of the activation x activation MatMuls the build quantizes
    (rexdeploy/planning/attention.py): ranged with the layers' inputs."""
    import backends

    from rexdeploy.planning.attention import inputs

    return inputs(float_model, config.quant, backends.rules(config.target))


def _attention(plan, float_model, config: BuildConfig, log: StageLog, notes: list[str]):
    """The plan with the int8 attention MatMuls added (rexdeploy/planning/attention.py)."""
    import backends

    from rexdeploy.planning.attention import add_to_plan

    plan = add_to_plan(plan, float_model, config.quant, backends.rules(config.target))
    if plan.attention:
        softmax = sum(a.source == "softmax" for a in plan.activations)
        note = (f"{len(plan.attention)} activation x activation MatMul(s) (attention) int8: both "
                f"inputs quantized per tensor ({softmax} Softmax output(s) on the exact [0, 1] "
                "range); --attention float keeps them float")
        notes.append(note)
        log.note(note)
    return plan


def _recurrent(plan, float_model, inputs: list[str], stats, observed, config: BuildConfig,
               log: StageLog, notes: list[str]):
    """The plan with the int8 LSTM/GRU layers added (rexdeploy/planning/recurrent.py)."""
    import backends

    from rexdeploy.planning.quantize import use_stats
    from rexdeploy.planning.recurrent import add_to_plan

    q = config.quant
    ranges = {}
    for x in inputs:  # X (statistics or observed) and the hidden states (observed)
        s, o = stats.get(x), observed.get(x)
        if use_stats(s, q.ranges):
            ranges[x] = (s.bound, s.source)
        elif o is not None:
            ranges[x] = (o.bound, f"observed:{q.ranges}")
    plan = add_to_plan(plan, float_model, ranges, q, backends.rules(config.target))
    if plan.recurrent:
        ops = ", ".join(sorted({r.op for r in plan.recurrent}))
        note = (f"{len(plan.recurrent)} recurrent layer(s) ({ops}) int8: the input rescaled onto "
                "the hidden state's grid (its observed peak, at most 1), which OpenVINO's "
                "kernel also rounds the fed-back state to at every step; the ONNX Runtime "
                "reference keeps that state float, so the device check measures it")
        notes.append(note)
        log.note(note)
    return plan


def _sensitivity(float_model, layers, skipped, tensors, stats, observed, config: BuildConfig,
                 loaded, calib, allow_unsigned, floors: dict, log: StageLog, notes: list[str]):
    """Measure each layer's data-free output sensitivity on an order-1 draft of the plan
    (rexdeploy/planning/sensitivity.py), on the build's synthetic inputs (the user's --calib data
    when given)."""
    from rexdeploy.planning.quantize import make_plan
    from rexdeploy.planning.sensitivity import measure_sensitivity

    q = config.quant
    draft = make_plan(layers, skipped, tensors, stats, observed,
                      q.with_(orders=1, budget=None, mixed_precision="off"), allow_unsigned,
                      floors=floors)
    if calib is not None and calib.user:
        samples, what = calib.samples, f"calibration inputs ({calib.source})"
    elif q.ranges == "zeroq":
        samples, what = _synthetic_samples(float_model, config, loaded, log), \
            "BatchNorm-matched images"
    else:
        from rexdeploy.planning.sensitivity import sensitivity_samples

        samples, what = sensitivity_samples(
            _synthetic_samples(float_model, config, loaded, log),
            {name: (lo, hi) for name, lo, hi in q.input_ranges}, q.seed, dict(q.input_grid),
            edges=True)
    from rexdeploy.planning.mixed import raises_activations

    sens = measure_sensitivity(float_model, layers, draft, samples, log,
                               activations=raises_activations(q))
    worst = ", ".join(f"{name} ({'weights' if kind == 'weights' else 'input'}, NSR {v:.2g})"
                      for kind, name, v in sens.ranking()[:3])
    heads = ", ".join(f"{out} at its {op}'s input {x}" for out, (op, x) in sens.logits.items())
    note = (f"sensitivity of {len(sens.weights)} layers"
            + (f" and {len(sens.activations)} activations" if sens.activations else "") +
            f" measured on {sens.samples} {what}" + (f", on the logits ({heads})" if heads else ""))
    notes.append(f"{note}; worst: {worst}")  # the report stays the same from build to build
    log.note(f"{note} in {sens.seconds:.1f} s; worst: {worst}")
    return sens


def _mixed_notes(plan, q: QuantConfig, log: StageLog) -> list[str]:
    """One line per mixed-precision choice (also in each layer's report row, `mixed`)."""
    lines, seen = [], set()
    for lp in plan.layers:
        for what, choice in lp.metrics.get("mixed", {}).items():
            if what == "activation" and choice["tensor"] in seen:
                continue  # one tensor read by several layers: said once
            seen.add(choice.get("tensor"))
            line = f"mixed precision: {lp.name} {what} -> " + \
                (f"int{choice['bits']}" if what == "weights" else choice["precision"]) + \
                f" (+{choice['bops_delta'] / 1e6:.3g} MBOPs): {choice['why']}"
            lines.append(line)
    if q.mixed_precision != "off" and not lines:
        lines.append(f"mixed precision ({q.mixed_precision}): no raise was worth its BOPs under "
                     f"--budget {q.budget:g}; the budget went to REx orders")
    if q.budget_from > 1:
        lines.append(_above_floor(plan, q.budget_from))
    for line in lines:
        log.note(line)
    return lines


def _above_floor(plan, floor: int) -> str:
    """Which layers the budget gave more than the K=floor orders every layer keeps."""
    up = [lp.name for lp in plan.layers if len(lp.orders) > floor]
    shown = ", ".join(up[:4]) + (f" and {len(up) - 4} more" if len(up) > 4 else "")
    return (f"REx orders: every layer keeps K={floor}; the budget gave order {floor + 1} to "
            f"{len(up)} of {len(plan.layers)} layers" + (f" ({shown})" if up else ""))


def _calibration(float_model, config: BuildConfig, loaded, log: StageLog):
    """The --calib samples (synthetic by default under --refine), or None without either."""
    from rexdeploy.planning.calib_data import calibration_data, parse_calib

    q = config.quant
    spec = parse_calib(q.calib or ("synthetic" if q.refine != "none" else None))
    if spec is None:
        return None
    if spec.kind == "synthetic" and q.refine == "none":
        log.note("--calib synthetic without --refine changes nothing: the activation ranges "
                 "stay data-free")
        return None
    with log.stage("calibration data", q.calib or "synthetic"):
        return calibration_data(spec, float_model, config, loaded, log, q.calib_preprocess,
                                q.calib_tokenizer)


def _refine(plan, float_model, layers, stats, observed, config: BuildConfig, calib, loaded,
            log: StageLog, notes: list[str]):
    """--refine: FlexRound or ERQ on the calibration data (rexdeploy/planning/refine.py), kept only
    where it wins end to end: the refined and the round-to-nearest plans' network outputs are
    compared with the float model's (ONNX Runtime), on synthetic calibration data on held-out
    natural synthetic inputs and on the calibration inputs at half their amplitude, on the
    user's data (--calib PATH) on that data; a refinement that loses on any is dropped. Its
    per-layer check passes layers whose errors add up worse, and it fits the calibration
    inputs' scale: EfficientNet-Lite0 W4A8 refined on N(0, 1) inputs (the range
    assumed without --input-range) reads 23.9 dB on them against round-to-nearest's 1.0, and
    loses on inputs half as wide (1.2 vs 2.3 dB) as on the real photos (3.4 vs 4.9)."""
    from rexdeploy.planning.quantize import _input_mean
    from rexdeploy.planning.refine import end_to_end_db, refine_plan

    q = config.quant
    means = {layer.name: _input_mean(stats.get(layer.input), observed.get(layer.input), q,
                                     layer.in_channels) for layer in layers}
    with log.stage("refine", f"{q.refine} on {calib.source}"):
        refined, summary = refine_plan(plan, layers, float_model, calib.samples, q, means, log,
                                       calib.source)
    held_out = replace(config, quant=q.with_(
        seed=q.seed + HOLD_OUT_SEED, synthetic_samples=max(q.synthetic_samples, HOLD_OUT),
        ranges="synthetic" if q.ranges == "zeroq" else q.ranges))
    with log.stage("refine check", "end to end, refined vs round-to-nearest"):
        if calib.user:  # the user's own data is the distribution that matters
            checks = [(f"the {len(calib.samples)} calibration samples ({calib.source})",
                       calib.samples)]
        else:
            natural, what = natural_samples(float_model, held_out, loaded, log, HOLD_OUT)
            checks = [(f"{len(natural)} held-out {what}", natural),
                      (f"the {len(calib.samples[:HOLD_OUT])} first calibration inputs at half "
                       "amplitude", _half_amplitude(calib.samples[:HOLD_OUT]))]
        scores = [end_to_end_db(float_model, [plan, refined], s) for _, s in checks]
    kept = all(refined_db >= plain_db for plain_db, refined_db in scores)
    verdict = {"kept": kept, "checks": [
        {"inputs": name, "plain_db": round(p, 2), "refined_db": round(r, 2)}
        for (name, _), (p, r) in zip(checks, scores)]}
    note = (f"{q.refine}: {summary['improved']} of {summary['layers']} layers improved on "
            f"{calib.source} in {summary['seconds']:.1f} s")
    if summary["skipped"]:
        note += f"; {summary['skipped']} layers not eligible kept round-to-nearest"
    note += "; end to end against the float model, round-to-nearest -> refined: " + "; ".join(
        f"{p:.2f} -> {r:.2f} dB on {name}" for (name, _), (p, r) in zip(checks, scores))
    if not kept:
        note += f". {q.refine} loses there, so the build keeps round-to-nearest"
    notes.append(note)
    log.note(note)
    # the plan records the refinement asked for and its verdict either way
    asked = {k: refined.config[k] for k in ("refine", "calib", "refine_inputs")
             if k in refined.config}
    chosen = refined if kept else plan
    return replace(chosen, config=dict(chosen.config, **asked, refine_end_to_end=verdict))


def _half_amplitude(samples: list[dict]) -> list[dict]:
    """The samples with every float input halved (token ids and other integer inputs kept)."""
    import numpy as np

    return [{k: (v * np.asarray(0.5, v.dtype) if np.issubdtype(v.dtype, np.floating) else v)
             for k, v in s.items()} for s in samples]


RANGE_IMAGES = 64  # natural synthetic images the auto ranges observe where statistics do not
# reach (EfficientNet-Lite0 from torch.onnx.export: 8 of them 18.6 dB, 32 21.2, 64 22.6, 128 22.0,
# 256 22.3; docs/benchmarks.md, "Ranges without BatchNorm")
# held-out inputs the refinement is judged on: their own seed, never the calibration's
HOLD_OUT, HOLD_OUT_SEED = 16, 7919


def _range_samples(float_model, config: BuildConfig, loaded, log: StageLog
                   ) -> tuple[list[dict], str, bool]:
    """The synthetic inputs the activation ranges are observed on where statistics do not
    reach, what they are, and whether they are natural images. Under --ranges auto an image
    input gets RANGE_IMAGES natural images (1/f noise, natural colour, on the pixel grid:
    rexdeploy.planning.sensitivity's), whose spatial correlations white noise lacks; other inputs
    and
    modes the build's synthetic ones."""
    from rexdeploy.planning.sensitivity import image_inputs

    q = config.quant
    base = _synthetic_samples(float_model, config, loaded, log)
    if q.ranges != "auto" or not image_inputs(base):
        return base, f"{len(base)} synthetic inputs", False
    more = replace(config, quant=q.with_(synthetic_samples=RANGE_IMAGES))
    samples, what = natural_samples(float_model, more, loaded, log, RANGE_IMAGES)
    return samples, f"{len(samples)} {what}", True


def natural_samples(float_model, config: BuildConfig, loaded, log: StageLog, count: int
                     ) -> tuple[list[dict], str]:
    """`count` inputs for the build's checks and ranges, and what they are: an image input as
    natural synthetic images (rexdeploy.planning.sensitivity.sensitivity_samples), others the
    build's synthetic inputs."""
    from rexdeploy.planning.sensitivity import sensitivity_samples

    q = config.quant
    return sensitivity_samples(
        _synthetic_samples(float_model, config, loaded, log),
        {name: (lo, hi) for name, lo, hi in q.input_ranges}, q.seed, dict(q.input_grid),
        count=count)


def _synthetic_samples(float_model, config: BuildConfig, loaded, log: StageLog) -> list[dict]:
    from rexdeploy.inputs import synthetic_inputs
    from rexdeploy.planning.observe import integer_input_ranges

    q = config.quant
    ranges = {name: (lo, hi) for name, lo, hi in q.input_ranges}
    ranges.update(integer_input_ranges(float_model))
    specs = [s.to_dict() for s in config.inputs]
    if q.ranges == "zeroq":
        return _zeroq_samples(config, loaded, log, ranges)
    return [feeds for _, feeds in synthetic_inputs(specs, q.synthetic_samples, q.seed, ranges,
                                                   dict(q.input_grid), dict(config.dims))]


def _zeroq_samples(config: BuildConfig, loaded, log: StageLog, ranges) -> list[dict]:
    from calib_free.synthetic import bn_matched_inputs

    if loaded.kind != "module" or len(config.inputs) != 1:
        raise UserError("--ranges zeroq needs an eager PyTorch model (package.module:factory or "
                        "a Python nn.Module; TorchScript hides its BatchNorm layers) with one "
                        "image input", "use --ranges auto (BatchNorm statistics) instead")
    spec = config.inputs[0]
    q = config.quant
    try:
        x = bn_matched_inputs(loaded.obj, spec.concrete_shape(), n=q.synthetic_samples,
                              steps=q.zeroq_steps, seed=q.seed, bounded=ranges.get(spec.name))
    except ValueError as exc:
        raise UserError(f"--ranges zeroq: {exc}", "use --ranges auto instead") from None
    return [{spec.name: x[i:i + 1].numpy().astype("float32")} for i in range(x.shape[0])]
