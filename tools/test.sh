#!/usr/bin/env bash
# README command (b): set everything up, then run the test suite. `.ci/run` runs exactly this.
#
# Three lanes:
#  1. the whole suite on this CPU's own int8 kernels;
#  2. the device side: a fresh Python 3.10 venv (.venv-device; JetPack 6's Python) with only the
#     core install (no torch, no onnx-ir) runs tests/test_backends/test_device_side.py on artifacts lane 1's
#     venv builds (tests/device_fixtures.py): inspect, profile, compare, finishing a deferred
#     TensorRT build;
#  3. the whole suite again under ONEDNN_MAX_CPU_ISA=AVX2, which makes OpenVINO run its pre-VNNI
#     kernels (int8 pairs saturate in int16) on any x86 host, so a result that holds only with
#     VNNI/AMX fails here too; skipped, saying why, where this CPU's own kernels are pre-VNNI
#     already (lane 1 ran them) or it has no AVX2.
# Before them, a lint step: ruff (syntax errors, undefined names, unused imports, and each
# package's banned imports: calib_free/, backends/, rexdeploy/passes/, rexdeploy/frontend/
# ruff.toml).
# Arguments (e.g. a test file) go to lanes 1 and 3; lane 2 runs only without arguments.
# `--quick` (first argument): the lint and lane 1 without the tests marked slow (those that
# load a real pretrained model) or e2e (whole builds through the CLI or a device, seconds each),
# for the edit-test loop; CI runs everything.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
if [ "${1:-}" = "--quick" ]; then quick=1; shift; fi
bash tools/setup.sh
PY=.venv/bin/python
status=0

echo "[test] lint: ruff check"
.venv/bin/ruff check --quiet . || status=1

if [ $quick -eq 1 ]; then
    echo "[test] quick: lane 1 without the slow tests (CI runs all three lanes)"
    $PY -m pytest -q -p no:cacheprovider -m "not slow and not e2e" "$@" || status=1
    exit $status
fi

echo "[test] lane 1: this CPU's own int8 kernels"
$PY -m pytest -q -p no:cacheprovider "$@" || status=1

find_python310() {
    local c
    for c in "${PYTHON310:-}" python3.10; do
        if [ -n "$c" ] && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 10)' \
                >/dev/null 2>&1; then
            echo "$c"; return 0
        fi
    done
    for c in "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.10*/bin/python3.10 \
             /usr/bin/python3.10; do
        if [ -x "$c" ]; then echo "$c"; return 0; fi
    done
    return 1
}

if [ $# -eq 0 ]; then
    echo "[test] lane 2: the device side (Python 3.10, core install only: no torch, no onnx-ir)"
    py310=$(find_python310) || {
        echo "[test] error: no Python 3.10 found (set PYTHON310=/path/to/python3.10)" >&2
        exit 1; }
    [ -x .venv-device/bin/python ] || "$py310" -m venv .venv-device
    .venv-device/bin/pip install -q --progress-bar off -e ".[openvino,test]" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    fixtures=$(mktemp -d)
    trap 'rm -rf "$fixtures"' EXIT
    $PY tests/device_fixtures.py "$fixtures" >/dev/null
    REXDEPLOY_DEVICE_SIDE=1 REXDEPLOY_DEVICE_FIXTURES="$fixtures" \
        .venv-device/bin/python -m pytest -q -p no:cacheprovider tests/test_backends/test_device_side.py \
        || status=1
else
    echo "[test] lane 2 (device side) runs without arguments only"
fi

lane=$($PY - <<'PY'
from backends import cpu_isa
if not cpu_isa.supported("avx2", cpu_isa.cpu_flags()):
    print("skip: this CPU has no AVX2")
else:
    from backends.openvino import int8_probe
    print("skip: this CPU's int8 kernels are pre-VNNI already (lane 1 ran them)"
          if int8_probe()["saturates"] else "run")
PY
)
if [ "$lane" != "run" ]; then
    echo "[test] lane 3 (ONEDNN_MAX_CPU_ISA=AVX2) ${lane}"
else
    echo "[test] lane 3: ONEDNN_MAX_CPU_ISA=AVX2 (OpenVINO's pre-VNNI int8 kernels)"
    ONEDNN_MAX_CPU_ISA=AVX2 $PY -m pytest -q -p no:cacheprovider -rs "$@" || status=1
fi
exit $status
