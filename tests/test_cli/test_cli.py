"""CLI contract: --help is instant (no torch/openvino import), user errors exit 1 without a
traceback, usage errors exit 2."""

import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "openvino", "onnxruntime", "onnx", "onnx_ir", "tensorrt", "numpy")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "rexdeploy.cli", *args], capture_output=True,
                          text=True, cwd=kw.get("cwd", ROOT), timeout=300)


@pytest.mark.parametrize("argv", [["--help"], ["build", "--help"], ["compare", "--help"],
                                  ["profile", "--help"], ["inspect", "--help"]])
def test_help_imports_nothing_heavy(argv):
    code = ("import sys\nfrom rexdeploy.cli import cli\ntry:\n    cli.main(args=%r, "
            "standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in %r if m in sys.modules]\nprint('HEAVY', heavy)\n" % (argv, HEAVY))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_import_rexdeploy_is_light():
    code = "import sys, rexdeploy\nprint([m for m in %r if m in sys.modules])" % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_version_and_help_text():
    out = _run("--help")
    assert out.returncode == 0
    for verb in ("build", "compare", "profile", "inspect", "backends"):
        assert verb in out.stdout


@pytest.mark.parametrize("args, message", [
    (["build", "does/not/exist.pt", "--input", "x:1x3"], "does not exist"),
    (["build", "m.pt", "--input", "x:1xZZ!"], "bad --input"),
    (["build", "m.pt", "--input", "x:1x3", "--input-range", "x:2,1"], "low must be below"),
    (["compare", "no/such/artifact"], "not an artifact"),
    (["inspect", "no/such/artifact"], "not an artifact"),
    (["profile", "no/such/artifact"], "not an artifact"),
])
def test_user_errors_exit_1_without_traceback(args, message, tmp_path):
    out = _run(*args)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert message in out.stderr.lower() or message in out.stderr


@pytest.mark.parametrize("args", [["build"], ["build", "m.pt", "--orders", "9"],
                                  ["build", "m.pt", "--ranges", "bogus"], ["frobnicate"]])
def test_usage_errors_exit_2(args):
    assert _run(*args).returncode == 2


def test_backends_lists_targets():
    out = _run("backends")
    assert out.returncode == 0
    assert "openvino" in out.stdout and "reference" in out.stdout


class _Payload:
    """Unpickling this creates a marker file: the proof that loading ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_module_refused_and_payload_never_runs(tmp_path):
    import torch

    marker = tmp_path / "PWNED"
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    model.payload = _Payload(str(marker))
    path = tmp_path / "model.pt"
    torch.save(model, str(path))
    assert not marker.exists()
    out = _run("build", str(path), "--input", "x:1x4", "-o", str(tmp_path / "o"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "--trust-pickle" in out.stderr
    assert not marker.exists(), "loading the refused pickle ran its payload"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 10, b"PK\x03\x04truncated"])
def test_corrupt_model_files(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    out = _run("build", str(path), "--input", "x:1x3x8x8", "-o", str(tmp_path / "o"))
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and "error:" in out.stderr
    assert not (tmp_path / "o").exists()


def test_interrupted_build_leaves_nothing(tmp_path):
    """SIGINT in the middle of a build: exit 130, no artifact, no temporary directory."""
    import signal
    import time

    import torch

    from tiny_models import tiny_cnn

    model = tmp_path / "m.pt"
    torch.jit.save(torch.jit.trace(tiny_cnn(), torch.randn(1, 3, 32, 32)), str(model))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "rexdeploy.cli", "build", str(model),
                             "--input", "input:1x3x32x32", "-o", str(out / "a.openvino")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and os.listdir(out)):
        time.sleep(0.02)  # wait until the build has started writing its temp dir
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the build finished before the interrupt arrived")
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    left = os.listdir(out) if out.exists() else []  # the folder made for it goes too
    if left == ["a.openvino"]:  # the interrupt landed after the commit: a complete artifact
        from rexdeploy.artifact import load_artifact

        load_artifact(str(out / "a.openvino"))
    else:
        assert left == [], left


def test_absurd_but_parseable_shape_is_refused_before_work(tmp_path):
    out = _run("build", "does-not-matter.pt", "--input", "x:1x3x20000x20000",
               "-o", str(tmp_path / "o"))
    assert out.returncode == 1 and "too large" in out.stderr, out.stderr
    assert not (tmp_path / "o").exists()
