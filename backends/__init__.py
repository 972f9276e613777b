"""Backend registry: adapters by name, imported lazily.

A backend whose runtime is missing shows as "unavailable: <reason>" instead of breaking the CLI.
"""

from __future__ import annotations

import importlib

from rexdeploy.errors import UserError

# name -> module that defines `BACKEND`
_REGISTRY = {
    "openvino": "backends.openvino",
    "reference": "backends.reference",
    "trt": "backends.tensorrt",
}


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str):
    """The backend object for `name` (its module is imported now, its runtime maybe later)."""
    if name not in _REGISTRY:
        raise UserError(f"unknown target {name!r}; available targets: {', '.join(_REGISTRY)}")
    return importlib.import_module(_REGISTRY[name]).BACKEND


def rules(name: str):
    """The target's TargetRules (backends.base): its module's `RULES`, imported now (a backend
    module imports its runtime only when it builds or runs)."""
    if name not in _REGISTRY:
        raise UserError(f"unknown target {name!r}; available targets: {', '.join(_REGISTRY)}")
    return importlib.import_module(_REGISTRY[name]).RULES


def status() -> list[tuple[str, bool, str]]:
    """(name, available, reason or version) for every registered backend."""
    rows = []
    for name in _REGISTRY:
        try:
            ok, why = get(name).available()
        except Exception as exc:  # a broken install must not break `rexdeploy backends`
            ok, why = False, f"{type(exc).__name__}: {exc}"
        rows.append((name, ok, why))
    return rows
