"""PowerQuant on the real transformer: all-MiniLM-L6-v2, W4 weight-only, built without data.

Needs .cache/models/minilm.pt and .cache/fortunes/tokens.npz (tools/fetch_minilm.py,
tools/fetch_fortunes.py); skips with that reason when they are absent. The 400-quote table with
the peers is tools/bench/weight_only_minilm.py (docs/benchmarks.md); here the first 20 quotes.
"""

import os

import pytest

import rexdeploy
from rexdeploy.config import BuildConfig, QuantConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, ".cache", "models", "minilm.pt")
TOKENS = os.path.join(ROOT, ".cache", "fortunes", "tokens.npz")
INPUTS = ["input_ids:1x128:int64", "attention_mask:1x128:int64"]
pytestmark = [pytest.mark.slow, pytest.mark.openvino]


@pytest.fixture(scope="module")
def cosines(tmp_path_factory):
    for path, tool in ((MODEL, "fetch_minilm.py"), (TOKENS, "fetch_fortunes.py")):
        if not os.path.isfile(path):
            pytest.skip(f"{os.path.relpath(path, ROOT)} is missing: run .venv/bin/python "
                        f"tools/{tool}")
    out = tmp_path_factory.mktemp("minilm_power")
    result = {}
    for operator in ("uniform", "power"):
        quant = QuantConfig(weights="int4", activations="none", operator=operator,
                            dynamic_quantization=0)
        art = rexdeploy.build(MODEL, INPUTS, output=str(out / operator), quiet=True,
                              config=BuildConfig(quant=quant))
        result[operator] = (rexdeploy.compare(art.path, TOKENS, limit=20, quiet=True),
                            art.report())
    return result


def test_powerquant_beats_uniform_rtn_at_w4(cosines):
    uniform, power = cosines["uniform"][0], cosines["power"][0]
    # measured on all 400 quotes: 0.90 (uniform per channel) vs 0.94 (PowerQuant)
    assert power["cosine_mean"] > uniform["cosine_mean"] + 0.01, (uniform, power)


def test_powerquant_exponents_and_float_layers_reported(cosines):
    report = cosines["power"][1]
    assert len(report["summary"]["float_compute_layers"]) == 36
    exponents = [row["exponents"][0] for row in report["layers"]]
    assert all(0.2 <= a <= 1.0 for a in exponents)
    assert sum(a < 0.95 for a in exponents) >= 30, exponents  # trained weights: a < 1
