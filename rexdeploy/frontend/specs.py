"""Match the user's `--input` specs to what the model declares, before any export work.

Torch modules declare only their forward arguments: specs are required, map positionally, and
their count must fit the signature. ONNX graphs and torch.export programs declare names, shapes
and dtypes: user specs must name real inputs, agree on dtype, rank and every static dim; a
dynamic model dim may be fixed by an integer or renamed by a name. Inputs the user does not
mention keep what the model declares.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

from rexdeploy.errors import UserError
from rexdeploy.inputspec import DTYPES, InputSpec

_NOT_A_DIM_CHAR = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class Declared:
    """An input as the model declares it. `shape` is None when the rank is unknown; a dim is
    an int, a symbol name, or None (dynamic and unnamed)."""

    name: str
    shape: tuple[int | str | None, ...] | None
    dtype: str


def forward_arity(module) -> tuple[list[str], int, int | None]:
    """(argument names, required count, maximum count or None for *args) of `module.forward`."""
    import torch

    if isinstance(module, torch.jit.ScriptModule):
        args = module.forward.schema.arguments[1:]  # [0] is self
        return [a.name for a in args], sum(not a.has_default_value() for a in args), len(args)
    params = list(inspect.signature(module.forward).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    required = sum(p.default is p.empty for p in positional)
    return [p.name for p in positional], required, None if varargs else len(positional)


def specs_for_module(module, specs: tuple[InputSpec, ...], what: str) -> tuple[InputSpec, ...]:
    """Check `specs` against the forward signature; they map to its arguments in order."""
    names, required, maximum = forward_arity(module)
    shown = ", ".join(names) or "no arguments"
    if not specs:
        example = " ".join(f"--input {n}:1x3x224x224" for n in names[:max(required, 1)])
        raise UserError(f"a {what} carries no input shapes: it needs --input NAME:SHAPE for "
                        f"each forward argument ({shown})",
                        hint=f"e.g. {example or '--input x:1x3x224x224'} (named dims such as "
                             "Bx3x224x224 become dynamic)")
    if len(specs) < required or (maximum is not None and len(specs) > maximum):
        expected = f"{required}" if maximum == required else \
            f"{required} to {maximum if maximum is not None else 'any number of'}"
        plural = "" if expected == "1" else "s"
        raise UserError(f"the model's forward takes {expected} input{plural} ({shown}); --input "
                        f"gives {len(specs)} ({', '.join(s.name for s in specs)})",
                        hint="give one --input per forward argument, in order")
    for position, spec in enumerate(specs):
        if spec.name in names and names.index(spec.name) != position:
            raise UserError(f"--input {spec.name} is given as input {position + 1}, but it is "
                            f"argument {names.index(spec.name) + 1} of forward({shown})",
                            hint="--input maps to forward's arguments in order; reorder them")
    return specs


def match_declared(declared: list[Declared], specs: tuple[InputSpec, ...],
                   what: str) -> tuple[InputSpec, ...]:
    """The final specs, in the model's input order."""
    by_name = {d.name: d for d in declared}
    unknown = [s.name for s in specs if s.name not in by_name]
    if unknown:
        raise UserError(f"--input {', '.join(unknown)}: the {what} has no such input",
                        hint=f"its inputs are: {', '.join(by_name) or 'none'}")
    given = {s.name: s for s in specs}
    return tuple(_merge(d, given.get(d.name), what) for d in declared)


def _merge(declared: Declared, spec: InputSpec | None, what: str) -> InputSpec:
    shown = _shape_text(declared.shape)
    if spec is None:
        if declared.shape is None:
            raise UserError(f"the {what} does not say the shape of input {declared.name}",
                            hint=f"give it: --input {declared.name}:1x3x224x224")
        return InputSpec(declared.name, tuple(_dim_name(declared.name, i) if d is None else d
                                              for i, d in enumerate(declared.shape)),
                         declared.dtype)
    if spec.dtype != declared.dtype:
        raise UserError(f"--input {spec}: input {spec.name} is {declared.dtype} in the {what}, "
                        f"not {spec.dtype}",
                        hint=f"write --input {spec.name}:{_shape_text(spec.shape)}:"
                             f"{declared.dtype}")
    if declared.shape is None:
        return spec
    if len(spec.shape) != len(declared.shape):
        raise UserError(f"--input {spec}: input {spec.name} has {len(declared.shape)} dims "
                        f"({shown}) in the {what}, not {len(spec.shape)}",
                        hint=f"use its shape, e.g. --input {spec.name}:{shown}")
    for i, (want, have) in enumerate(zip(spec.shape, declared.shape)):
        if isinstance(have, int) and want != have:
            raise UserError(f"--input {spec}: dim {i} of {spec.name} is fixed at {have} in the "
                            f"{what} (model shape {shown}); --input asks for {want}",
                            hint=f"use --input {spec.name}:{shown}, or re-export the model with "
                                 "that dim dynamic")
    return spec


def _dim_name(input_name: str, index: int) -> str:
    return f"{_NOT_A_DIM_CHAR.sub('_', input_name)}_dim{index}"


def _shape_text(shape) -> str:
    if shape is None:
        return "?"
    return "x".join("?" if d is None else str(d) for d in shape) or "scalar"


def dtype_name(onnx_or_torch_dtype: str, input_name: str, what: str) -> str:
    """Map a dtype's name (`FLOAT`, `torch.int64`, ...) onto an InputSpec dtype."""
    key = str(onnx_or_torch_dtype).lower().replace("torch.", "")
    name = {"float": "float32", "float32": "float32", "float16": "float16", "half": "float16",
            "int64": "int64", "long": "int64", "int32": "int32", "int": "int32", "bool": "bool",
            "uint8": "uint8"}.get(key)
    if name is None or name not in DTYPES:
        raise UserError(f"input {input_name} of the {what} has dtype {onnx_or_torch_dtype}, "
                        f"which rexdeploy does not feed (supported: {', '.join(DTYPES)})",
                        hint="wrap the model so that its inputs use a supported dtype")
    return name
