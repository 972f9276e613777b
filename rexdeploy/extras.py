"""What the installed extras allow: the core (the device side: finish a deferred TensorRT build,
profile, compare against float.onnx, inspect) runs without torch and onnx-ir; building from a
model needs the `build` extra. One clear error instead of an ImportError."""

from __future__ import annotations

import importlib.util

from rexdeploy.errors import UserError

BUILD = ("torch", "onnx_ir")
INSTALL = ("pip install 'rexdeploy[build]' (torch 2.13 CPU on x86; on a Jetson use JetPack's "
           "torch wheel)")


def missing(modules: tuple[str, ...] = BUILD) -> list[str]:
    """The modules of `modules` that do not import here (found without importing them)."""
    out = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name.replace("_", "-"))
    return out


def has_build() -> bool:
    return not missing()


def require_build(what: str) -> None:
    """Raise a UserError saying `what` needs the build extra, where it is not installed."""
    gone = missing()
    if gone:
        raise UserError(f"{what} needs the build extra ({' and '.join(gone)} "
                        f"{'is' if len(gone) == 1 else 'are'} not installed "
                        "here; this is a device-side install)", INSTALL)
