#!/usr/bin/env python
"""Fine-tune a trained backbone on new data and classes, end to end or with local learning.

--init is where the weights come from:

* a catalogue tag with weights (hpff_resnet32.fmnist_infopro_k16_hpff; `python -m hpff_zoo.hub
  list` shows them), or its model_cards/<tag> folder;
* the --output-dir of a recipes run, or any folder with model.safetensors + config.json;
* a Hub model: hf-hub:org/name (or org/name), hpff-zoo or plain timm;
* any timm model name, with timm's pretrained weights unless --no-pretrained.

Only the backbone is kept; its classifier is replaced for the new number of classes. --method
e2e trains with plain backprop, any other method wraps the backbone in K gradient-isolated
modules with fresh auxiliary networks.

    python recipes/finetune.py --init hpff_resnet32.fmnist_infopro_k16_hpff --dataset mnist5k
    python recipes/finetune.py --init output/cifar --dataset fashion_mnist --method e2e
    accelerate launch recipes/finetune.py --init hf-hub:timm/resnet50.a1_in1k --dataset /data/pets
    python recipes/finetune.py --init resnet18 --no-pretrained --dataset cifar10 --method dgl
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import timm
from loop import PRESETS, train
from torch import nn

import hpff_zoo
from hpff_zoo.choices import closest
from hpff_zoo.data import model_in_chans
from hpff_zoo.hub import load_model
from hpff_zoo.models import HPFF_MODELS, TAGS, NoWeightsError
from hpff_zoo.training import (
    WEIGHTS_ERRORS,
    CommandLine,
    RunConfig,
    RunError,
    first_line,
    input_channels,
    local_model_kwargs,
    option,
)

DEFAULTS = dict(
    dataset="mnist5k",
    method="e2e",
    num_modules=4,
    epochs=30,
    batch_size=128,
    lr=0.01,
    output_dir="output/finetune",
)


@dataclass
class FinetuneConfig(RunConfig):
    """The recipes' settings, and where the weights come from."""

    init: str | None = option(
        help="catalogue tag, model_cards/<tag> or run folder, hf-hub:<id>, or timm model "
        "(required)",
        group="starting point",
    )
    pretrained: bool = option(  # a fine-tune starts from weights: on unless --no-pretrained
        True,
        "load timm's pretrained weights for a timm model name",
        group="starting point",
        action=argparse.BooleanOptionalAction,
    )

    def published_tag(self) -> None:
        """A fine-tune is a new model: never published as the catalogue tag it started from."""
        return None


def _is_hpff_folder(path: Path) -> bool:
    """A folder written by hpff_zoo (a run or an export): its config rebuilds a LocalModel."""
    config = json.loads((path / "config.json").read_text())
    return config.get("architecture") in HPFF_MODELS or "local_learning" in config


def _source(init: str) -> tuple[str, bool]:
    """(what to load, whether it is hpff_zoo's format) for ``--init``."""
    path = Path(init).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise RunError(
                f"--init {path}: no config.json (expected a recipes --output-dir, a "
                "model_cards/<tag> folder or a timm export)"
            )
        return str(path), _is_hpff_folder(path)
    if init in TAGS:
        return init, True
    if "/" in init and ":" not in init:  # a bare Hub id: org/name
        return f"hf-hub:{init}", False
    return init, False


def load_backbone(args: FinetuneConfig, num_classes: int) -> nn.Module:
    """The timm backbone --init names, with a fresh ``num_classes`` classifier."""
    name, hpff_format = _source(args.init)
    kwargs = {} if args.in_chans == "auto" else {"in_chans": input_channels(args, 3)}
    try:
        if hpff_format:  # a LocalModel in its trained setting: keep its backbone
            model = load_model(name, with_aux=False, **kwargs).backbone
        else:
            pretrained = args.pretrained or name.startswith(("hf-hub:", "local-dir:"))
            if Path(name).is_dir():
                name = f"local-dir:{name}"
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except NoWeightsError as error:  # nothing to download: another tag or a fresh start
        raise RunError(f"--init {args.init}: {error.retold(_fresh_start(args, name))}") from None
    except WEIGHTS_ERRORS as error:  # offline, gated, unreadable
        raise RunError(
            f"could not load the weights of --init {args.init} ({first_line(error)}). "
            "Pass --init a tag with weights (python -m hpff_zoo.hub list), a local folder with "
            "model.safetensors + config.json (e.g. the --output-dir of recipes/cifar.py), "
            f"download the weights once with network access, or {_fresh_start(args, name)}."
        ) from None
    except (RuntimeError, ValueError) as error:
        raise RunError(f"--init {args.init}: {first_line(error)}") from None
    if isinstance(model, hpff_zoo.LocalModel):  # an hf-hub: id of an hpff_zoo export
        model = model.backbone
    model.reset_classifier(num_classes)
    return model


def _fresh_start(args: FinetuneConfig, name: str) -> str:
    """The last advice when --init's weights cannot be read: how to start without them.

    --no-pretrained only drops timm's weights for a timm model name; a tag, folder or Hub id is
    its weights, so for those it would not help and the tag's bare architecture is named."""
    if name in TAGS:
        arch = TAGS[name].arch
        return f"start {arch} from fresh weights: --init {arch} --no-pretrained"
    if (
        args.pretrained
        and not name.startswith(("hf-hub:", "local-dir:"))
        and not Path(name).is_dir()
    ):
        return "use --no-pretrained"
    return "start from a timm model name with --no-pretrained"


def _missing_folder(init: str) -> str | None:
    """A path that names no folder (``./run``, or ``output/cifar`` where ``output/`` exists) is
    a typo, not a Hub id: say so, with the closest folders beside it, before any Hub lookup."""
    path = Path(init).expanduser()
    beside = path.parent.is_dir() and ":" not in init and path.parent != Path(".")
    if path.is_dir() or not (init.startswith((".", "/", "~")) or beside):
        return None
    folders = [p.name for p in path.parent.glob("*") if p.is_dir()] if path.parent.is_dir() else []
    near = [str(path.parent / name) for name in closest(path.name, folders)]
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    return f"--init {init}: no such folder{hint}"


def build_model(args: FinetuneConfig, data) -> hpff_zoo.LocalModel:
    backbone = load_backbone(args, data.num_classes)
    channels = model_in_chans(backbone)
    input_size = (channels, args.img_size, args.img_size) if args.img_size else None
    return hpff_zoo.from_timm(backbone, input_size=input_size, **local_model_kwargs(args))


def main(argv: list[str] | None = None) -> dict:
    cli = CommandLine(FinetuneConfig, __doc__, DEFAULTS, PRESETS, hidden=("model",))
    config = cli.parse(argv)
    if config.init is None:
        cli.error("--init is required: where the weights to fine-tune come from")
    if config.model:
        cli.error("finetune.py starts from --init; --model is for cifar.py / imagenet.py")
    if config.memory_budget:
        cli.error(
            "--memory-budget plans hpff_* models in cifar.py / imagenet.py; give "
            "finetune.py --num-modules and --pff"
        )
    if missing := _missing_folder(config.init):
        cli.error(missing)
    if not Path(config.init).expanduser().is_dir() and "/" not in config.init:
        cli.check_model_name(config.init, "--init")  # hf-hub: and org/name ids have a "/"
    config.model = config.init
    return train(config, build_model)


if __name__ == "__main__":
    main()
