"""Runners over a built artifact: its compiled model on its backend, its Q/DQ ONNX on ONNX
Runtime (the reference), an ensemble's members run concurrently, and the float reference
(the source torch model, or float.onnx) that compare measures against."""

from __future__ import annotations

import os

from rexdeploy.artifact import Artifact, load_artifact
from rexdeploy.errors import UserError


def runs_on_device(art: Artifact, backend: str | None) -> bool:
    """Whether compare runs the artifact on a device (its compiled model), not on ONNX Runtime."""
    name = backend or art.target
    return name != "reference" and art.manifest.get("engine") != "deferred"


def integer_ranges(art: Artifact) -> dict:
    """Token ids in [0, vocab), masks all 1 (as the build drew them), read from float.onnx."""
    if all(s.get("dtype", "float32").startswith("float") for s in art.manifest["inputs"]):
        return {}
    from rexdeploy.extras import require_build

    require_build("compare --synthetic on a model with integer inputs (token ids)")
    import onnx_ir as ir

    from rexdeploy.planning.observe import integer_input_ranges

    return integer_input_ranges(ir.load(art.file("float_onnx")))


def reference_runner(art: Artifact, reference: str):
    """The float reference: the source torch model when it is still there, else float.onnx."""
    if reference not in ("auto", "torch", "onnx"):
        raise UserError(f"--reference {reference}: use auto, torch or onnx")
    source = art.manifest.get("source", {})
    from rexdeploy.extras import has_build, require_build

    if reference == "torch":
        require_build("--reference torch")
    if reference in ("auto", "torch") and has_build():  # a device-side install: float.onnx
        from rexdeploy.evaluate.torch_runner import TorchRunner, source_available

        if source_available(source):
            return TorchRunner(source, art.manifest), f"torch ({source['kind']})"
        if reference == "torch":
            raise UserError(f"the source model {source.get('path')} is not available (moved or "
                            "changed since the build)", "use --reference onnx")
    import backends
    from backends.base import RunOptions

    return (backends.get("reference").runner(art.path, {"onnx": art.files["float_onnx"]},
                                             RunOptions()), "float ONNX (onnxruntime)")


def artifact_runner(art: Artifact | str, backend: str | None = None, *,
                    threads: int | None = None, precision: str = "f32"):
    """A runner (context manager with infer/timings/throughput) over the artifact's compiled
    model on its own backend (or `backend="reference"`: ONNX Runtime on its Q/DQ ONNX).
    threads: inference threads per compiled model (None: the runtime's choice)."""
    if isinstance(art, str):
        art = load_artifact(art)
    return _artifact_runner(art, backend, threads=threads, precision=precision)


def _artifact_runner(art: Artifact, backend: str | None, *, threads: int | None = None,
                     precision: str = "f32"):
    from backends.base import RunOptions

    name = backend or art.target
    if name == art.target and art.manifest.get("engine") == "deferred":
        name = "reference"  # no engine yet: its Q/DQ ONNX through ONNX Runtime
    options = RunOptions(device=art.manifest.get("device", "CPU") if name != "reference"
                         else "CPU", threads=threads, precision=precision)
    b = usable_backend(art, name)
    if art.manifest.get("ensemble"):
        return ensemble_runner(art, b, options)
    if name == "reference":
        return b.runner(art.path, {"onnx": art.files["onnx"]}, options)
    return b.runner(art.path, art.files, options)


def usable_backend(art: Artifact, name: str):
    """The backend `name` if it can run this artifact here (its own target, or reference)."""
    import backends

    if name not in (art.target, "reference"):
        raise UserError(f"--backend {name}: this artifact was built for {art.target}; use "
                        f"{art.target} or reference")
    b = backends.get(name)
    ok, why = b.available()
    if not ok:
        raise UserError(f"{name} is unavailable here: {why}")
    if name == art.target:
        refuse_if_crashed(art)
    return b


def refuse_if_crashed(art: Artifact) -> None:
    """A UserError where the build's device check saw the artifact's runtime crash on it on
    this CPU, under the same ISA cap and runtime version: running it again would take this
    process down with it (rexdeploy/evaluate/device_check.py)."""
    if not ((art.manifest.get("summary") or {}).get("device_check") or {}).get("crashed"):
        return
    check = art.report().get("device_check") or {}
    from rexdeploy.evaluate.device_check import crash_host

    if check.get("host") == crash_host(art.target):
        raise UserError(f"the build's device check saw this artifact crash here: "
                        f"{check['skipped']}",
                        "`rexdeploy compare ART --backend reference` runs its Q/DQ ONNX in ONNX "
                        "Runtime instead; run the artifact itself on the target CPU or with "
                        "another runtime version")


def ensemble_runner(art: Artifact, b, options):
    """Every member on its own runner, run concurrently: each with cores // members threads,
    and (when every member can have a core of its own) cores reserved so members never share."""
    from dataclasses import replace as _replace

    import backends
    from backends.ensemble import EnsembleRunner

    name = b.name
    members = art.manifest["ensemble"]["members"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = options.threads or max(1, (cores or 1) // len(members))
    pin = backends.rules(name).pins_cores and (cores or 1) >= len(members)
    opts = _replace(options, threads=threads, reserve_cores=pin)
    runners = []
    for m in members:
        files = dict(m["files"])
        if name == "reference":
            files = {"onnx": files["onnx"]}
        runners.append(b.runner(art.path, files, opts))
    return EnsembleRunner(runners, [m["weight"] for m in members], [m["name"] for m in members])
