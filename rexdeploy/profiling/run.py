"""`rexdeploy profile`: artifacts (and, with compare, the float model) -> runner variants ->
interleaved timing (profiler.profile_variants) -> per-layer times -> a profile document
(profile_schema) with the device state.

Each variant is timed on two compiled models: a LATENCY-hinted one for sync single-request
latency and a THROUGHPUT-hinted twin (`streams` streams, as many requests) for async throughput,
reported separately. Per-layer times come from a third compile with PERF_COUNT on, run after
the timing (the counters cost time on every inference, so never on the timed runner).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace

from rexdeploy.errors import UserError

TENSORRT_DEVICES = ("DLA", "DLA0", "DLA1")


@dataclass(frozen=True)
class ProfileConfig:
    """How to profile; every field has the CLI's default."""

    device: str | None = None       # None: the device the artifact was built for
    batch: int | None = None        # None: the artifact's input shapes
    warmup_ms: float = 200.0        # untimed inferences before each variant's round
    duration: float = 3.0           # seconds per variant per round (latency, then throughput)
    iterations: int | None = None   # instead of duration: timed sync inferences per variant
    rounds: int = 3                 # interleaved rounds
    streams: int | None = None      # async streams (= requests); None: the THROUGHPUT hint's
    inputs: str | None = None       # a folder/file of inputs; None or "random": synthetic
    throughput: bool = True
    layers: bool = True             # per-layer times (PERF_COUNT)
    layer_iterations: int = 20
    keep_times: bool = False        # keep every latency sample (for --plot)
    dims: tuple[tuple[str, int], ...] = ()  # named dynamic dims -> size (default: the build's
                                    # --dim, else 1); the profile says which it ran

    def validate(self) -> "ProfileConfig":
        if self.batch is not None and self.batch < 1:
            raise UserError(f"--batch {self.batch}: must be at least 1")
        if self.streams is not None and self.streams < 1:
            raise UserError(f"--streams {self.streams}: must be at least 1")
        if self.iterations is not None and self.iterations < 1:
            raise UserError(f"--iterations {self.iterations}: must be at least 1")
        if self.duration <= 0 or self.rounds < 1 or self.warmup_ms < 0:
            raise UserError("--duration and --rounds must be positive, --warmup not negative")
        if self.device and self.device.upper() in TENSORRT_DEVICES:
            raise UserError(f"--device {self.device} is a TensorRT DLA core; OpenVINO "
                            "artifacts run on CPU, GPU or NPU",
                            "build a TensorRT artifact for DLA (not available yet)")
        return self


def run_profile(artifacts: list[str], config: ProfileConfig, *, compare: bool = False,
                quiet: bool = False) -> dict:
    """Profile `artifacts` (and with `compare` the float model: f32 pinned and the device
    default precision, first, so ratios read "times the f32 float model"). Returns the
    profile_schema document."""
    from rexdeploy.artifact import load_artifact
    from rexdeploy.devinfo import device_info
    from rexdeploy.profiling.schema import to_document
    from rexdeploy.profiling.timing import ProfileSettings, profile_variants
    from rexdeploy.progress import StageLog

    config.validate()
    if not artifacts:
        raise UserError("give at least one artifact to profile")
    arts = [load_artifact(a) for a in artifacts]
    import backends

    for art in arts:
        kind = backends.rules(art.target).profile
        if kind == "engine":
            raise UserError(f"{art.path} is a {art.target} artifact: profile it on its own "
                            "(no float baselines, no other artifacts beside it)")
        if kind != "variants":
            raise UserError(f"profile supports openvino artifacts for now ({art.path}: "
                            f"{art.target})")
    variants = _variants(arts, config, compare)
    settings = ProfileSettings(warmup_ms=config.warmup_ms, iterations=config.iterations,
                               batch=config.batch or 1, throughput=config.throughput,
                               keep_times=config.keep_times)
    log = StageLog(quiet=quiet)
    how = f"{config.iterations} iterations" if config.iterations else f"{config.duration:g} s"
    devices = ", ".join(sorted({v["options"].device for v in variants}))
    dims = {k: v for k, v in profile_dims(arts[0], config).items()
            if not (config.batch and _is_batch(arts[0], k))}
    shown = f", dynamic dims {', '.join(f'{k}={v}' for k, v in sorted(dims.items()))}" \
        if dims else ""
    with log.stage("profile", f"{len(variants)} variants x {config.rounds} rounds x {how} on "
                              f"{devices}{shown}"):
        results = profile_variants([(v["label"], v["factory"]) for v in variants],
                                   [v["feeds"] for v in variants], duration_s=config.duration,
                                   rounds=config.rounds, settings=settings)
    for v, result in zip(variants, results):
        result.update(kind=v["kind"], artifact=v["artifact"], precision=v["options"].precision,
                      target_device=v["options"].device, layers=None)
    if config.layers:
        with log.stage("layers", f"PERF_COUNT, {config.layer_iterations} inferences each"):
            for v, result in zip(variants, results):
                result["layers"] = _layers(v, config.layer_iterations)
    settings_doc = {**asdict(config), "compare": compare,
                    "device": config.device or arts[0].manifest.get("device", "CPU"),
                    "dims": dims}
    return to_document(results, device=device_info(), settings=settings_doc,
                       artifacts=[a.path for a in arts])


def _variants(arts, config: ProfileConfig, compare: bool) -> list[dict]:
    import backends
    from backends.base import RunOptions

    ov = backends.get("openvino")
    ok, why = ov.available()
    if not ok:
        raise UserError(f"openvino is unavailable here: {why}")
    out, floats = [], []
    labels = _labels(arts)
    from rexdeploy.runners import refuse_if_crashed

    for art, label in zip(arts, labels):
        refuse_if_crashed(art)
        opts = RunOptions(device=config.device or art.manifest.get("device", "CPU"),
                          precision="f32", mode="latency", batch=config.batch,
                          throughput_streams=config.streams)
        feeds = _feeds(art, config)
        out.append(_variant(label, "artifact", art, art.files, opts, feeds, ov))
        sha = art.manifest["files"].get("float_onnx", {}).get("sha256", art.path)
        if compare and sha not in [s for s, _ in floats]:
            floats.append((sha, (art, opts, feeds)))
    baselines = []
    for sha, (art, opts, feeds) in floats:
        tag = f" [{os.path.basename(art.path)}]" if len(floats) > 1 else ""
        files = {"onnx": art.files["float_onnx"]}
        baselines += [
            _variant(f"float f32 (pinned){tag}", "float", art, files, opts, feeds, ov),
            _variant(f"float device default{tag}", "float", art, files,
                     replace(opts, precision="default"), feeds, ov)]
    return baselines + out


def _variant(label, kind, art, files, opts, feeds, ov) -> dict:
    def make(options):
        if kind == "artifact" and art.manifest.get("ensemble"):
            from rexdeploy.runners import ensemble_runner  # members run concurrently, combined

            return ensemble_runner(art, ov, options)
        return ov.runner(art.path, files, options)

    return {"label": label, "kind": kind, "artifact": art.path, "options": opts, "feeds": feeds,
            "factory": lambda: make(opts),
            "layer_factory": lambda: make(replace(opts, perf_count=True))}


def _labels(arts) -> list[str]:
    """"rexdeploy int8" for one artifact; the directory names (made unique) for several."""
    if len(arts) == 1:
        return [f"rexdeploy {arts[0].config.quant.weights}"]
    labels = []
    for art in arts:
        base = os.path.basename(os.path.normpath(art.path))
        label, k = base, 2
        while label in labels:
            label, k = f"{base} ({k})", k + 1
        labels.append(label)
    return labels


def _feeds(art, config: ProfileConfig) -> dict:
    """One input dict at the profiled batch: synthetic (the build's input ranges) or the first
    `batch` samples of --inputs (cycled when fewer), stacked along the batch dim."""
    import numpy as np

    from rexdeploy.inputs import load_inputs, synthetic_inputs

    specs = art.manifest["inputs"]
    batch = config.batch or 1
    if config.inputs in (None, "random"):
        ranges = {n: (lo, hi) for n, lo, hi in art.config.quant.input_ranges}
        samples = synthetic_inputs(specs, batch, 0, ranges, dims=profile_dims(art, config))
    else:
        samples = load_inputs(config.inputs, specs, art.manifest.get("preprocess"), batch)
    if config.batch is None:
        return samples[0][1]
    chosen = [samples[i % len(samples)][1] for i in range(batch)]
    return {name: np.concatenate([s[name][:1] for s in chosen], axis=0) for name in chosen[0]}


def _is_batch(art, name: str) -> bool:
    return any(s["shape"] and s["shape"][0] == name for s in art.manifest["inputs"])


def profile_dims(art, config: ProfileConfig) -> dict[str, int]:
    """The size of every named dynamic dim of the artifact's inputs as profiled: --dim, else
    the build's --dim, else 1 (a batch dim the --batch sets)."""
    named = {d for s in art.manifest["inputs"] for d in s["shape"] if isinstance(d, str)}
    dims = {n: 1 for n in named}
    dims.update(dict(art.config.dims))
    dims.update(dict(config.dims))
    unknown = sorted(set(dict(config.dims)) - named)
    if unknown:
        raise UserError(f"--dim {', '.join(unknown)}: {art.path} has no dynamic dim of that "
                        f"name (dynamic dims: {', '.join(sorted(named)) or 'none'})")
    return dims


def _layers(v: dict, iterations: int) -> dict:
    from rexdeploy.profiling.timing import layer_profile

    with v["layer_factory"]() as runner:
        return layer_profile(runner, v["feeds"], iterations)
