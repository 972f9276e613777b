"""Profiler statistics and scheduling.

Fake runners on a fake clock: these tests check the statistics, the round-robin interleaving
and the ratios, not any runtime's speed (benchmarks in tools/bench/ do that)."""

import numpy as np
import pytest
from rich.console import Console

from profiling_helpers import Clock, FakeRunner
from rexdeploy.profiling import timing as profiler
from rexdeploy.devinfo import device_info
from rexdeploy.profiling.timing import (ProfileSettings, latency_stats, layer_times,
                                        measure_latency,
                                measure_throughput, profile_variants, render_profile_table)


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_latency_stats_match_numpy(rng, n):
    times = list(rng.gamma(4.0, 0.5, size=n) + 1.0)
    s = latency_stats(times)
    a = np.asarray(times)
    for key, q in (("median", 50), ("p90", 90), ("p95", 95), ("p99", 99)):
        assert s[key] == pytest.approx(np.percentile(a, q), rel=1e-12), key
    assert s["min"] == a.min() and s["max"] == a.max()
    assert s["mean"] == pytest.approx(a.mean(), rel=1e-12)
    assert s["std"] == pytest.approx(a.std(), rel=1e-9, abs=1e-12)
    assert s["cov"] == pytest.approx(a.std() / a.mean(), rel=1e-9, abs=1e-12)


def test_latency_stats_empty_is_a_bug():
    with pytest.raises(ValueError):
        latency_stats([])


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(profiler, "_clock", c)
    return c


def test_measure_latency_duration_and_iteration_bounds(clock):
    r = FakeRunner("a", 10.0, 100, clock, [])
    m = measure_latency(r, {}, warmup_ms=50, duration_s=1.0, min_iterations=20)
    assert r.calls == 5 + m["iterations"]  # 50 ms of 10 ms warm-up calls, then timed calls
    assert m["iterations"] == 100 and len(m["times_ms"]) == 100
    assert m["latency_ms"]["median"] == pytest.approx(10.0)
    assert m["seconds"] == pytest.approx(1.0)
    assert {"cpu_ms", "foreign_cpu_share", "loadavg_before", "loadavg_after"} <= set(m)
    few = measure_latency(r, {}, warmup_ms=0, duration_s=0.001, min_iterations=20)
    assert few["iterations"] == 20
    capped = measure_latency(r, {}, warmup_ms=0, duration_s=100, max_iterations=7)
    assert capped["iterations"] == 7


def test_measure_throughput(clock):
    m = measure_throughput(FakeRunner("a", 1.0, 250, clock, []), {}, 2.0)
    assert m == {"fps": 250.0, "completed": 500, "seconds": 2.0}


def test_profile_variants_interleaves_and_computes_ratios(clock):
    log = []
    speeds = {"int8": (2.0, 400), "f32": (6.0, 150), "bf16": (4.0, 250)}
    variants = [(name, lambda name=name: FakeRunner(name, *speeds[name], clock, log))
                for name in speeds]
    results = profile_variants(variants, {}, duration_s=0.5, rounds=3,
                               settings=ProfileSettings(warmup_ms=10))
    # compiled once each, up front; closed at the end
    assert log[:3] == [("enter", n) for n in speeds]
    assert sorted(log[-3:]) == sorted(("exit", n) for n in speeds)
    # round-robin with the start rotating: every variant leads one round
    order = [label for kind, label in log if kind == "throughput"]
    assert order == ["int8", "f32", "bf16", "f32", "bf16", "int8", "bf16", "int8", "f32"]
    by = {r["label"]: r for r in results}
    assert [r["label"] for r in results] == list(speeds)
    assert by["f32"]["ratio_vs"] == {"label": "int8", "latency": pytest.approx(3.0),
                                     "throughput": pytest.approx(150 / 400)}
    assert by["int8"]["ratio_vs"]["latency"] == pytest.approx(1.0)
    assert by["bf16"]["latency_ms"]["median"] == pytest.approx(4.0)
    assert by["bf16"]["throughput"]["fps"] == pytest.approx(250)
    assert len(by["bf16"]["rounds"]) == 3 and by["bf16"]["rounds"][0]["loadavg_before"]
    assert by["bf16"]["iterations"] == 3 * 125
    assert by["int8"]["info"] == {"inference_precision": "f32"}
    assert all(r["warnings"] == [] for r in results), [r["warnings"] for r in results]
    assert "times_ms" not in results[0]


def test_profile_variants_warns_on_noise_and_keeps_times(clock):
    log = []
    variants = [("steady", lambda: FakeRunner("steady", 2.0, 100, clock, log)),
                ("noisy", lambda: FakeRunner("noisy", 2.0, 100, clock, log, jitter_ms=1.0))]
    results = profile_variants(variants, {}, duration_s=0.1, rounds=1,
                               settings=ProfileSettings(warmup_ms=0, throughput=False,
                                                        keep_times=True))
    steady, noisy = results
    assert steady["warnings"] == [] and noisy["latency_ms"]["cov"] > 0.025
    assert any("CoV" in w for w in noisy["warnings"])
    assert noisy["throughput"] is None and noisy["ratio_vs"]["throughput"] is None
    assert len(noisy["times_ms"]) == noisy["iterations"]
    assert ("throughput", "steady") not in log


def test_profile_variants_closes_runners_on_failure(clock):
    log = []

    class Broken(FakeRunner):
        def infer(self, feeds):
            raise RuntimeError("boom")

    variants = [("ok", lambda: FakeRunner("ok", 1.0, 10, clock, log)),
                ("broken", lambda: Broken("broken", 1.0, 10, clock, log))]
    with pytest.raises(RuntimeError, match="boom"):
        profile_variants(variants, {}, duration_s=0.01, rounds=1)
    assert ("exit", "ok") in log and ("exit", "broken") in log


def test_layer_times_average(clock):
    rows = layer_times(FakeRunner("a", 1.0, 10, clock, []), {}, iterations=4)
    by = {r["name"]: r for r in rows}
    assert by["conv"]["time_ms"] == pytest.approx(2.0)
    assert by["fc"]["time_ms"] == pytest.approx(1.5)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert [r["name"] for r in rows] == ["conv", "fc"]


def test_render_profile_table(clock):
    variants = [(n, lambda n=n, lat=lat: FakeRunner(n, lat, 100, clock, []))
                for n, lat in (("int8", 1.0), ("f32 pinned", 3.0))]
    results = profile_variants(variants, {}, duration_s=0.05, rounds=1)
    results[1]["warnings"].append("made-up warning")
    console = Console(record=True, width=200)
    console.print(render_profile_table(results))
    text = console.export_text()
    assert "int8" in text and "f32 pinned" in text and "3.00x" in text
    assert "made-up warning" in text


def test_device_info_is_cheap_and_complete():
    info = device_info()
    assert {"cpu_model", "logical_cores", "usable_cores", "isa", "governor", "loadavg",
            "openvino"} <= set(info)
    assert info["logical_cores"] >= info["usable_cores"] >= 1


# -- issue 4: iterations, batch, per-layer sums, statistics on synthetic timings ---------------
@pytest.mark.parametrize("dist", ["lognormal", "bimodal", "constant"])
def test_latency_stats_match_numpy_on_synthetic_timings(rng, dist):
    n = 5000
    if dist == "lognormal":  # the usual shape of inference timings: a floor and a long tail
        times = 2.0 + rng.lognormal(-1.0, 0.8, size=n)
    elif dist == "bimodal":  # e.g. a frequency step or a second tenant halfway through
        times = np.concatenate([rng.normal(3.0, 0.05, n // 2), rng.normal(4.5, 0.05, n // 2)])
    else:
        times = np.full(n, 1.25)
    s = latency_stats(list(times))
    for key, q in (("median", 50), ("p90", 90), ("p95", 95), ("p99", 99)):
        assert s[key] == pytest.approx(np.percentile(times, q), rel=1e-12, abs=1e-12), key
    assert s["mean"] == pytest.approx(times.mean(), rel=1e-12)
    assert s["std"] == pytest.approx(times.std(), rel=1e-9, abs=1e-12)
    assert s["cov"] == pytest.approx(times.std() / times.mean(), rel=1e-9, abs=1e-12)
    assert (s["min"], s["max"]) == (times.min(), times.max())


def test_iterations_split_over_rounds_and_throughput_follows(clock):
    log = []
    variants = [(n, lambda n=n: FakeRunner(n, 2.0, 100, clock, log)) for n in ("a", "b")]
    results = profile_variants(variants, {}, duration_s=99.0, rounds=3,
                               settings=ProfileSettings(warmup_ms=0, iterations=10))
    for r in results:
        assert r["iterations"] == 10
        assert [x["iterations"] for x in r["rounds"]] == [4, 3, 3]
        # the throughput phase lasts as long as the round's latency phase, at least 0.1 s
        assert r["throughput"]["seconds"] == pytest.approx(3 * 0.1)
    few = profile_variants(variants, {}, rounds=5,
                           settings=ProfileSettings(warmup_ms=0, iterations=2))
    assert [len(r["rounds"]) for r in few] == [2, 2]  # never a round of zero inferences


def test_batch_counts_frames_in_throughput(clock):
    variants = [("a", lambda: FakeRunner("a", 1.0, 50, clock, []))]
    one = profile_variants(variants, {}, duration_s=1.0, rounds=1,
                           settings=ProfileSettings(warmup_ms=0))[0]
    four = profile_variants(variants, {}, duration_s=1.0, rounds=1,
                            settings=ProfileSettings(warmup_ms=0, batch=4))[0]
    assert one["throughput"]["fps"] == pytest.approx(50)
    assert four["throughput"]["fps"] == pytest.approx(200) and four["throughput"]["batch"] == 4
    assert four["rounds"][0]["fps"] == pytest.approx(200)


def test_per_variant_feeds(clock):
    seen = []

    class Recorder(FakeRunner):
        def infer(self, feeds):
            seen.append((self.label, feeds["x"]))
            return super().infer(feeds)

    variants = [(n, lambda n=n: Recorder(n, 1.0, 10, clock, [])) for n in ("a", "b")]
    profile_variants(variants, [{"x": 1}, {"x": 2}], duration_s=0.01, rounds=1,
                     settings=ProfileSettings(warmup_ms=0, throughput=False))
    assert {x for label, x in seen if label == "a"} == {1}
    assert {x for label, x in seen if label == "b"} == {2}
    with pytest.raises(ValueError, match="feeds"):
        profile_variants(variants, [{"x": 1}], duration_s=0.01, rounds=1)


def test_layer_profile_sums_and_wall(clock):
    from rexdeploy.profiling.timing import layer_profile

    p = layer_profile(FakeRunner("a", 4.0, 10, clock, []), {}, iterations=4, warmup=1)
    assert [r["name"] for r in p["rows"]] == ["conv", "fc"]
    assert p["sum_ms"] == pytest.approx(2.0 + 1.5)
    assert p["wall_ms"] == pytest.approx(4.0)
    assert p["sum_vs_wall"] == pytest.approx(3.5 / 4.0)
    assert p["rows"][0]["kernel"] == "brgconv_avx512_I8" and p["rows"][0]["precision"] == "u8"
    with pytest.raises(ValueError):
        layer_profile(FakeRunner("a", 4.0, 10, clock, []), {}, iterations=0)
