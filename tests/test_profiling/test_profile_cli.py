"""`rexdeploy profile` on a real OpenVINO artifact (a tiny CNN built in the test): per-layer
coverage, the JSON document, the regression gate's exit codes, --compare, --batch, --inputs,
--iterations, --markdown, --plot."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import rexdeploy
from rexdeploy.profiling.schema import load_profile
from tiny_models import tiny_cnn

pytestmark = pytest.mark.openvino
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = ["--duration", "0.1", "--rounds", "1", "--warmup", "10"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    d = tmp_path_factory.mktemp("prof")
    model = d / "cnn.pt"
    torch.jit.save(torch.jit.trace(tiny_cnn(), torch.randn(1, 3, 32, 32)), str(model))
    return rexdeploy.build(str(model), ["input:1x3x32x32"], output=str(d / "cnn.openvino"),
                           quiet=True)


def _rx(*args):
    return subprocess.run([sys.executable, "-m", "rexdeploy.cli", "profile", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_layer_table_covers_every_executed_node(artifact):
    """Every node OpenVINO reports as EXECUTED in any profiled inference is a row, once, with
    its kernel and precision; nothing else is. (A node may run in some inferences only, so the
    reference is the union over the same inferences, read straight from the infer request.)"""
    import openvino as ov

    import backends
    from backends.base import RunOptions
    from rexdeploy.profiling.render import render_layer_table
    from rexdeploy.profiling.timing import layer_profile

    class Recorder:
        def __init__(self, runner):
            self.runner, self.executed = runner, set()

        def infer(self, feeds):
            out = self.runner.infer(feeds)
            self.executed |= {p.node_name for p in self.runner.request.profiling_info
                              if p.status == ov.ProfilingInfo.Status.EXECUTED}
            return out

        def timings(self):
            return self.runner.timings()

    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 32, 32), np.float32)}
    opts = RunOptions(perf_count=True)
    with backends.get("openvino").runner(artifact.path, artifact.files, opts) as r:
        rec = Recorder(r)
        prof = layer_profile(rec, feeds, iterations=3, warmup=0)
        runtime_ops = {op.get_friendly_name() for op in r.compiled.get_runtime_model().get_ops()}
    executed = rec.executed
    names = [row["name"] for row in prof["rows"]]
    assert len(names) == len(set(names)) and set(names) == executed
    assert executed <= runtime_ops
    assert all(row["kernel"] and row["precision"] for row in prof["rows"]
               if row["type"] in ("Convolution", "GroupConvolution")), prof["rows"]
    assert any(row["kernel"].endswith("_I8") for row in prof["rows"])
    assert prof["sum_ms"] == pytest.approx(sum(row["time_ms"] for row in prof["rows"]))
    assert prof["wall_ms"] > 0
    from rich.console import Console

    console = Console(record=True, width=400)
    console.print(render_layer_table({"label": "x", "layers": prof,
                                      "latency_ms": {"median": 1.0}}, top=0))
    text = console.export_text()
    assert all(name in text for name in executed)


def test_json_document_and_gate(artifact, tmp_path):
    base = tmp_path / "base.json"
    out = _rx(artifact.path, *FAST, "--json", str(base), "-q")
    assert out.returncode == 0, out.stderr
    doc = load_profile(str(base))
    (v,) = doc["variants"]
    assert v["label"] == "rexdeploy int8" and v["kind"] == "artifact"
    assert v["layers"]["rows"] and v["throughput_fps"] > 0 and v["cov"] >= 0
    assert v["info"]["inference_precision"] == "f32"
    assert v["info"]["throughput"]["streams"] >= 1 and v["info"]["threads"] >= 1
    assert doc["device"]["cpu_model"] and doc["device"]["jetson"]["present"] in (True, False)

    # a baseline 100x slower: the run is no regression (not timed against itself: a loaded
    # machine can double a median, and the bound must stay below 100 %)
    slow = json.loads(base.read_text())
    slow["variants"][0]["latency_ms"] = {k: x * 100 for k, x in v["latency_ms"].items()}
    slow["variants"][0]["throughput_fps"] = v["throughput_fps"] / 100
    (tmp_path / "slow.json").write_text(json.dumps(slow))
    ok = _rx(artifact.path, *FAST, "--no-layers", "--baseline", str(tmp_path / "slow.json"),
             "--max-regression", "10%")
    assert ok.returncode == 0, ok.stderr

    # a baseline 100x faster: the run regresses, exit 3, the figure named
    fast = json.loads(base.read_text())
    fast["variants"][0]["latency_ms"] = {k: x / 100 for k, x in v["latency_ms"].items()}
    fast["variants"][0]["throughput_fps"] = v["throughput_fps"] * 100
    (tmp_path / "fast.json").write_text(json.dumps(fast))
    bad = _rx(artifact.path, *FAST, "--no-layers", "--baseline", str(tmp_path / "fast.json"))
    assert bad.returncode == 3, bad.stderr
    assert "REGRESSION rexdeploy int8: median latency" in bad.stderr
    assert "REGRESSION rexdeploy int8: throughput" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_json_before_the_artifact_prints_it(artifact):
    """`--json` takes an optional FILE: an artifact directory right after it is the artifact."""
    out = _rx("--json", artifact.path, *FAST, "--no-layers")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["schema"] == "rexdeploy.profile" and len(doc["variants"]) == 1
    assert not os.path.exists(os.path.join(artifact.path, "-"))


def test_gate_missing_or_invalid_baseline_is_exit_1(artifact, tmp_path):
    out = _rx(artifact.path, *FAST, "--baseline", str(tmp_path / "none.json"))
    assert out.returncode == 1 and "does not exist" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "bad.json").write_text('{"schema": "rexdeploy.profile", "variants": [{}]}')
    out = _rx(artifact.path, *FAST, "--baseline", str(tmp_path / "bad.json"))
    assert out.returncode == 1 and "lacks" in out.stderr
    out = _rx(artifact.path, *FAST, "--baseline", str(tmp_path / "bad.json"),
              "--max-regression", "lots")
    assert out.returncode == 1 and "percentage" in out.stderr


def test_compare_batch_inputs_markdown_plot(artifact, tmp_path):
    pytest.importorskip("matplotlib")
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    for i in range(3):
        np.save(arrays / f"x{i}.npy", np.full((1, 3, 32, 32), i, np.float32))
    plot = tmp_path / "p.png"
    out = _rx(artifact.path, "--iterations", "30", "--rounds", "2", "--warmup", "10",
              "--compare", "--batch", "4", "--inputs", str(arrays), "--streams", "1",
              "--markdown", "--top", "3", "--plot", str(plot), "--save", str(tmp_path / "s.json"))
    assert out.returncode == 0, out.stderr
    assert "| float f32 (pinned) |" in out.stdout and "| float device default |" in out.stdout
    assert "| rexdeploy int8 |" in out.stdout
    assert plot.stat().st_size > 10_000
    doc = load_profile(str(tmp_path / "s.json"))
    assert [v["kind"] for v in doc["variants"]] == ["float", "float", "artifact"]
    for v in doc["variants"]:
        assert v["iterations"] == 30 and v["throughput"]["batch"] == 4
        assert v["info"]["throughput"]["streams"] == 1
    assert doc["variants"][1]["info"]["inference_precision"] in ("bf16", "f16", "f32")
    assert doc["settings"]["batch"] == 4 and doc["settings"]["compare"] is True


def test_json_to_stdout_and_usage_errors(artifact):
    out = _rx(artifact.path, *FAST, "--no-layers", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["schema"] == "rexdeploy.profile"
    assert _rx(artifact.path, "--duration", "1", "--iterations", "5").returncode == 2
    dla = _rx(artifact.path, *FAST, "--device", "DLA0")
    assert dla.returncode == 1 and "TensorRT" in dla.stderr
    npu = _rx(artifact.path, *FAST, "--device", "NPU")
    assert npu.returncode == 1 and "not available" in npu.stderr


def test_two_artifacts_interleaved(artifact):
    doc = rexdeploy.profile([artifact.path, artifact.path], duration=0.1, rounds=1,
                            layers=False, quiet=True)
    labels = [v["label"] for v in doc["variants"]]
    assert len(labels) == 2 and len(set(labels)) == 2
    assert doc["variants"][1]["ratio_vs"]["label"] == labels[0]


def test_sync_call_runs_the_same_inference_as_infer(artifact):
    """The timed loop's call (inputs set once) computes what infer(feeds) computes."""
    import backends
    from backends.base import RunOptions
    from rexdeploy.errors import UserError

    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32), np.float32)
    with backends.get("openvino").runner(artifact.path, artifact.files, RunOptions()) as r:
        call = r.sync_call({"input": x})
        got = np.array(call()[r.compiled.outputs[0]], copy=True)
        again = np.array(call()[r.compiled.outputs[0]], copy=True)
        want = r.infer({"input": x})[r.outputs[0]]
        with pytest.raises(UserError, match="shape"):
            r.sync_call({"input": x[:, :2]})
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(again, want)
