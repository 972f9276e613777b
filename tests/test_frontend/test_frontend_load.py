"""load_model: every format told apart by content; one clear UserError per way a file is wrong."""

from __future__ import annotations

import hashlib
import os
import pickle

import pytest
import torch

from rexdeploy.errors import UserError
from rexdeploy.frontend import LoadedModel, load_model
from tiny_models import TinyCNN, tiny_cnn

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One file of each kind, written once: {kind: path}."""
    d = tmp_path_factory.mktemp("models")
    model = tiny_cnn()
    paths = {k: str(d / name) for k, name in [
        ("scripted", "scripted.pt"), ("traced", "traced.pt"), ("pt2", "model.pt2"),
        ("pickled", "pickled.pt"), ("state_dict", "weights.pt"), ("onnx", "model.onnx"),
        ("legacy_pickle", "legacy.pt")]}
    torch.jit.save(torch.jit.script(model), paths["scripted"])
    torch.jit.save(torch.jit.trace(model, X), paths["traced"])
    torch.export.save(torch.export.export(model, (X,)), paths["pt2"])
    torch.save(model, paths["pickled"])
    torch.save(model, paths["legacy_pickle"], _use_new_zipfile_serialization=False)
    torch.save(model.state_dict(), paths["state_dict"])
    torch.onnx.export(model, (X,), paths["onnx"], dynamo=False, opset_version=17)
    return paths


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _copy(src, dst, transform):
    data = open(src, "rb").read()
    with open(dst, "wb") as f:
        f.write(transform(data))
    return str(dst)


@pytest.mark.parametrize("key", ["scripted", "traced"])
def test_torchscript_loads_in_eval_mode(files, key):
    loaded = load_model(files[key])
    assert isinstance(loaded, LoadedModel)
    assert loaded.kind == "torchscript" and loaded.path == files[key]
    assert loaded.sha256 == _sha(files[key])
    assert not loaded.obj.training
    torch.testing.assert_close(loaded.obj(X), tiny_cnn()(X))


def test_torchscript_saved_in_train_mode_is_put_in_eval(tmp_path):
    path = str(tmp_path / "train.pt")
    torch.jit.save(torch.jit.script(tiny_cnn().train()), path)
    assert not load_model(path).obj.training


def test_exported_program_loads(files):
    loaded = load_model(files["pt2"])
    assert loaded.kind == "exported"
    assert isinstance(loaded.obj, torch.export.ExportedProgram)
    torch.testing.assert_close(loaded.obj.module()(X), tiny_cnn()(X))


def test_onnx_loads_as_path(files):
    loaded = load_model(files["onnx"])
    assert (loaded.kind, loaded.obj, loaded.sha256) == ("onnx", files["onnx"], _sha(files["onnx"]))


def test_format_is_detected_by_content_not_extension(files, tmp_path):
    for key, kind in [("scripted", "torchscript"), ("pt2", "exported"), ("onnx", "onnx")]:
        odd = _copy(files[key], tmp_path / f"{key}.bin", lambda b: b)
        assert load_model(odd).kind == kind


def test_factory_with_weights(files):
    loaded = load_model("factory_models:tiny_cnn", factory_weights=files["state_dict"])
    assert loaded.kind == "module" and loaded.path == "factory_models:tiny_cnn"
    assert loaded.sha256 == _sha(files["state_dict"])
    assert not loaded.obj.training
    torch.testing.assert_close(loaded.obj(X), tiny_cnn()(X))


def test_factory_needs_weights():
    with pytest.raises(UserError, match="--state-dict"):
        load_model("factory_models:tiny_cnn")


@pytest.mark.parametrize("source, match", [
    ("no_such_package.models:make", "cannot import no_such_package"),
    ("factory_models:no_such_factory", "has no 'no_such_factory'"),
    ("factory_models:not_a_module", "returned a dict, not a torch.nn.Module"),
    ("factory_models:needs_arguments", "raised TypeError"),
    ("factory_models:broken", "cannot build the model today"),
])
def test_factory_errors(files, source, match):
    with pytest.raises(UserError, match=match):
        load_model(source, factory_weights=files["state_dict"])


def test_factory_with_mismatched_state_dict_lists_keys_and_shapes(tmp_path):
    state = tiny_cnn().state_dict()
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(3)
    state["fc.weight"] = torch.zeros(5, 64)
    path = str(tmp_path / "bad.pt")
    torch.save(state, path)
    with pytest.raises(UserError) as info:
        load_model("factory_models:tiny_cnn", factory_weights=path)
    text = str(info.value)
    assert "missing: fc.bias" in text and "unexpected: extra.weight" in text
    assert "fc.weight (5, 64) vs model (10, 64)" in text


def test_dataparallel_prefix_gets_a_hint(tmp_path):
    path = str(tmp_path / "dp.pt")
    torch.save({f"module.{k}": v for k, v in tiny_cnn().state_dict().items()}, path)
    with pytest.raises(UserError, match="model.module.state_dict"):
        load_model("factory_models:tiny_cnn", factory_weights=path)


def test_factory_weights_that_are_a_checkpoint(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    torch.save({"epoch": 3, "state_dict": tiny_cnn().state_dict()}, path)
    with pytest.raises(UserError, match=r"ckpt\['state_dict'\]"):
        load_model("factory_models:tiny_cnn", factory_weights=path)


def test_factory_weights_that_pickle_code_are_refused(files):
    with pytest.raises(UserError, match="not a plain state dict"):
        load_model("factory_models:tiny_cnn", factory_weights=files["pickled"])


def test_weights_only_apply_to_factories(files):
    with pytest.raises(UserError, match="applies only to a package.module:factory"):
        load_model(files["scripted"], factory_weights=files["state_dict"])


@pytest.mark.parametrize("key", ["pickled", "legacy_pickle"])
def test_pickled_module_is_refused_with_what_to_do(files, key):
    with pytest.raises(UserError) as info:
        load_model(files[key])
    text = str(info.value)
    assert "runs arbitrary code" in text and "TinyCNN" in text
    assert "torch.jit.save" in text and "torch.export" in text and "--trust-pickle" in text


@pytest.mark.parametrize("key", ["pickled", "legacy_pickle"])
def test_pickled_module_loads_with_trust_pickle(files, key):
    loaded = load_model(files[key], trust_pickle=True)
    assert loaded.kind == "module" and isinstance(loaded.obj, TinyCNN)
    assert not loaded.obj.training
    torch.testing.assert_close(loaded.obj(X), tiny_cnn()(X))


class _Payload:
    """Unpickling this creates a marker file: the refusal must never get that far."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch_zip", "raw_pickle", "raw_pickle_protocol5"])
def test_pickle_payload_never_runs(tmp_path, writer):
    marker = tmp_path / "payload_ran"
    path = str(tmp_path / "evil.pt")
    payload = {"model": _Payload(marker)}
    if writer == "torch_zip":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2 if writer == "raw_pickle" else 5)
    with pytest.raises(UserError, match="arbitrary code") as info:
        load_model(path)
    assert "system" in str(info.value)  # names what the file would call
    assert not marker.exists()
    # The weights path refuses it too, through torch's weights_only unpickler.
    with pytest.raises(UserError):
        load_model("factory_models:tiny_cnn", factory_weights=path)
    assert not marker.exists()


def test_state_dict_as_model_points_to_factory(files):
    with pytest.raises(UserError, match="state dict") as info:
        load_model(files["state_dict"])
    assert "package.module:factory --state-dict" in str(info.value)


def test_missing_file():
    with pytest.raises(UserError, match="does not exist"):
        load_model("/no/such/model.pt")


def test_directory(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        load_model(str(tmp_path))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        load_model(str(path))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads files whatever their permissions")
def test_unreadable_file(files, tmp_path):
    path = _copy(files["scripted"], tmp_path / "locked.pt", lambda b: b)
    os.chmod(path, 0)
    try:
        with pytest.raises(UserError, match="cannot read"):
            load_model(path)
    finally:
        os.chmod(path, 0o600)


def test_unreadable_file_simulated(files, tmp_path, monkeypatch):
    import builtins

    path = _copy(files["scripted"], tmp_path / "locked.pt", lambda b: b)
    real_open = builtins.open

    def fake_open(name, *args, **kwargs):
        if str(name) == path:
            raise PermissionError(13, "Permission denied", name)
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    with pytest.raises(UserError, match="cannot read .*Permission denied"):
        load_model(path)


def test_unknown_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not a model\n")
    with pytest.raises(UserError, match="not a model file rexdeploy recognizes"):
        load_model(str(path))


def test_unknown_zip(tmp_path):
    import zipfile

    path = str(tmp_path / "other.zip")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(UserError, match="zip archive but not a model"):
        load_model(path)


_KIND_WORDS = {"scripted": "TorchScript", "pt2": "torch.export", "pickled": "torch.save",
               "legacy_pickle": "pickle", "onnx": "ONNX", "state_dict": "torch.save"}


@pytest.mark.parametrize("key", sorted(_KIND_WORDS))
@pytest.mark.parametrize("keep", [0.05, 0.5, 0.95])
def test_truncated_file_of_each_kind(files, tmp_path, key, keep):
    path = _copy(files[key], tmp_path / f"cut_{key}", lambda b: b[:int(len(b) * keep)])
    with pytest.raises(UserError, match="truncated|corrupt") as info:
        load_model(path, trust_pickle=True)
    assert _KIND_WORDS[key] in str(info.value)


def _entry_payloads(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of each zip entry's stored bytes: the bytes its CRC covers. Flipping bytes
    elsewhere (torch pads local headers to 64-byte alignment with an extra field no CRC covers)
    leaves a loadable file, so damage is aimed at payloads."""
    import io
    import struct
    import zipfile

    spans = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:
                                                        info.header_offset + 30])
            start = info.header_offset + 30 + name_len + extra_len
            if info.compress_size:
                spans.append((start, info.compress_size))
    return spans


@pytest.mark.parametrize("key", ["scripted", "pt2", "pickled", "state_dict"])
@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_corrupt_zip_of_each_kind(files, tmp_path, key, where):
    def damage(data):
        spans = _entry_payloads(data)
        start, size = spans[min(int(len(spans) * where), len(spans) - 1)]
        data = bytearray(data)
        i = start + size // 2
        data[i:i + 1] = bytes([data[i] ^ 0xFF])
        return bytes(data)

    path = _copy(files[key], tmp_path / f"bad_{key}", damage)
    with pytest.raises(UserError, match="corrupt|cannot load"):
        load_model(path, trust_pickle=True)


@pytest.mark.parametrize("key", ["scripted", "pt2", "pickled", "state_dict"])
def test_zip_directory_damage_is_reported(files, tmp_path, key):
    def damage(data):
        i = data.rindex(b"PK\x01\x02")  # last central-directory record
        data = bytearray(data)
        data[i + 46:i + 52] = bytes(b ^ 0xFF for b in data[i + 46:i + 52])  # its file name
        return bytes(data)

    path = _copy(files[key], tmp_path / f"bad_{key}", damage)
    with pytest.raises(UserError, match="corrupt|cannot load|not a model"):
        load_model(path, trust_pickle=True)


@pytest.mark.parametrize("head", [b"\x08\x07\x12\xff\xff\xff\xff", b"PK\x03\x04garbage",
                                  b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46"])
def test_garbage_with_a_plausible_header(tmp_path, head):
    path = tmp_path / "garbage.bin"
    path.write_bytes(head + os.urandom(256))
    with pytest.raises(UserError):
        load_model(str(path))


def test_loaded_model_is_frozen(files):
    loaded = load_model(files["onnx"])
    with pytest.raises(Exception):
        loaded.kind = "module"


def test_pt2_with_a_pickle_payload_is_refused(files, tmp_path):
    """torch.export.load unpickles the sample inputs (falling back to weights_only=False)."""
    import io
    import zipfile

    marker = tmp_path / "payload_ran"
    blob = io.BytesIO()
    torch.save({"inputs": _Payload(marker)}, blob)
    path = str(tmp_path / "evil.pt2")
    with zipfile.ZipFile(files["pt2"]) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if "/data/sample_inputs/" in info.filename:
                data = blob.getvalue()
            dst.writestr(info, data)
    with pytest.raises(UserError, match="pickled Python objects .*system"):
        load_model(path)
    assert not marker.exists()


def test_stack_global_hidden_behind_a_decoy_is_unresolved(tmp_path):
    """A hand-written pickle pushes 'posix', 'system', then a decoy 'collections',
    'OrderedDict' that it POPs: the reader must not take the decoy for the global."""
    marker = tmp_path / "payload_ran"
    decoyed = (b"\x80\x04" + b"\x8c\x05posix" + b"\x8c\x06system"
               + b"\x8c\x0bcollections" + b"\x8c\x0bOrderedDict" + b"00"  # two POPs
               + b"\x93" + b"\x8c" + bytes([len(f"touch {marker}")]) + f"touch {marker}".encode()
               + b"\x85R.")
    path = tmp_path / "decoy.pkl"
    path.write_bytes(decoyed)
    with pytest.raises(UserError, match="arbitrary code .*<unresolved>"):
        load_model(str(path))
    assert not marker.exists()


def test_damaged_deflated_entry_is_reported(files, tmp_path):
    """A TorchScript archive whose entries are deflated (re-zipped by a tool): a flipped byte in
    the compressed data fails zlib before its CRC, and is still one clear error."""
    import zipfile

    src = files["scripted"]
    rezipped = tmp_path / "deflated.pt"
    with zipfile.ZipFile(src) as zin, \
            zipfile.ZipFile(rezipped, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    load_model(str(rezipped))  # the re-zipped archive itself loads
    with zipfile.ZipFile(rezipped) as z:
        big = max(z.infolist(), key=lambda i: i.compress_size)
    data = bytearray(rezipped.read_bytes())
    start = big.header_offset + 30 + len(big.filename.encode()) + len(big.extra)
    for i in range(start + 2, start + big.compress_size - 2, max(1, big.compress_size // 8)):
        data[i] ^= 0xFF
    bad = tmp_path / "bad_deflated.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt|cannot load"):
        load_model(str(bad))
