"""A tiny BERT sentence encoder (tools/minilm.py's module, 2 layers, d=32) through build ->
compare: token-id and mask inputs, attention export, int8 Linear layers in OpenVINO, weight-only
int4 with REx orders, and the embedding metrics of compare on a labelled .npz.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import rexdeploy
from rexdeploy.config import BuildConfig, QuantConfig
from rexdeploy.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.openvino

L, VOCAB = 16, 100
INPUTS = [f"input_ids:1x{L}:int64", f"attention_mask:1x{L}:int64"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    import torch

    import minilm

    torch.manual_seed(0)
    cfg = minilm.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=64,
                            max_position_embeddings=32)
    model = minilm.sentence_encoder(cfg)
    ids = torch.randint(0, VOCAB, (1, L))
    path = tmp_path_factory.mktemp("bert") / "tiny_bert.pt"
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(model, (ids, torch.ones(1, L, dtype=torch.int64))),
                       str(path))
    return str(path)


@pytest.fixture(scope="module")
def sentences(tmp_path_factory):
    """12 'sentences' of 4..16 tokens ([CLS] 1 ... [SEP] 2, padding 0), 3 labels."""
    rng = np.random.default_rng(1)
    n = 12
    ids = np.zeros((n, L), np.int64)
    mask = np.zeros((n, L), np.int64)
    for i in range(n):
        k = int(rng.integers(4, L + 1))
        ids[i, :k] = np.r_[1, rng.integers(3, VOCAB, k - 2), 2]
        mask[i, :k] = 1
    path = tmp_path_factory.mktemp("tokens") / "tokens.npz"
    np.savez(path, input_ids=ids, attention_mask=mask, labels=np.arange(n) % 3)
    return str(path)


def _build(model, tmp_path_factory, name, **quant):
    out = tmp_path_factory.mktemp(name) / f"{name}.openvino"
    return rexdeploy.build(model, INPUTS, output=str(out), quiet=True,
                           config=BuildConfig(quant=QuantConfig(**quant)))


@pytest.fixture(scope="module")
def w8a8(tiny_bert, tmp_path_factory):
    return _build(tiny_bert, tmp_path_factory, "w8a8")


def test_w8a8_every_linear_runs_int8(w8a8):
    report = w8a8.report()
    saturates = report["summary"]["int8_isa"]["saturates"]  # a pre-VNNI CPU (lane AVX2)
    # q, k, v, dense, ffn in/out x 2, and the two attention scores (Q x K^T) where they run int8
    assert report["summary"]["quantized_layers"] == (12 if saturates else 14)
    # the context MatMuls (P x V, reading the Softmax) stay float under --attention scores, with
    # the reason; on a pre-VNNI CPU the scores too (OpenVINO runs them in f32 there)
    reasons = [s["reason"] for s in report["skipped"]]
    assert len(reasons) == (4 if saturates else 2), reasons
    assert all(("without VNNI" if saturates else "reads a Softmax output") in r
               for r in reasons), reasons
    for row in report["layers"]:
        assert row["runtime"] and row["runs_int8"], row
        assert {r["precision"] for r in row["runtime"]} <= {"i8", "u8"}, row
        assert row["activation"]["source"].startswith("observed"), row
    scores = [row for row in report["layers"] if "activations" in row]
    assert len(scores) == (0 if saturates else 2)
    for row in scores:  # both inputs int8, per tensor, and a runtime layer holding the MatMul
        assert [a["dtype"] for a in row["activations"]] == ["int8", "int8"], row
    # every compute layer the runtime runs, the fused attention kernels included, is counted
    summary = report["summary"]
    assert summary["runtime_compute_layers"] > 12, summary
    assert summary["macs_float"] > 0 and summary["int8_coverage_macs"] < 1.0, summary
    # ranges came from random token ids over the whole vocabulary, with every token attended
    assert any("synthetic" in n for n in report["notes"]), report["notes"]


@pytest.mark.parametrize("mode", ["int8", "float"])
def test_attention_modes(tiny_bert, sentences, tmp_path_factory, mode):
    """--attention int8 quantizes the context MatMul too (its Softmax input as uint8 on exactly
    [0, 1]) and stays faithful; float keeps all four listed."""
    art = _build(tiny_bert, tmp_path_factory, f"att_{mode}", attention=mode)
    report = art.report()
    rows = [row for row in report["layers"] if "activations" in row]
    if mode == "float" or report["summary"]["int8_isa"]["saturates"]:
        assert not rows and len(report["skipped"]) == 4, report["skipped"]
        return
    assert len(rows) == 4 and not report["skipped"], report["skipped"]
    softmax = [a for row in rows for a in row["activations"] if a["source"] == "softmax"]
    assert len(softmax) == 2 and all(a["dtype"] == "uint8" and a["range"] == 1.0
                                     for a in softmax), softmax
    assert all(row["runs_int8"] for row in rows), rows
    result = rexdeploy.compare(art.path, sentences, quiet=True)
    assert result["cosine_mean"] > 0.98 and result["sqnr_db"] > 10, result
    assert any("attention" in n and "int8" in n for n in report["notes"]), report["notes"]


def test_w8a8_compare_reports_embedding_metrics(w8a8, sentences):
    result = rexdeploy.compare(w8a8.path, sentences, quiet=True)
    assert result["samples"] == 12 and result["reference"].startswith("torch")
    assert result["top1_agreement"] is None and result["kl"] is None  # an embedding
    assert result["nn_agreement"] is not None
    assert result["cosine_mean"] > 0.98 and result["cosine_min"] > 0.9, result
    assert result["sqnr_db"] > 10, result
    acc = result["label_1nn"]
    assert set(acc) == {"reference", "test"} and 0 <= acc["test"] <= 1


def test_compare_synthetic_draws_token_ids_and_full_masks(w8a8):
    result = rexdeploy.compare(w8a8.path, synthetic=4, quiet=True)
    assert result["samples"] == 4 and result["cosine_mean"] > 0.98, result


@pytest.mark.cpuid_kernels
def test_weight_only_int4_expansion_runs_compressed_and_is_closer(tiny_bert, sentences,
                                                                   tmp_path_factory):
    k1 = _build(tiny_bert, tmp_path_factory, "w4k1", weights="int4", activations="none")
    k2 = _build(tiny_bert, tmp_path_factory, "w4k2", weights="int4", activations="none",
                orders=2)
    for art, k in ((k1, 1), (k2, 2)):
        report = art.report()
        assert report["summary"]["activation_tensors"] == 0
        for row in report["layers"]:
            # K branches per layer, each a FullyConnected reading int4 weights
            assert len(row["runtime"]) == k and row["runs_low_bit"], row
            assert {r["precision"] for r in row["runtime"]} == {"i4"}, row
    c1 = rexdeploy.compare(k1.path, sentences, quiet=True)
    c2 = rexdeploy.compare(k2.path, sentences, quiet=True)
    assert c2["sqnr_db"] > c1["sqnr_db"] + 6, (c1["sqnr_db"], c2["sqnr_db"])
    assert c2["cosine_mean"] > 0.999, c2


def test_token_npz_is_validated(w8a8, tmp_path):
    ids = np.zeros((3, L), np.int64)
    bad = tmp_path / "short.npz"
    np.savez(bad, input_ids=ids[:, :8], attention_mask=ids[:, :8])
    with pytest.raises(UserError, match="input input_ids is 1x8, the model expects 1x16"):
        rexdeploy.compare(w8a8.path, str(bad), quiet=True)
    floats = tmp_path / "floats.npz"
    np.savez(floats, input_ids=ids.astype(np.float32), attention_mask=ids)
    with pytest.raises(UserError, match="input_ids is float32, the model expects int64"):
        rexdeploy.compare(w8a8.path, str(floats), quiet=True)
    labels = tmp_path / "labels.npz"
    np.savez(labels, input_ids=ids, attention_mask=ids, labels=np.arange(2))
    with pytest.raises(UserError, match="2 labels for 3 samples"):
        rexdeploy.compare(w8a8.path, str(labels), quiet=True)


def test_rotated_ffn_inputs_run_int8_and_stay_faithful(tiny_bert, sentences, tmp_path_factory):
    """--rotate ffn: each FFN output Linear reads its input through a float rotation, listed
    with its reason and multiply-adds, and still runs int8; the build stays faithful."""
    art = _build(tiny_bert, tmp_path_factory, "rotated", rotate="ffn")
    report = art.report()
    rotations = [s for s in report["skipped"] if "Hadamard rotation" in s["reason"]]
    # the export names the layers after the module path ("/layers.0/output/MatMul")
    served = [s["reason"].split("'s input")[0][len("Hadamard rotation of "):] for s in rotations]
    assert len(served) == 2 and all(n.endswith("/output/MatMul") for n in served), served
    assert all(s["macs"] > 0 for s in rotations), rotations
    assert any(n.startswith("rotation: the inputs of 2 of 2 FFN") for n in report["notes"])
    rows = {row["name"]: row for row in report["layers"]}
    for name in served:
        row = rows[name]
        assert row["runs_int8"] and {r["precision"] for r in row["runtime"]} <= {"i8", "u8"}
    result = rexdeploy.compare(art.path, sentences, quiet=True)
    assert result["cosine_mean"] > 0.98, result
    with pytest.raises(UserError, match="--rotate"):
        QuantConfig(rotate="all").validate()


def test_rotate_auto_rotates_only_the_ffn_input_with_outlier_channels(tmp_path):
    """--rotate auto (the default) rotates an FFN input whose channels hold outliers (three of
    layer 0's hidden units scaled up 30x, their output weights down as much: the same function)
    and leaves the other layer's, whose channels are alike; --rotate off rotates none."""
    import torch

    import minilm

    torch.manual_seed(0)
    cfg = minilm.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=64,
                            max_position_embeddings=32)
    model = minilm.sentence_encoder(cfg).eval()
    with torch.no_grad():
        inter, out = model.layers[0].intermediate, model.layers[0].output
        inter.weight[:3] *= 30.0
        inter.bias[:3] = inter.bias[:3] * 30.0 + 30.0  # GELU(30 z + 30) ~ 30 GELU(z + 1)...
        out.weight[:, :3] /= 30.0                      # ...read back at 1/30: about as before
    ids = torch.randint(0, VOCAB, (1, L))
    path = tmp_path / "outliers.pt"
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(model, (ids, torch.ones(1, L, dtype=torch.int64))),
                       str(path))
    for rotate, want in (("auto", 1), ("off", 0)):
        art = rexdeploy.build(str(path), INPUTS, output=str(tmp_path / rotate), quiet=True,
                              config=BuildConfig(quant=QuantConfig(rotate=rotate)))
        report = art.report()
        served = [s["reason"].split("'s input")[0][len("Hadamard rotation of "):]
                  for s in report["skipped"] if "Hadamard rotation" in s["reason"]]
        assert len(served) == want and all(n.endswith("0/output/MatMul") for n in served), \
            (rotate, served)
        said = [n for n in report["notes"] if n.startswith("rotation: the inputs of 1 of 2")]
        assert len(said) == want and all("--rotate auto: outlier ratios" in n for n in said)
