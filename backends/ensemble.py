"""Run the members of a layer-partition ensemble concurrently and combine their outputs.

Backend-neutral: each member is an ordinary runner of its backend (OpenVINO compiles each member
as its own model on one `ov.Core`, with its own stream and threads; ONNX Runtime a session each).
`infer` starts every member at once on its own thread (both runtimes release the GIL while they
compute) and returns `sum_m weight_m * output_m`, the combine rule from the artifact manifest.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from backends.base import LayerTiming, RunnerBase


class EnsembleRunner(RunnerBase):
    """A runner over member runners; combine weights as in the manifest. Each member checks
    the feeds against its own inputs."""

    def __init__(self, members: list, weights: list[float], names: list[str] | None = None):
        if len(members) != len(weights) or not members:
            raise ValueError("one weight per member, and at least one member")
        super().__init__()
        self.members = members
        self.weights = [float(w) for w in weights]
        self.names = names or [f"member{i}" for i in range(len(members))]
        self._pool: ThreadPoolExecutor | None = None

    @property
    def active(self) -> bool:
        return self._pool is not None

    def __enter__(self) -> "EnsembleRunner":
        entered = []
        try:
            for m in self.members:
                entered.append(m.__enter__())
        except BaseException:
            for m in entered:
                m.__exit__(None, None, None)
            raise
        self._pool = ThreadPoolExecutor(max_workers=len(self.members),
                                        thread_name_prefix="rexdeploy-member")
        infos = [m.info for m in self.members]
        self.info = dict(infos[0] if infos else {}, ensemble_members=len(self.members),
                         member_threads=[i.get("threads") for i in infos],
                         member_streams=[i.get("streams") for i in infos])
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for m in self.members:
            m.__exit__(*exc)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check(feeds)  # the lifecycle guard (no inputs of its own: the members check)
        futures = [self._pool.submit(m.infer, feeds) for m in self.members]
        outputs = [f.result() for f in futures]
        combined = {}
        for name in outputs[0]:
            total = sum(w * np.asarray(o[name], np.float64) for w, o in zip(self.weights, outputs))
            combined[name] = total.astype(np.asarray(outputs[0][name]).dtype)
        return combined

    def timings(self) -> list[LayerTiming]:
        """Every member's per-layer times, names prefixed with the member's name."""
        out = []
        for name, m in zip(self.names, self.members):
            for t in m.timings():
                out.append(LayerTiming(f"{name}:{t.name}", t.type, t.kernel, t.precision,
                                       t.time_ms))
        return out

    def throughput(self, feeds: dict[str, np.ndarray], seconds: float) -> tuple[int, float]:
        """Combined inferences completed in about `seconds`, two in flight at a time."""
        import time

        start = time.perf_counter()

        def loop() -> int:
            n = 0
            while time.perf_counter() - start < seconds:
                self.infer(feeds)
                n += 1
            return n

        with ThreadPoolExecutor(max_workers=2) as pool:
            done = sum(f.result() for f in [pool.submit(loop) for _ in range(2)])
        return done, time.perf_counter() - start
