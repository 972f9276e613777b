"""PyTorch -> float ONNX with BatchNormalization kept (the data-free ranges read its statistics).

nn.Module / TorchScript go through the TorchScript-based exporter with
`training=PRESERVE, do_constant_folding=False`: on an eval model that keeps BatchNormalization
unfused. torch.export programs go through the dynamo exporter with `optimize=False`, which keeps
BatchNormalization as well (checked on TinyCNN and EfficientNet-Lite0).

The exporters' warnings and prints are noise for the user and are silenced, with one exception:
a trace that converted a tensor to a Python bool or number (data-dependent control flow,
`.item()`) is re-checked against the model on other inputs, and a mismatch is a UserError.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings

import numpy as np

from rexdeploy.errors import UserError
from rexdeploy.frontend.specs import Declared, dtype_name
from rexdeploy.inputspec import InputSpec

EXAMPLE_DYNAMIC_SIZE = 2  # a dynamic dim exported at 1 can be specialised away by broadcasting
_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch.fx",
            "onnxscript", "onnx_ir")
_RISKY_TRACE = ("Python boolean", "Python number", "Python float")


def export_module(module, specs: tuple[InputSpec, ...], opset: int):
    """ONNX (onnx_ir.Model) of an nn.Module or ScriptModule called with one tensor per spec."""
    import onnx
    import onnx_ir as ir
    import torch

    module.eval()
    examples = example_tensors(specs)
    outputs = _trial_run(module, examples, specs)
    names = _output_names(outputs)
    buffer = io.BytesIO()
    with quiet() as caught:
        try:
            torch.onnx.export(
                module, tuple(examples), buffer, dynamo=False, opset_version=opset,
                training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                input_names=[s.name for s in specs], output_names=names,
                dynamic_axes={s.name: s.dynamic_dims for s in specs if s.dynamic_dims} or None)
        except Exception as e:  # the exporter's own errors: unsupported ops, failed tracing
            raise _export_error(e) from e
    if not isinstance(module, torch.jit.ScriptModule):
        _check_trace(module, buffer.getvalue(), specs, caught)
    return ir.serde.deserialize_model(onnx.load_from_string(buffer.getvalue()))


def declared_inputs(program) -> list[Declared]:
    """The user inputs of a torch.export program: names, shapes (symbols as names), dtypes."""
    import torch

    user = set(program.graph_signature.user_inputs)
    declared = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user:
            continue
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor):
            raise UserError(f"input {node.name} of the torch.export program is a "
                            f"{type(value).__name__}, not a tensor",
                            hint="export a wrapper whose inputs are all tensors")
        shape = tuple(d if isinstance(d, int) else str(d) for d in value.shape)
        declared.append(Declared(node.name, shape,
                                 dtype_name(str(value.dtype), node.name, "torch.export program")))
    return declared


def export_program(program, opset: int):
    """ONNX (onnx_ir.Model) of a torch.export program; outputs renamed output/output_N."""
    import torch

    _refuse_training_mode(program)
    with quiet():
        try:
            onnx_program = torch.onnx.export(program, (), dynamo=True, opset_version=opset,
                                             optimize=False, verbose=False)
        except Exception as e:
            raise _export_error(e) from e
    model = onnx_program.model
    outputs = list(model.graph.outputs)
    for i, value in enumerate(outputs):
        value.name = "output" if len(outputs) == 1 else f"output_{i}"
    return model


def example_tensors(specs: tuple[InputSpec, ...]) -> list:
    """One tensor per spec: float inputs N(0, 1), integer and bool inputs zeros."""
    import torch

    g = torch.Generator().manual_seed(0)
    tensors = []
    for spec in specs:
        shape = spec.concrete_shape(EXAMPLE_DYNAMIC_SIZE)
        dtype = getattr(torch, spec.dtype)
        if dtype.is_floating_point:
            tensors.append(torch.randn(shape, generator=g).to(dtype))
        else:
            tensors.append(torch.zeros(shape, dtype=dtype))
    return tensors


@contextlib.contextmanager
def quiet():
    """Silence warnings (recorded and yielded), logging, prints and the C++ log on fd 1/2."""
    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    with contextlib.ExitStack() as stack:
        caught = stack.enter_context(warnings.catch_warnings(record=True))
        warnings.simplefilter("always")
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        sink = stack.enter_context(tempfile.TemporaryFile())
        for name in _LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield caught
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def _trial_run(module, examples: list, specs: tuple[InputSpec, ...]) -> list:
    """Run the model once: a wrong shape is the user's error, reported before exporting."""
    import torch

    try:
        with torch.no_grad(), quiet():
            out = module(*examples)
    except Exception as e:
        shown = " ".join(f"--input {s}" for s in specs)
        raise UserError(f"the model fails on inputs {shown}: {_reason(e)}",
                        hint="check the --input shapes and dtypes against what forward "
                             "expects") from e
    flat = _flatten(out)
    if not flat:
        raise UserError("the model returns no tensors; there is nothing to export",
                        hint="return the output tensor(s) from forward")
    return flat


def _flatten(out, key: str | None = None) -> list[tuple[str | None, object]]:
    """(name, tensor) for every tensor in a nest of tuples/lists/dicts, in export order;
    the name is the dict key when a dict holds the tensor directly."""
    import torch

    if isinstance(out, torch.Tensor):
        return [(key, out)]
    if isinstance(out, dict):
        return [item for k, v in out.items() for item in _flatten(v, k if isinstance(k, str)
                                                                  else None)]
    if isinstance(out, (list, tuple)):
        return [item for o in out for item in _flatten(o)]
    return []


def _output_names(flat: list[tuple[str | None, object]]) -> list[str]:
    keys = [k for k, _ in flat]
    if all(keys) and len(set(keys)) == len(keys):
        return keys
    return ["output"] if len(flat) == 1 else [f"output_{i}" for i in range(len(flat))]


def _check_trace(module, onnx_bytes: bytes, specs, caught) -> None:
    """A trace that turned a tensor into a Python bool/number may have baked in one branch or
    one value. Compare the ONNX with the model on inputs unlike the example; refuse on mismatch."""
    import torch

    risky = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)
             and any(k in str(w.message) for k in _RISKY_TRACE)]
    if not risky:
        return
    from rexdeploy.ort_session import session as ort_session

    session = ort_session(onnx_bytes, "the exported ONNX")
    base = example_tensors(specs)
    for probe in (lambda t: -t, lambda t: t * 0.5 + 1.0, lambda t: t * 4.0):
        inputs = [probe(t) if t.is_floating_point() else t for t in base]
        try:
            with torch.no_grad(), quiet():
                expected = [t.numpy() for _, t in _flatten(module(*inputs))]
        except Exception:
            continue  # the model rejects this probe; it proves nothing either way
        got = session.run(None, {s.name: t.numpy() for s, t in zip(specs, inputs)})
        for want, have in zip(expected, got):
            scale = max(1.0, float(np.abs(want).max(initial=0)))
            if want.shape != have.shape or not np.allclose(want, have, rtol=1e-3,
                                                           atol=1e-4 * scale):
                where = f"{os.path.basename(risky[0].filename)}:{risky[0].lineno}"
                raise UserError(
                    "the traced model gives different results than the model on other inputs: "
                    f"forward depends on tensor values (at {where}: "
                    f"{str(risky[0].message).split('.')[0]}), and tracing kept only the branch "
                    "or value of the example input",
                    hint="make forward's control flow independent of tensor values, or save "
                         "the model with torch.jit.script (control flow is kept) or "
                         "torch.export with torch.cond, and give that file")


def _refuse_training_mode(program) -> None:
    for node in program.graph.nodes:
        if node.op == "call_function" and _runs_in_training_mode(node):
            raise UserError(f"the torch.export program was exported in training mode "
                            f"({node.target} runs with training=True)",
                            hint="call model.eval() before torch.export.export and save again")


def _runs_in_training_mode(node) -> bool:
    """aten.batch_norm / native_batch_norm / dropout / native_dropout carry a `training` flag
    (argument 5, resp. 2); the _native_batch_norm_legit variants encode it in their name."""
    target = str(node.target)
    if "batch_norm" in target:
        if "legit" in target:
            return "no_training" not in target
        return len(node.args) > 5 and node.args[5] is True
    if "dropout" in target:
        return len(node.args) > 2 and node.args[2] is True
    return False


def _export_error(e: Exception) -> UserError:
    return UserError(f"the ONNX exporter cannot export this model: {_reason(e)}",
                     hint="replace the unsupported operator or move it out of the model; for a "
                          "nn.Module or TorchScript file, exporting it with torch.export and "
                          "giving the .pt2 uses the newer exporter, which covers more operators")


def _reason(e: BaseException) -> str:
    """The one informative line of an exception (TorchScript puts it last, others first)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    if "TorchScript interpreter" in lines[0] or lines[0].startswith("Traceback"):
        return lines[-1]
    return lines[0]
