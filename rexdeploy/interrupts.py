"""Ctrl-C and SIGTERM: the running command unwinds, cleans up, and exits 130 or 143.

Python turns SIGINT into KeyboardInterrupt, so `with ArtifactWriter(...)` removes its temporary
directory. SIGTERM (what `kill`, `timeout`, systemd and container runtimes send) would end the
process on the spot and leave the temporary directory behind; inside `signals_as_interrupts()`
it raises `Terminated`, a KeyboardInterrupt, so the same cleanup runs.

Some libraries catch the KeyboardInterrupt raised inside their callbacks and re-raise it as
their own error (OpenVINO's ONNX frontend turns it into a conversion failure): the handlers
also record the signal, so `interrupted_by` still tells an interrupt from a real failure.

SIGKILL cannot be caught: a killed build can leave a hidden `.NAME.tmp-*` directory next to its
output (never a half-written artifact under the real name), which is safe to delete.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_received: list[int] = []

# What SIGINT/SIGTERM become when the block ends. None: whatever was there before (tests run
# commands in-process and need their handlers back). `rexdeploy.cli.main` sets SIG_IGN: once the
# command has finished its result stands, and a signal during the interpreter's teardown must
# neither kill the process by the signal (exit -15/-2) nor turn a success into "Aborted!".
after_command = None


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM arrives inside `signals_as_interrupts()`."""


def _handler(signum, frame):
    _received.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def signals_as_interrupts():
    """While the block runs, SIGINT raises KeyboardInterrupt and SIGTERM `Terminated`, and
    both are recorded. A no-op outside the main thread (only it can set handlers)."""
    _received.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            # nested blocks hand back to the outer one's handler
            keep = after_command is None or handler is _handler
            signal.signal(s, handler if keep else after_command)


def interrupted_by(exc: BaseException) -> int | None:
    """The signal number that stopped the command: from `exc` itself, or one recorded while it
    ran (when a library re-raised the interrupt as another error). None: not interrupted."""
    if isinstance(exc, Terminated):
        return signal.SIGTERM
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    return _received[-1] if _received else None


def exit_code(signum: int) -> int:
    """128 + the signal number, what shells report: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum)
