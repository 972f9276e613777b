"""Latency and throughput with trtexec / benchmark_app conventions.

- Latency: one request, synchronous `infer`, each call timed with `time.perf_counter`, after a
  warm-up (200 ms) for a duration (3 s) and at least `min_iterations`; min/median/mean/p90/p95/
  p99/max, std and the coefficient of variation (warning above 2.5 %, as trtexec does). A runner
  with `sync_call(feeds)` (OpenVINO) sets its inputs once and the loop times only the runtime's
  infer call, as benchmark_app (-inference_only) and trtexec do; others time `infer(feeds)`.
- Throughput: the runner's own async path (OpenVINO: AsyncInferQueue under the THROUGHPUT hint),
  reported separately: throughput latency is not single-request latency.
- Several variants are measured interleaved, round-robin over rounds, so a noisy machine (it is
  shared; docs/backends.md) hits all alike, and ratios are taken against the first variant.
- `--iterations N` instead of a duration: N timed sync inferences per variant, split over the
  rounds; the throughput phase then runs as long as that round's latency phase took.
- Per layer (`layer_profile`): a separate runner with per-layer counters on (they slow every
  inference, so never the runner that is timed), mean time per executed layer with its kernel and
  runtime precision, and the sum of the layers against the wall time of the same inferences.
- Machine state per round: load average before/after, the share of the CPU other processes used
  (from /proc/stat minus this process's CPU time), and this process's CPU-ms per inference,
  which contention does not inflate.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass

COV_WARN = 0.025        # trtexec warns above 2.5 % coefficient of variation
FOREIGN_WARN = 0.15     # share of the machine's CPU used by other processes
MIN_TICKS = 100         # /proc/stat counts 10 ms ticks: a shorter window's share is noise
_clock = time.perf_counter  # one name, so tests can drive time


@dataclass(frozen=True)
class ProfileSettings:
    """The long tail of profile_variants' options."""

    warmup_ms: float = 200.0            # untimed inferences before each variant's round
    min_iterations: int = 20
    max_iterations: int | None = None
    iterations: int | None = None       # total timed sync inferences per variant (not a duration)
    batch: int = 1                      # samples per inference: throughput counts frames
    throughput: bool = True             # also measure async throughput each round
    keep_times: bool = False            # keep every latency sample (ms) in the result
    cov_warn: float = COV_WARN
    foreign_warn: float = FOREIGN_WARN


# -- statistics --------------------------------------------------------------------------------
def percentile(sorted_values: list[float], q: float) -> float:
    """q-th percentile (0..100) with linear interpolation, numpy's default method."""
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_stats(times_ms: list[float]) -> dict:
    """min, median, mean, p90, p95, p99, max, std (population, like numpy) and cov = std/mean,
    all in ms except cov."""
    if not times_ms:
        raise ValueError("latency_stats needs at least one time")
    s = sorted(float(t) for t in times_ms)
    mean = sum(s) / len(s)
    std = math.sqrt(sum((t - mean) ** 2 for t in s) / len(s))
    return {"min": s[0], "median": percentile(s, 50), "mean": mean, "p90": percentile(s, 90),
            "p95": percentile(s, 95), "p99": percentile(s, 99), "max": s[-1], "std": std,
            "cov": std / mean if mean > 0 else 0.0}


# -- machine state -----------------------------------------------------------------------------
class CpuMeter:
    """CPU time of this process and of the whole machine between `start()` and `stop()`."""

    def start(self) -> "CpuMeter":
        self.loadavg_before = _loadavg()
        self._machine0, self._own0 = _machine_ticks(), time.process_time()
        return self

    def stop(self) -> dict:
        """{"own_cpu_s", "foreign_cpu_share" (0..1 of the machine; None if unknown or the
        window was under MIN_TICKS CPU ticks), "loadavg_before", "loadavg_after"}."""
        own = time.process_time() - self._own0
        machine1 = _machine_ticks()
        share = None
        if self._machine0 and machine1:
            total = machine1[0] - self._machine0[0]
            busy = machine1[1] - self._machine0[1]
            if total >= MIN_TICKS:
                share = min(1.0, max(0.0, (busy - own * os.sysconf("SC_CLK_TCK")) / total))
        return {"own_cpu_s": own, "foreign_cpu_share": share,
                "loadavg_before": self.loadavg_before, "loadavg_after": _loadavg()}


def _machine_ticks() -> tuple[int, int] | None:
    """(total, busy) clock ticks of all CPUs since boot, from /proc/stat; None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    total = sum(fields)  # user nice system idle iowait irq softirq steal
    return total, total - fields[3] - fields[4]


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# -- measurements ------------------------------------------------------------------------------
def measure_latency(runner, feeds: dict, warmup_ms: float = 200.0, duration_s: float = 3.0,
                    min_iterations: int = 20, max_iterations: int | None = None) -> dict:
    """Synchronous single-request latency of an active runner.

    Runs until `duration_s` has passed and `min_iterations` are done, or `max_iterations`.
    Returns {"latency_ms": latency_stats, "iterations", "times_ms" (every call, ms),
    "seconds" (timed wall time), "cpu_ms" (this process's CPU ms per inference),
    "foreign_cpu_share", "loadavg_before", "loadavg_after"}.
    """
    call = runner.sync_call(feeds)
    start = _clock()
    while True:  # warm-up: at least one call, then until warmup_ms
        call()
        if (_clock() - start) * 1e3 >= warmup_ms:
            break
    meter = CpuMeter().start()
    times: list[float] = []
    begin = _clock()
    while True:
        t0 = _clock()
        call()
        t1 = _clock()
        times.append((t1 - t0) * 1e3)
        n = len(times)
        if max_iterations is not None and n >= max_iterations:
            break
        if n >= min_iterations and t1 - begin >= duration_s:
            break
    seconds = _clock() - begin
    cpu = meter.stop()
    return {"latency_ms": latency_stats(times), "iterations": len(times), "times_ms": times,
            "seconds": seconds, "cpu_ms": cpu.pop("own_cpu_s") * 1e3 / len(times), **cpu}


def measure_throughput(runner, feeds: dict, seconds: float) -> dict:
    """Async throughput through the runner's own queue: {"fps", "completed", "seconds"}."""
    completed, elapsed = runner.throughput(feeds, seconds)
    return {"fps": completed / elapsed if elapsed > 0 else 0.0, "completed": int(completed),
            "seconds": elapsed}


def layer_times(runner, feeds: dict, iterations: int = 10) -> list[dict]:
    """Mean per-layer time over `iterations` infers of a runner opened with perf_count=True:
    [{"name", "type", "kernel", "precision", "time_ms", "share"}], in execution order."""
    return layer_profile(runner, feeds, iterations, warmup=0)["rows"]


def layer_profile(runner, feeds: dict, iterations: int = 20, warmup: int = 3) -> dict:
    """Per-layer times of a runner opened with perf_count=True, over `iterations` timed infers.

    Returns {"rows": [{"name", "type", "kernel" (the executed kernel, e.g. brgconv_avx512_I8),
    "precision" (runtime), "time_ms" (mean), "share" (of the sum)}] in execution order, every
    executed layer once; "sum_ms" (mean sum of the layers per inference), "wall_ms" (median wall
    time of the same inferences), "sum_vs_wall" (sum_ms / wall_ms), "iterations"}.
    """
    if iterations < 1:
        raise ValueError(f"layer_profile needs at least one iteration, not {iterations}")
    for _ in range(warmup):
        runner.infer(feeds)
    rows: dict[str, dict] = {}
    walls = []
    for _ in range(iterations):
        t0 = _clock()
        runner.infer(feeds)
        walls.append((_clock() - t0) * 1e3)
        for t in runner.timings():
            row = rows.setdefault(t.name, {"name": t.name, "type": t.type, "kernel": t.kernel,
                                           "precision": t.precision, "time_ms": 0.0})
            row["time_ms"] += t.time_ms / iterations
    total = sum(r["time_ms"] for r in rows.values())
    wall = latency_stats(walls)["median"]
    return {"rows": [{**r, "share": r["time_ms"] / total if total else 0.0}
                     for r in rows.values()],
            "sum_ms": total, "wall_ms": wall, "sum_vs_wall": total / wall if wall else None,
            "iterations": iterations}


def profile_variants(variants: list[tuple[str, object]], feeds: dict | list[dict],
                     duration_s: float = 3.0,
                     rounds: int = 3, *, settings: ProfileSettings | None = None,
                     progress=None) -> list[dict]:
    """Profile several variants interleaved and compare them with the first.

    variants: (label, factory) pairs, factory() -> a runner (not yet entered); all are opened
    (compiled) up front and closed at the end. Each round runs every variant once, the start
    rotating by one per round, each variant for `duration_s` of latency then (settings.throughput)
    `duration_s` of throughput. progress: called as progress(label, round, rounds).
    feeds: one input dict for all variants, or a list with one per variant.

    Returns one dict per variant: {"label", "info" (the runner's, e.g. inference_precision),
    "latency_ms" (stats over all rounds), "iterations", "cpu_ms", "throughput" ({"fps",
    "completed", "seconds"} or None), "rounds" ([{"round", "latency_median_ms", "fps",
    "cpu_ms", "foreign_cpu_share", "loadavg_before", "loadavg_after"}]), "ratio_vs" ({"label",
    "latency": median / first's median, "throughput": fps / first's fps}), "warnings", and
    "times_ms" when settings.keep_times}.
    """
    settings = settings or ProfileSettings()
    if not variants:
        raise ValueError("profile_variants needs at least one variant")
    if rounds < 1 or duration_s <= 0:
        raise ValueError(f"rounds ({rounds}) and duration_s ({duration_s}) must be positive")
    if settings.iterations is not None:
        if settings.iterations < 1:
            raise ValueError(f"iterations ({settings.iterations}) must be positive")
        rounds = min(rounds, settings.iterations)
    n = len(variants)
    per_variant = feeds if isinstance(feeds, list) else [feeds] * n
    if len(per_variant) != n:
        raise ValueError(f"{len(per_variant)} feeds for {n} variants")
    runs: list[list] = [[] for _ in variants]
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(factory()) for _, factory in variants]
        for r in range(rounds):
            for i in [(r + k) % n for k in range(n)]:
                if progress:
                    progress(variants[i][0], r, rounds)
                lat = _latency_round(runners[i], per_variant[i], duration_s, r, rounds, settings)
                seconds = duration_s if settings.iterations is None else max(lat["seconds"], 0.1)
                tput = measure_throughput(runners[i], per_variant[i], seconds) \
                    if settings.throughput else None
                runs[i].append((lat, tput))
        infos = [_runner_info(runner) for runner in runners]
    results = [_merge(label, info, rs, settings)
               for (label, _), info, rs in zip(variants, infos, runs)]
    _ratios(results)
    return results


def _latency_round(runner, feeds: dict, duration_s: float, r: int, rounds: int,
                   settings: ProfileSettings) -> dict:
    if settings.iterations is None:
        return measure_latency(runner, feeds, settings.warmup_ms, duration_s,
                               settings.min_iterations, settings.max_iterations)
    # N split over the rounds, the first N % rounds rounds one more
    k = settings.iterations // rounds + (r < settings.iterations % rounds)
    return measure_latency(runner, feeds, settings.warmup_ms, 0.0, k, k)


def _runner_info(runner) -> dict:
    info = dict(runner.info or {})
    tput = runner.throughput_info
    if tput:
        info["throughput"] = dict(tput)
    return info


def _merge(label: str, info: dict, runs: list[tuple[dict, dict | None]],
           settings: ProfileSettings) -> dict:
    times = [t for lat, _ in runs for t in lat["times_ms"]]
    stats = latency_stats(times)
    tputs = [t for _, t in runs if t is not None]
    throughput = None
    if tputs:
        done, secs = sum(t["completed"] for t in tputs), sum(t["seconds"] for t in tputs)
        # fps counts frames: a request of batch B is B frames (benchmark_app's convention)
        throughput = {"fps": done * settings.batch / secs if secs > 0 else 0.0,
                      "completed": done, "seconds": secs, "batch": settings.batch}
    per_round = [{"round": i, "latency_median_ms": lat["latency_ms"]["median"],
                  "iterations": lat["iterations"],
                  "fps": None if t is None else t["fps"] * settings.batch,
                  "cpu_ms": lat["cpu_ms"],
                  "foreign_cpu_share": lat["foreign_cpu_share"],
                  "loadavg_before": lat["loadavg_before"], "loadavg_after": lat["loadavg_after"]}
                 for i, (lat, t) in enumerate(runs)]
    warnings = []
    if stats["cov"] > settings.cov_warn:
        warnings.append(f"latency CoV {stats['cov']:.1%} > {settings.cov_warn:.1%}: timings are "
                        "noisy; close other work or raise --duration")
    busy = [r for r in per_round if (r["foreign_cpu_share"] or 0) > settings.foreign_warn]
    if busy:
        worst = max(r["foreign_cpu_share"] for r in busy)
        warnings.append(f"other processes used up to {worst:.0%} of the CPU during "
                        f"{len(busy)} of {len(per_round)} rounds")
    total_iters = sum(lat["iterations"] for lat, _ in runs)
    result = {"label": label, "info": info, "latency_ms": stats, "cov": stats["cov"],
              "iterations": total_iters,
              "cpu_ms": sum(lat["cpu_ms"] * lat["iterations"] for lat, _ in runs) / total_iters,
              "throughput": throughput, "rounds": per_round, "warnings": warnings}
    if settings.keep_times:
        result["times_ms"] = times
    return result


def _ratios(results: list[dict]) -> None:
    base = results[0]
    base_fps = (base["throughput"] or {}).get("fps")
    for r in results:
        fps = (r["throughput"] or {}).get("fps")
        r["ratio_vs"] = {
            "label": base["label"],
            "latency": r["latency_ms"]["median"] / base["latency_ms"]["median"],
            "throughput": fps / base_fps if fps is not None and base_fps else None}


# -- output ------------------------------------------------------------------------------------
def render_profile_table(results: list[dict]):
    """A rich Table: one row per variant, ratios against the first, warnings as the caption."""
    from rich.table import Table

    base = results[0]["label"] if results else ""
    table = Table(title="latency (sync, 1 request) and throughput (async)",
                  caption=f"ratios are against {base}" if base else None)
    cols = ("variant", "float in", "median ms", "p90 ms", "p99 ms", "CoV", "CPU ms/inf",
            "streams", "FPS", "latency ratio", "FPS ratio")
    for col in cols:
        table.add_column(col, justify="left" if col in cols[:2] else "right")
    for r in results:
        lat, tput, ratio = r["latency_ms"], r["throughput"], r["ratio_vs"]
        cov_value = r.get("cov", lat.get("cov", 0.0))
        cov = f"{cov_value:.1%}"
        table.add_row(
            r["label"], str(r["info"].get("inference_precision", "")),
            f"{lat['median']:.2f}", f"{lat['p90']:.2f}", f"{lat['p99']:.2f}",
            f"[yellow]{cov}[/]" if cov_value > COV_WARN else cov, f"{r['cpu_ms']:.2f}",
            _streams(r["info"]),
            "-" if tput is None else f"{tput['fps']:.1f}", f"{ratio['latency']:.2f}x",
            "-" if ratio["throughput"] is None else f"{ratio['throughput']:.2f}x")
    table.caption += "; streams: sync / async (requests)" if table.caption else ""
    notes = [f"{r['label']}: {w}" for r in results for w in r["warnings"]]
    if notes:
        table.caption = "\n".join([table.caption or ""] + notes)
    return table


def _streams(info: dict) -> str:
    """"1 / 2 (2)": streams of the sync runner / of the async twin (its requests in flight)."""
    tput = info.get("throughput") or {}
    sync = info.get("streams", "?")
    return f"{sync} / {tput['streams']} ({tput['requests']})" if tput else f"{sync}"
