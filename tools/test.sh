#!/usr/bin/env bash
# README command (b): set everything up, then run the test suite. `.ci/run` runs exactly this.
#
# Two lanes: the whole suite on this CPU's own int8 kernels, then again under
# ONEDNN_MAX_CPU_ISA=AVX2, which makes OpenVINO run its pre-VNNI kernels (int8 pairs saturate in
# int16) on any x86 host, so a result that holds only with VNNI/AMX fails here too. The second
# lane is skipped, saying why, where this CPU's own kernels are pre-VNNI already (the first lane
# was that run) or it has no AVX2. Arguments (e.g. a test file) go to both lanes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
PY=.venv/bin/python
echo "[test] lane 1: this CPU's own int8 kernels"
$PY -m pytest -q -p no:cacheprovider "$@"
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
    echo "[test] lane 2 (ONEDNN_MAX_CPU_ISA=AVX2) ${lane}"
    exit 0
fi
echo "[test] lane 2: ONEDNN_MAX_CPU_ISA=AVX2 (OpenVINO's pre-VNNI int8 kernels)"
export ONEDNN_MAX_CPU_ISA=AVX2
exec $PY -m pytest -q -p no:cacheprovider -rs "$@"
