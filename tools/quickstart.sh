#!/usr/bin/env bash
# README command (a): set everything up and run the main job on the built-in example:
# EfficientNet-Lite0 (real ImageNet weights) -> data-free int8 OpenVINO artifact -> compared with
# the float model on real photos -> profiled against float -> one summary table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
PY=.venv/bin/python
RX=.venv/bin/rexdeploy
ART=out/efficientnet_lite0.openvino
run() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

run $PY tools/fetch_example.py
run $PY tools/fetch_photos.py
run $RX build .cache/models/efficientnet_lite0.pt --input input:1x3x224x224 \
    --input-range input:-1,1 --preprocess resize=256,crop=224,mean=127,std=128 \
    -o $ART --force
run $RX compare $ART --inputs .cache/photos --save out/compare.json
run $RX profile $ART --compare --duration 2 --save out/profile.json
run $PY tools/summary.py $ART out/compare.json out/profile.json
