"""How a training run stops on a mistake it cannot go on with: one line, no traceback.

:class:`RunError` is a ``SystemExit``: a script that does not catch it exits with status 1 and
prints ``error: <message>``, which is what a user of the recipes should see for a missing
dataset or a setting the model cannot take; a program that wants to go on catches it.
"""

from __future__ import annotations

from ..models.pretrained import HUB_ERRORS, PretrainedWeightsError

__all__ = ["WEIGHTS_ERRORS", "RunError", "first_line"]

# What loading pretrained weights raises for the user's reasons (no network and no cache, a
# gated or missing repository, a tag without weights, an unreadable file): a recipe turns these
# into one RunError line with advice; anything else is a bug and keeps its traceback.
WEIGHTS_ERRORS = (OSError, PretrainedWeightsError, *HUB_ERRORS)


class RunError(SystemExit):
    """A mistake found before (or instead of) training, as the one line ``error: <message>``."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (no traceback, no chained causes)."""
    return (str(error).splitlines() or [type(error).__name__])[0]
