"""Load the user's model: TorchScript, torch.export (.pt2), ONNX, `package.module:factory` with
a state dict, or (only with `trust_pickle`) a pickled nn.Module.

Formats are told apart by content (`formats.sniff`), never by extension. Every way a file can be
wrong (missing, a directory, empty, truncated, corrupt, unreadable, the wrong kind of pickle) is
one `UserError` that says what is wrong and what to do.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Any

from rexdeploy.artifact import sha256_file
from rexdeploy.errors import UserError
from rexdeploy.frontend.formats import sniff

_FACTORY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_RESAVE = ("re-save it without pickle: torch.jit.save(torch.jit.script(model), 'model.pt') "
           "(or torch.jit.trace(model, example)), or torch.export.save(torch.export.export("
           "model, (example,)), 'model.pt2')")


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model. `obj`: ScriptModule | ExportedProgram | nn.Module | ONNX path (str).
    `path`: the file (the factory string for factories). `sha256`: of the file (of the weights
    file for factories)."""

    kind: str
    obj: Any
    path: str
    sha256: str


def load_model(source: str, *, trust_pickle: bool = False,
               factory_weights: str | None = None) -> LoadedModel:
    """Load `source` (a file path or `package.module:factory`) in eval mode."""
    if not os.path.exists(source) and _FACTORY.match(source):
        return _load_factory(source, factory_weights)
    _check_file(source, "model file")
    if factory_weights is not None:
        raise UserError(f"--state-dict {factory_weights} applies only to a package.module:factory "
                        f"model, but {source} is a model file",
                        hint="drop --state-dict, or give the factory that builds the model")
    sniffed = sniff(source)
    digest = sha256_file(source)
    if sniffed.kind == "onnx":
        return LoadedModel("onnx", source, source, digest)
    if sniffed.kind == "torchscript":
        return LoadedModel("torchscript", _load_torchscript(source), source, digest)
    if sniffed.kind == "exported":
        if sniffed.globals_ and not trust_pickle:
            raise UserError(
                f"{source} is a torch.export archive that also holds pickled Python objects "
                f"({', '.join(sniffed.globals_[:4])}); torch.export.load would unpickle them, "
                "which runs code named by the file, so rexdeploy does not load it",
                hint="export the model with tensor inputs and constants only, or pass "
                     "--trust-pickle if you trust where the file came from")
        return LoadedModel("exported", _load_exported(source), source, digest)
    if sniffed.kind == "data":
        raise _plain_data_error(source)
    if not trust_pickle:
        raise UserError(
            f"{source} is a pickled Python object (torch.save(model)); loading it runs arbitrary "
            f"code named by the file ({', '.join(sniffed.globals_[:4])}"
            f"{', ...' if len(sniffed.globals_) > 4 else ''}), so rexdeploy does not load it",
            hint=f"{_RESAVE}; or pass --trust-pickle if you trust where the file came from")
    return LoadedModel("module", _load_pickle(source), source, digest)


def _check_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise UserError(f"{what} {path} does not exist",
                        hint="check the path (models are files: .pt, .pt2, .onnx; factories are "
                             "written package.module:function)")
    if os.path.isdir(path):
        raise UserError(f"{what} {path} is a directory, not a file",
                        hint="give the model file inside it")
    try:
        with open(path, "rb") as f:
            empty = not f.read(1)
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}",
                        hint="check the file's permissions") from e
    if empty:
        raise UserError(f"{what} {path} is empty (0 bytes)",
                        hint="the save was probably interrupted; save the model again")


def _first_line(e: BaseException, limit: int = 200) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # torch colours some messages
    if not text:
        return type(e).__name__
    line = text.splitlines()[0]
    return f"{type(e).__name__}: {line[:limit]}{'...' if len(line) > limit else ''}"


def _load_torchscript(path: str):
    import torch

    try:
        module = torch.jit.load(path, map_location="cpu")
    except Exception as e:  # torch raises RuntimeError (and others) for any damaged archive
        raise UserError(f"cannot load TorchScript archive {path}: {_first_line(e)}",
                        hint="the file is damaged or was saved by a newer PyTorch; save it "
                             "again with torch.jit.save") from e
    return module.eval()


def _load_exported(path: str):
    import torch

    try:
        return torch.export.load(path)
    except Exception as e:
        raise UserError(f"cannot load torch.export program {path}: {_first_line(e)}",
                        hint="the file is damaged or was saved by another PyTorch version; "
                             "export and torch.export.save it again") from e


def _load_pickle(path: str):
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as e:
        raise UserError(f"{path} pickles classes from module {e.name!r}, which is not importable "
                        "here", hint="install or add to PYTHONPATH the code that defines the "
                                     f"model, or {_RESAVE}") from e
    except Exception as e:
        raise UserError(f"cannot unpickle {path}: {_first_line(e)}",
                        hint="the file is damaged or needs code that is not importable") from e
    if not isinstance(obj, torch.nn.Module):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module",
                        hint="save the model itself, or use package.module:factory --state-dict "
                             "FILE for a state dict")
    return obj.eval()


def _plain_data_error(path: str) -> UserError:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read {path}: the file is damaged ({_first_line(e, 80)})",
                        hint="save or copy it again") from e
    if isinstance(obj, dict):
        return UserError(f"{path} is a state dict (parameters only), not a model",
                         hint="give the code that builds the model and the weights: "
                              f"rexdeploy build package.module:factory --state-dict {path}")
    return UserError(f"{path} holds a {type(obj).__name__}, not a model",
                     hint="save the model with torch.jit.save, torch.export.save or as ONNX")


def _load_factory(source: str, weights: str | None):
    import torch

    if weights is None:
        raise UserError(f"{source} builds a model with untrained parameters: it needs --state-dict",
                        hint=f"pass the state dict: {source} --state-dict state_dict.pt")
    module_name, attr = source.split(":")
    factory = _import_factory(module_name, attr, source)
    try:
        model = factory()
    except Exception as e:
        raise UserError(f"{source}() raised {_first_line(e)}",
                        hint="the factory must build the model with no arguments") from e
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"{source}() returned a {type(model).__name__}, not a torch.nn.Module",
                        hint="the factory must return the model")
    _check_file(weights, "weights file")
    _check_archive(weights)
    state = _load_state_dict(weights)
    _check_state_dict(model, state, weights, source)
    model.load_state_dict(state, strict=True)
    return LoadedModel("module", model.eval(), source, sha256_file(weights))


def _import_factory(module_name: str, attr: str, source: str):
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # `rexdeploy build mymodels:make` from the project folder should just work
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"cannot import {module_name} for {source}: {_first_line(e)}",
                        hint="install the package or run from the folder that contains it "
                             "(or add it to PYTHONPATH)") from e
    finally:
        if added:
            sys.path.remove(cwd)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in dir(module) if not n.startswith("_")
                           and callable(getattr(module, n)))
            raise UserError(f"{module_name} has no {attr!r}",
                            hint=f"callables in {module_name}: {', '.join(names[:12]) or 'none'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{source} is not callable", hint="name a function or class")
    return obj


def _check_archive(path: str) -> None:
    """torch.load does not check the zip CRCs: a damaged byte in a tensor would load as a wrong
    weight. `sniff` reads every entry of a zip once and raises on damage."""
    from rexdeploy.frontend.formats import ZIP_MAGIC

    with open(path, "rb") as f:
        if f.read(4) in ZIP_MAGIC:
            sniff(path)


def _load_state_dict(path: str) -> dict:
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 5": noise here
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        if "weights_only" in text or "Unsupported global" in text:
            raise UserError(f"weights file {path} is not a plain state dict: it pickles Python "
                            "objects, and loading those runs code from the file",
                            hint="save only the parameters: torch.save(model.state_dict(), "
                                 "'weights.pt')") from e
        raise UserError(f"cannot read weights file {path}: {_first_line(e)}",
                        hint="the file is damaged or not a torch.save file; save it again") from e
    if not isinstance(state, dict):
        raise UserError(f"weights file {path} holds a {type(state).__name__}, not a state dict",
                        hint="save torch.save(model.state_dict(), 'weights.pt')")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        nested = [k for k, v in state.items() if isinstance(v, dict)]
        raise UserError(f"weights file {path} is not a flat state dict (keys: "
                        f"{', '.join(map(str, list(state)[:6]))})",
                        hint=f"a training checkpoint? save its state dict alone, e.g. "
                             f"torch.save(ckpt[{nested[0]!r}], 'weights.pt')" if nested else
                        "save torch.save(model.state_dict(), 'weights.pt')")
    return state


def _check_state_dict(model, state: dict, path: str, source: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected),
                         ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{label}: {', '.join(items[:5])}{more}")
    hint = "the weights were saved from a different model (or version) than the factory builds"
    if unexpected and all(k.startswith("module.") for k in unexpected):
        hint = ("the keys start with 'module.' (saved from DataParallel): save "
                "model.module.state_dict() instead")
    raise UserError(f"weights {path} do not fit {source}: {'; '.join(parts)}", hint=hint)
