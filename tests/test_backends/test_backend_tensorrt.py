"""TensorRT backend: the Polygraphy loader chain constructed with the right options (TensorRT is
never called), the deferred artifact and its build_engine.sh (trtexec lines checked against the
TensorRT 10 / 11 flag sets), compare on a deferred artifact through ONNX Runtime, and engine
builds where tensorrt imports (marker `tensorrt`)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch

import rexdeploy
from backends.base import BuildOptions
from backends.tensorrt import (Profile, TrtBuildSpec, build_spec, layers_from_inspector,
                               loader_chain, polygraphy_command, trtexec_command)
from rexdeploy.errors import UserError
from tiny_models import tiny_cnn, tiny_mlp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# trtexec flags, from TensorRT's sampleOptions.cpp @ 10.x / 11.1 (docs/backends.md). Every flag
# rexdeploy writes must be in the set of its version.
TRT10_FLAGS = {"--onnx", "--saveEngine", "--stronglyTyped", "--int8", "--fp16",
               "--timingCacheFile", "--profilingVerbosity", "--exportLayerInfo", "--skipInference",
               "--maxAuxStreams", "--minShapes", "--optShapes", "--maxShapes", "--useDLACore",
               "--allowGPUFallback"}
TRT11_REMOVED = {"--fp16", "--bf16", "--int8", "--fp8", "--int4", "--best", "--calib"}
TRT11_NOOPS = {"--stronglyTyped", "--useCudaGraph", "--separateProfileRun", "--noDataTransfers",
               "--useSpinWait"}
TRT11_FLAGS = TRT10_FLAGS - TRT11_REMOVED - TRT11_NOOPS
VALUED = {"--onnx", "--saveEngine", "--timingCacheFile", "--profilingVerbosity",
          "--exportLayerInfo", "--maxAuxStreams", "--minShapes", "--optShapes", "--maxShapes",
          "--useDLACore"}


def check_trtexec_line(argv: list[str], major: int) -> None:
    """Syntax of one trtexec command line for TensorRT `major`; raises AssertionError."""
    assert argv[0] in ("trtexec", "$TRTEXEC")
    allowed = TRT10_FLAGS if major == 10 else TRT11_FLAGS
    seen = set()
    for arg in argv[1:]:
        flag, eq, value = arg.partition("=")
        assert flag in allowed, f"{flag} is not a TensorRT {major} trtexec flag we may use"
        assert flag not in seen, f"{flag} given twice"
        seen.add(flag)
        assert bool(eq) == (flag in VALUED), arg
        if flag in ("--maxAuxStreams", "--useDLACore"):
            assert value.isdigit(), arg
        if flag == "--profilingVerbosity":
            assert value in ("layer_names_only", "detailed", "none"), arg
        if flag.endswith("Shapes"):
            for item in value.split(","):
                name, _, dims = item.rpartition(":")
                assert name and all(d.isdigit() for d in dims.split("x")), arg
    assert {"--onnx", "--saveEngine"} <= seen
    if major == 11:
        assert not seen & (TRT11_REMOVED | TRT11_NOOPS)
    else:
        assert ("--stronglyTyped" in seen) != ("--int8" in seen), "strong typing xor int8 flag"


def _polygraphy_parses(argv: list[str]) -> None:
    """Polygraphy's own argument parser accepts the command (no TensorRT needed)."""
    import argparse

    from polygraphy.tools.convert import Convert

    assert argv[:2] == ["polygraphy", "convert"]
    parser = argparse.ArgumentParser(exit_on_error=False)
    Convert().setup_parser(parser.add_subparsers())
    parser.parse_args(argv[1:])


@pytest.fixture(scope="module")
def dynamic_onnx(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("onnx") / "model.onnx")
    torch.onnx.export(tiny_cnn(), (torch.randn(2, 3, 32, 32),), path, dynamo=False,
                      opset_version=21, input_names=["input"],
                      dynamic_axes={"input": {0: "B"}})
    return path


def test_spec_profiles_aux_streams_and_dla(dynamic_onnx):
    root = os.path.dirname(dynamic_onnx)
    spec = build_spec(dynamic_onnx, root, BuildOptions(parallel_branches=3, dla_core=1,
                                                        dim_ranges=(("B", 1, 4, 16),)))
    assert spec.onnx == "model.onnx"
    assert spec.max_aux_streams == 2
    assert spec.profiles == (Profile("input", (1, 3, 32, 32), (4, 3, 32, 32), (16, 3, 32, 32)),)
    assert spec.dla_core == 1 and spec.gpu_fallback
    assert TrtBuildSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    plain = build_spec(dynamic_onnx, root, BuildOptions())
    assert plain.max_aux_streams is None  # K = 1: TensorRT's own heuristic
    assert plain.profiles[0].max == (8, 3, 32, 32)
    with pytest.raises(UserError, match="not a dynamic dim"):
        build_spec(dynamic_onnx, root, BuildOptions(dim_ranges=(("N", 1, 1, 2),)))


def test_loader_chain_strongly_typed_without_calling_tensorrt(dynamic_onnx):
    root = os.path.dirname(dynamic_onnx)
    spec = build_spec(dynamic_onnx, root, BuildOptions(parallel_branches=2,
                                                        dim_ranges=(("B", 1, 2, 8),)))
    for major in (10, 11):
        network, config, engine = loader_chain(spec, major, root)
        assert network.path == dynamic_onnx
        assert network.strongly_typed is True
        assert config.max_aux_streams == 1
        assert not (config.int8 or config.fp16 or config.bf16 or config.tf32 or config.fp8)
        assert not config.use_dla
        assert config.timing_cache_path == os.path.join(root, "timing.cache")
        profile = config.profiles[0]
        assert tuple(profile["input"].min) == (1, 3, 32, 32)
        assert tuple(profile["input"].opt) == (2, 3, 32, 32)
        assert tuple(profile["input"].max) == (8, 3, 32, 32)
        assert engine._network is network and engine._config is config
        assert engine.timing_cache_path == os.path.join(root, "timing.cache")
    assert "tensorrt" not in sys.modules


def test_loader_chain_keeps_the_timing_cache_and_pins_dla(dynamic_onnx, tmp_path):
    root = os.path.dirname(dynamic_onnx)
    spec = build_spec(dynamic_onnx, root, BuildOptions(dla_core=1))
    cache = os.path.join(root, spec.timing_cache)
    net10, config10, _ = loader_chain(spec, 10, root)
    net11, config11, _ = loader_chain(spec, 11, root)
    # TensorRT 10 DLA: weakly typed with int8+fp16 flags; 11: strongly typed, no flags
    assert net10.strongly_typed is False and net11.strongly_typed is True
    inner10, inner11 = config10._config, config11._config  # PostprocessConfig pins core 1
    assert inner10.use_dla and inner10.allow_gpu_fallback and inner10.int8 and inner10.fp16
    assert inner11.use_dla and not (inner11.int8 or inner11.fp16)
    assert inner10.timing_cache_path == cache

    class FakeConfig:  # only what set_core touches; no TensorRT call happens here
        DLA_core = 0

    fake = FakeConfig()
    config10._func(None, None, fake)
    assert fake.DLA_core == 1


@pytest.mark.parametrize("options", [BuildOptions(), BuildOptions(parallel_branches=2),
                                     BuildOptions(dla_core=0, dim_ranges=(("B", 1, 4, 8),)),
                                     BuildOptions(dla_core=1, parallel_branches=3)])
def test_trtexec_lines_valid_for_trt10_and_trt11(dynamic_onnx, options):
    spec = build_spec(dynamic_onnx, os.path.dirname(dynamic_onnx), options)
    check_trtexec_line(trtexec_command(spec, 10), 10)
    check_trtexec_line(trtexec_command(spec, 11), 11)
    _polygraphy_parses(polygraphy_command(spec))


def test_trtexec_checker_rejects_removed_flags():
    with pytest.raises(AssertionError):
        check_trtexec_line(["trtexec", "--onnx=m.onnx", "--saveEngine=m.engine", "--int8"], 11)
    with pytest.raises(AssertionError):
        check_trtexec_line(["trtexec", "--onnx=m.onnx", "--saveEngine=m.engine",
                            "--stronglyTyped", "--best"], 10)


def test_layers_from_inspector():
    # Hand-written in the shape of TensorRT's LayerInformationFormat.JSON (keys as read by
    # NVIDIA's trt-engine-explorer): not output of a real engine.
    info = {"Layers": [
        {"Name": "/stem/Conv + /stem/Relu", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "x", "Format/Datatype": "Channel major INT8 format where channel "
                                                     "% 4 == 0"}],
         "TacticName": "sm87_xmma_fprop_implicit_gemm_interleaved_i8i8_i8i32_f32",
         "Metadata": "[ONNX Layer: /stem/Conv]\x1f[ONNX Layer: /stem/Relu]"},
        {"Name": "/fc/Gemm", "LayerType": "CaskGemmMatrixMultiply",
         "Inputs": [{"Name": "p", "Format/Datatype": "Row major linear FP32"}],
         "TacticName": "gemm_f32", "Metadata": "[ONNX Layer: /fc/Gemm]"},
        {"Name": "reformat", "LayerType": "Reformat", "Inputs": []}]}
    layers = layers_from_inspector(info)
    assert [(l.name, l.precision, l.is_int8) for l in layers] == [
        ("/stem/Conv + /stem/Relu", "i8", True), ("/fc/Gemm", "f32", False)]
    assert layers[0].original_names == ("/stem/Conv", "/stem/Relu")


# -- the deferred artifact ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def deferred(cnn_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "tiny.trt"
    config = rexdeploy.BuildConfig(quant=rexdeploy.QuantConfig(orders=2))
    return rexdeploy.build(cnn_file, ["input:1x3x32x32"], target="trt", output=str(out),
                           config=config, quiet=True)


@pytest.mark.skipif(pytest.importorskip("importlib").util.find_spec("tensorrt") is not None,
                    reason="tensorrt imports here: builds are not deferred")
def test_deferred_artifact(deferred):
    m = deferred.manifest
    assert m["engine"] == "deferred" and m["target"] == "trt"
    assert "tensorrt does not import" in m["backend"]["reason"]
    assert {"onnx", "float_onnx", "plan", "report", "trt_build", "build_script"} <= set(m["files"])
    assert "engine" not in m["files"]
    report = deferred.report()
    assert report["backend"]["trt_check"]["ok"] and not report["backend"]["trt_check"]["errors"]
    assert any("no TensorRT engine was built" in n for n in report["notes"])
    spec = json.load(open(deferred.file("trt_build")))
    assert spec["max_aux_streams"] == 1  # K = 2 orders: one auxiliary stream
    script = open(deferred.file("build_script")).read()
    assert "No engine was built" in script
    assert os.access(deferred.file("build_script"), os.X_OK)
    subprocess.run(["bash", "-n", deferred.file("build_script")], check=True)
    lines = {}
    for line in script.splitlines():
        if line.strip().startswith('"$TRTEXEC"'):
            lines[len(lines)] = shlex.split(line.strip())
        if line.startswith("#   polygraphy convert"):
            _polygraphy_parses(shlex.split(line[4:]))
    assert len(lines) == 2
    check_trtexec_line(lines[0], 10)
    check_trtexec_line(lines[1], 11)
    assert "--maxAuxStreams=1" in lines[0] and "--maxAuxStreams=1" in lines[1]


def test_build_engine_script_picks_the_version(deferred, tmp_path):
    """Run build_engine.sh against a stand-in trtexec that records its arguments."""
    for version, major in (("100300", 10), ("110100", 11)):
        fake = tmp_path / f"trtexec{major}"
        log = tmp_path / f"args{major}"
        fake.write_text(f"#!/bin/sh\nif [ \"$1\" = --version ]; then echo '&&&& RUNNING "
                        f"TensorRT.trtexec [TensorRT v{version}]'; exit 0; fi\n"
                        f"printf '%s\\n' \"$@\" > {log}\n")
        fake.chmod(0o755)
        out = subprocess.run(["bash", deferred.file("build_script")], capture_output=True,
                             text=True, env={**os.environ, "TRTEXEC": str(fake)})
        assert out.returncode == 0, out.stderr
        args = log.read_text().split()
        check_trtexec_line(["trtexec"] + args, major)


def _fake_trtexec(directory, version: str):
    directory.mkdir(parents=True, exist_ok=True)
    fake = directory / "trtexec"
    fake.write_text(f"#!/bin/sh\nif [ \"$1\" = --version ]; then echo '&&&& RUNNING "
                    f"TensorRT.trtexec [TensorRT v{version}] # trtexec --version'; exit 0; fi\n"
                    "exit 0\n")
    fake.chmod(0o755)
    return fake


def _run_script(deferred, **env):
    base = {k: v for k, v in os.environ.items() if k != "TRTEXEC"}
    base["PATH"] = "/usr/bin:/bin"  # no trtexec on it
    return subprocess.run(["bash", deferred.file("build_script")], capture_output=True,
                          text=True, env={**base, **env})


def test_build_engine_script_finds_trtexec_or_says_where_it_looked(deferred, tmp_path):
    jetpack = tmp_path / "usr-src-tensorrt-bin"
    out = _run_script(deferred, JETPACK_TENSORRT_BIN=str(jetpack))
    assert out.returncode == 1
    line = out.stderr.strip()
    assert "trtexec not found on PATH" in line and str(jetpack) in line
    assert "TRTEXEC=" in line and len(line.splitlines()) == 1
    _fake_trtexec(jetpack, "100300")  # JetPack's place: found without PATH
    assert _run_script(deferred, JETPACK_TENSORRT_BIN=str(jetpack)).returncode == 0
    old = _fake_trtexec(tmp_path / "jetpack5", "8601")  # TensorRT 8.6.1 (JetPack 5)
    out = _run_script(deferred, TRTEXEC=str(old))
    assert out.returncode == 1
    assert "TensorRT 8.x is not supported" in out.stderr and "10.x or 11.x" in out.stderr
    assert "not an executable" in _run_script(deferred, TRTEXEC="/nowhere/trtexec").stderr


def test_build_engine_script_looks_in_usr_src_tensorrt(deferred):
    """JetPack installs trtexec in /usr/src/tensorrt/bin, not on PATH."""
    place = "/usr/src/tensorrt/bin"
    if os.path.exists(os.path.join(place, "trtexec")):
        pytest.skip(f"{place}/trtexec exists here: not replaced by a stand-in")
    try:
        os.makedirs(place, exist_ok=True)
    except OSError:
        pytest.skip(f"cannot create {place} here (not root)")
    import pathlib

    fake = _fake_trtexec(pathlib.Path(place), "100300")
    try:
        out = _run_script(deferred)
        assert out.returncode == 0, out.stderr
    finally:
        fake.unlink()
        for d in ("/usr/src/tensorrt/bin", "/usr/src/tensorrt"):
            try:
                os.rmdir(d)
            except OSError:
                break


def test_compare_on_deferred_artifact_runs_onnx_runtime(deferred):
    result = rexdeploy.compare(deferred.path, synthetic=4, quiet=True)
    assert result["backend"].startswith("reference (deferred trt")
    assert result["sqnr_db"] > 15


def test_require_engine_fails_and_leaves_nothing(cnn_file, tmp_path):
    if pytest.importorskip("importlib").util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt imports here")
    out = tmp_path / "x.trt"
    r = subprocess.run([sys.executable, "-m", "rexdeploy.cli", "build", cnn_file, "--target",
                        "trt", "--input", "input:1x3x32x32", "--require-engine", "-o", str(out),
                        "-q"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "tensorrt does not import" in r.stderr
    assert os.listdir(tmp_path) == []


def test_from_deferred_without_tensorrt_is_a_clear_error(deferred):
    if pytest.importorskip("importlib").util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt imports here")
    before = json.load(open(os.path.join(deferred.path, "manifest.json")))
    r = subprocess.run([sys.executable, "-m", "rexdeploy.cli", "build", "--from-deferred",
                        deferred.path], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 1 and "cannot finish" in r.stderr and "Traceback" not in r.stderr
    assert json.load(open(os.path.join(deferred.path, "manifest.json"))) == before


def test_from_deferred_builds_one_engine_per_ensemble_member(cnn_file, tmp_path, monkeypatch):
    """The bookkeeping of --from-deferred on an ensemble: one engine per member, listed in the
    member's files, hashed in the manifest, its layers in the report. TensorRT cannot run here,
    so `build_engine` and `tensorrt_status` are stand-ins that write placeholder files (the real
    path is the `tensorrt`-marked test below); everything else is the real code."""
    import backends.tensorrt as trt_backend
    from backends.base import LayerPrecision
    from rexdeploy.artifact import load_artifact

    config = rexdeploy.BuildConfig(quant=rexdeploy.QuantConfig(ensemble=2))
    art = rexdeploy.build(cnn_file, ["input:1x3x32x32"], target="trt", output=str(
        tmp_path / "ens.trt"), config=config, quiet=True)
    members = art.manifest["ensemble"]["members"]
    assert art.manifest["engine"] == "deferred" and len(members) == 3
    assert all("trt_build" in m["files"] for m in members)
    built_in = []

    def fake_build(spec, out_dir):
        built_in.append(os.path.relpath(out_dir, os.path.dirname(out_dir.rstrip("/"))))
        for rel in (spec.engine, spec.timing_cache, spec.layer_info):
            with open(os.path.join(out_dir, rel), "w") as f:
                f.write("placeholder, not an engine\n")
        return (LayerPrecision("/stem/Conv", "Convolution", "i8", "", ("/stem/Conv",)),), {
            "tensorrt": "stand-in", "strongly_typed": True}

    import backends.trt_deferred as deferred_mod

    monkeypatch.setattr(trt_backend, "tensorrt_status", lambda: (True, "stand-in"))
    monkeypatch.setattr(trt_backend, "build_engine", fake_build)
    # placeholder files cannot run: the check itself is tested on runners that do, below
    monkeypatch.setattr(deferred_mod, "_check_engines",
                        lambda *a: {"skipped": "stand-in engines"})
    done = rexdeploy.api.build_from_deferred(art.path, quiet=True)
    assert sorted(built_in) == ["base", "member1", "member2"]
    again = load_artifact(done.path, verify=True)  # every hash, the engines' included
    assert again.manifest["engine"] == "built"
    for m in again.manifest["ensemble"]["members"]:
        assert m["files"]["engine"] == f"members/{m['name']}/model.engine"
        assert os.path.isfile(os.path.join(done.path, m["files"]["engine"]))
        assert again.files[f"{m['name']}_engine"] == m["files"]["engine"]
    report = again.report()
    assert [r["member"] for r in report["runtime_layers"]] == ["base", "member1", "member2"]
    assert report["summary"]["runtime_int8_layers"] == 3


def test_inspect_check_trt_cli(deferred, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "rexdeploy.cli", "inspect", "--check", "trt",
                         deferred.file("onnx")], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and "0 errors" in ok.stdout
    from trt_rules_helpers import conv_graph
    import onnx

    bad = tmp_path / "bad.onnx"
    onnx.save(conv_graph(zp=2), str(bad))
    r = subprocess.run([sys.executable, "-m", "rexdeploy.cli", "inspect", "--check", "trt",
                        str(bad), "--json"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1
    assert any("[zero-point] q:" in e for e in json.loads(r.stdout)["errors"])


def test_int4_mlp_deferred_build(tmp_path):
    model = tiny_mlp()
    per_channel = rexdeploy.QuantConfig(weights="int4", activations="none", granularity="channel")
    with pytest.raises(UserError, match=r"\[int4\].*no block_size"):  # the checker stops it
        rexdeploy.build(model, ["input:1x8x32"], target="trt", output=str(tmp_path / "c.trt"),
                        config=rexdeploy.BuildConfig(quant=per_channel), quiet=True)
    assert os.listdir(tmp_path) == []
    blocked = rexdeploy.QuantConfig(weights="int4", activations="none", granularity="block",
                                    block_size=8)
    art = rexdeploy.build(model, ["input:1x8x32"], target="trt", output=str(tmp_path / "m.trt"),
                          config=rexdeploy.BuildConfig(quant=blocked), quiet=True)
    spec = json.load(open(art.file("trt_build")))
    assert spec["int4"] is True
    assert art.report()["backend"]["trt_check"]["ok"]
    # by default, a 4-bit weight-only build takes blocks of 32 input columns: one that TensorRT
    # takes without asking
    art = rexdeploy.build(model, ["input:1x8x32"], target="trt", output=str(tmp_path / "d.trt"),
                          config=rexdeploy.BuildConfig(quant=rexdeploy.QuantConfig(
                              weights="int4", activations="none")), quiet=True)
    assert art.report()["backend"]["trt_check"]["ok"]
    assert art.manifest["config"]["quant"]["weight"]["block_size"] == 32


# -- where TensorRT imports ------------------------------------------------------------------
@pytest.mark.tensorrt  # tensorrt importing implies its GPU (torch may be a CPU build there)
def test_engine_build_and_runner(cnn_file, tmp_path):
    art = rexdeploy.build(cnn_file, ["input:1x3x32x32"], target="trt",
                          output=str(tmp_path / "e.trt"), quiet=True)
    assert art.manifest["engine"] == "built" and "engine" in art.manifest["files"]
    assert art.report()["runtime_layers"], "the engine inspector reported no layers"
    result = rexdeploy.compare(art.path, synthetic=4, quiet=True)
    assert result["sqnr_db"] > 15
    import backends
    from backends.base import RunOptions

    with backends.get("trt").runner(art.path, art.files, RunOptions(perf_count=True)) as r:
        r.infer({"input": np.random.default_rng(0).standard_normal((1, 3, 32, 32),
                                                                   np.float32)})
        assert r.timings()


def test_w4a8_gemm_keeps_int8_code_tensors_for_trt(tmp_path):
    """TensorRT's INT4 is weight-only: a W4A8 Gemm (int8 input) gets its 4-bit codes in an int8
    tensor (an int8 layer), so `--weights int4 --target trt` builds a CNN without --block-size;
    the rule checker passes. A weight-only MatMul keeps INT4 (test_float16.py)."""
    import onnx_ir as ir

    quant = rexdeploy.QuantConfig(weights="int4", orders=2)
    art = rexdeploy.build(tiny_cnn(), ["input:1x3x32x32"], output=str(tmp_path / "w4a8"),
                          config=rexdeploy.BuildConfig(target="trt", quant=quant), quiet=True)
    assert art.report()["backend"]["trt_check"]["ok"]
    graph = ir.load(art.file("onnx")).graph
    gemm_dqs = [n.inputs[1].producer() for n in graph if n.op_type == "Gemm"]
    assert len(gemm_dqs) == 2  # two orders
    for dq in gemm_dqs:
        codes = dq.inputs[0].const_value.numpy()
        assert dq.inputs[0].dtype == ir.DataType.INT8 and np.abs(codes).max() <= 7


def test_finished_engines_are_checked_against_their_qdq_onnx(deferred, monkeypatch):
    """The check --from-deferred runs on the engines: every member run against its Q/DQ ONNX
    and float.onnx on 8 synthetic inputs in the build's ranges. TensorRT cannot run here, so the
    "engine" runner is ONNX Runtime on the Q/DQ ONNX itself (a runner that agrees exactly): what
    is tested is the wiring (specs, members, samples, the record), not TensorRT."""
    import backends
    import backends.trt_deferred as deferred_mod
    from rexdeploy.progress import StageLog

    real_get = backends.get
    monkeypatch.setattr(backends, "get", lambda name: real_get("reference" if name == "trt"
                                                               else name))
    art = rexdeploy.load_artifact(deferred.path)
    models = [("", "", {"onnx": art.files["onnx"]})]
    result = deferred_mod._check_engines(art, art.path, models, None, StageLog(quiet=True))
    assert result["samples"] == 8 and result["agrees"]
    (row,) = result["outputs"].values()
    assert row["device_vs_reference_db"] > 100 and row["loss_db"] == 0


def test_a_deferred_build_reads_as_deferred(cnn_file, tmp_path):
    """Without TensorRT: no compile tick, no int8 coverage figure, the way to finish said."""
    if pytest.importorskip("importlib").util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt imports here: the engine is built, not deferred")
    out = tmp_path / "d.trt"
    r = subprocess.run([sys.executable, "-m", "rexdeploy.cli", "build", cnn_file, "--target",
                        "trt", "--input", "input:1x3x32x32", "-o", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    text = " ".join((r.stdout + r.stderr).split())
    assert "✓ compile" not in text and "int8 coverage" not in text
    assert "✓ defer" in text and "deferred: TensorRT is not installed here" in text
    assert f"rexdeploy build --from-deferred {out}" in text
    shown = subprocess.run([sys.executable, "-m", "rexdeploy.cli", "inspect", str(out)],
                           capture_output=True, text=True, cwd=ROOT, timeout=120).stdout
    assert "deferred" in shown and "int8 coverage" not in shown
