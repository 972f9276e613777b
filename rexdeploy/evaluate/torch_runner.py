"""The float reference for `compare`: the source PyTorch model, run in torch.

Used only when the source file recorded in the manifest is still there with the same sha256
(TorchScript and torch.export programs; pickled modules are never re-loaded implicitly, since
loading them runs code). Otherwise compare falls back to the artifact's float.onnx.
"""

from __future__ import annotations

import os

import numpy as np

RELOADABLE = ("torchscript", "exported")


def source_available(source: dict) -> bool:
    from rexdeploy.artifact import sha256_file

    path = source.get("path")
    if source.get("kind") not in RELOADABLE or not path or not os.path.isfile(path):
        return False
    return sha256_file(path) == source.get("sha256")


class TorchRunner:
    """Runner protocol over the source torch model (infer only; no per-layer timings)."""

    def __init__(self, source: dict, manifest: dict):
        self.source = source
        self.inputs = [s["name"] for s in manifest["inputs"]]
        self.outputs = list(manifest["outputs"])
        self.model = None

    def __enter__(self) -> "TorchRunner":
        from rexdeploy.frontend import load_model

        self.model = load_model(self.source["path"]).obj
        return self

    def __exit__(self, *exc) -> None:
        self.model = None

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in self.inputs]
        with torch.no_grad():
            module = self.model
            if isinstance(module, torch.export.ExportedProgram):
                module = module.module()
            out = module(*args)
        flat = _flatten(out)
        return {name: t.detach().cpu().numpy() for name, t in zip(self.outputs, flat)}

    def timings(self) -> list:
        return []

    def throughput(self, feeds, seconds):  # pragma: no cover - not used for torch
        raise NotImplementedError("the torch reference is not profiled")


def _flatten(out) -> list:
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flatten(o)]
    return [out]
