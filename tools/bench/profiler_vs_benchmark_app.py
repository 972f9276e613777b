#!/usr/bin/env python
"""`rexdeploy profile` against OpenVINO's own benchmark_app, on the same IR, interleaved.

    .venv/bin/python tools/bench/profiler_vs_benchmark_app.py [--rounds 5] [--duration 3]

The IR is the quick start's EfficientNet-Lite0 int8 artifact (built here if missing, with the
command of tools/quickstart.sh). Each round runs, in an order that rotates by one per round:
  - `rexdeploy profile ART --duration D --rounds 1 --no-layers --json F` (sync latency for D s,
    then async throughput for D s),
  - `benchmark_app -m ART/model.xml -hint latency -t D -infer_precision f32` (sync, 1 request),
  - `benchmark_app -m ART/model.xml -hint throughput -t D -infer_precision f32` (async).
Both tools compile the same model.xml on CPU with f32 pinned for the float parts (rexdeploy's
default) and OpenVINO's default threads; benchmark_app's figures come from its JSON report
(-json_stats). Printed: per round the two medians and the two throughputs with their ratios,
the machine load around each job (load average; share of the CPU used by processes other than
the one being measured, from /proc/stat minus the job's own CPU time), the median over the
rounds of the per-round ratios with a 90 % bootstrap interval, and the ratio of the medians.
Target (issue 4): both ratios within 10 % of 1 (exit status 0 when the medians are).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.join(ROOT, ".venv", "bin")
DEFAULT_ART = os.path.join(ROOT, "out", "efficientnet_lite0.openvino")
TOLERANCE = 0.10


def ensure_artifact(path: str) -> None:
    if os.path.isfile(os.path.join(path, "manifest.json")):
        return
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import examples

    model = examples.ensure_example_model()
    subprocess.run([os.path.join(BIN, "rexdeploy"), "build", model, "--input",
                    "input:1x3x224x224", "--input-range", "input:-1,1", "--preprocess",
                    "resize=256,crop=224,mean=127,std=128", "-o", path, "--force", "-q"],
                   check=True)


def _machine_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    return sum(fields), sum(fields) - fields[3] - fields[4]


def run_job(argv: list[str]) -> dict:
    """Run one tool as a child process; returns the machine load around it."""
    load0, (total0, busy0), child0 = os.getloadavg()[0], _machine_ticks(), os.times()
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    (total1, busy1), child1 = _machine_ticks(), os.times()
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{out.stderr[-2000:]}")
    own = (child1.children_user + child1.children_system
           - child0.children_user - child0.children_system) * os.sysconf("SC_CLK_TCK")
    total = total1 - total0
    return {"foreign": max(0.0, (busy1 - busy0 - own) / total) if total else None,
            "load": (load0 + os.getloadavg()[0]) / 2}


def rexdeploy_job(art: str, duration: float, tmp: str) -> dict:
    path = os.path.join(tmp, "rx.json")
    load = run_job([os.path.join(BIN, "rexdeploy"), "profile", art, "--duration", str(duration),
                    "--rounds", "1", "--no-layers", "--json", path, "-q"])
    v = json.load(open(path))["variants"][0]
    return {"latency_ms": v["latency_ms"]["median"], "fps": v["throughput_fps"],
            "cov": v["cov"], "precision": v["info"]["inference_precision"],
            "streams": v["info"]["throughput"]["streams"],
            "requests": v["info"]["throughput"]["requests"], **load}


def benchmark_app_job(art: str, hint: str, duration: float, tmp: str) -> dict:
    folder = os.path.join(tmp, f"bm_{hint}")
    os.makedirs(folder, exist_ok=True)
    load = run_job([os.path.join(BIN, "benchmark_app"), "-m", os.path.join(art, "model.xml"),
                    "-d", "CPU", "-hint", hint, "-t", str(duration), "-infer_precision", "f32",
                    "-report_type", "no_counters", "-report_folder", folder, "-json_stats"])
    report = json.load(open(os.path.join(folder, "benchmark_report.json")))
    res, setup = report["execution_results"], report["configuration_setup"]
    return {"latency_ms": float(res["latency (ms)"]), "fps": float(res["throughput"]),
            "api": setup["API"], "requests": setup["number of parallel infer requests"], **load}


def bootstrap_ci(values: list[float], n: int = 5000, seed: int = 0) -> tuple[float, float]:
    """5th and 95th percentiles of the median over `n` resamples (with replacement)."""
    import random

    rnd = random.Random(seed)
    meds = sorted(statistics.median(rnd.choices(values, k=len(values))) for _ in range(n))
    return meds[n // 20], meds[n - 1 - n // 20]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--artifact", default=DEFAULT_ART)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=3,
                    help="seconds per measurement (whole: benchmark_app -t takes an integer)")
    args = ap.parse_args()
    ensure_artifact(args.artifact)

    from rich.console import Console
    from rich.table import Table

    from rexdeploy.devinfo import device_info

    console = Console(width=160)
    dev = device_info()
    console.print(f"device: {dev['cpu_model']}, {dev['usable_cores']} cores, load "
                  f"{dev['loadavg']}, openvino {(dev['openvino'] or {}).get('version')}")
    jobs = ("rexdeploy", "bm latency", "bm throughput")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            got = {}
            for k in range(len(jobs)):
                job = jobs[(r + k) % len(jobs)]
                if job == "rexdeploy":
                    got[job] = rexdeploy_job(args.artifact, args.duration, tmp)
                else:
                    got[job] = benchmark_app_job(args.artifact, job.split()[1], args.duration,
                                                 tmp)
            rows.append(got)
            rx, bl, bt = got["rexdeploy"], got["bm latency"], got["bm throughput"]
            console.print(f"round {r}: latency {rx['latency_ms']:.3f} vs {bl['latency_ms']:.3f} "
                          f"ms, throughput {rx['fps']:.1f} vs {bt['fps']:.1f} fps")

    table = Table(title="rexdeploy profile vs benchmark_app, same IR, interleaved")
    for h in ("round", "rx median ms", "bm -hint latency median ms", "latency ratio",
              "rx fps", "bm -hint throughput fps", "fps ratio", "rx CoV",
              "load avg (rx/bmL/bmT)", "other procs' CPU share (rx/bmL/bmT)"):
        table.add_column(h, justify="right")
    lat_ratios, fps_ratios = [], []
    for i, got in enumerate(rows):
        rx, bl, bt = got["rexdeploy"], got["bm latency"], got["bm throughput"]
        lr, fr = rx["latency_ms"] / bl["latency_ms"], rx["fps"] / bt["fps"]
        lat_ratios.append(lr)
        fps_ratios.append(fr)
        pct = lambda x: "?" if x is None else f"{x:.0%}"  # noqa: E731
        table.add_row(str(i), f"{rx['latency_ms']:.3f}", f"{bl['latency_ms']:.3f}", f"{lr:.3f}",
                      f"{rx['fps']:.1f}", f"{bt['fps']:.1f}", f"{fr:.3f}", f"{rx['cov']:.1%}",
                      "/".join(f"{j['load']:.1f}" for j in (rx, bl, bt)),
                      "/".join(pct(j["foreign"]) for j in (rx, bl, bt)))
    console.print(table)
    rx0, bl0, bt0 = rows[0]["rexdeploy"], rows[0]["bm latency"], rows[0]["bm throughput"]
    console.print(f"configs: rexdeploy float parts {rx0['precision']}, async {rx0['streams']} "
                  f"streams / {rx0['requests']} requests; benchmark_app latency: API "
                  f"{bl0['api']}, {bl0['requests']} request; throughput: {bt0['requests']} "
                  "requests")
    lat, fps = statistics.median(lat_ratios), statistics.median(fps_ratios)
    ok_lat, ok_fps = abs(lat - 1) <= TOLERANCE, abs(fps - 1) <= TOLERANCE
    console.print(f"median of per-round ratios (rexdeploy / benchmark_app): latency {lat:.3f} "
                  f"({'within' if ok_lat else 'OUTSIDE'} 10 %), throughput {fps:.3f} "
                  f"({'within' if ok_fps else 'OUTSIDE'} 10 %)")
    lo_l, hi_l = bootstrap_ci(lat_ratios)
    lo_f, hi_f = bootstrap_ci(fps_ratios)
    console.print(f"90 % bootstrap interval of those medians: latency {lo_l:.3f}-{hi_l:.3f}, "
                  f"throughput {lo_f:.3f}-{hi_f:.3f}")
    pooled_lat = statistics.median(r["rexdeploy"]["latency_ms"] for r in rows) / \
        statistics.median(r["bm latency"]["latency_ms"] for r in rows)
    pooled_fps = statistics.median(r["rexdeploy"]["fps"] for r in rows) / \
        statistics.median(r["bm throughput"]["fps"] for r in rows)
    console.print(f"ratio of the medians over rounds: latency {pooled_lat:.3f}, throughput "
                  f"{pooled_fps:.3f}")
    return 0 if ok_lat and ok_fps else 1


if __name__ == "__main__":
    sys.exit(main())
