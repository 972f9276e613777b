"""Helpers the fidelity benchmarks share: logits from torch and OpenVINO, artifact directory
names, and one table printed on the terminal and as markdown."""

from __future__ import annotations

import numpy as np


def torch_logits(path: str, x: np.ndarray) -> np.ndarray:
    """The TorchScript model at `path` on each row of `x`, batch 1."""
    import torch

    model = torch.jit.load(path).eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[i:i + 1])).numpy()
                               for i in range(len(x))])


def openvino_logits(directory: str, files: dict, x: np.ndarray,
                    precision: str = "f32") -> np.ndarray:
    """The model in `files` (an IR or ONNX) on OpenVINO CPU on each row of `x`, batch 1."""
    import backends
    from backends.base import RunOptions

    with backends.get("openvino").runner(directory, files, RunOptions(precision=precision)) as r:
        return np.concatenate([next(iter(r.infer({"input": x[i:i + 1]}).values()))
                               for i in range(len(x))])


def slug(label: str) -> str:
    """An artifact directory name for a configuration label."""
    return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_") + ".openvino"


def print_table(console, title: str, headers: list[str], cells: list[list[str]],
                markdown: str | None = None) -> None:
    """The rows as a rich table, then as markdown on stdout (and into `markdown` if given)."""
    from rich.table import Table

    table = Table(title=title)
    for h in headers:
        table.add_column(h, justify="left" if h == "configuration" else "right")
    for row in cells:
        table.add_row(*row)
    console.print(table)
    md = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    md += ["| " + " | ".join(row) + " |" for row in cells]
    if markdown:
        with open(markdown, "w") as f:
            f.write("\n".join(md) + "\n")
    print("\n".join(md))
