"""The target's int8 instruction set: detection, the saturation OpenVINO's pre-VNNI kernels
really have, the overflow fix that avoids it, and the build's device check that proves it.

oneDNN reads ONEDNN_MAX_CPU_ISA once per process, so everything that runs another ISA's kernels
runs in a child process. Every x86 host with AVX2 can run the AVX2 kernels; the VNNI side runs
where the host has VNNI (AVX-512 VNNI or AVX-VNNI) and says so where it does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from backends import cpu_isa

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLAGS = cpu_isa.cpu_flags()
HAS_AVX2 = cpu_isa.supported("avx2", FLAGS)
VNNI = next((isa for isa in ("avx512_core_vnni", "avx2_vnni") if cpu_isa.supported(isa, FLAGS)),
            None)
needs_avx2 = pytest.mark.skipif(not HAS_AVX2, reason="no AVX2 on this CPU")
needs_vnni = pytest.mark.skipif(VNNI is None, reason="this CPU has no VNNI: the non-saturating "
                                                     "side cannot run here")
pytestmark = pytest.mark.openvino


def run_py(code: str, isa: str | None) -> str:
    """`code` in a child Python under ONEDNN_MAX_CPU_ISA=isa (None: unset); its last line."""
    env = {k: v for k, v in os.environ.items() if k != cpu_isa.ENV}
    if isa:
        env[cpu_isa.ENV] = isa
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def rexdeploy(args: list[str], isa: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != cpu_isa.ENV}
    if isa:
        env[cpu_isa.ENV] = isa
    return subprocess.run([sys.executable, "-m", "rexdeploy.cli", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)


# -- detection (pure) ----------------------------------------------------------------------------
SAPPHIRE = frozenset("sse4_1 avx avx2 avx512f avx512bw avx512vl avx512dq avx512_vnni avx512_bf16 "
                     "amx_tile amx_int8 amx_bf16 avx_vnni".split())
SKYLAKE = frozenset("sse4_1 avx avx2 avx512f avx512bw avx512vl avx512dq".split())
COMET_LAKE = frozenset("sse4_1 avx avx2".split())


def test_host_isa_from_flags_and_cap():
    assert cpu_isa.host_isa(SAPPHIRE, "") == "avx512_core_amx"
    assert cpu_isa.host_isa(SAPPHIRE, "AVX2") == "avx2"
    assert cpu_isa.host_isa(SAPPHIRE, "avx512_core") == "avx512_core"
    assert cpu_isa.host_isa(SKYLAKE, "") == "avx512_core"
    assert cpu_isa.host_isa(COMET_LAKE, "") == "avx2"
    assert cpu_isa.host_isa(frozenset(), "") is None  # not x86 (or flags unreadable)
    assert [i for i in cpu_isa.ISAS if cpu_isa.saturates(i)] == ["sse41", "avx", "avx2",
                                                                 "avx512_core"]


def test_cross_build_environment():
    detected = cpu_isa.Int8Isa("avx2", True, "detected on this host")
    assert cpu_isa.check_environment(detected) == ({}, None)
    asked = cpu_isa.Int8Isa("avx2", True, "--int8-isa")
    env, why = cpu_isa.check_environment(asked)
    if cpu_isa.host_isa() == "avx2":
        assert env == {} and why is None
    elif HAS_AVX2:
        assert env == {"ONEDNN_MAX_CPU_ISA": "AVX2"} and why is None
    assert cpu_isa.emulation_env("avx512_core_amx", COMET_LAKE) is None


def test_choices_are_checked():
    from rexdeploy.config import BuildConfig, QuantConfig
    from rexdeploy.errors import UserError

    with pytest.raises(UserError, match="--int8-isa avx3"):
        QuantConfig(int8_isa="avx3").validate()
    with pytest.raises(UserError, match="names a CPU instruction set"):
        BuildConfig(target="trt", quant=QuantConfig(int8_isa="avx2")).validate()
    with pytest.raises(UserError, match="--overflow-fix"):
        QuantConfig(overflow_fix="maybe").validate()
    assert QuantConfig(int8_saturates=True).pair_limit == 128
    assert QuantConfig(int8_saturates=False).pair_limit is None
    assert QuantConfig(overflow_fix="on").pair_limit == 128
    assert QuantConfig(overflow_fix="off", int8_saturates=True).pair_limit is None


# -- what the runtime really does ----------------------------------------------------------------
PROBE = """
import json, numpy as np, onnx
from onnx import TensorProto as T, helper as h, numpy_helper as nh
from backends.openvino import int8_isa, runtime_layers, shared_core
import openvino as ov

def run(w, shape, group=1, fc=False):
    # u8 activations of 255 everywhere, int8 weight codes w, scales 1: exact sums are integers
    out_ch = w.shape[1] if fc else w.shape[0]
    inits = [nh.from_array(np.array(1.0, np.float32), "xs"), h.make_tensor("xz", T.UINT8, [], [0]),
             nh.from_array(w.astype(np.int8), "wq"),
             nh.from_array(np.ones(out_ch, np.float32), "ws"),
             nh.from_array(np.zeros(out_ch, np.int8), "wz")]
    nodes = [h.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             h.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             h.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=1 if fc else 0),
             h.make_node("MatMul", ["xd", "wd"], ["y"]) if fc else
             h.make_node("Conv", ["xd", "wd"], ["y"], group=group)]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, list(shape))],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)])
    core = shared_core()
    c = core.compile_model(core.read_model(m.SerializeToString(), ov.Tensor(np.empty(0, np.uint8))),
                           "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    y = c({"x": np.full(shape, 255, np.float32)})[c.outputs[0]]
    kernel = [l.kernel for l in runtime_layers(c)][0]
    return float(y.reshape(-1)[0]), kernel

def conv(pair, taps=(1, 1), ch=(0, 1)):
    w = np.zeros((16, 16) + taps)
    w[0, ch[0], 0, 0], w[0, ch[1], 0, 0] = pair
    return run(w, (1, 16) + tuple(t + 1 for t in taps))

out = {"isa": int8_isa("auto").to_dict()}
out["limit"] = conv((127, 1))        # 128: at the limit
out["over"] = conv((127, 2))         # 129: one over
out["neg_over"] = conv((-127, -2))
out["far_apart"] = conv((127, 127), ch=(1, 2))  # channels 1 and 2 are not one pair
out["3x3"] = conv((127, 127), taps=(3, 3))
w = np.zeros((16, 1, 3, 3)); w[0, 0, 0, 0] = w[0, 0, 0, 1] = 127
out["depthwise"] = run(w, (1, 16, 4, 4), group=16)
w = np.zeros((64, 16)); w[0, 0] = w[1, 0] = 127
out["fc"] = run(w, (1, 64), fc=True)
print(json.dumps(out))
"""


def _probe(isa: str | None) -> dict:
    return json.loads(run_py(PROBE, isa))


@needs_avx2
@pytest.mark.parametrize("isa", ["AVX2", "AVX512_CORE", "SSE41"])
def test_pre_vnni_kernels_saturate_pairs_of_adjacent_input_channels(isa):
    if isa == "AVX512_CORE" and not cpu_isa.supported("avx512_core", FLAGS):
        pytest.skip("this CPU has no AVX-512")
    got = _probe(isa)
    assert got["isa"]["name"] == isa.lower() and got["isa"]["saturates"] is True
    exact = lambda key, want: got[key][0] == want  # noqa: E731
    assert exact("limit", 255 * 128)                       # 32640 fits int16
    assert got["over"][0] == 32767                         # 255 x 129 saturated
    assert got["neg_over"][0] == -32768
    assert exact("far_apart", 255 * 254)                   # not a pair: exact
    assert got["3x3"][0] == 32767                          # pairs at one tap of a 3x3 kernel
    assert exact("depthwise", 255 * 254)                   # depthwise never pairs
    assert got["fc"][0] == 32767                           # a MatMul pairs along K
    assert got["3x3"][1].endswith("_I8") and got["fc"][1].endswith("_I8")


@needs_vnni
def test_vnni_kernels_accumulate_in_int32():
    got = _probe(VNNI.upper())
    assert got["isa"]["saturates"] is False
    assert got["over"][0] == got["3x3"][0] == got["fc"][0] == 255 * 254 or \
        got["over"][0] == 255 * 129


# -- the build ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def overflow_model(tmp_path_factory):
    import torch

    from tiny_models import overflow_cnn

    path = tmp_path_factory.mktemp("isa") / "overflow_cnn.pt"
    torch.jit.save(torch.jit.trace(overflow_cnn(), torch.randn(1, 3, 32, 32)), str(path))
    return str(path)


def _build(model: str, out, isa: str | None, *extra: str) -> subprocess.CompletedProcess:
    return rexdeploy(["build", model, "--input", "input:1x3x32x32", "--input-range",
                      "input:-1,1", "-o", str(out), *extra], isa)


def _report(art) -> dict:
    with open(os.path.join(art, "report.json")) as f:
        return json.load(f)


@needs_avx2
@pytest.mark.e2e
def test_avx2_build_is_faithful_and_the_unfixed_one_is_caught(overflow_model, tmp_path):
    fixed = tmp_path / "fixed.openvino"
    assert _build(overflow_model, fixed, "AVX2").returncode == 0
    r = _report(fixed)
    s = r["summary"]
    assert s["int8_isa"]["name"] == "avx2" and s["int8_isa"]["saturates"]
    assert s["overflow_fix"]["pair_limit"] == 128 and s["overflow_fix"]["layers"] >= 2
    assert r["device_check"]["agrees"] and r["device_check"]["loss_db"] < 0.5
    assert all(row["overflow_fix"]["max_pair_sum"] <= 128 for row in r["layers"]
               if "overflow_fix" in row)
    with open(os.path.join(fixed, "plan.json")) as f:
        plan = json.load(f)["config"]
    assert plan["int8_isa"] == "avx2" and plan["pair_limit"] == 128
    with open(os.path.join(fixed, "manifest.json")) as f:
        assert json.load(f)["summary"]["int8_isa"]["name"] == "avx2"

    off = tmp_path / "off.openvino"
    proc = _build(overflow_model, off, "AVX2", "--overflow-fix", "off")
    assert proc.returncode == 0, proc.stderr
    check = _report(off)["device_check"]
    assert not check["agrees"] and check["loss_db"] > 3, check
    assert "saturation" in check["likely_cause"] and "--overflow-fix auto" in check["likely_cause"]
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-8:]
    assert any("DISAGREES" in line for line in tail), tail
    inspect = rexdeploy(["inspect", str(off)], None)
    assert "DISAGREES" in inspect.stdout and "overflow fix off" in inspect.stdout

    strict = tmp_path / "strict.openvino"
    proc = _build(overflow_model, strict, "AVX2", "--overflow-fix", "off",
                  "--strict-device-check")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "device check (--strict-device-check)" in proc.stderr and not strict.exists()


@needs_avx2
@pytest.mark.e2e
def test_compare_on_the_device_names_the_saturating_layer(overflow_model, tmp_path):
    off = tmp_path / "off.openvino"
    assert _build(overflow_model, off, "AVX2", "--overflow-fix", "off").returncode == 0
    proc = rexdeploy(["compare", str(off), "--synthetic", "4", "--per-layer", "--json"], "AVX2")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert not result["device_check"]["agrees"]
    first = result["per_layer"]["first_device_loss"]
    assert first is not None and first["op"] == "Conv", first
    # the ONNX Runtime columns alone see nothing wrong at that layer
    assert first["sqnr_db"] > first["device_sqnr_db"] + 3


@needs_avx2
@pytest.mark.e2e
def test_cross_build_for_avx2_on_any_host(overflow_model, tmp_path):
    """--int8-isa avx2 built here gives the same Q/DQ ONNX as a build on an AVX2 host, and
    its device check runs the AVX2 kernels (here, or in a child process under the cap)."""
    here = tmp_path / "cross.openvino"
    assert _build(overflow_model, here, None, "--int8-isa", "avx2").returncode == 0
    native = tmp_path / "avx2.openvino"
    assert _build(overflow_model, native, "AVX2").returncode == 0
    with open(here / "model.onnx", "rb") as a, open(native / "model.onnx", "rb") as b:
        assert a.read() == b.read()
    r = _report(here)
    assert r["summary"]["int8_isa"]["source"] == "--int8-isa"
    assert r["device_check"]["agrees"]
    if cpu_isa.host_isa() != "avx2":
        assert r["device_check"]["environment"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}


@pytest.mark.e2e
def test_vnni_builds_change_nothing(overflow_model, tmp_path):
    """On an ISA that accumulates in int32 the overflow fix stays off: the Q/DQ ONNX is byte for
    byte the one --overflow-fix off gives."""
    a, b = tmp_path / "vnni.openvino", tmp_path / "off.openvino"
    args = ("--int8-isa", "avx512_core_vnni", "--no-device-check")
    assert _build(overflow_model, a, None, *args).returncode == 0
    assert _build(overflow_model, b, None, *args, "--overflow-fix", "off").returncode == 0
    with open(a / "model.onnx", "rb") as fa, open(b / "model.onnx", "rb") as fb:
        assert fa.read() == fb.read()
    s = _report(a)["summary"]
    assert s["overflow_fix"]["pair_limit"] is None and s["overflow_fix"]["layers"] == 0
    assert _report(a)["device_check"] == {"skipped": "--no-device-check"}


def test_capped_precision_follows_the_capped_isa(monkeypatch):
    """Under ONEDNN_MAX_CPU_ISA a CPU of the capped ISA without bf16 runs float parts in f32:
    OpenVINO would pick bf16 from the host's own features and fail to compile."""
    monkeypatch.delenv(cpu_isa.ENV, raising=False)
    assert cpu_isa.capped_precision("default") == "default"
    assert cpu_isa.cap_note() == ""
    if HAS_AVX2:
        monkeypatch.setenv(cpu_isa.ENV, "AVX2")
        assert cpu_isa.capped_precision("default") == "f32"
        assert cpu_isa.capped_precision("bf16") == "f32"
        assert "ONEDNN_MAX_CPU_ISA=AVX2" in cpu_isa.cap_note()


@pytest.mark.e2e
def test_compare_reports_the_device_against_its_reference(overflow_model, tmp_path):
    art = tmp_path / "here.openvino"  # built for this run's own kernels (either lane)
    assert _build(overflow_model, art, os.environ.get(cpu_isa.ENV),
                  "--no-device-check").returncode == 0
    import rexdeploy

    result = rexdeploy.compare(str(art), synthetic=4, quiet=True)
    check = result["device_check"]
    assert check["agrees"] and set(check["outputs"]) == set(result["outputs"])
    row = next(iter(check["outputs"].values()))
    assert row["device_vs_reference_db"] > 25 and abs(row["reference_db"] - row["device_db"]) < 1
    assert "device_check" not in rexdeploy.compare(str(art), synthetic=4, quiet=True,
                                                   device_check=False)
    assert "device_check" not in rexdeploy.compare(str(art), synthetic=4, quiet=True,
                                                   backend="reference")
