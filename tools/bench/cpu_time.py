"""CPU time per inference: the benchmark figure that contention on a shared machine does not
inflate (this process's CPU time, not the wall clock)."""

from __future__ import annotations

import statistics
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


def interleaved_cpu_ms(openers: list, feeds: list[dict], rounds: int, n: int = 20,
                       warmup: int = 3) -> list[float]:
    """cpu_ms_per_inference of each runner `openers[k]()` on `feeds[k]`, round by round (every
    runner once per round, so a slow spell of the machine hits them alike): the median over the
    rounds, per runner."""
    times: list[list[float]] = [[] for _ in openers]
    for _ in range(rounds):
        for k, (opener, feed) in enumerate(zip(openers, feeds)):
            times[k].append(cpu_ms_per_inference(opener, feed, n, warmup))
    return [statistics.median(t) for t in times]
