"""The real transformer: all-MiniLM-L6-v2 on Debian fortunes quotes, built without data.

Needs .cache/models/minilm.pt (tools/fetch_minilm.py) and .cache/fortunes/tokens.npz
(tools/fetch_fortunes.py); skips with that reason when they are absent. The full 400-quote table
is tools/bench/fidelity.py --model minilm (docs/benchmarks.md), the W4 weight-only one with
PowerQuant and the peers tools/bench/weight_only_minilm.py; here the first 20 quotes.
"""

import os

import pytest

import rexdeploy
from rexdeploy.config import BuildConfig, QuantConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, ".cache", "models", "minilm.pt")
TOKENS = os.path.join(ROOT, ".cache", "fortunes", "tokens.npz")
INPUTS = ["input_ids:1x128:int64", "attention_mask:1x128:int64"]
pytestmark = [pytest.mark.slow, pytest.mark.openvino]


def _need_cache() -> None:
    for path, tool in ((MODEL, "fetch_minilm.py"), (TOKENS, "fetch_fortunes.py")):
        if not os.path.isfile(path):
            pytest.skip(f"{os.path.relpath(path, ROOT)} is missing: run .venv/bin/python "
                        f"tools/{tool}")


@pytest.fixture(scope="module")
def w4k2(tmp_path_factory):
    _need_cache()
    out = tmp_path_factory.mktemp("minilm") / "w4k2.openvino"
    # the defaults: bias correction skips layers whose input means only random tokens could
    # give (no BatchNorm statistics reach them), so none of MiniLM's is corrected
    quant = QuantConfig(weights="int4", activations="none", orders=2)
    return rexdeploy.build(MODEL, INPUTS, output=str(out), quiet=True,
                           config=BuildConfig(quant=quant))


@pytest.mark.cpuid_kernels
def test_every_linear_reads_int4_weights(w4k2):
    report = w4k2.report()
    assert not any(row["bias_corrected"] for row in report["layers"])
    assert report["summary"]["quantized_layers"] == 36  # 6 layers x (q, k, v, o, ffn in, out)
    for row in report["layers"]:
        assert len(row["runtime"]) == 2 and row["runs_low_bit"], row
        assert {r["precision"] for r in row["runtime"]} == {"i4"}, row


@pytest.mark.cpuid_kernels
def test_w4_k2_embeddings_stay_on_the_float_ones(w4k2):
    result = rexdeploy.compare(w4k2.path, TOKENS, limit=20, quiet=True)
    assert result["reference"].startswith("torch")
    # issue 3 target: mean cosine >= 0.999 on all 400 quotes (docs/benchmarks.md); on the
    # first 20 a little slack against run-to-run noise of the threaded f32 kernels
    assert result["cosine_mean"] >= 0.998 and result["cosine_min"] >= 0.995, result


# PowerQuant at W4 weight-only (issue 7)
@pytest.fixture(scope="module")
def cosines(tmp_path_factory):
    _need_cache()
    out = tmp_path_factory.mktemp("minilm_power")
    result = {}
    for label, operator, balance in (("uniform", "uniform", "auto"),
                                     ("unbalanced", "uniform", "off"), ("power", "power", "auto")):
        quant = QuantConfig(weights="int4", activations="none", operator=operator,
                            dynamic_quantization=0, weight_balance=balance,
                            granularity="channel")  # per channel, as the figures below
        art = rexdeploy.build(MODEL, INPUTS, output=str(out / label), quiet=True,
                              config=BuildConfig(quant=quant))
        result[label] = (rexdeploy.compare(art.path, TOKENS, limit=20, quiet=True),
                         art.report())
    return result


def test_powerquant_and_balanced_columns_beat_uniform_rtn_at_w4(cosines):
    plain, power, balanced = (cosines[k][0] for k in ("unbalanced", "power", "uniform"))
    # measured on all 400 quotes: 0.904 (uniform per channel), 0.942 (PowerQuant), 0.945
    # (uniform with balanced columns, the default below 8 bits)
    assert power["cosine_mean"] > plain["cosine_mean"] + 0.01, (plain, power)
    assert balanced["cosine_mean"] > plain["cosine_mean"] + 0.01, (plain, balanced)


def test_powerquant_exponents_and_float_layers_reported(cosines):
    report = cosines["power"][1]
    assert len(report["summary"]["float_compute_layers"]) == 36
    exponents = [row["exponents"][0] for row in report["layers"]]
    assert all(0.2 <= a <= 1.0 for a in exponents)
    assert sum(a < 0.95 for a in exponents) >= 30, exponents  # trained weights: a < 1


# TensorRT's f16 graph (--activations fp16 --target trt, rexdeploy/passes/float16.py)
def test_trt_fp16_weight_only_graph_is_as_faithful_as_the_f32_one(tmp_path):
    """The mask's -10000 and the pooling's clamp floor (1e-9, which f16 makes 0) pass through
    the f16 graph unharmed; ONNX Runtime runs both deferred artifacts."""
    _need_cache()
    result = {}
    for activations, precision in (("fp16", "auto"), ("none", "fp32")):
        quant = QuantConfig(weights="int4", activations=activations, granularity="block",
                            block_size=128)
        art = rexdeploy.build(MODEL, INPUTS, output=str(tmp_path / activations), quiet=True,
                              config=BuildConfig(target="trt", quant=quant,
                                                 float_precision=precision))
        assert art.report()["backend"]["trt_check"]["ok"]
        result[activations] = rexdeploy.compare(art.path, TOKENS, limit=20, quiet=True)
    half, full = result["fp16"], result["none"]
    assert half["cosine_mean"] > 0.9 and abs(half["cosine_mean"] - full["cosine_mean"]) < 1e-3
