"""`rexdeploy inspect`: what an artifact holds, and `--check trt` of an ONNX file against
TensorRT's Q/DQ rules."""

from __future__ import annotations

import json
import os
import sys

import click

from rexdeploy.cli.common import console, json_default, user_errors
from rexdeploy.errors import UserError


@click.command()
@click.argument("artifact", type=click.Path())
@click.option("--layers", is_flag=True, help="Per-layer table: quantization, error, runtime "
                                             "precision.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check every file's sha256 against the manifest.")
@click.option("--json", "as_json", is_flag=True, help="Print manifest and report as JSON.")
@click.option("--check", type=click.Choice(["trt"]), help="Check an ONNX file (or the "
              "artifact's model.onnx) against TensorRT's Q/DQ rules; exit 1 on errors.")
@user_errors
def inspect(artifact, layers, verify, as_json, check):
    """Show what ARTIFACT holds: config, versions, int8 coverage, layers kept in float."""
    from rexdeploy import api

    if check:
        _check_trt(artifact, as_json)
        return

    info = api.inspect(artifact, verify=verify)
    if as_json:
        click.echo(json.dumps(info, indent=1, default=json_default))
        return
    from rexdeploy.render import inspect_tables

    for table in inspect_tables(info, layers):
        console().print(table)
    if info["verified"]:
        v = info["verified"]
        click.echo(f"verified: {v['files']} files (sha256), "
                   f"{'manifest digest, ' if v['manifest_digest'] else ''}"
                   f"schema {v['schema_version']}")


def _check_trt(path: str, as_json: bool) -> None:

    from backends.trt_rules import check_trt_rules

    if os.path.isdir(path):
        path = api_artifact_onnx(path)
    if not os.path.isfile(path):
        raise UserError(f"no ONNX file at {path}")
    try:
        result = check_trt_rules(path)
    except Exception as exc:  # not an ONNX file
        raise UserError(f"cannot read {path} as ONNX: {exc}") from None
    if as_json:
        click.echo(json.dumps({"path": path, **result.to_dict()}, indent=1))
    else:
        for finding in result.findings:
            click.secho(str(finding), fg="red" if finding.level == "error" else "yellow")
        click.echo(f"{path}: {len(result.errors)} errors, {len(result.warnings)} warnings "
                   f"against TensorRT's Q/DQ rules")
    if result.errors:
        sys.exit(1)


def api_artifact_onnx(path: str) -> str:
    from rexdeploy.artifact import load_artifact

    return load_artifact(path).file("onnx")
