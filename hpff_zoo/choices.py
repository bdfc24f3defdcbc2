"""One way to refuse a name that is not one of the valid ones: say which, and the closest.

Every entry point (the ``hpff_*`` models, :func:`hpff_zoo.from_timm`, the benchmark, hub and
planner command lines) refuses a misspelt method, preset, model or configuration name in the
same one line, so that a user who typed ``dlg`` reads ``did you mean 'dgl'?`` instead of a list
to scan or an error from deep inside the build.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

__all__ = [
    "TIMM_KWARGS",
    "OneLineParser",
    "closest",
    "did_you_mean",
    "hpff_model",
    "no_such_file",
    "one_of",
    "positive_int",
    "unknown_keyword",
    "unknown_name",
]

# Keywords timm.create_model takes for most models: the near names of a misspelt keyword.
TIMM_KWARGS = (
    "pretrained", "num_classes", "in_chans", "global_pool", "drop_rate", "drop_path_rate",
    "img_size", "features_only", "out_indices", "pretrained_cfg", "pretrained_cfg_overlay",
    "checkpoint_path", "cache_dir",
)  # fmt: skip


def closest(name: object, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` of ``candidates`` nearest to ``name`` (case-insensitive), best first."""
    candidates = list(candidates)
    by_lower = {c.lower(): c for c in candidates}
    matches = difflib.get_close_matches(str(name).lower(), list(by_lower), n=n, cutoff=0.6)
    return [by_lower[m] for m in matches]


def did_you_mean(name: object, candidates: Iterable[str]) -> str:
    """``"; did you mean 'a' or 'b'?"`` for the closest ``candidates``, or ``""``."""
    near = closest(name, candidates)
    return f"; did you mean {' or '.join(repr(c) for c in near)}?" if near else ""


def unknown_keyword(error: TypeError, candidates: Iterable[str]) -> TypeError | None:
    """``error`` retold with the closest of ``candidates`` when it is Python's "got an
    unexpected keyword argument 'x'", else ``None``.

    timm hands keywords it does not know down to the backbone's constructor, whose error names
    the backbone's class (``CifarResNet.__init__()``), not the model the user asked for, nor the
    local-learning option they misspelt (``num_module``)."""
    match = re.search(r"unexpected keyword argument '(\w+)'", str(error))
    if match is None:
        return None
    hint = did_you_mean(match.group(1), candidates)
    return TypeError(f"unknown keyword argument {match.group(1)!r}{hint or f' ({error})'}")


def unknown_name(what: str, name: object, candidates: Iterable[str], listed: int = 12) -> str:
    """``unknown WHAT 'name'; did you mean ...?`` with the valid names when they are few.

    ``listed`` caps the valid names spelled out (timm has over a thousand models: those get
    only the closest ones).
    """
    candidates = sorted(set(candidates))
    message = f"unknown {what} {name!r}{did_you_mean(name, candidates)}"
    if len(candidates) <= listed:
        message += f" (choose from {', '.join(candidates)})"
    return message


# --- argparse: a bad flag value is one line, before any work ----------------------------------


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``prog: error: ... (see --help)``.

    argparse prints the usage first, a screen of flags for the recipes and benchmarks that
    buries the one line saying what was wrong. Subcommands' parsers (``add_subparsers``) are of
    the same class, so every command of a CLI built on it answers the same way."""

    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):  # argparse names no close flag for a misspelt one
            flags = [f for f in message[len(prefix) :].split() if f.startswith("--")]
            near = [c for flag in flags for c in closest(flag, self._option_string_actions, 1)]
            if near:
                message += f"; did you mean {' or '.join(near)}?"
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def _check_value(self, action: argparse.Action, value: object) -> None:
        """argparse's choice check, with the closest choices named: its own "invalid choice"
        line lists them all and leaves the user to spot ``list`` in ``lst``."""
        choices = action.choices
        if choices is None or value in choices:
            return
        hint = did_you_mean(value, [str(choice) for choice in choices])
        listed = ", ".join(repr(choice) for choice in choices)
        message = f"invalid choice: {value!r}{hint} (choose from {listed})"
        raise argparse.ArgumentError(action, message)


def positive_int(text: str) -> int:
    """``type=`` of a count flag (batch size, K, resolution, classes, repetitions)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def hpff_model(text: str) -> str:
    """``type=`` of a ``--model`` flag that builds an ``hpff_*`` model with local options."""
    import timm

    names = timm.list_models("hpff_*")
    if text not in names:
        other = "; wrap other timm models with hpff_zoo.from_timm" if timm.is_model(text) else ""
        raise argparse.ArgumentTypeError(unknown_name("hpff_* model", text, names) + other)
    return text


def one_of(what: str, names: Iterable[str]):
    """``type=`` of a flag that takes one of ``names``, refused with the closest ones."""
    names = tuple(names)

    def check(text: str) -> str:
        if text not in names:
            raise argparse.ArgumentTypeError(unknown_name(what, text, names))
        return text

    check.__name__ = what.replace(" ", "_")
    return check


def no_such_file(text: str) -> str | None:
    """``None`` if ``text`` names a file, else ``"no such file 'x'"`` with the closest files
    beside it: a misspelt config path (``..._hpff-k4.py`` for ``..._hpff_k4.py``) would
    otherwise surface as a ``FileNotFoundError`` traceback from inside the config loader.
    A URL (``scheme://``, which mmengine's checkpoint loader reads) is not checked."""
    path = Path(text).expanduser()
    if path.is_file() or "://" in text:
        return None
    files = [p.name for p in path.parent.glob("*") if p.is_file()] if path.parent.is_dir() else []
    near = [str(path.parent / name) for name in closest(path.name, files)]
    return f"no such file {text!r}" + (f"; did you mean {' or '.join(near)}?" if near else "")
