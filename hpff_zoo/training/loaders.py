"""A run's data and loaders: the splits a :class:`~hpff_zoo.training.RunConfig` names, shaped
for the model's input, with the batch split over accumulation steps and processes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from ..data import (
    DatasetError,
    ImageClassificationData,
    TransformedDataset,
    create_transforms,
    load_image_classification,
    resolve_data_config,
    smallest_image_size,
)
from ..local import LocalModel
from .config import RunConfig
from .errors import RunError

__all__ = ["Loaders", "load_data", "make_loaders"]


def load_data(config: RunConfig, accelerator: Accelerator) -> ImageClassificationData:
    """The run's train and test splits (``max_*_samples`` applied); one line on failure."""
    with accelerator.main_process_first():  # the first process fills the datasets cache
        try:
            data = load_image_classification(
                config.dataset,
                config.dataset_config,
                config.train_split,
                config.test_split,
                config.image_column,
                config.label_column,
                config.test_fraction,
                config.seed,
            )
        except DatasetError as error:  # one clear message, no traceback
            raise RunError(str(error)) from None
    return data.limit(config.max_train_samples, config.max_eval_samples, seed=config.seed)


@dataclass
class Loaders:
    """What :func:`make_loaders` returns: the preprocessing (timm's data config, saved with the
    model), the training set (its augmentation is seeded per epoch) and the two loaders."""

    data_config: dict[str, Any]
    train_set: TransformedDataset
    train: DataLoader
    test: DataLoader


def _check_resolution(
    config: RunConfig, data: ImageClassificationData, data_config: dict[str, Any]
) -> None:
    """Refuse to upscale images silently: a 28-px digit stretched to a 224-px model's input costs
    64x the compute for no information. ``img_size`` states the resolution on purpose.

    Every image of both splits counts (headers only), not the first: one folder can mix 20 px
    and 97 px images, and the smallest of them are the ones stretched most."""
    if config.img_size:
        return
    sizes = [s for s in map(smallest_image_size, (data.train, data.test)) if s is not None]
    if not sizes:
        return
    width, height = min(w for w, _ in sizes), min(h for _, h in sizes)
    _, want_h, want_w = data_config["input_size"]
    if width < want_w or height < want_h:
        first = getattr(data.train[0]["image"], "size", None)
        which = "images are" if first == (width, height) else "smallest images are"
        raise RunError(
            f"the {which} {width}x{height}, smaller than the {want_w}x{want_h} input of "
            f"{config.model}: pass --img-size {max(want_h, want_w)} to upscale them, or "
            f"--img-size {max(width, height)} to train at their own size"
        )


def make_loaders(
    config: RunConfig, num_processes: int, data: ImageClassificationData, model: LocalModel
) -> Loaders:
    """Loaders for ``model``'s input, of the micro-batch (``batch_size / grad_accum``), which
    ``num_processes`` processes share (Accelerate's ``split_batches``)."""
    channels = model.input_size[0]
    data_config = resolve_data_config(model.backbone, channels, config.img_size)
    train_transform, eval_transform = create_transforms(
        data_config, config.hflip, config.crop_padding
    )
    _check_resolution(config, data, data_config)
    train_set = TransformedDataset(data.train, train_transform, channels, seed=config.seed)
    test_set = TransformedDataset(data.test, eval_transform, channels)
    if config.batch_size % config.grad_accum:
        raise RunError(
            f"--batch-size {config.batch_size} is not a multiple of the {config.grad_accum} "
            "gradient-accumulation steps"
        )
    micro_batch = config.micro_batch
    if micro_batch % num_processes:
        raise RunError(
            f"the micro-batch {micro_batch} (--batch-size / --grad-accum) does not split "
            f"evenly over {num_processes} processes"
        )
    if micro_batch > len(train_set):
        raise RunError(f"the micro-batch {micro_batch} exceeds the {len(train_set)} training "
                       "images")  # fmt: skip
    kwargs = dict(num_workers=config.workers, pin_memory=torch.cuda.is_available())
    train_loader = DataLoader(train_set, micro_batch, shuffle=True, drop_last=True, **kwargs)
    test_loader = DataLoader(test_set, micro_batch, **kwargs)
    return Loaders(data_config, train_set, train_loader, test_loader)
