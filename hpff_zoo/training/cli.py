"""The command line of a training recipe, built from :class:`~hpff_zoo.training.RunConfig`.

:class:`CommandLine` turns a config dataclass into an ``argparse`` parser (one flag per field,
grouped and documented as the field says), applies a preset, parses, checks what can be checked
before any data is read, and returns the dataclass. Defaults come in three layers, each
replacing the one before: the field's, the recipe's (its paper values), then a preset's; flags
given on the command line win over all three.

Presets are small YAML files: a mapping from flag names (``batch_size`` or ``batch-size``) to
values. A recipe names its preset directory and, with ``preset_from``, the preset a run gets
without ``--preset`` (``"{dataset}"``: the one named after the dataset, when there is one;
``{model}`` reads a catalogue tag as its architecture, whose schedule it trains with).

User mistakes are one line (``prog: error: ... (see --help)``, status 2), never a traceback
or the usage of ~50 flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, NoReturn, TypeVar

import timm
import yaml

from ..choices import OneLineParser
from ..data import EMBEDDED, KNOWN_DATASETS
from ..models import HPFF_MODELS, TAGS, TIMM_BACKBONES
from .build import hilo_too_long
from .config import RunConfig

__all__ = ["CommandLine", "HelpFormatter", "suggest"]

HELP_FLAGS = ("-h", "--help")
Config = TypeVar("Config", bound=RunConfig)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Options and their help on one line (help from column 32), each help ending with the
    default that applies: the recipe's, or its preset's, since the preset is set first.

    A help's own "(default: ...)" says what happens when the flag has no value; a recipe or
    preset that sets one replaces that text, so the help names one default, not two."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        if (
            any(action.default is v for v in (None, False, argparse.SUPPRESS))
            or "%(default)" in help
        ):
            return help
        return help.split(" (default: ")[0] + " (default: %(default)s)"


def suggest(name: str, candidates: Sequence[str]) -> str:
    """``"; did you mean a or b?"`` for the closest ``candidates``, or ``""``."""
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


class CommandLine(Generic[Config]):
    """A recipe's command line: ``CommandLine(RunConfig, __doc__, defaults, presets).parse()``.

    ``hidden`` names fields that are parsed but left out of ``--help`` (a flag the recipe
    refuses in one line rather than with argparse's "unrecognized arguments")."""

    def __init__(
        self,
        config_class: type[Config],
        description: str,
        defaults: dict[str, Any],
        preset_dir: Path,
        *,
        preset_from: str | None = None,
        hidden: Sequence[str] = (),
    ) -> None:
        self.config_class, self.preset_dir, self.preset_from = config_class, preset_dir, preset_from
        self.parser = OneLineParser(
            description=description, formatter_class=HelpFormatter, epilog=self._epilog()
        )
        groups: dict[str, argparse._ArgumentGroup] = {}
        for spec in dataclasses.fields(config_class):
            meta = dict(spec.metadata)
            group = meta.pop("group")
            if group not in groups:
                groups[group] = self.parser.add_argument_group(group)
            help = meta.pop("help")
            if spec.name == "preset":
                help = help.format(preset_dir=self._shown_dir(), presets=", ".join(self.names()))
            groups[group].add_argument(
                "--" + spec.name.replace("_", "-"),
                help=argparse.SUPPRESS if spec.name in hidden else help,
                default=spec.default,
                **meta,
            )
        self.parser.set_defaults(**defaults)

    def _shown_dir(self) -> str:
        return f"{self.preset_dir.parent.name}/{self.preset_dir.name}/"

    def names(self) -> list[str]:
        """The presets in the recipe's preset directory."""
        return sorted(p.stem for p in self.preset_dir.glob("*.yaml"))

    def _epilog(self) -> str:
        """The presets and what each sets, so ``--help`` shows every schedule a run may get."""
        default = ""
        if self.preset_from:
            default = f"; without --preset a run gets the one named {self.preset_from}, if any"
        lines = [f"presets (in {self._shown_dir()}{default}):"]
        for name in self.names():
            values = yaml.safe_load((self.preset_dir / f"{name}.yaml").read_text()) or {}
            lines.append(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
        return "\n".join(lines)

    def error(self, message: str) -> NoReturn:
        """Stop with ``message`` as the one line a flag mistake gets (status 2)."""
        self.parser.error(message)

    def load_preset(self, name: str) -> dict[str, Any]:
        """Defaults from a preset file (path, or name in the preset directory)."""
        path = Path(name) if name.endswith((".yaml", ".yml")) else self.preset_dir / f"{name}.yaml"
        if not path.is_file():
            self.error(f"no preset {name!r} (looked for {path}); available: {self.names()}")
        values = {
            key.replace("-", "_"): value
            for key, value in (yaml.safe_load(path.read_text()) or {}).items()
        }
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(self.config_class)})
        if unknown:
            self.error(f"preset {path} sets unknown flags: {', '.join(unknown)}")
        return values

    def parse(self, argv: Sequence[str] | None = None) -> Config:
        """The run's configuration from ``argv`` (default: ``sys.argv[1:]``), checked.

        The preset is chosen from a first pass without ``--help``, so that ``--help`` (also with
        ``--dataset X``) lists the defaults the run would really get."""
        argv = list(sys.argv[1:] if argv is None else argv)
        first, _ = self.parser.parse_known_args([a for a in argv if a not in HELP_FLAGS])
        preset = first.preset
        if preset is None and self.preset_from is not None:
            fields = vars(first) | {"model": str(first.model).split(".")[0]}  # a tag: its arch's
            candidate = self.preset_from.format(**fields)  # paths and Hub ids never match
            if "/" not in candidate and (self.preset_dir / f"{candidate}.yaml").is_file():
                preset = candidate
        if preset:
            self.parser.set_defaults(**self.load_preset(preset))
        namespace = self.parser.parse_args(argv)
        namespace.preset = preset
        config = self.config_class(
            **{f.name: getattr(namespace, f.name) for f in dataclasses.fields(self.config_class)}
        )
        self.check(config)
        return config

    def check(self, config: RunConfig) -> None:
        """Refuse flag combinations that cannot work, before any data is read or file written."""
        output = Path(config.output_dir)
        if output.exists() and not output.is_dir():
            self.error(f"--output-dir {output} is a file, not a directory")
        if config.model is not None:
            self.check_model_name(config.model, "--model")
        k = config.num_modules
        if k and config.hilo > k and config.method != "e2e":
            self.error(hilo_too_long(config.hilo, k, f"--num-modules {k}"))
        if config.batch_size % (config.grad_accum or 1):
            self.error(f"--batch-size {config.batch_size} is not a multiple of --grad-accum "
                       f"{config.grad_accum}")  # fmt: skip
        dataset = config.dataset
        path_like = dataset.startswith((".", "/", "~")) or Path(dataset).expanduser().exists()
        known = sorted({EMBEDDED, *KNOWN_DATASETS})
        if not path_like and "/" not in dataset and dataset not in known:
            self.error(
                f"unknown dataset {dataset!r}{suggest(dataset, known)} Short names: "
                f"{', '.join(known)}; Hub datasets are org/name; local data is a path"
            )

    def check_model_name(self, name: str, flag: str) -> None:
        """An unknown timm model or catalogue tag is one line with the closest names."""
        if ":" in name:  # hf-hub:org/name, local-dir:path: timm resolves (and reports) those
            return
        architecture, _, tag = name.partition(".")
        if architecture in HPFF_MODELS and tag:
            if name not in (tags := [*TIMM_BACKBONES, *TAGS]):
                own = [t for t in tags if t.startswith(f"{architecture}.")]
                self.error(f"{flag} {name}: no such tag{suggest(name, own)} Tags of "
                           f"{architecture}: {', '.join(own) or 'none'}")  # fmt: skip
        elif not timm.is_model(name):
            models = sorted({*HPFF_MODELS, *timm.list_models()})
            self.error(
                f"{flag} {name}: unknown model{suggest(name, models)} (hpff_* models: "
                f"{', '.join(HPFF_MODELS)}; timm.list_models() lists the others)"
            )
