"""The bad-input matrix: every way a user can hand rexdeploy something wrong, seen from the CLI.

Each case is one row of CASES: an id, the argv (built by a function that first writes whatever
broken file the case needs), a regex for the one `error:` line the user sees, and the exit code.
Every case also checks: a `hint:` line says what to do, no traceback, and nothing is left behind
(the output's parent directory, and any artifact the command read, are byte-for-byte as before:
no artifact, no temporary directory, no partial file). docs/reliability.md is this table with
the real messages, written by `python tools/reliability_table.py`.

The API-level tests of the same loaders live in test_frontend_load.py / test_artifact.py; this
file is the user's view: through `rexdeploy.cli` (click's CliRunner in-process for speed, a real
subprocess where a signal has to arrive mid-build).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from typing import Callable

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.openvino

SHAPE = "input:1x3x32x32"


# -- shared model files (written once) ---------------------------------------------------------
class Models:
    """The good files the cases break copies of, written lazily into `folder`."""

    def __init__(self, folder: str):
        self.folder = folder
        self._done: dict[str, str] = {}

    def _once(self, name: str, write: Callable[[str], None]) -> str:
        if name not in self._done:
            path = os.path.join(self.folder, name)
            write(path)
            self._done[name] = path
        return self._done[name]

    @property
    def torchscript(self) -> str:
        def write(path):
            import torch

            from tiny_models import tiny_cnn

            torch.jit.save(torch.jit.trace(tiny_cnn(), torch.randn(1, 3, 32, 32)), path)
        return self._once("cnn.pt", write)

    @property
    def pt2(self) -> str:
        def write(path):
            import torch

            from tiny_models import tiny_cnn

            torch.export.save(torch.export.export(tiny_cnn(), (torch.randn(1, 3, 32, 32),)), path)
        return self._once("cnn.pt2", write)

    @property
    def onnx(self) -> str:
        def write(path):
            import torch

            from tiny_models import tiny_cnn

            torch.onnx.export(tiny_cnn(), (torch.randn(1, 3, 32, 32),), path, dynamo=False,
                              opset_version=17, input_names=["input"])
        return self._once("cnn.onnx", write)

    def state_dict(self, factory: str = "tiny_cnn") -> str:
        def write(path):
            import torch

            import factory_models

            torch.manual_seed(0)
            torch.save(getattr(factory_models, factory)().state_dict(), path)
        return self._once(f"{factory}.weights.pt", write)

    @property
    def artifact(self) -> str:
        """A good openvino artifact of the tiny CNN (copy it before damaging it)."""
        def write(path):
            from rexdeploy import api

            api.build(self.torchscript, [SHAPE], output=path, quiet=True)
        return self._once("cnn.openvino", write)


# -- one case's workspace ----------------------------------------------------------------------
class Env:
    """A case's own folder. `out` is where a build writes; `watch` lists the folders that must be
    unchanged after the command (the output's parent, and any artifact the case reads)."""

    def __init__(self, models: Models, root: str):
        self.models = models
        self.root = root
        self.out_parent = os.path.join(root, "out")
        self.out = os.path.join(self.out_parent, "model.openvino")
        self.watch = [self.out_parent]
        self.cleanup = contextlib.ExitStack()
        self.skip_reason: str | None = None

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def damaged(self, src: str, name: str, transform: Callable[[bytes], bytes]) -> str:
        with open(src, "rb") as f:
            data = f.read()
        dst = self.path(name)
        with open(dst, "wb") as f:
            f.write(transform(data))
        return dst

    def artifact_copy(self, tamper: Callable[[str], None] | None = None) -> str:
        dst = self.path("art.openvino")
        shutil.copytree(self.models.artifact, dst)
        if tamper:
            tamper(dst)
        self.watch.append(dst)
        return dst

    def mount_tmpfs(self, folder: str, options: str) -> bool:
        """Mount a tmpfs at `folder` (unmounted on cleanup); False (and a skip reason) when this
        user may not mount."""
        os.makedirs(folder, exist_ok=True)
        if shutil.which("mount") is None:
            self.skip_reason = "no mount command here"
            return False
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", folder],
                              capture_output=True, text=True)
        if done.returncode != 0:
            self.skip_reason = f"cannot mount a tmpfs here ({done.stderr.strip() or 'denied'})"
            return False
        # lazy: an mmap OpenVINO still holds on a deleted file would make a plain umount fail
        self.cleanup.callback(subprocess.run, ["umount", "-l", folder], capture_output=True)
        return True


# -- damage ------------------------------------------------------------------------------------
def truncate(fraction: float) -> Callable[[bytes], bytes]:
    return lambda data: data[:int(len(data) * fraction)]


def flip_zip_payload(data: bytes) -> bytes:
    """Flip one byte in the middle of the largest zip entry's stored bytes (CRC-covered: torch
    pads headers with bytes no CRC sees, and damage there would be harmless)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = max(archive.infolist(), key=lambda i: i.compress_size)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:
                                                    info.header_offset + 30])
    i = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]


def dangle_onnx(data: bytes) -> bytes:
    """A well-formed protobuf whose first node reads a tensor nothing produces (a bad edit)."""
    import onnx

    model = onnx.load_from_string(data)
    model.graph.node[0].input[1] = "no_such_weight"
    return model.SerializeToString()


class _Payload:
    """Unpickling this runs `touch MARKER`: the proof that loading ran code from the file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hostile_pickle(env: Env) -> str:
    """torch.save of a dict holding the payload (raw pickles are covered at the API level in
    test_frontend_load.py)."""
    import torch

    path = env.path("evil.pt")
    torch.save({"model": _Payload(env.path("PAYLOAD_RAN"))}, path)
    return path


def payload_never_ran(env: Env, outcome) -> None:
    assert not os.path.exists(env.path("PAYLOAD_RAN")), "loading the pickle ran its payload"


# -- artifact tampering ------------------------------------------------------------------------
def _edit_manifest(edit: Callable[[dict], None]) -> Callable[[str], None]:
    def tamper(folder):
        path = os.path.join(folder, "manifest.json")
        with open(path) as f:
            manifest = json.load(f)
        edit(manifest)
        with open(path, "w") as f:
            json.dump(manifest, f, indent=1)
    return tamper


def _flip_file(name: str) -> Callable[[str], None]:
    def tamper(folder):
        path = os.path.join(folder, name)
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0xFF]))
    return tamper


def _cut_manifest(folder: str) -> None:
    path = os.path.join(folder, "manifest.json")
    with open(path, "rb") as f:
        head = f.read(30)  # mid-key: the same cut whatever the machine
    with open(path, "wb") as f:
        f.write(head)


def _set_input_shape(m: dict) -> None:
    m["inputs"][0]["shape"] = [1, 3, 64, 64]


def _escape(m: dict) -> None:
    m["files"]["ir_bin"]["path"] = "../../outside.bin"


# -- the matrix --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    what: str                                   # the situation, in the user's words (docs)
    argv: Callable[[Env], list[str]]            # writes what the case needs, returns the argv
    message: str                                # regex: the `error:` line (stdout for exit 0)
    code: int = 1
    mode: str = "inprocess"                     # inprocess | sigint | sigterm
    creates: bool = False                       # the command succeeds and writes env.out
    check: Callable[[Env, object], None] | None = None


def build(*args: str) -> Callable[[Env], list[str]]:
    """argv for `rexdeploy build ... -o OUT`; `{tmp}` and `{m.attr}` in args are filled in."""
    def argv(env: Env) -> list[str]:
        out = ["build"]
        for a in args:
            out.append(_fill(a, env))
        return out + ["-o", env.out]
    return argv


def _fill(arg: str, env: Env) -> str:
    def sub(match):
        key = match.group(1)
        if key == "tmp":
            return env.root
        value = getattr(env.models, key[2:])
        return value() if callable(value) else value
    return re.sub(r"\{(tmp|m\.\w+)\}", sub, arg)


def _with(make: Callable[[Env], str], *rest: str, verb: str = "build"
          ) -> Callable[[Env], list[str]]:
    """argv whose first argument is a file `make` writes."""
    def argv(env: Env) -> list[str]:
        first = make(env)
        extra = [_fill(a, env) for a in rest]
        return [verb, first, *extra] + (["-o", env.out] if verb == "build" else [])
    return argv


def _damaged(kind: str, name: str, transform) -> Callable[[Env], str]:
    def make(env: Env) -> str:
        src = env.models.state_dict() if kind == "state_dict" else getattr(env.models, kind)
        return env.damaged(src, name, transform)
    return make


def _factory_weights(factory: str, transform=None, weights_of: str | None = None):
    """argv for `build factory_models:FACTORY --state-dict W` (W damaged by `transform`)."""
    def make(env: Env) -> str:
        return env.damaged(env.models.state_dict(weights_of or factory), "weights.pt",
                           transform or (lambda b: b))
    return make


def _factory(factory: str, make_weights, *rest: str) -> Callable[[Env], list[str]]:
    def argv(env: Env) -> list[str]:
        return ["build", f"factory_models:{factory}", "--state-dict", make_weights(env),
                *[_fill(a, env) for a in rest], "-o", env.out]
    return argv


def _on_artifact(verb: str, tamper=None, *rest: str) -> Callable[[Env], list[str]]:
    def argv(env: Env) -> list[str]:
        return [verb, env.artifact_copy(tamper), *rest]
    return argv


def _existing(env: Env) -> list[str]:
    os.makedirs(env.out)
    with open(os.path.join(env.out, "keep.txt"), "w") as f:
        f.write("the user's earlier artifact\n")
    return ["build", env.models.torchscript, "--input", SHAPE, "-o", env.out]


def _read_only(env: Env) -> list[str]:
    env.out_parent = env.path("readonly")
    env.out = os.path.join(env.out_parent, "model.openvino")
    env.watch = [env.out_parent]
    os.makedirs(env.out_parent)
    if os.geteuid() != 0:  # a plain user: permissions are enough
        os.chmod(env.out_parent, 0o555)
        env.cleanup.callback(os.chmod, env.out_parent, 0o755)
    else:
        env.mount_tmpfs(env.out_parent, "ro,size=1m")
    return ["build", env.models.torchscript, "--input", SHAPE, "-o", env.out]


def _full_disk(env: Env) -> list[str]:
    """A 120 KiB tmpfs: the float ONNX and the plan fit, the OpenVINO IR does not (its writer
    fails without an errno, the hardest way to find out)."""
    env.out_parent = env.path("tiny_disk")
    env.out = os.path.join(env.out_parent, "model.openvino")
    env.watch = [env.out_parent]
    env.mount_tmpfs(env.out_parent, "size=120k")
    return ["build", env.models.torchscript, "--input", SHAPE, "-o", env.out]


def _parent_is_file(env: Env) -> list[str]:
    with open(env.path("notes.txt"), "w") as f:
        f.write("a file where a folder should be\n")
    env.out = os.path.join(env.path("notes.txt"), "model.openvino")
    env.watch = [env.root]
    return ["build", env.models.torchscript, "--input", SHAPE, "-o", env.out]


def _empty(env: Env) -> str:
    open(env.path("empty.pt"), "wb").close()
    return env.path("empty.pt")


def _a_directory(env: Env) -> str:
    os.makedirs(env.path("models_dir"))
    return env.path("models_dir")


def _skipped_in_report(env: Env, outcome) -> None:
    from rexdeploy.artifact import load_artifact

    report = load_artifact(env.out).report()
    assert [s["op"] for s in report["skipped"]] == ["ConvTranspose"], report["skipped"]
    assert "kept in float" in report["skipped"][0]["reason"]
    assert report["summary"]["quantized_layers"] == 2


def _ints_quantized(env: Env, outcome) -> None:
    from rexdeploy.artifact import load_artifact

    art = load_artifact(env.out)
    assert art.manifest["inputs"] == [{"name": "ids", "shape": [1, 8], "dtype": "int64"}]
    assert art.report()["summary"]["quantized_layers"] == 1


CASES: list[Case] = [
    # the model file
    Case("missing-path", "model path does not exist",
         build("{tmp}/no_such_model.pt", "--input", SHAPE), r"model file .* does not exist"),
    Case("directory", "model path is a directory",
         _with(_a_directory, "--input", SHAPE), r"is a directory, not a file"),
    Case("empty-file", "model file is empty (0 bytes)",
         _with(_empty, "--input", SHAPE), r"is empty \(0 bytes\)"),
    Case("truncated-torchscript", "TorchScript file cut in half",
         _with(_damaged("torchscript", "cut.pt", truncate(0.5)), "--input", SHAPE),
         r"truncated or corrupt TorchScript archive"),
    Case("corrupt-torchscript", "TorchScript file with one damaged byte",
         _with(_damaged("torchscript", "bad.pt", flip_zip_payload), "--input", SHAPE),
         r"corrupt TorchScript archive: .*CRC"),
    Case("truncated-pt2", "torch.export (.pt2) file cut in half",
         _with(_damaged("pt2", "cut.pt2", truncate(0.5))),
         r"truncated or corrupt torch\.export archive"),
    Case("corrupt-pt2", "torch.export (.pt2) file with one damaged byte",
         _with(_damaged("pt2", "bad.pt2", flip_zip_payload)),
         r"corrupt torch\.export archive .*CRC"),
    Case("truncated-onnx", "ONNX file cut in half",
         _with(_damaged("onnx", "cut.onnx", truncate(0.5))), r"looks like ONNX but does not parse"),
    Case("invalid-onnx", "ONNX file that parses but reads a tensor nothing produces",
         _with(_damaged("onnx", "bad.onnx", dangle_onnx)),
         r"is not a valid ONNX model: .*no_such_weight.* is not output of any previous"),
    Case("truncated-state-dict", "state dict for a factory cut in half",
         _factory("tiny_cnn", _factory_weights("tiny_cnn", truncate(0.5)), "--input", SHAPE),
         r"truncated or corrupt torch\.save archive"),
    Case("corrupt-state-dict", "state dict for a factory with one damaged byte",
         _factory("tiny_cnn", _factory_weights("tiny_cnn", flip_zip_payload), "--input", SHAPE),
         r"corrupt torch\.save archive: .*CRC"),
    Case("hostile-pickle", "a pickle whose loading would run a shell command",
         _with(hostile_pickle, "--input", SHAPE),
         r"pickled Python object .*runs arbitrary code .*posix\.system",
         check=payload_never_ran),
    Case("hostile-pickle-as-weights", "the same pickle given as a factory's --state-dict",
         _factory("tiny_cnn", hostile_pickle, "--input", SHAPE),
         r"not a plain state dict", check=payload_never_ran),
    Case("state-dict-mismatch", "state dict saved from another model than the factory builds",
         _factory("tiny_cnn", _factory_weights("tiny_cnn", weights_of="tiny_mlp"), "--input",
                  SHAPE), r"do not fit factory_models:tiny_cnn: missing: .*unexpected: "),
    Case("state-dict-as-model", "a state dict given as the model",
         build("{m.state_dict}", "--input", SHAPE), r"is a state dict \(parameters only\)"),
    Case("factory-without-weights", "a factory without --state-dict",
         build("factory_models:tiny_cnn", "--input", SHAPE), r"untrained parameters"),
    Case("unknown-factory", "a factory module that does not import",
         build("no_such_pkg.models:make", "--state-dict", "{m.state_dict}", "--input", SHAPE),
         r"cannot import no_such_pkg"),
    # --input
    Case("input-missing", "TorchScript model without --input", build("{m.torchscript}"),
         r"carries no input shapes: it needs --input"),
    Case("input-malformed", "--input without a shape", build("{m.torchscript}", "--input",
                                                             "input=1x3x32x32"),
         r"bad --input 'input=1x3x32x32'"),
    Case("input-bad-dim", "--input with a zero dimension",
         build("{m.torchscript}", "--input", "input:0x3x32x32"), r"must be positive"),
    Case("input-bad-dtype", "--input with an unknown dtype",
         build("{m.torchscript}", "--input", "input:1x3x32x32:complex64"),
         r"unknown dtype 'complex64'"),
    Case("input-duplicate", "--input twice for one name",
         build("{m.torchscript}", "--input", SHAPE, "--input", SHAPE), r"given twice"),
    Case("input-shape-mismatch", "--input shape the model cannot run (channels)",
         build("{m.torchscript}", "--input", "input:1x5x32x32"),
         r"the model fails on inputs --input input:1x5x32x32"),
    Case("input-too-many", "more --input than forward takes",
         build("{m.torchscript}", "--input", SHAPE, "--input", "extra:1x3"),
         r"forward takes 1 input .*--input gives 2"),
    Case("input-dtype-mismatch", "--input dtype that contradicts the ONNX model",
         build("{m.onnx}", "--input", "input:1x3x32x32:int64"),
         r"is float32 in the ONNX model, not int64"),
    Case("input-rank-mismatch", "--input rank that contradicts the ONNX model",
         build("{m.onnx}", "--input", "input:1x3x32"), r"has 4 dims .* not 3"),
    Case("input-fixed-dim-mismatch", "--input size where the ONNX model has a fixed size",
         build("{m.onnx}", "--input", "input:1x3x64x64"), r"fixed at 32"),
    Case("input-unknown-name", "--input naming no input of the ONNX model",
         build("{m.onnx}", "--input", "image:1x3x32x32"), r"has no such input"),
    Case("absurd-shape", "--input of 30 billion elements",
         build("{m.torchscript}", "--input", "input:1x3x100000x100000"),
         r"more than this tool accepts"),
    # the model itself
    Case("data-dependent-control-flow", "forward branches on a tensor value (traced)",
         _factory("data_dependent", _factory_weights("data_dependent"), "--input",
                  "x:1x3x16x16"), r"forward depends on tensor values"),
    Case("unsupported-operator", "a grouped ConvTranspose (not quantized): kept in float, "
                                 "listed, the build succeeds",
         _factory("with_conv_transpose", _factory_weights("with_conv_transpose"), "--input",
                  "x:1x3x16x16"), r"kept in float\W+/up/ConvTranspose \(ConvTranspose\)",
         code=0, creates=True,
         check=_skipped_in_report),
    Case("integer-only-input", "token ids (int64) as the only input: builds",
         _factory("token_classifier", _factory_weights("token_classifier"), "--input",
                  "ids:1x8:int64", "--json"), r'"quantized_layers": 1', code=0, creates=True,
         check=_ints_quantized),
    # options
    Case("state-dict-with-model-file", "--state-dict with a model file (not a factory)",
         build("{m.torchscript}", "--input", SHAPE, "--state-dict", "{m.state_dict}"),
         r"applies only to a package\.module:factory"),
    Case("zeroq-on-torchscript", "--ranges zeroq on TorchScript (BatchNorm layers hidden)",
         build("{m.torchscript}", "--input", SHAPE, "--ranges", "zeroq"),
         r"--ranges zeroq needs an eager PyTorch model"),
    Case("old-opset", "--opset below 21", build("{m.torchscript}", "--input", SHAPE,
                                                "--opset", "17"), r"opset 21 or newer"),
    Case("input-range-unknown-name", "--input-range for a name that is no input",
         build("{m.torchscript}", "--input", SHAPE, "--input-range", "image:-1,1"),
         r"--input-range names 'image', which is not a model input"),
    Case("input-range-malformed", "--input-range without a comma",
         build("{m.torchscript}", "--input", SHAPE, "--input-range", "input:-1"),
         r"bad --input-range 'input:-1'"),
    Case("bad-preprocess", "--preprocess with an unknown key",
         build("{m.torchscript}", "--input", SHAPE, "--preprocess", "resize=256,blur=2"),
         r"unknown preprocess key 'blur'"),
    Case("compare-inputs-and-synthetic", "compare with both --inputs and --synthetic",
         _on_artifact("compare", None, "--inputs", ROOT, "--synthetic", "2"),
         r"either --inputs or --synthetic"),
    # the output
    Case("existing-artifact", "output exists, no --force (it stays untouched)", _existing,
         r"already exists"),
    Case("output-parent-is-a-file", "-o under a path that is a file", _parent_is_file,
         r"is a file, not a directory"),
    Case("unwritable-output", "-o in a read-only directory", _read_only,
         r"cannot write the artifact under .*(read-only|permission denied)"),
    Case("full-disk", "the disk fills up while the artifact is written", _full_disk,
         r"filled up while writing the artifact"),
    Case("sigint-mid-build", "Ctrl-C (SIGINT) while the float ONNX is being written",
         build("{m.torchscript}", "--input", SHAPE), r"^interrupted: ", code=130,
         mode="sigint"),
    Case("sigterm-mid-build", "SIGTERM (kill, timeout, container stop) mid-build (a real "
                              "subprocess)",
         build("{m.torchscript}", "--input", SHAPE), r"^terminated \(SIGTERM\): ", code=143,
         mode="sigterm"),
    # the artifact given to profile / compare / inspect
    Case("not-an-artifact", "inspect a folder that is no artifact",
         lambda env: ["inspect", env.root], r"has no manifest\.json"),
    Case("tampered-ir-profile", "profile an artifact whose model.bin changed",
         _on_artifact("profile", _flip_file("model.bin"), "--duration", "0.1"),
         r"failed verification: model\.bin does not match its sha256"),
    Case("tampered-onnx-compare", "compare an artifact whose model.onnx changed",
         _on_artifact("compare", _flip_file("model.onnx"), "--synthetic", "2"),
         r"failed verification: model\.onnx does not match its sha256"),
    Case("missing-file-inspect", "inspect an artifact with model.xml deleted",
         _on_artifact("inspect", lambda d: os.remove(os.path.join(d, "model.xml"))),
         r"failed verification: model\.xml is missing"),
    Case("hand-edited-manifest", "profile an artifact whose manifest.json was edited",
         _on_artifact("profile", _edit_manifest(_set_input_shape), "--duration", "0.1"),
         r"manifest\.json was edited after the build"),
    Case("corrupt-manifest", "compare an artifact whose manifest.json was cut short",
         _on_artifact("compare", _cut_manifest, "--synthetic", "2"),
         r"manifest\.json is corrupted"),
    Case("manifest-path-escape", "a manifest whose file path points outside the artifact",
         _on_artifact("inspect", _edit_manifest(_escape)), r"points outside the artifact"),
    Case("newer-schema", "an artifact from a newer rexdeploy",
         _on_artifact("inspect", _edit_manifest(lambda m: m.update(schema_version=99))),
         r"uses artifact schema 99"),
    Case("bad-schema-version", "a manifest with a non-integer schema_version",
         _on_artifact("inspect", _edit_manifest(lambda m: m.update(schema_version="one"))),
         r"schema_version 'one' is not a positive integer"),
]


# -- running a case ----------------------------------------------------------------------------
@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    bug: str | None = None           # the traceback of an exception that escaped the CLI
    changed: list[str] = field(default_factory=list)  # what differs in the watched folders


def snapshot(folder: str) -> dict[str, str] | None:
    """{relative path: sha256 or '<dir>'} of everything under `folder` (hidden files too)."""
    if not os.path.lexists(folder):
        return None
    if not os.path.isdir(folder):
        return {".": _sha(folder)}
    out = {}
    for base, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(base, d), folder)] = "<dir>"
        for f in files:
            out[os.path.relpath(os.path.join(base, f), folder)] = _sha(os.path.join(base, f))
    return out


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run_case(case: Case, env: Env) -> Outcome | None:
    """Set the case up, run it, and report what happened (None: skipped, see env.skip_reason)."""
    argv = case.argv(env)
    if env.skip_reason:
        return None
    before = {w: snapshot(w) for w in env.watch}
    if case.mode == "inprocess":
        outcome = _in_process(argv)
    elif case.mode == "sigint":
        outcome = _in_process_interrupted(argv, env)
    else:
        outcome = _with_signal(argv, signal.SIGTERM, env)
    if outcome is None:
        return None
    for w in env.watch:
        after = snapshot(w)
        if case.creates and w == env.out_parent and after:
            after = {k: v for k, v in after.items()
                     if k != os.path.basename(env.out) and not k.startswith(
                         os.path.basename(env.out) + os.sep)}
            after = after or None
            if before[w] is None and after is None:
                continue
        if after != before[w]:
            outcome.changed.append(f"{w}: {sorted(set(after or {}) ^ set(before[w] or {}))}"
                                   if set(after or {}) != set(before[w] or {})
                                   else f"{w}: files changed")
    return outcome


def _in_process(argv: list[str]) -> Outcome:
    import traceback

    from click.testing import CliRunner

    from rexdeploy.cli import cli

    result = CliRunner().invoke(cli, argv, prog_name="rexdeploy")
    bug = None
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        bug = "".join(traceback.format_exception(*result.exc_info))
    return Outcome(result.exit_code, result.stdout, result.stderr, bug)


def _in_process_interrupted(argv: list[str], env: Env) -> Outcome | None:
    """Ctrl-C while the float ONNX is being written into the temporary artifact directory
    (in-process: test_cli.py already sends a real SIGINT to a subprocess)."""
    pattern = os.path.join(env.out_parent, ".*.tmp-*", "float.onnx")
    done, sent = threading.Event(), threading.Event()

    def watch():
        while not done.wait(0.005):
            if glob.glob(pattern):
                sent.set()
                os.kill(os.getpid(), signal.SIGINT)
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        outcome = _in_process(argv)
    finally:
        done.set()
        watcher.join()
    if not sent.is_set():
        env.skip_reason = "the build finished before the interrupt could be sent"
        return None
    return outcome


def _with_signal(argv: list[str], sig: int, env: Env) -> Outcome | None:
    """Run the CLI in a subprocess, send `sig` once the export stage is done (the temporary
    artifact directory holds files by then), and collect what happened."""
    proc = subprocess.Popen([sys.executable, "-m", "rexdeploy.cli", *argv], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    exported = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if "export" in line and "✓" in line:
                exported.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    exported.wait(timeout=240)
    time.sleep(0.05)  # into the statistics stage: float.onnx is being written
    proc.send_signal(sig)
    stdout = proc.stdout.read()
    proc.wait(timeout=240)
    reader.join(timeout=10)
    if proc.returncode == 0 or os.path.exists(os.path.join(env.out, "manifest.json")):
        # On a fast machine the build can finish first; the signal then lands after the
        # command and is ignored (exit 0), or in the instant between the artifact's commit and
        # the handlers' reset (exit 143 with a complete artifact). Neither loses anything.
        env.skip_reason = "the build finished before the signal arrived"
        return None
    stderr = "".join(lines)
    return Outcome(proc.returncode, stdout, stderr, stderr if "Traceback" in stderr else None)


def error_lines(case: Case, outcome: Outcome) -> tuple[str, str | None]:
    """(the message line, the hint line or None) the user sees for `case`."""
    if case.code == 0:
        text = outcome.stdout.strip()
        return text, None
    lines = [l for l in outcome.stderr.splitlines() if l.strip()]
    first = next((l for l in lines if l.startswith(("error:", "interrupted:", "terminated"))),
                 "")
    hint = next((l.strip() for l in lines if l.strip().startswith("hint:")), None)
    return first, hint


# -- the tests ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return Models(str(tmp_path_factory.mktemp("models")))


def test_matrix_is_large_and_ids_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 25


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, models, tmp_path):
    env = Env(models, str(tmp_path))
    with env.cleanup:
        outcome = run_case(case, env)
        if outcome is None:
            pytest.skip(env.skip_reason)
        assert outcome.bug is None, outcome.bug
        assert "Traceback" not in outcome.stderr + outcome.stdout
        assert outcome.code == case.code, (outcome.code, outcome.stderr, outcome.stdout)
        message, hint = error_lines(case, outcome)
        assert re.search(case.message, message), (case.message, outcome.stderr, outcome.stdout)
        if case.code == 1:
            errors = [l for l in outcome.stderr.splitlines() if l.startswith("error:")]
            assert len(errors) == 1, outcome.stderr  # one message, not a cascade
            assert hint and len(hint) > len("hint: ") + 10, f"no hint: {outcome.stderr}"
        if case.creates:
            assert os.path.isdir(env.out)
        assert not outcome.changed, f"left behind or modified: {outcome.changed}"
        if case.check:
            case.check(env, outcome)


def test_hostile_pickle_payload_is_live(models, tmp_path):
    """The control for the two hostile-pickle cases: with --trust-pickle, loading the same file
    does run the payload. So those cases would fail if the refusal ever let torch unpickle it."""
    env = Env(models, str(tmp_path))
    path = hostile_pickle(env)
    outcome = _in_process(["build", path, "--input", SHAPE, "--trust-pickle", "-o", env.out])
    assert outcome.code == 1 and outcome.bug is None
    assert os.path.exists(env.path("PAYLOAD_RAN")), "the payload did not run: the test is void"
    assert "holds a dict, not a torch.nn.Module" in outcome.stderr
    assert not os.path.exists(env.out_parent)


def test_inspect_verify_reports_what_it_checked(models, tmp_path):
    env = Env(models, str(tmp_path))
    art = env.artifact_copy()
    outcome = _in_process(["inspect", "--verify", art])
    assert outcome.code == 0, outcome.stderr
    with open(os.path.join(art, "manifest.json")) as f:
        n = len(json.load(f)["files"])
    assert f"verified: {n} files (sha256), manifest digest, schema 1" in outcome.stdout
    outcome = _in_process(["inspect", "--json", art])
    assert json.loads(outcome.stdout)["verified"] == {"files": n, "schema_version": 1,
                                                      "manifest_digest": True}
    outcome = _in_process(["inspect", "--no-verify", art])
    assert outcome.code == 0 and "verified:" not in outcome.stdout
