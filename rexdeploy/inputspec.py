"""Model input specifications: `--input name:1x3x224x224[:dtype]`.

Pure Python (no torch import): the CLI validates specs before any heavy work starts.
Dynamic dimensions are given by name (`Bx3x224x224`); they are exported as dynamic axes and
take `example_size` (default 1) when an example tensor has to be made.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rexdeploy.errors import UserError

DTYPES = ("float32", "float16", "int64", "int32", "bool", "uint8")
_ALIASES = {"f32": "float32", "fp32": "float32", "float": "float32", "f16": "float16",
            "fp16": "float16", "half": "float16", "i64": "int64", "long": "int64",
            "i32": "int32", "int": "int32", "u8": "uint8"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/:]*$")
_DIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_ELEMENTS = 2**31  # one input larger than 8 GiB of float32 is a typo, not a model


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, shape (ints, or str for a named dynamic dim) and dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    @property
    def dynamic_dims(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def concrete_shape(self, example_size: int = 1) -> tuple[int, ...]:
        """The shape with every named dim set to `example_size`."""
        return tuple(example_size if isinstance(d, str) else d for d in self.shape)

    def __str__(self) -> str:
        dims = "x".join(str(d) for d in self.shape) or "scalar"
        return f"{self.name}:{dims}:{self.dtype}"

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        return cls(d["name"], tuple(d["shape"]), d.get("dtype", "float32"))


def parse_input_spec(text: str) -> InputSpec:
    """Parse `name:1x3x224x224[:dtype]`. Raises UserError with an example on any mistake."""
    example = "expected NAME:DIMS[:DTYPE], e.g. input:1x3x224x224 or ids:Bx128:int64"
    hint = ("write --input NAME:DIMS[:DTYPE] with the model's input name, dims joined by x "
            "(a name like B for a dynamic dim) and an optional dtype")
    name, dims_text, dtype_text = _split(text.strip())
    if not name or not dims_text:
        raise UserError(f"bad --input {text!r}: {example}", hint)
    if not _NAME.match(name):
        raise UserError(f"bad --input {text!r}: input name {name!r} has characters an ONNX name "
                        f"cannot carry; {example}", "use letters, digits and _ . - / : only")
    dtype = "float32"
    if dtype_text is not None:
        dtype = _ALIASES.get(dtype_text.lower(), dtype_text.lower())
        if dtype not in DTYPES:
            raise UserError(f"bad --input {text!r}: unknown dtype {dtype_text!r}",
                            f"use one of {', '.join(DTYPES)}")
    shape: list[int | str] = []
    for dim in [] if dims_text.lower() == "scalar" else re.split(r"[xX]", dims_text):
        if dim.isdigit():
            if int(dim) <= 0:
                raise UserError(f"bad --input {text!r}: dimension {dim} must be positive",
                                "give a size of 1 or more, or a name (e.g. B) for a dynamic "
                                "dim")
            shape.append(int(dim))
        elif _DIM_NAME.match(dim):
            shape.append(dim)  # a named dynamic dim (names cannot contain 'x')
        else:
            raise UserError(f"bad --input {text!r}: dimension {dim!r} is neither a positive "
                            f"integer nor a name; {example}", hint)
    n = 1
    for d in shape:
        n *= d if isinstance(d, int) else 1
    if n > MAX_ELEMENTS:
        raise UserError(f"bad --input {text!r}: {n:,} elements in one input is more than this "
                        f"tool accepts ({MAX_ELEMENTS:,})",
                        "check the shape for a typo; build with a small example shape (named "
                        "dims stay dynamic)")
    return InputSpec(name, tuple(shape), dtype)


def _split(text: str) -> tuple[str, str, str | None]:
    """NAME, DIMS, DTYPE (or None) of `NAME:DIMS[:DTYPE]`, read from the right: a name may hold
    ":" itself (TensorFlow's `input:0`), dims never do. The last part is a dtype when it does not
    look like dims (digits, names and x) and there are three parts or more."""
    parts = text.split(":")
    if len(parts) < 2:
        return "", "", None
    last = parts[-1]
    is_dtype = last.lower() in DTYPES or last.lower() in _ALIASES or not _DIMS.match(last) or \
        last.lower().startswith(_DTYPE_WORDS) or (
            # one bare word after something shaped like dims: a dtype misspelt, not a dim name
            re.fullmatch(r"[A-Za-z]\w*", last) is not None and "x" not in last.lower()
            and re.fullmatch(r"[0-9]+([xX]\w+)+|[0-9]+", parts[-2]) is not None)
    if len(parts) >= 3 and is_dtype:
        return ":".join(parts[:-2]), parts[-2], last
    return ":".join(parts[:-1]), last, None


_DIMS = re.compile(r"^(scalar|[A-Za-z0-9_]+([xX][A-Za-z0-9_]+)*)$")
# words a dtype starts with, supported or not ("complex64" would otherwise read as dims)
_DTYPE_WORDS = ("float", "double", "half", "int", "uint", "bool", "complex", "bfloat", "string",
                "fp", "bf", "f16", "f32", "f64", "i8", "i16", "i32", "i64", "u8", "u16")


def parse_input_specs(texts: list[str] | tuple[str, ...]) -> tuple[InputSpec, ...]:
    specs = tuple(parse_input_spec(t) for t in texts)
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"--input given twice for {', '.join(dupes)}",
                        "give each input once")
    return specs
