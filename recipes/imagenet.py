#!/usr/bin/env python
"""Train an HPFF model on 224-px images: ImageNet-1k, or any image folder / Hub dataset.

    accelerate launch recipes/imagenet.py --model hpff_resnet101 --dataset ILSVRC/imagenet-1k
    accelerate launch recipes/imagenet.py --model hpff_vgg13 --dataset /data/imagenet
    python recipes/imagenet.py --model hpff_resnet152 --dataset /data/in1k --mixed-precision bf16
    python recipes/imagenet.py --model hpff_resnet101.a1h_in1k --pretrained --dataset /data/pets

Defaults are the paper's ImageNet setting for ResNet-101 / ResNet-152 (SGD, Nesterov 0.9, weight
decay 1e-4, batch 128, lr 0.05, cosine over 90 epochs). A preset named imagenet-<model> replaces
them for the other backbones: VGG-13 and ResNeXt-101 32x8d train with batch 64 and lr 0.025; the
ViT-B/16 preset has the supplement's batch 1024 and 200 epochs. The local method, K, HiLo and PFF
default to each hpff_* model's paper values. --pretrained starts local training from the weights
of --model's tag (hpff_<arch>.<timm tag>: timm's ImageNet backbone, fresh auxiliaries). ImageNet
is gated on the Hub: download it once, or keep it as an image folder (train/<wnid>/*.JPEG,
val/<wnid>/*.JPEG) and pass its path.
"""

from __future__ import annotations

from loop import PRESETS, train

from hpff_zoo.training import CommandLine, RunConfig, create_local_model

PAPER_DEFAULTS = dict(
    dataset="imagenet-1k",
    model="hpff_resnet101",
    epochs=90,
    batch_size=128,
    lr=0.05,
    workers=8,
    output_dir="output/imagenet",
)


def main(argv: list[str] | None = None) -> dict:
    cli = CommandLine(RunConfig, __doc__, PAPER_DEFAULTS, PRESETS, preset_from="imagenet-{model}")
    return train(cli.parse(argv), create_local_model)


if __name__ == "__main__":
    main()
