"""A fake clock and a fake runner for the profiler's tests (tests/test_profiling/test_profiler.py
and test_profile_outputs.py): the runner advances the clock by its latency per inference, so the
statistics and the scheduling are tested without any runtime."""

from backends.base import LayerTiming, RunnerBase


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeRunner(RunnerBase):
    """Advances the fake clock by its latency per infer; logs its activity into `log`."""

    active = True

    def __init__(self, label, latency_ms, fps, clock, log, jitter_ms=0.0):
        super().__init__()
        self.label, self.latency_s, self.fps = label, latency_ms / 1e3, fps
        self.clock, self.log, self.jitter_s = clock, log, jitter_ms / 1e3
        self.calls = 0
        self.info = {"inference_precision": "f32"}

    def __enter__(self):
        self.log.append(("enter", self.label))
        return self

    def __exit__(self, *exc):
        self.log.append(("exit", self.label))

    def infer(self, feeds):
        self.calls += 1
        self.clock.now += self.latency_s + (self.jitter_s if self.calls % 2 else 0.0)
        if not self.log or self.log[-1] != ("infer", self.label):
            self.log.append(("infer", self.label))
        return {}

    def throughput(self, feeds, seconds):
        self.log.append(("throughput", self.label))
        return int(self.fps * seconds), seconds

    def timings(self):
        return [LayerTiming("conv", "Convolution", "brgconv_avx512_I8", "u8", 2.0),
                LayerTiming("fc", "FullyConnected", "gemm_f32", "f32", 1.0 + self.calls % 2)]
