"""`rexdeploy backends`: the targets and whether their runtimes are available here."""

from __future__ import annotations

import click

from rexdeploy.cli.common import console, user_errors


@click.command("backends")
@user_errors
def backends_cmd():
    """List the targets and whether their runtimes are available here."""
    import backends
    from rich.table import Table

    table = Table(title="rexdeploy targets")
    for col in ("target", "status", "details"):
        table.add_column(col)
    for name, ok, why in backends.status():
        if not ok and backends.rules(name).defers:
            table.add_row(name, "[yellow]deferred[/]", f"{why}; builds write the ONNX and "
                          "build_engine.sh for the device")
        else:
            table.add_row(name, "[green]available[/]" if ok else "[red]unavailable[/]", why)
    console().print(table)
