"""`rexdeploy` command line: one thin click command per verb over rexdeploy.api, one module
each (build, compare, profile, inspect, targets for `backends`), sharing common.py.

Imports nothing heavy at module level: `rexdeploy --help` stays instant (a test checks that
neither torch nor openvino gets imported).
"""

from __future__ import annotations

import os
import sys

import click

from rexdeploy import __version__
from rexdeploy.cli.build import build
from rexdeploy.cli.compare import compare
from rexdeploy.cli.inspect import inspect
from rexdeploy.cli.profile import profile
from rexdeploy.cli.targets import backends_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rexdeploy")
def cli():
    """rexdeploy: data-free quantization compiler for edge targets.

    \b
    Quantize a trained PyTorch model without any data, lower it to a Q/DQ ONNX, compile it for
    OpenVINO or TensorRT, prove which precision each layer really runs in, compare it
    with the float model and profile it.

    \b
    Typical session:
      rexdeploy build model.pt --input input:1x3x224x224 --input-range input:-1,1 -o out/m.openvino
      rexdeploy compare out/m.openvino --inputs photos/
      rexdeploy profile out/m.openvino
      rexdeploy inspect out/m.openvino --layers
    """


for _command in (build, compare, profile, inspect):
    cli.add_command(_command)
cli.add_command(backends_cmd, "backends")


def main(argv: list[str] | None = None) -> None:
    import signal

    from rexdeploy import interrupts

    interrupts.after_command = signal.SIG_IGN
    try:
        cli.main(args=argv, prog_name="rexdeploy")
    except KeyboardInterrupt:  # after the command finished (its output is complete)
        sys.stderr.write("interrupted\n")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    except SystemExit as exc:
        if exc.code in (130, 143):
            # Interrupted; the artifact's temp dir is already gone (ArtifactWriter.__exit__).
            # Skip the interpreter's teardown: an interrupt that landed inside `import torch`
            # or an OpenVINO compile leaves native state whose finalizers can crash (seen:
            # SIGSEGV, or death by the re-raised SIGINT).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.code)
        # The command has finished and its exit code stands: an interrupt during the
        # interpreter's shutdown would otherwise end the process by the signal (exit -2/-15).
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        raise
