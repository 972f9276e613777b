"""Stage logging: a spinner while a stage runs, one line with its duration when it ends."""

from __future__ import annotations

import contextlib
import time


class StageLog:
    """Runs named stages, shows progress on stderr, and records each stage's seconds."""

    def __init__(self, quiet: bool = False):
        from rich.console import Console

        self.console = Console(stderr=True, quiet=quiet, highlight=False)
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}  # process CPU time (all threads) per stage

    @contextlib.contextmanager
    def stage(self, name: str, detail: str = ""):
        start, cpu = time.perf_counter(), time.process_time()
        label = f"{name}{' · ' + detail if detail else ''}"
        status = self.console.status(label) if self.console.is_terminal else \
            contextlib.nullcontext()
        with status:
            yield self
        elapsed = time.perf_counter() - start
        self.seconds[name] = round(elapsed, 3)
        self.cpu_seconds[name] = round(time.process_time() - cpu, 3)
        self.console.print(f"[green]✓[/] {label} [dim]{elapsed:.2f} s[/]")

    def note(self, text: str) -> None:
        self.console.print(f"  [yellow]![/] {text}")

    def info(self, text: str) -> None:
        self.console.print(f"  {text}")

