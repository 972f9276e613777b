"""A target runtime that crashes on the model costs the build's device check, not the build:
the check runs in a child process, the artifact is written, and the build says the runtime
crashed and whether the float model crashes there too (OpenVINO 2026.4 does, on PP-OCRv4's
recogniser under ONEDNN_MAX_CPU_ISA=AVX2: docs/benchmarks.md). A real crash cannot be had on
demand, so these tests make the child die by a signal; the native builds of every other test
run the real child."""

import subprocess

import numpy as np
import pytest

import rexdeploy
from rexdeploy.config import BuildConfig
from rexdeploy.errors import UserError
from rexdeploy.evaluate import device_check
from tiny_models import tiny_cnn


def _crashing(monkeypatch, float_crashes: bool):
    """The warm worker dies on the check, and so does the child that asks why."""
    real = device_check._run_child
    calls = []
    monkeypatch.setattr(device_check, "_in_worker", lambda spec, samples: ("died", None))

    def run(tmp, env, *args):
        calls.append(args)
        if args == ("--float",) and not float_crashes:
            return real(tmp, env, *args)  # the float model really runs on OpenVINO
        return subprocess.CompletedProcess([], -11, "", "")

    monkeypatch.setattr(device_check, "_run_child", run)
    return calls


@pytest.mark.parametrize("float_crashes", [True, False])
def test_a_crash_of_the_runtime_is_said_and_the_artifact_written(tmp_path, monkeypatch,
                                                                   float_crashes):
    calls = _crashing(monkeypatch, float_crashes)
    out = tmp_path / "cnn.openvino"
    art = rexdeploy.build(tiny_cnn(), ["input:1x3x32x32"], quiet=True, output=str(out))
    check = art.report()["device_check"]
    assert calls == [(), ("--float",)]
    assert check["crashed"] is True and "agrees" not in check
    assert "OpenVINO crashed (SIGSEGV) running the compiled model" in check["skipped"]
    assert ("crashes on the float model too" in check["skipped"]) == float_crashes
    assert ("the float model runs there" in check["skipped"]) == (not float_crashes)
    assert art.manifest["summary"]["device_check"]["crashed"] is True
    assert (out / "model.xml").exists()


def test_strict_device_check_refuses_a_runtime_that_crashed(tmp_path, monkeypatch):
    _crashing(monkeypatch, True)
    out = tmp_path / "strict.openvino"
    with pytest.raises(UserError, match="OpenVINO crashed"):
        rexdeploy.build(tiny_cnn(), ["input:1x3x32x32"], quiet=True, output=str(out),
                        config=BuildConfig(strict_device_check=True))
    assert not out.exists()


def test_the_check_in_its_child_agrees_with_the_device_as_before(tmp_path):
    art = rexdeploy.build(tiny_cnn(), ["input:1x3x32x32"], quiet=True,
                          output=str(tmp_path / "cnn.openvino"))
    check = art.report()["device_check"]
    assert check["agrees"] and check["samples"] == 8 and "crashed" not in check


def test_compare_and_profile_refuse_to_crash_where_the_build_saw_it(tmp_path, monkeypatch):
    """Where the build saw the runtime crash (this CPU, the same ISA cap and runtime version),
    running the compiled model again would take compare or profile down with it: one clear
    error instead, naming the reference backend; the reference still runs."""
    from rexdeploy import compare, profile

    _crashing(monkeypatch, True)
    out = tmp_path / "cnn.openvino"
    art = rexdeploy.build(tiny_cnn(), ["input:1x3x32x32"], quiet=True, output=str(out))
    assert art.report()["device_check"]["host"]["runtime"]
    with pytest.raises(UserError, match="saw this artifact crash here") as info:
        compare(str(out), synthetic=2, quiet=True)
    assert "--backend reference" in info.value.hint
    with pytest.raises(UserError, match="saw this artifact crash here"):
        profile(str(out), iterations=2, rounds=1, layers=False, throughput=False,
                quiet=True)
    assert compare(str(out), synthetic=2, backend="reference", quiet=True)
    # under another ISA cap (or on another CPU, or another runtime) it runs
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    assert compare(str(out), synthetic=2, quiet=True)


def test_an_error_in_the_child_is_raised_in_the_build_as_before(tmp_path, monkeypatch):
    """Not a crash: an exception in the native check's worker (a bug, or a compile error) runs
    the check again in the build's process, where it is raised as it always was, rather than
    read as a host that cannot run the target."""
    monkeypatch.setattr(device_check, "_in_worker", lambda spec, samples: ("error", None))
    seen = []
    real = device_check.measure
    monkeypatch.setattr(device_check, "measure", lambda spec, samples: seen.append(1) or
                        real(spec, samples))
    art = rexdeploy.build(tiny_cnn(), ["input:1x3x32x32"], quiet=True,
                          output=str(tmp_path / "cnn.openvino"))
    assert seen == [1] and art.report()["device_check"]["agrees"]


def test_a_worker_that_dies_by_a_signal_is_a_crash_and_a_dead_one_is_replaced(tmp_path):
    """The warm worker for real: one that a signal kills while it checks reads as "died" (the
    build then asks a child of its own how); one found dead before a check is started again."""
    import os
    import signal
    import sys

    art = rexdeploy.build(tiny_cnn(), ["input:1x3x32x32"], quiet=True,
                          output=str(tmp_path / "cnn.openvino"))
    spec = device_check.CheckSpec(art.path, "openvino", "CPU",
                                  ({"files": art.files, "weight": 1.0},), art.files["float_onnx"])
    feeds = [{"input": np.zeros((1, 3, 32, 32), np.float32)}]
    state, out = device_check._in_worker(spec, feeds)
    assert state == "ok" and out
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:  # builds in threads take turns on the one worker
        states = list(pool.map(lambda _: device_check._in_worker(spec, feeds)[0], range(3)))
    assert states == ["ok"] * 3
    worker = device_check._WORKER["proc"]
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    state, _ = device_check._in_worker(spec, feeds)  # found dead: a new worker runs it
    assert state == "ok" and device_check._WORKER["proc"].pid != worker.pid
    # a stand-in worker that a SIGSEGV kills on its first request
    fake = subprocess.Popen([sys.executable, "-c", "import os, signal, sys; "
                             "sys.stdin.readline(); os.kill(os.getpid(), signal.SIGSEGV)"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    device_check._stop_worker()
    device_check._WORKER.update(proc=fake, key=device_check._WORKER.get("key"))
    assert device_check._in_worker(spec, feeds) == ("died", None)
    assert fake.returncode == -signal.SIGSEGV and "proc" not in device_check._WORKER
