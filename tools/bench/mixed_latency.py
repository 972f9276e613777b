#!/usr/bin/env python
"""CPU time per inference of built artifacts, side by side (issue 6, item 5: what a raised
precision costs in time, beside what it costs in bit-operations).

    .venv/bin/python tools/bench/mixed_latency.py ART [ART ...] [--rounds 3] [-n 20]
        [--dim W=320]   # a named dynamic dim's size (each one not given: 1, and said so)

Each artifact runs on its own backend with one inference thread; this process's CPU
milliseconds per inference (tools/bench/cpu_time.py: contention on the shared machine does not
inflate it), median over interleaved rounds, and the ratio to the first artifact. Inputs: zeros
of each input's shape (timing does not depend on values here).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=20, help="inferences per artifact per round")
    ap.add_argument("--dim", action="append", default=[], metavar="NAME=VALUE",
                    help="the size of a named dynamic dim (repeatable); one not given is 1")
    args = ap.parse_args()
    from cpu_time import interleaved_cpu_ms

    from rexdeploy.api import artifact_runner, load_artifact

    import click

    from rexdeploy.cli.common import parse_dim

    try:
        dims = dict(parse_dim(d) for d in args.dim)
    except click.BadParameter as exc:
        ap.error(exc.format_message())
    arts = [load_artifact(p) for p in args.artifacts]
    unset = sorted({d for a in arts for i in a.manifest["inputs"] for d in i["shape"]
                    if not isinstance(d, int) and d not in dims})
    if unset:
        print(f"dynamic dims timed at 1 (give --dim NAME=VALUE): {', '.join(map(str, unset))}")
    feeds = [{i["name"]: np.zeros([d if isinstance(d, int) else dims.get(d, 1)
                                   for d in i["shape"]], i.get("dtype", "float32"))
              for i in a.manifest["inputs"]} for a in arts]
    meds = interleaved_cpu_ms([lambda a=a: artifact_runner(a, threads=1) for a in arts], feeds,
                              args.rounds, args.n)
    base = meds[0]
    print(f"| artifact | BOPs x | int8 coverage | CPU ms / inference (median of {args.rounds}) "
          f"| x first |")
    print("|---|---|---|---|---|")
    for a, med in zip(arts, meds):
        s = a.manifest["summary"]
        print(f"| {os.path.basename(a.path.rstrip('/'))} | {s.get('bops_ratio', 1.0):.2f} | "
              f"{s['int8_coverage']:.0%} | {med:.2f} | {med / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
