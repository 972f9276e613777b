#!/usr/bin/env bash
# TensorRT on a Jetson, by hand or from .github/workflows/jetson.yml:
#   bash tools/jetson_ci.sh [host|setup|test|finish|compare|profile|centering|all] (default: all)
#
# The build runs on a host (x86, the build extra: torch); the board needs only the core install
# on JetPack's Python (3.10 on JetPack 6, 3.12 on JetPack 7), whose TensorRT it imports.
# host:    (on the build host) the example model -> deferred TensorRT artifacts (default and the
#          centring modes) and the example photos, into $OUT/host: copy that folder to the board
# setup:   (on the board) checks JetPack (L4T 36 = JetPack 6, 38 = JetPack 7) and TensorRT
#          (10.x or 11.x) before any work, then .venv-jetson with --system-site-packages and the
#          core install; fails, saying what is missing, where either is not there
# test:    the engine tests (pytest marker tensorrt) on the board
# finish:  rexdeploy build --from-deferred on the artifacts: the engines, built here, each
#          checked against its Q/DQ ONNX (the device check in report.json)
# compare: fidelity against the float model (the artifact's float.onnx) on the example photos
# profile: nvpmodel max mode + jetson_clocks, then latency, gated against $BASELINE
#          (--max-regression $MAX_REGRESSION) when that file exists
# centering: the centring modes compared and profiled beside the default: what centring's
#          border-correction Adds cost on TensorRT; not gated
# Everything lands in $OUT (default out/jetson): report.json, compare/profile JSON, clocks.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/jetson}
HOST=$OUT/host
ART=$HOST/efficientnet_lite0.trt
BASELINE=${BASELINE:-tools/bench/baselines/jetson_orin.json}
MAX_REGRESSION=${MAX_REGRESSION:-10%}
VENV=${VENV:-.venv-jetson}
PY=$VENV/bin/python
RX=$VENV/bin/rexdeploy
MODEL_ARGS=(--input input:1x3x224x224 --input-range input:-1,1
            --preprocess resize=256,crop=224,mean=127,std=128)
mkdir -p "$OUT"

die() { echo "error: $*" >&2; exit 1; }

host() {
    # the build host's .venv (tools/setup.sh): torch and the example model live there
    bash tools/setup.sh
    .venv/bin/python tools/fetch_example.py
    .venv/bin/python tools/fetch_photos.py
    mkdir -p "$HOST"
    for mode in auto pointwise off; do
        dest=$ART
        [ "$mode" = auto ] || dest=$HOST/centering_$mode.trt
        .venv/bin/rexdeploy build .cache/models/efficientnet_lite0.pt --target trt \
            --centering "$mode" "${MODEL_ARGS[@]}" -o "$dest" --force --quiet
    done
    rm -rf "$HOST/photos"
    cp -r .cache/photos "$HOST/photos"
    echo "deferred artifacts and photos in $HOST: copy it to the board (same path under $OUT)"
}

preflight() {
    # JetPack and TensorRT versions, before any work
    if [ -f /etc/nv_tegra_release ]; then
        l4t=$(sed -n 's/^# R\([0-9]*\) .*/\1/p' /etc/nv_tegra_release | head -n1)
        case "${l4t:-}" in
            36|38|39) ;;
            35|34|32) die "L4T R$l4t is JetPack 5 or older (TensorRT 8.x): rexdeploy's engines need TensorRT 10.x or 11.x (JetPack 6 or 7)" ;;
            *) echo "warning: unknown L4T release '${l4t:-?}' in /etc/nv_tegra_release" >&2 ;;
        esac
    else
        echo "warning: /etc/nv_tegra_release missing: not a Jetson?" >&2
    fi
    python3 - <<'PY' || die "rexdeploy needs TensorRT 10.x or 11.x importable from JetPack's python3 (apt install python3-libnvinfer)"
import sys
try:
    import tensorrt
except Exception as exc:  # ImportError, or a broken install
    print(f"tensorrt does not import in {sys.executable}: {exc}", file=sys.stderr)
    sys.exit(1)
major = int(tensorrt.__version__.split(".")[0])
print(f"tensorrt {tensorrt.__version__} on Python {sys.version.split()[0]}")
if major not in (10, 11):
    print(f"TensorRT {tensorrt.__version__} is not supported", file=sys.stderr)
sys.exit(0 if major in (10, 11) else 1)
PY
}

setup() {
    preflight
    [ -x "$PY" ] || python3 -m venv --system-site-packages "$VENV"
    "$VENV/bin/pip" install -q --progress-bar off -e ".[test]"
    "$PY" -c "import tensorrt; print('tensorrt', tensorrt.__version__, 'imports in $VENV')" \
        || die "tensorrt does not import in $VENV: remake it with --system-site-packages"
}

engine_tests() {
    "$PY" -m pytest -q -p no:cacheprovider -m tensorrt tests/test_backends/test_backend_tensorrt.py
}

finish() {
    [ -d "$ART" ] || die "no artifact at $ART: run 'bash tools/jetson_ci.sh host' on the build host and copy $HOST here"
    for art in "$ART" "$HOST"/centering_*.trt; do
        [ -d "$art" ] || continue
        "$RX" build --from-deferred "$art"
    done
    cp "$ART/report.json" "$OUT/report.json"
    "$RX" inspect "$ART" --layers
}

compare() {
    "$RX" compare "$ART" --inputs "$HOST/photos" --save "$OUT/compare.json"
}

profile() {
    # Lock the clocks (max power mode, DVFS off) and record the state with the numbers.
    sudo nvpmodel -m 0
    sudo jetson_clocks
    { sudo nvpmodel -q; sudo jetson_clocks --show; } > "$OUT/clocks.txt" 2>&1 || true
    if [ -f "$BASELINE" ]; then
        "$RX" profile "$ART" --save "$OUT/profile.json" \
            --baseline "$BASELINE" --max-regression "$MAX_REGRESSION"
    else
        echo "warning: no baseline at $BASELINE: not gated; commit $OUT/profile.json there" \
             "(measured on this board) to gate later runs" >&2
        "$RX" profile "$ART" --save "$OUT/profile.json"
    fi
}

centering() {
    for mode in pointwise off; do
        "$RX" compare "$HOST/centering_$mode.trt" --inputs "$HOST/photos" \
            --save "$OUT/compare_centering_$mode.json"
    done
    # one at a time: profile interleaves several artifacts on OpenVINO only (not yet TensorRT)
    for mode in pointwise off; do
        "$RX" profile "$HOST/centering_$mode.trt" --save "$OUT/profile_centering_$mode.json"
    done
}

case "${1:-all}" in
    host) host ;;
    setup) setup ;;
    test) preflight; engine_tests ;;
    finish) preflight; finish ;;
    compare) compare ;;
    profile) profile ;;
    centering) centering ;;
    all) setup; engine_tests; finish; compare; profile; centering ;;
    *) echo "usage: $0 [host|setup|test|finish|compare|profile|centering|all]" >&2; exit 2 ;;
esac
