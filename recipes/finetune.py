#!/usr/bin/env python
"""Fine-tune a trained backbone on new data and classes, end to end or with local learning.

--init is an hpff_zoo export (a directory with model.safetensors + config.json, such as the
--output-dir of recipes/cifar.py), a Hub model (org/name or hf-hub:org/name), or any timm model
name (with timm's pretrained weights unless --no-pretrained). The classifier is replaced for the
new number of classes; --method e2e trains with plain backprop, any other method wraps the
backbone in K gradient-isolated modules with fresh auxiliary networks.

    python recipes/finetune.py --init output/cifar --dataset fashion_mnist --method e2e
    accelerate launch recipes/finetune.py --init hf-hub:timm/resnet50.a1_in1k --dataset /data/pets
    python recipes/finetune.py --init resnet18 --no-pretrained --dataset cifar10 --method dgl
"""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
from loop import build_parser, input_channels, local_model_kwargs, parse_args, train

import hpff_zoo
from hpff_zoo.data import model_in_chans

DEFAULTS = dict(
    dataset="mnist5k",
    method="e2e",
    num_modules=4,
    epochs=30,
    batch_size=128,
    lr=0.01,
    output_dir="output/finetune",
)


def load_backbone(args: argparse.Namespace, num_classes: int):
    """The timm backbone named by --init, with a fresh ``num_classes`` head."""
    path = Path(args.init).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SystemExit(f"--init {path}: no config.json (expected a timm/hpff_zoo export)")
        name, pretrained = f"local-dir:{path}", True
    elif "/" in args.init and ":" not in args.init:  # a bare Hub id: org/name
        name, pretrained = f"hf-hub:{args.init}", True
    else:
        name, pretrained = args.init, args.pretrained or args.init.startswith("hf-hub:")
    kwargs = {} if args.in_chans == "auto" else {"in_chans": input_channels(args, 3)}
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise SystemExit(f"--init {args.init}: {error}") from error
        raise
    except OSError as error:  # Hub unreachable, offline mode, gated or missing weights
        raise SystemExit(
            f"could not fetch the weights of {args.init!r} ({error}). Pass --init a local "
            "directory with model.safetensors + config.json (e.g. the --output-dir of "
            "recipes/cifar.py), download the weights once with network access, or use "
            "--no-pretrained."
        ) from error


def build_model(args: argparse.Namespace, data) -> hpff_zoo.LocalModel:
    backbone = load_backbone(args, data.num_classes)
    channels = model_in_chans(backbone)
    input_size = (channels, args.img_size, args.img_size) if args.img_size else None
    return hpff_zoo.from_timm(backbone, input_size=input_size, **local_model_kwargs(args))


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser(__doc__, DEFAULTS)
    start = parser.add_argument_group("starting point")
    start.add_argument("--init", required=True, help="export directory, hf-hub:<id> or timm model")
    start.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="load timm's pretrained weights for a timm model name (default: on)",
    )
    args = parse_args(parser, argv)
    if args.model:
        parser.error("finetune.py starts from --init; --model is for cifar.py / imagenet.py")
    if args.memory_budget:
        parser.error(
            "--memory-budget plans hpff_* models in cifar.py / imagenet.py; give "
            "finetune.py --num-modules and --pff"
        )
    args.model = args.init
    return train(args, build_model)


if __name__ == "__main__":
    main()
