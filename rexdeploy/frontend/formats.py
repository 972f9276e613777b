"""What a model file is, decided by its content (never its extension) and without running it.

    TorchScript (torch.jit.save)   zip with <root>/code/... and <root>/constants.pkl
    torch.export (.pt2)            zip with <root>/archive_format ("pt2") and <root>/models/
    torch.save(obj)                zip with <root>/data.pkl and no code/, or a legacy raw pickle
    ONNX                           a ModelProto (protobuf; field 1 `ir_version` comes first)

A torch.save pickle is classified from the globals its pickle stream names (`pickletools`
reads the opcodes; nothing is unpickled): only tensor-rebuilding globals means plain data
(a state dict), anything else means loading it would run code named by the file.
"""

from __future__ import annotations

import io
import os
import pickletools
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass

from rexdeploy.errors import UserError

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# Globals a state dict (tensors in dicts/lists) needs, and nothing that can run code.
_DATA_GLOBALS = frozenset({
    "collections.OrderedDict", "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3", "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state", "torch._utils._rebuild_qtensor",
    "torch._utils._rebuild_sparse_tensor", "torch._tensor._rebuild_from_type_v2",
    "torch.serialization._get_layout", "torch.Size", "torch.device", "torch.Tensor",
    "torch.nn.parameter.Parameter", "builtins.set", "builtins.frozenset", "builtins.slice",
    "builtins.complex", "builtins.bytearray", "__builtin__.set", "__builtin__.frozenset",
    "_codecs.encode",
})
_DATA_GLOBAL_PATTERNS = (re.compile(r"^torch\.\w*Storage$"),
                         re.compile(r"^torch\.(u?int\d+|float\d*|bfloat16|half|double|bool|long|"
                                    r"complex\d+|qu?int\d+\w*)$"))
_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE",
                         "SHORT_BINSTRING", "BINSTRING", "STRING"})


@dataclass(frozen=True)
class Sniffed:
    """kind: torchscript | exported | pickle | data | onnx. `globals_`: for pickles, the
    importable names the pickle stream calls (sorted)."""

    kind: str
    globals_: tuple[str, ...] = ()


def sniff(path: str) -> Sniffed:
    """Classify the file at `path` (which exists, is a file and is not empty)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] in ZIP_MAGIC:
        return _sniff_zip(path)
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:
        return _sniff_legacy_pickle(path)
    return _sniff_onnx(path, head)


def _sniff_zip(path: str) -> Sniffed:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            kind = _zip_kind(names)
            bad = archive.testzip()  # reads every entry once: catches damage torch would load
            if bad is not None:
                raise zipfile.BadZipFile(f"entry {bad} fails its CRC check")
            if kind == "pickle":
                data_pkl = next(n for n in names if _inner(n) == "data.pkl")
                return _classify_pickle(archive.read(data_pkl), path)
            if kind == "exported":
                return Sniffed("exported", _pt2_pickled_globals(archive, names, path))
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, struct.error, zlib.error) as e:
        # zlib.error: a damaged deflated entry (its CRC is never reached)
        guess = _guess_zip_kind(_local_header_names(path))
        what = {"torchscript": "TorchScript archive", "exported": "torch.export archive (.pt2)",
                "pickle": "torch.save archive"}.get(guess, "zip archive")
        detail = ("the zip directory at its end is missing" if "not a zip file" in str(e)
                  else str(e))
        raise UserError(f"{path} is a truncated or corrupt {what}: {detail}",
                        hint="the file was cut short or damaged while saving, copying or "
                             "downloading; save or copy it again") from e
    if kind is None:
        raise UserError(f"{path} is a zip archive but not a model rexdeploy reads (no TorchScript "
                        "code/, torch.export archive_format or torch.save data.pkl inside)",
                        hint="save the model with torch.jit.save, torch.export.save or as ONNX")
    return Sniffed(kind)


def _pt2_pickled_globals(archive: zipfile.ZipFile, names: list[str], path: str) -> tuple[str, ...]:
    """Globals the pickles inside a .pt2 would import. torch.export.load unpickles the sample
    inputs (falling back to weights_only=False), weights/constants marked `use_pickle`, and
    custom objects; a .pt2 of plain tensors has none that can run code."""
    import json

    pickled = [n for n in names if _inner(n).startswith("data/sample_inputs/")]
    for config in (n for n in names if re.fullmatch(r"data/(weights|constants)/.*_config\.json",
                                                   _inner(n))):
        folder = config.rsplit("/", 1)[0]
        try:
            entries = json.loads(archive.read(config)).get("config", {}).values()
        except ValueError as e:
            raise zipfile.BadZipFile(f"{config} is not valid JSON") from e
        pickled += [f"{folder}/{e['path_name']}" for e in entries
                    if e.get("use_pickle") or not str(e.get("path_name", "")).startswith(
                        ("weight_", "tensor_"))]
    found: set[str] = set()
    for name in pickled:
        if name in names:
            found |= _embedded_pickle_globals(archive.read(name), f"{path}!{name}")
    return tuple(sorted(g for g in found if not _is_data_global(g)))


def _embedded_pickle_globals(data: bytes, where: str) -> set[str]:
    """Globals of a torch.save blob (zip with data.pkl, or a raw pickle) held in memory."""
    if data[:4] in ZIP_MAGIC:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            pkl = next((n for n in inner.namelist() if _inner(n) == "data.pkl"), None)
            data = inner.read(pkl) if pkl else b""
    if not data:
        return set()
    try:
        return _pickle_globals(io.BytesIO(data))
    except Exception:  # unreadable: assume the worst rather than let torch find out
        return {f"<unreadable pickle {where}>"}


def _inner(name: str) -> str:
    """The path inside the archive's single top-level folder (`model/code/x.py` -> `code/x.py`)."""
    return name.split("/", 1)[1] if "/" in name else name


def _zip_kind(names: list[str]) -> str | None:
    inner = {_inner(n) for n in names}
    if "constants.pkl" in inner and any(n.startswith("code/") for n in inner):
        return "torchscript"
    if "archive_format" in inner or any(n.startswith("models/") and n.endswith(".json")
                                        for n in inner):
        return "exported"
    if "data.pkl" in inner:
        return "pickle"
    return None


def _guess_zip_kind(names: list[str]) -> str | None:
    """Like `_zip_kind`, from the entries that survived a truncation, in archive order.
    torch.save writes data.pkl first; torch.jit.save writes the tensors (data/0, ...) first."""
    inner = [_inner(n) for n in names]
    if any(n.startswith("code/") or n == "constants.pkl" for n in inner):
        return "torchscript"
    if any(n.startswith(("data/weights/", "models/")) or n == "archive_format" for n in inner):
        return "exported"
    if inner and inner[0] == "data.pkl":
        return "pickle"
    if inner and re.fullmatch(r"data/\d+", inner[0]):
        return "torchscript"
    return None


def _local_header_names(path: str, scan_bytes: int = 16 << 20) -> list[str]:
    """Entry names from the zip's local headers near the front of the file: they survive a
    truncation (the central directory at the end does not). Torch writes sizes after the data
    (flag bit 3), so headers are found by their signature rather than by skipping entries."""
    with open(path, "rb") as f:
        data = f.read(scan_bytes)
    names = []
    for match in re.finditer(re.escape(ZIP_MAGIC[0]), data):
        header = data[match.start():match.start() + 30]
        if len(header) < 30:
            break
        name_len = struct.unpack("<H", header[26:28])[0]
        name = data[match.start() + 30:match.start() + 30 + name_len]
        if name and all(32 <= c < 127 for c in name):
            names.append(name.decode("ascii"))
    return names


def _sniff_legacy_pickle(path: str) -> Sniffed:
    """torch.save(..., _use_new_zipfile_serialization=False) or a plain pickle: a few pickles
    back to back (magic number, protocol, sys info, the object), then raw storage bytes."""
    with open(path, "rb") as f:
        data = f.read()
    stream, found = io.BytesIO(data), set()
    for _ in range(4):  # the object is the 4th pickle; a plain pickle ends after the 1st
        if stream.tell() >= len(data):
            break
        try:
            found |= _pickle_globals(stream)
        except Exception as e:  # pickletools raises ValueError/struct.error on broken streams
            raise UserError(f"{path} is a truncated or corrupt pickle ({e})",
                            hint="the file was cut short or damaged; save or copy it "
                                 "again") from e
    return _sniffed_from_globals(found)


def _classify_pickle(data: bytes, path: str) -> Sniffed:
    try:
        found = _pickle_globals(io.BytesIO(data))
    except Exception as e:
        raise UserError(f"{path}: the pickle inside the torch.save archive is corrupt ({e})",
                        hint="save or copy the file again") from e
    return _sniffed_from_globals(found)


def _sniffed_from_globals(found: set[str]) -> Sniffed:
    unsafe = sorted(g for g in found if not _is_data_global(g))
    return Sniffed("pickle", tuple(unsafe)) if unsafe else Sniffed("data", tuple(sorted(found)))


def _is_data_global(name: str) -> bool:
    return name in _DATA_GLOBALS or any(p.match(name) for p in _DATA_GLOBAL_PATTERNS)


def _pickle_globals(stream: io.BytesIO) -> set[str]:
    """Every `module.name` one pickle in `stream` would import, read from its opcodes.

    STACK_GLOBAL takes module and name from the stack: it is resolved only when the two ops
    before it (memo bookkeeping aside) each pushed a known string, which is how picklers write
    it; anything else (and extension codes) comes back as `<unresolved>`, which is unsafe.
    """
    found: set[str] = set()
    memo: dict[int, str | None] = {}
    recent: list[str | None] = [None, None]  # what the last two stack-changing ops pushed
    for op, arg, _ in pickletools.genops(stream):
        name = op.name
        if name == "MEMOIZE":  # memo ops copy the top of the stack and leave the stack as is
            memo[len(memo)] = recent[-1]
            continue
        if name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = recent[-1]
            continue
        pushed = None
        if name in ("GLOBAL", "INST"):
            found.add(arg.replace(" ", "."))
        elif name in _STRING_OPS:
            pushed = arg.decode("latin-1") if isinstance(arg, bytes) else arg
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed = memo.get(int(arg))
        elif name == "STACK_GLOBAL":
            resolved = all(isinstance(r, str) for r in recent)
            found.add(".".join(recent) if resolved else "<unresolved>")
        elif name.startswith("EXT"):
            found.add("<unresolved>")
        recent = [recent[-1], pushed]
    return found


def _sniff_onnx(path: str, head: bytes) -> Sniffed:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(path, load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as e:
        if head[:1] == b"\x08":  # ModelProto field 1 (ir_version), what every exporter writes
            raise UserError(f"{path} looks like ONNX but does not parse ({e})",
                            hint="the file is truncated or corrupt; export or copy it again") from e
        raise _unknown(path) from e
    if proto.ir_version <= 0 or not proto.graph.output:
        raise _unknown(path)
    _check_external_data(proto, path)
    try:
        onnx.checker.check_model(path)  # by path: external data resolves next to the model
    except Exception as e:  # onnx.checker.ValidationError and friends
        # the checker spreads one sentence over lines ("... of node: \nname: X OpType: Conv\n
        # is not output of any previous nodes."): join them, cut very long ones
        reason = " ".join(str(e).split()) or type(e).__name__
        reason = reason if len(reason) <= 240 else reason[:240] + "..."
        raise UserError(f"{path} is not a valid ONNX model: {reason}",
                        hint="the file may be truncated; export it again") from e
    return Sniffed("onnx")


def _check_external_data(proto, path: str) -> None:
    import onnx

    folder = os.path.dirname(os.path.abspath(path))
    for tensor in proto.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if not os.path.isfile(os.path.join(folder, location)):
            raise UserError(f"{path} keeps tensor {tensor.name} in external data file "
                            f"{location!r}, which is missing",
                            hint="keep the external data files next to the model, as "
                                 "exported")


def _unknown(path: str) -> UserError:
    return UserError(f"{path} is not a model file rexdeploy recognizes",
                     hint="give a TorchScript file (torch.jit.save), a torch.export program "
                          "(torch.export.save, .pt2), an ONNX file, or package.module:factory "
                          "with --state-dict")
