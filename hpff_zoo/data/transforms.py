"""timm transforms for a model, channel handling, and per-sample seeded augmentation.

* :func:`resolve_data_config` is timm's ``resolve_data_config`` for the model's
  ``pretrained_cfg`` (mean, std, interpolation, crop), adjusted to the channels the model really
  takes: a 1-channel model gets the average of the RGB statistics (the same rule the
  auxiliary decoders use), never a 3-value normalisation that would broadcast a grey image into
  three channels behind the user's back.
* :func:`create_transforms` builds train / eval transforms with ``timm.data.create_transform``.
  Small images (≤ 64 px: CIFAR, SVHN, MNIST, STL-10) train with the paper's augmentation,
  zero-padded random crops and horizontal flips, followed by timm's eval pipeline; larger ones
  use timm's ImageNet training transform (random-resized crop, flip, colour jitter).
* :class:`TransformedDataset` converts every image to the model's channels (``L`` or ``RGB``)
  and applies the transform under a seed derived from (seed, epoch, index). The augmentation an
  example receives is then a function of those three numbers only, not of the order in which
  processes, workers or resumed runs happen to draw random numbers: a run resumed mid-epoch,
  or split over several processes, sees exactly the images an uninterrupted single-process run
  sees.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

__all__ = [
    "SMALL_IMAGE_MAX",
    "TransformedDataset",
    "create_transforms",
    "model_in_chans",
    "resolve_data_config",
]

SMALL_IMAGE_MAX = 64


def model_in_chans(model: nn.Module) -> int:
    """Channels the model's first convolution (or patch embedding) takes."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError("cannot tell the model's input channels: it has no Conv2d")
    return conv.in_channels


def resolve_data_config(
    model: nn.Module, in_chans: int | None = None, img_size: int | None = None
) -> dict[str, Any]:
    """timm's data config for ``model``, with ``in_chans`` channels and ``img_size`` pixels."""
    from timm.data import resolve_data_config as timm_resolve

    config = timm_resolve(model=model)
    channels = in_chans or model_in_chans(model)
    _, height, width = config["input_size"]
    if img_size:
        height = width = img_size
    config["input_size"] = (channels, height, width)
    for key in ("mean", "std"):
        values = tuple(config[key])
        if len(values) != channels:
            config[key] = (sum(values) / len(values),) * channels
    return config


def create_transforms(
    data_config: dict[str, Any], hflip: float = 0.5, crop_padding: int = 4
) -> tuple[Callable, Callable]:
    """(train, eval) transforms for ``data_config`` (see the module docstring)."""
    from timm.data import create_transform

    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    config = {k: data_config[k] for k in keys if k in data_config}
    eval_transform = create_transform(**config, is_training=False)
    size = config["input_size"][-2:]
    if max(size) <= SMALL_IMAGE_MAX:
        augment = [T.Resize(size), T.RandomCrop(size, padding=crop_padding)]
        if hflip > 0:
            augment.append(T.RandomHorizontalFlip(hflip))
        train_transform = T.Compose([*augment, eval_transform])
    else:
        train_transform = create_transform(**config, is_training=True, hflip=hflip)
    return train_transform, eval_transform


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch, ``random`` and NumPy's global generators, restoring them afterwards."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class TransformedDataset(torch.utils.data.Dataset):
    """``(tensor, label)`` pairs from a dataset with ``image`` and ``label`` columns.

    Args:
        dataset: a ``datasets.Dataset`` (or anything indexable giving such dicts).
        transform: applied to each PIL image.
        channels: 1 converts images to ``L``, 3 to ``RGB``.
        seed: base seed of the per-example augmentation; None leaves the global generators
            alone (evaluation transforms are deterministic anyway).
    """

    def __init__(
        self, dataset, transform: Callable, channels: int, seed: int | None = None
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"images can be converted to 1 or 3 channels, not {channels}")
        self.dataset, self.transform, self.seed = dataset, transform, seed
        self.mode = "L" if channels == 1 else "RGB"
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def example_seed(self, index: int) -> int:
        entropy = [self.seed or 0, self.epoch, index]
        return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        example = self.dataset[index]
        image = example["image"]
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image))
        image = image.convert(self.mode)
        if self.seed is None:
            return self.transform(image), int(example["label"])
        with _seeded(self.example_seed(index)):
            return self.transform(image), int(example["label"])
