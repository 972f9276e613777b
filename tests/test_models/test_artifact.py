"""Artifact writing is atomic, never overwrites without force, and detects tampering."""

import json
import os

import pytest

from rexdeploy.artifact import ArtifactWriter, load_artifact, verify_files
from rexdeploy.errors import UserError


def _write(dest, force=False, payload=b"weights"):
    with ArtifactWriter(str(dest), force=force) as w:
        with open(w.path("model.bin", "ir_bin"), "wb") as f:
            f.write(payload)
        w.write_json("report.json", {"summary": {}}, "report")
        return w.commit({"target": "openvino"})


def test_commit_writes_manifest_with_hashes(tmp_path):
    art = _write(tmp_path / "a.openvino")
    manifest = json.loads((tmp_path / "a.openvino" / "manifest.json").read_text())
    assert manifest["schema_version"] == 1
    assert set(manifest["files"]) == {"ir_bin", "report"}
    assert verify_files(load_artifact(art.path)) == []
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")], "temp dir left behind"


def test_existing_artifact_needs_force(tmp_path):
    _write(tmp_path / "a")
    with pytest.raises(UserError, match="already exists"):
        _write(tmp_path / "a")
    art = _write(tmp_path / "a", force=True, payload=b"new")
    assert open(os.path.join(art.path, "model.bin"), "rb").read() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["a"]


def test_failure_leaves_nothing(tmp_path):
    dest = tmp_path / "b"
    with pytest.raises(RuntimeError):
        with ArtifactWriter(str(dest)) as w:
            open(w.path("model.bin", "ir_bin"), "wb").write(b"x")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_tampered_file_is_refused(tmp_path):
    art = _write(tmp_path / "c")
    with open(os.path.join(art.path, "model.bin"), "ab") as f:
        f.write(b"!")
    with pytest.raises(UserError, match="sha256"):
        load_artifact(art.path)
    assert load_artifact(art.path, verify=False).target == "openvino"


@pytest.mark.parametrize("content", ["{not json", "[]", '{"schema_version": 1}'])
def test_corrupt_manifest(tmp_path, content):
    art = _write(tmp_path / "d")
    with open(os.path.join(art.path, "manifest.json"), "w") as f:
        f.write(content)
    with pytest.raises(UserError):
        load_artifact(art.path)


def test_newer_schema_refused(tmp_path):
    art = _write(tmp_path / "e")
    p = os.path.join(art.path, "manifest.json")
    m = json.load(open(p))
    m["schema_version"] = 99
    json.dump(m, open(p, "w"))
    with pytest.raises(UserError, match="upgrade"):
        load_artifact(art.path)


def test_unwritable_parent(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that can write anywhere (root)")
        with pytest.raises(UserError, match="cannot write"):
            _write(ro / "x")
    finally:
        os.chmod(ro, 0o700)


def test_parent_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot write"):
        _write(tmp_path / "file" / "art")


def test_config_is_read_back_typed_from_any_version(tmp_path):
    """Artifact.config: the manifest's config as a BuildConfig. A field an older rexdeploy did
    not record takes its default; one a newer one added is dropped, not an error."""
    from rexdeploy.config import BuildConfig, QuantConfig

    built = BuildConfig(target="openvino", dims=(("W", 256),), device_tolerance=2.0,
                        quant=QuantConfig(input_ranges=(("x", -1.0, 1.0),), recurrent="int8"))
    with ArtifactWriter(str(tmp_path / "a")) as w:
        w.write_json("report.json", {"summary": {}}, "report")
        art = w.commit({"target": "openvino", "config": built.to_dict()})
    assert load_artifact(art.path).config == built
    old = built.to_dict()
    del old["device_tolerance"], old["quant"]["activation"]["recurrent"]  # not recorded then
    old["quant"]["activation"]["a_later_field"] = 1
    with ArtifactWriter(str(tmp_path / "b")) as w:
        w.write_json("report.json", {"summary": {}}, "report")
        art = w.commit({"target": "openvino", "config": old})
    config = load_artifact(art.path).config
    assert config.device_tolerance == 1.0 and config.quant.recurrent == "float"
    assert config.dims == (("W", 256),) and config.quant.input_ranges == (("x", -1.0, 1.0),)


def test_config_version_1_flat_reads_back(tmp_path):
    """A manifest written before QuantConfig was nested (version 1: its fields flat, by their
    flag names) still loads into the nested config."""
    from rexdeploy.config import BuildConfig, QuantConfig

    flat = {"version": 1, "target": "openvino", "quant": {
        "weights": "int4", "activations": "int8", "orders": 2, "budget": 1.25,
        "activation_scales": "depthwise", "unsigned_activations": False, "calib": None,
        "input_ranges": [["x", -1.0, 1.0]], "exclude": ["conv1"], "int8_isa": "avx2",
        "a_later_field": 1}}
    with ArtifactWriter(str(tmp_path / "v1")) as w:
        w.write_json("report.json", {"summary": {}}, "report")
        art = w.commit({"target": "openvino", "config": flat})
    q = load_artifact(art.path).config.quant
    assert q == QuantConfig(weights="int4", orders=2, budget=1.25,
                            activation_scales="depthwise", unsigned_activations=False,
                            input_ranges=(("x", -1.0, 1.0),), exclude=("conv1",),
                            int8_isa="avx2", auto_budget=False)  # it predates --budget auto
    assert q.weight.format == "int4" and q.expansion.budget == 1.25 and not q.activation.unsigned
    assert BuildConfig.from_dict(BuildConfig(quant=q).to_dict()).quant == q
