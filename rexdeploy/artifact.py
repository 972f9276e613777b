"""The artifact: a directory with a manifest, written atomically.

    out/<name>.<target>/
      manifest.json   schema version, versions, config, inputs/outputs, sha256 of every file
      model.onnx      the Q/DQ ONNX that was compiled
      float.onnx      the float model it came from (BN folded): the reference for compare/profile
      plan.json/.npz  what was quantized how
      model.xml/.bin  the OpenVINO IR (target openvino)
      report.json     per-layer quantization error, runtime precision, int8 coverage, timings

Files are written into a hidden temporary directory next to the destination and renamed into
place at the end, so a failed or interrupted build leaves nothing half-written; an existing
artifact is replaced only with `force`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass

from rexdeploy.errors import UserError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
DIGEST = "manifest_sha256"  # the manifest's own hash, so a hand edit to it is caught too


@dataclass(frozen=True)
class Artifact:
    path: str
    manifest: dict

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @functools.cached_property
    def config(self):
        """The BuildConfig the artifact was built with, as resolved by the build (read back
        from the manifest once; fields an older rexdeploy did not record take their defaults)."""
        from rexdeploy.config import BuildConfig

        return BuildConfig.from_dict(self.manifest.get("config", {}))

    @property
    def files(self) -> dict[str, str]:
        """role -> path relative to the artifact directory."""
        return {role: f["path"] for role, f in self.manifest["files"].items()}

    def file(self, role: str) -> str:
        if role not in self.manifest["files"]:
            raise UserError(f"{self.path} has no {role!r} file (it has: "
                            f"{', '.join(self.manifest['files'])})")
        return os.path.join(self.path, self.manifest["files"][role]["path"])

    def report(self) -> dict:
        path = self.file("report")
        try:
            with open(path) as f:
                report = json.load(f)
        except (OSError, ValueError) as exc:  # missing, unreadable or not JSON
            raise UserError(f"cannot read {path}: {exc}", "rebuild the artifact") from None
        if not isinstance(report, dict) or not isinstance(report.get("summary"), dict):
            raise UserError(f"{path} is not a rexdeploy report", "rebuild the artifact")
        return report


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ArtifactWriter:
    """Context manager: collect files in a temp dir, `commit()` renames it into place."""

    def __init__(self, destination: str, force: bool = False):
        self.destination = os.path.abspath(destination)
        self.force = force
        parent = os.path.dirname(self.destination)
        if os.path.exists(self.destination) and not force:
            raise UserError(f"{destination} already exists",
                            "pass --force to replace it, or choose another -o")
        if os.path.exists(self.destination) and not os.path.isdir(self.destination):
            raise UserError(f"{destination} exists and is not an artifact directory")
        _check_parent(parent)
        self.created = _missing_folders(parent)  # removed again if the build fails
        try:
            os.makedirs(parent, exist_ok=True)
            self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.destination)}.tmp-",
                                        dir=parent)
        except OSError as exc:
            for folder in self.created:
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
            raise _unwritable(parent, exc) from None
        self.roles: dict[str, str] = {}

    def path(self, relative: str, role: str | None = None) -> str:
        """Absolute path inside the temp dir for `relative`; registers it under `role`."""
        full = os.path.join(self.tmp, relative)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        if role:
            self.roles[role] = relative
        return full

    def write_json(self, relative: str, data: dict, role: str | None = None) -> str:
        full = self.path(relative, role)
        with open(full, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True, default=_json_default)
            f.write("\n")
        return full

    def commit(self, manifest: dict) -> Artifact:
        files = {}
        for role, rel in sorted(self.roles.items()):
            full = os.path.join(self.tmp, rel)
            files[role] = {"path": rel, "sha256": sha256_file(full),
                           "bytes": os.path.getsize(full)}
        manifest = {"schema_version": SCHEMA_VERSION, **manifest, "files": files}
        manifest = json.loads(json.dumps(manifest, default=_json_default))  # as it will read
        manifest[DIGEST] = manifest_digest(manifest)
        with open(os.path.join(self.tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True, default=_json_default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        old = None
        if os.path.exists(self.destination):  # force: move the old one aside, then swap
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(self.destination)}.old-",
                                   dir=os.path.dirname(self.destination))
            os.rename(self.destination, os.path.join(old, "a"))
        os.rename(self.tmp, self.destination)
        self.tmp = None  # committed: from here on an interrupt leaves the finished artifact
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return Artifact(self.destination, manifest)

    def __enter__(self) -> "ArtifactWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        full = exc is not None and _disk_full(exc, self.tmp)  # probe before freeing the space
        if self.tmp and os.path.isdir(self.tmp):
            shutil.rmtree(self.tmp, ignore_errors=True)
        if self.tmp:  # not committed: also remove the folders made for it (if still empty)
            for folder in self.created:
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
        if full:
            parent = os.path.dirname(self.destination)
            raise UserError(f"the disk holding {parent} filled up while writing the artifact "
                            f"({_free(parent)} free now); nothing was left behind",
                            "free some space there, or build with -o on another disk") from None


def _missing_folders(folder: str) -> list[str]:
    """The folders `os.makedirs(folder)` would create, deepest first."""
    missing = []
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing


def _check_parent(parent: str) -> None:
    """The nearest existing ancestor of `parent` must be a directory (else mkdir says only
    'File exists' or 'Not a directory', which reads as if the artifact were there)."""
    probe = parent
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"cannot write the artifact under {parent}: {probe} is a file, not a "
                        "directory", "choose an -o path whose parent folders are directories")


def _unwritable(parent: str, exc: OSError) -> UserError:
    why = {errno.EROFS: "the file system is read-only",
           errno.EACCES: "permission denied", errno.EPERM: "permission denied",
           errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
           }.get(exc.errno, exc.strerror or str(exc))
    return UserError(f"cannot write the artifact under {parent}: {why}",
                     "choose a writable -o directory")


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _disk_full(exc: BaseException, where: str | None) -> bool:
    """Did `exc` come from the disk filling up? ENOSPC anywhere in the exception chain, or a
    write error without an errno (OpenVINO's save_model raises `RuntimeError: basic_ios::clear:
    iostream error`) while `where` has no room for another MiB."""
    seen, e = 0, exc
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            return True
        if any(os.strerror(code) in str(e) for code in _DISK_FULL):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    if isinstance(exc, UserError) or not isinstance(exc, (OSError, RuntimeError)):
        return False
    return bool(where) and _no_room(where)


def _no_room(folder: str, need: int = 1 << 20) -> bool:
    """Try to write `need` bytes in `folder` (then remove them): False when they fit."""
    probe = os.path.join(folder, ".space-probe")
    try:
        with open(probe, "wb") as f:
            for _ in range(need >> 16):
                f.write(b"\0" * (1 << 16))
            f.flush()
            os.fsync(f.fileno())
        return False
    except OSError as e:
        return e.errno in _DISK_FULL
    finally:
        with contextlib.suppress(OSError):
            os.remove(probe)


def _free(path: str) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 2**20:.1f} MiB"
    except OSError:
        return "unknown"


def load_artifact(path: str, verify: bool = True) -> Artifact:
    """Open an artifact directory. Always checks the manifest's schema (so a hand-edited or
    damaged manifest is one clear error, not a KeyError later); with `verify`, also the
    manifest's own digest and every file's sha256."""
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
        raise UserError(f"{path} is not an artifact directory",
                        "give the directory `rexdeploy build -o` wrote")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path} has no {MANIFEST}: not a rexdeploy artifact",
                        "give the directory `rexdeploy build -o` wrote") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{manifest_path} is corrupted ({exc})", "rebuild the artifact") from None
    _check_schema(manifest, manifest_path, path)
    artifact = Artifact(os.path.abspath(path), manifest)
    if verify:
        problems = verify_files(artifact)
        if problems:
            raise UserError(f"{path} failed verification: {'; '.join(problems[:3])}"
                            f"{f' (and {len(problems) - 3} more)' if len(problems) > 3 else ''}",
                            "the artifact was modified or damaged after it was built; rebuild "
                            "it (inspect --no-verify shows what it holds)")
    return artifact


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON without its own `manifest_sha256` entry."""
    body = {k: v for k, v in manifest.items() if k != DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _check_schema(manifest, manifest_path: str, path: str) -> None:
    """The manifest has the keys and types this rexdeploy reads; file paths stay inside."""
    def bad(what: str) -> UserError:
        return UserError(f"{manifest_path} is not a valid rexdeploy manifest: {what}",
                         "it was edited or damaged after the build; rebuild the artifact")

    if not isinstance(manifest, dict):
        raise bad(f"it holds a JSON {type(manifest).__name__}, not an object")
    missing = [k for k in ("schema_version", "target", "files") if k not in manifest]
    if missing:
        raise bad(f"no {', '.join(missing)}")
    version = manifest["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bad(f"schema_version {version!r} is not a positive integer")
    if version > SCHEMA_VERSION:
        raise UserError(f"{path} uses artifact schema {version}; this rexdeploy reads up to "
                        f"{SCHEMA_VERSION}", "upgrade rexdeploy")
    if not isinstance(manifest["target"], str):
        raise bad(f"target {manifest['target']!r} is not a name")
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        raise bad("files is not a non-empty object")
    for role, f in files.items():
        if not isinstance(f, dict) or not isinstance(f.get("path"), str) \
                or not isinstance(f.get("sha256"), str) or not _SHA256.match(f["sha256"]):
            raise bad(f"files.{role} needs a path and a 64-digit hex sha256")
        rel = f["path"]
        if os.path.isabs(rel) or os.path.normpath(rel).split(os.sep)[0] in ("..", "") \
                or "\\" in rel:
            raise bad(f"files.{role} points outside the artifact ({rel!r})")
    for key, kind in (("inputs", list), ("outputs", list), ("config", dict), ("source", dict),
                      ("summary", dict)):
        if key in manifest and not isinstance(manifest[key], kind):
            raise bad(f"{key} is not a JSON {'array' if kind is list else 'object'}")
    for spec in manifest.get("inputs", []):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) \
                or not isinstance(spec.get("shape"), list) \
                or not all(isinstance(d, str) or (isinstance(d, int) and d > 0)
                           for d in spec["shape"]):
            raise bad(f"input {spec!r} needs a name and a shape of positive ints or names")
    if DIGEST in manifest and not isinstance(manifest[DIGEST], str):
        raise bad(f"{DIGEST} is not a string")


def verify_files(artifact: Artifact) -> list[str]:
    """Problems found checking the manifest's digest and each file's sha256 against the
    manifest (empty: all good)."""
    problems = []
    recorded = artifact.manifest.get(DIGEST)
    if recorded is not None and recorded != manifest_digest(artifact.manifest):
        problems.append(f"{MANIFEST} was edited after the build (its {DIGEST} no longer "
                        "matches its content)")
    for role, f in sorted(artifact.manifest["files"].items()):
        full = os.path.join(artifact.path, f["path"])
        if not os.path.isfile(full):
            problems.append(f"{f['path']} is missing")
        elif sha256_file(full) != f["sha256"]:
            problems.append(f"{f['path']} does not match its sha256")
    return problems


def write_json_atomic(path: str, data: dict, hint: str | None = None) -> None:
    """Write `data` as JSON to `path` through a temporary file renamed over it: a failed or
    interrupted write leaves no partial file. OSError becomes one UserError (with `hint`)."""
    tmp = f"{path}.tmp"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, default=_json_default)
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}", hint) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
