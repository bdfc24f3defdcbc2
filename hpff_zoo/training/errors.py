"""How a training run stops on a mistake it cannot go on with: one line, no traceback.

:class:`RunError` is a ``SystemExit``: a script that does not catch it exits with status 1 and
prints ``error: <message>``, which is what a user of the recipes should see for a missing
dataset or a setting the model cannot take; a program that wants to go on catches it.
"""

from __future__ import annotations

__all__ = ["RunError", "first_line"]


class RunError(SystemExit):
    """A mistake found before (or instead of) training, as the one line ``error: <message>``."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (no traceback, no chained causes)."""
    return (str(error).splitlines() or [type(error).__name__])[0]
