"""The one exception type for user mistakes.

A `UserError` carries a message that says what is wrong and what to do. The CLI prints it on one
line (plus the hint) and exits 1 without a traceback; any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: bad file, bad shape, impossible option combination."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"
