"""Profile outputs without a runtime: the versioned JSON schema, the regression gate's logic,
markdown and plot rendering, the Jetson fields' parsing. Documents come from profile_variants
on fake runners over a fake clock (the real-runtime path is in test_profile_cli.py)."""

import copy
import json
import sys

import numpy as np
import pytest

from profiling_helpers import Clock, FakeRunner
from rexdeploy import devinfo
from rexdeploy.profiling import timing as profiler
from rexdeploy.errors import UserError
from rexdeploy.profiling.schema import (LATENCY_KEYS, SCHEMA, SCHEMA_VERSION, load_profile,
                                      save_profile, to_document, validate)
from rexdeploy.evaluate.regression import check_regression, pair_variants, parse_bound


@pytest.fixture
def doc(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(profiler, "_clock", clock)
    variants = [(n, lambda n=n, lat=lat: FakeRunner(n, lat, 1000 / lat, clock, [], 0.1))
                for n, lat in (("float f32 (pinned)", 4.0), ("rexdeploy int8", 2.0))]
    results = profiler.profile_variants(variants, {}, duration_s=0.2, rounds=2,
                                        settings=profiler.ProfileSettings(warmup_ms=0,
                                                                          keep_times=True))
    for r, kind in zip(results, ("float", "artifact")):
        r["kind"] = kind
        r["layers"] = profiler.layer_profile(FakeRunner("x", 3.0, 1, clock, []), {}, 3)
    return to_document(results, device=devinfo.device_info(), settings={"rounds": 2},
                       artifacts=["out/a.openvino"])


def test_document_keys(doc):
    assert doc["schema"] == SCHEMA and doc["schema_version"] == SCHEMA_VERSION
    assert {"device", "settings", "variants", "artifact", "created"} <= set(doc)
    for v in doc["variants"]:
        assert set(LATENCY_KEYS) == set(v["latency_ms"])  # cov moved out: it has no unit
        assert 0 <= v["cov"] < 1 and v["throughput_fps"] == v["throughput"]["fps"] > 0
        assert v["layers"]["rows"] and v["info"]["inference_precision"] == "f32"
    times = np.asarray(doc["variants"][1]["times_ms"])
    assert doc["variants"][1]["latency_ms"]["p95"] == pytest.approx(np.percentile(times, 95))


def test_json_round_trip(doc, tmp_path):
    path = tmp_path / "sub" / "p.json"
    save_profile(doc, str(path))
    back = load_profile(str(path))
    assert back == json.loads(json.dumps(doc))
    assert back["variants"][1]["latency_ms"]["median"] == doc["variants"][1]["latency_ms"]["median"]
    assert not (tmp_path / "sub" / "p.json.tmp").exists()


def test_legacy_save_file_still_reads(tmp_path):
    """The unversioned --save file of before (what tools/summary.py reads) loads as version 0."""
    legacy = {"artifact": "a", "device": {}, "variants": [
        {"label": "rexdeploy int8", "info": {"inference_precision": "f32"},
         "latency_ms": {"median": 1.5, "cov": 0.01}, "throughput": {"fps": 600.0}}]}
    (tmp_path / "old.json").write_text(json.dumps(legacy))
    assert load_profile(str(tmp_path / "old.json"))["variants"][0]["label"] == "rexdeploy int8"


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(schema="something.else"), "schema"),
    (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "schema version"),
    (lambda d: d.pop("variants"), "no variants"),
    (lambda d: d["variants"].clear(), "no variants"),
    (lambda d: d["variants"][0].pop("throughput_fps"), "throughput_fps"),
    (lambda d: d["variants"][1]["latency_ms"].pop("p99"), "latency_ms.p99"),
])
def test_invalid_documents_are_user_errors(doc, mutate, message):
    bad = copy.deepcopy(doc)
    mutate(bad)
    with pytest.raises(UserError, match=message):
        validate(bad)


def test_load_profile_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_profile(str(tmp_path / "missing.json"))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        load_profile(str(tmp_path / "broken.json"))


# -- the regression gate -----------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [("10%", 0.10), ("10", 0.10), (" 2.5% ", 0.025),
                                         ("0%", 0.0), (5, 0.05)])
def test_parse_bound(text, value):
    assert parse_bound(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["ten", "100%", "-1%", ""])
def test_parse_bound_rejects(text):
    with pytest.raises(UserError):
        parse_bound(text)


def _scaled(doc, latency=1.0, fps=1.0, labels=None):
    out = copy.deepcopy(doc)
    for v in out["variants"]:
        if labels is None or v["label"] in labels:
            v["latency_ms"] = {k: x * latency for k, x in v["latency_ms"].items()}
            v["throughput_fps"] *= fps
            v["throughput"]["fps"] *= fps
    return out


def test_gate_passes_within_bound_and_on_improvement(doc):
    for cur in (doc, _scaled(doc, 1.09, 0.91), _scaled(doc, 0.5, 2.0)):
        findings = check_regression(cur, doc, 0.10)
        assert len(findings) == 4 and not any(f.regressed for f in findings)


def test_gate_fails_on_latency_naming_the_figure(doc):
    findings = check_regression(_scaled(doc, 1.2, labels={"rexdeploy int8"}), doc, 0.10)
    bad = [f for f in findings if f.regressed]
    assert [(f.label, f.figure) for f in bad] == [("rexdeploy int8", "median latency")]
    assert bad[0].change == pytest.approx(0.2)
    assert "median latency" in bad[0].describe() and "+20.0% worse" in bad[0].describe()


def test_gate_fails_on_throughput_only(doc):
    bad = [f for f in check_regression(_scaled(doc, 1.0, 0.85), doc, 0.10) if f.regressed]
    assert {f.figure for f in bad} == {"throughput"} and len(bad) == 2
    assert bad[0].change == pytest.approx(0.15)


def test_gate_pairs_a_relabelled_artifact_and_refuses_strangers(doc):
    cur = copy.deepcopy(doc)
    cur["variants"] = [dict(cur["variants"][1], label="rexdeploy int4")]
    pairs = pair_variants(cur["variants"], doc["variants"])
    assert [(a["label"], b["label"]) for a, b in pairs] == [("rexdeploy int4", "rexdeploy int8")]
    cur["variants"][0]["kind"] = "float"
    with pytest.raises(UserError, match="no variant"):
        check_regression(cur, doc, 0.1)


# -- markdown and plot -------------------------------------------------------------------------
def test_markdown_tables(doc):
    from rexdeploy.profiling.render import markdown_tables

    text = markdown_tables(doc, top=1)
    assert text.startswith("| variant |")
    assert "| rexdeploy int8 |" in text
    assert "| conv | Convolution | brgconv_avx512_I8 | u8 |" in text
    assert "| fc |" not in text  # top 1 only
    assert "| fc |" in markdown_tables(doc, top=0)


def test_plot_written_and_non_empty(doc, tmp_path):
    pytest.importorskip("matplotlib")
    from rexdeploy.profiling.plot import plot_profile

    path = tmp_path / "plots" / "profile.png"
    plot_profile(doc, str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_without_matplotlib_is_a_clear_error(doc, tmp_path, monkeypatch):
    from rexdeploy.profiling.plot import plot_profile

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(UserError, match="needs matplotlib") as err:
        plot_profile(doc, str(tmp_path / "p.png"))
    assert "pip install" in err.value.hint
    assert not (tmp_path / "p.png").exists()


# -- device state: Jetson fields ---------------------------------------------------------------
def test_off_jetson_every_field_is_absent(tmp_path):
    info = devinfo.jetson_info(str(tmp_path))
    assert info["present"] is False
    assert all(info[k] is None for k in devinfo.JETSON_FIELDS)
    assert devinfo.device_info()["jetson"]["present"] is devinfo.jetson_info()["present"]


def test_jetson_parsing(tmp_path):
    assert devinfo.parse_l4t("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, "
                             "EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023") == "35.4.1"
    assert devinfo.parse_l4t("garbage") is None
    assert devinfo.parse_nvpmodel("NV Power Mode: MAXN\n0") == "MAXN"
    assert devinfo.parse_nvpmodel("") is None
    cpu = tmp_path / "sys/devices/system/cpu"
    for i, (lo, hi) in enumerate([("2201600", "2201600"), ("2201600", "2201600")]):
        d = cpu / f"cpu{i}" / "cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_min_freq").write_text(lo)
        (d / "scaling_max_freq").write_text(hi)
    assert devinfo.clocks_locked(str(tmp_path)) is True
    gpu = tmp_path / "sys/devices/gpu.0/devfreq/17000000.ga10b"
    gpu.mkdir(parents=True)
    (gpu / "min_freq").write_text("306000000")
    (gpu / "max_freq").write_text("1300500000")
    assert devinfo.clocks_locked(str(tmp_path)) is False
    assert devinfo.clocks_locked(str(tmp_path / "nothing")) is None
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 3.0, GCID: 1")
    info = devinfo.jetson_info(str(tmp_path))
    assert info["present"] is True and info["l4t"] == "36.3.0"
    assert info["clocks_locked"] is False
