"""Helpers shared by the CLI tests."""

from __future__ import annotations


def refused_build(model_file: str, out, args: list[str]) -> str:
    """Run `rexdeploy build` on the tiny CNN with `args` in-process, check it was refused as a
    user error (exit 1, no traceback, nothing written at `out`) and return its output."""
    from click.testing import CliRunner

    from rexdeploy.cli import cli

    result = CliRunner().invoke(cli, ["build", model_file, "--input", "input:1x3x32x32", "-o",
                                      str(out), *args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    return result.output
