"""The benchmark command line's ``type=`` checks, shared by its subcommands' modules.

Each turns a flag's text into a typed value or refuses it as argparse's one line with the
closest valid names, so that a misspelt configuration, device or backend stops before any model
is built (``benchmark gpu`` on a borrowed device would otherwise spend minutes first).
"""

from __future__ import annotations

import argparse

import torch

from ..choices import positive_int, unknown_name
from ..compiled import check_backend
from .steps import model_kwargs

__all__ = ["backend", "config_list", "device", "int_list"]


def int_list(text: str) -> list[int]:
    """``4`` or ``2,4,8``: positive counts (a K sweep)."""
    return [positive_int(item) for item in text.split(",")]


def config_list(text: str) -> list[str]:
    """``e2e,infopro+hpff:cheap``: configurations, each checked by :func:`model_kwargs`."""
    configs = text.split(",")
    for config in configs:
        try:
            model_kwargs(config)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return configs


def device(text: str) -> str:
    """A device torch can name (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    try:
        torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            unknown_name("device", text, ("cpu", "cuda", "mps"))
        ) from None
    return text


def backend(text: str) -> str:
    """A ``torch.compile`` backend this torch has."""
    try:
        return check_backend(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
