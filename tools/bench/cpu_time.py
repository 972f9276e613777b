"""CPU time per inference: the benchmark figure that contention on a shared machine does not
inflate (this process's CPU time, not the wall clock)."""

from __future__ import annotations

import time


def cpu_ms_per_inference(open_runner, feeds: dict, n: int = 20, warmup: int = 3) -> float:
    """This process's CPU milliseconds per inference of the runner `open_runner()` returns
    (open it with one inference thread, so the figure is one core's work)."""
    with open_runner() as r:
        for _ in range(warmup):
            r.infer(feeds)
        start = time.process_time()
        for _ in range(n):
            r.infer(feeds)
        return (time.process_time() - start) / n * 1000.0
