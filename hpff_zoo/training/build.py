"""The model, optimizer and schedule a :class:`~hpff_zoo.training.RunConfig` describes.

A recipe brings its own ``build_model(config, data)`` (a new hpff_* or timm model here:
:func:`create_local_model`; a fine-tuned backbone in ``recipes/finetune.py``);
:func:`build_checked` runs it and turns a setting the model cannot take into one line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import timm
import torch

from ..data import ImageClassificationData
from ..local import LocalModel, from_timm
from ..models import HPFF_MODELS, NoWeightsError
from ..planner import Plan, format_bytes, plan
from .config import RunConfig
from .errors import WEIGHTS_ERRORS, RunError, first_line
from .schedule import warmup_cosine

__all__ = [
    "BuildModel",
    "build_checked",
    "create_local_model",
    "create_optimizer",
    "create_scheduler",
    "hilo_too_long",
    "input_channels",
    "local_model_kwargs",
]

BuildModel = Callable[[Any, ImageClassificationData], LocalModel]


def local_model_kwargs(config: RunConfig) -> dict[str, Any]:
    """``LocalModel`` options from the model settings (those left unset keep the model's)."""
    kwargs = dict(
        method=config.method,
        hilo=config.hilo if config.hilo > 1 else False,
        pff=config.pff,
        balance=config.balance,
    )
    if config.num_modules:
        kwargs["num_modules"] = config.num_modules
    for key in ("aux", "aux_budget", "pff_scope"):
        if getattr(config, key) is not None:
            kwargs[key] = getattr(config, key)
    return kwargs


def input_channels(config: RunConfig, default: int) -> int:
    """``in_chans`` as an int: ``default`` (the data's, or a pretrained model's) for auto."""
    return default if config.in_chans == "auto" else int(config.in_chans)


def _planned(config: RunConfig, num_classes: int, channels: int) -> Plan:
    """The memory planner's choice for ``memory_budget``: ``num_modules``, ``pff`` and whether
    to checkpoint (the fastest configuration that fits, plain E2E whenever it fits)."""
    if config.model.split(".")[0] not in HPFF_MODELS:
        raise RunError(
            f"--memory-budget plans hpff_* models; {config.model!r} is not one "
            f"({', '.join(sorted(HPFF_MODELS))})"
        )
    batch = config.micro_batch // int(os.environ.get("WORLD_SIZE", "1"))
    try:
        chosen = plan(
            config.model,
            batch,
            config.img_size,
            config.memory_budget,
            method=config.method,
            hilo=config.hilo if config.hilo > 1 else False,
            num_classes=num_classes,
            in_chans=channels,
            min_modules=config.min_modules,
        )
    except ValueError as error:
        raise RunError(f"--memory-budget {config.memory_budget}: {error}") from None
    print(f"memory plan for batch {batch} per device:\n{chosen.table()}\n{chosen.summary()}")
    if chosen.chosen.method == "e2e" and config.method != "e2e":
        print(
            f"NOTE: --memory-budget {config.memory_budget} fits end-to-end training "
            f"({format_bytes(chosen.chosen.predicted_bytes, config.memory_budget)} predicted), "
            f"so this run trains E2E (K=1), not {config.method}: pass --min-modules 2 (or more) "
            "to keep local learning"
        )
    return chosen


def create_local_model(config: RunConfig, data: ImageClassificationData) -> LocalModel:
    """A new model: an hpff_* entry point (or one of its catalogue tags, which brings the tag's
    preprocessing, and with ``pretrained`` its weights), or any timm classifier wrapped."""
    channels = input_channels(config, data.channels)
    kwargs = dict(local_model_kwargs(config), num_classes=data.num_classes, in_chans=channels)
    planned = _planned(config, data.num_classes, channels) if config.memory_budget else None
    if planned:
        kwargs.update(planned.model_kwargs())
    if config.img_size:
        kwargs["input_size"] = (channels, config.img_size, config.img_size)
    create = timm.create_model if config.model.split(".")[0] in HPFF_MODELS else from_timm
    try:
        model = create(config.model, pretrained=config.pretrained, **kwargs)
    except NoWeightsError as error:  # nothing to download: the flag's way to start fresh
        fresh = "drop --pretrained to start from fresh weights"
        raise RunError(f"--pretrained: {error.retold(fresh)}") from None
    except WEIGHTS_ERRORS as error:  # offline, no cache, unreadable
        raise RunError(f"--pretrained: {first_line(error)}") from None
    if planned:
        planned.chosen.apply_checkpointing(model)
    return model


def hilo_too_long(hilo: int, num_modules: int, k: str) -> str:
    """Why a HiLo cascade of ``hilo`` does not fit ``num_modules`` modules; ``k`` names where K
    came from. With K = 1 no cascade fits, so the message blames K, not ``--hilo``, which the
    user has most likely left at its default."""
    if num_modules == 1:
        return (f"{k}: HiLo needs K >= 2 modules; add --hilo 0 (HiLo off) or use "
                "--num-modules 2 or more")  # fmt: skip
    return (f"--hilo {hilo} exceeds {k}: a HiLo cascade spans at most all K modules; choose "
            "--hilo at most K or a larger --num-modules")  # fmt: skip


def build_checked(
    config: RunConfig, build_model: BuildModel, data: ImageClassificationData
) -> LocalModel:
    """``build_model(config, data)`` in ``config``'s memory layout, with a setting the model
    cannot take (K above its blocks, a PFF grid finer than a feature map, a HiLo cascade longer
    than K) as one line.

    ``channels_last``: NHWC weights; the first convolution then hands every later layer NHWC
    activations, which oneDNN (CPU) and tensor cores convolve faster."""
    try:
        model = build_model(config, data)
    except ValueError as error:
        raise RunError(first_line(error)) from None
    if model.method != "e2e" and model.cascade_size > model.num_modules:
        raise RunError(hilo_too_long(config.hilo, model.num_modules,
                                     f"the model's K={model.num_modules}"))  # fmt: skip
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def create_optimizer(config: RunConfig, parameters: Iterable[torch.nn.Parameter]):
    """SGD with the optimisation settings."""
    return torch.optim.SGD(
        parameters,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
    )


def create_scheduler(config: RunConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Linear warm-up over ``warmup_epochs`` then cosine to ``min_lr``, stepped per optimizer
    step."""
    total = config.epochs * steps_per_epoch
    warmup = min(total, round(config.warmup_epochs * steps_per_epoch))
    return warmup_cosine(optimizer, total, warmup, config.min_lr / config.lr)
