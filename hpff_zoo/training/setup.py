"""The run's ``Accelerator``, configured from a :class:`~hpff_zoo.training.RunConfig`."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration

from .config import RunConfig
from .errors import RunError

__all__ = ["make_accelerator", "tracker_config"]


def _tracker(config: RunConfig) -> str | None:
    if config.report_to != "auto":
        return None if config.report_to == "none" else config.report_to
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return None
    return "tensorboard"


def make_accelerator(config: RunConfig) -> Accelerator:
    """The run's ``Accelerator``. Settings ``accelerate launch`` / ``accelerate config`` pass on
    (mixed precision, CPU, gradient accumulation) apply unless the config sets them; the config
    is then updated to what Accelerate really uses, for the header and the records."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    output = Path(config.output_dir)
    accumulation = (
        # Accelerate lets its environment override gradient_accumulation_steps; a plugin wins.
        dict(gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=config.grad_accum))
        if config.grad_accum
        else {}
    )
    accelerator = Accelerator(
        # A multi-process launch on a machine without GPU must be told to use the CPU (gloo),
        # or every process would train alone.
        cpu=config.cpu or (world_size > 1 and not torch.cuda.is_available()),
        mixed_precision=config.mixed_precision,  # None: Accelerate's launch/config setting
        log_with=_tracker(config),
        project_config=ProjectConfiguration(
            project_dir=str(output), logging_dir=str(output / "logs")
        ),
        # split_batches: batch_size is the global batch, cut into one slice per process, so
        # the optimizer steps and the schedule do not depend on the number of processes.
        # Seedable sampler: the shuffle of epoch e is a function of (seed, e), as resumes need.
        dataloader_config=DataLoaderConfiguration(
            split_batches=True,
            use_seedable_sampler=True,
            data_seed=config.seed,
            # Pinned batches copied without blocking the host (a no-op on the CPU).
            non_blocking=torch.cuda.is_available(),
        ),
        **accumulation,
    )
    if accelerator.num_processes != world_size:
        raise RunError(
            f"{world_size} processes were launched but Accelerate sees "
            f"{accelerator.num_processes}; on a machine without GPU, launch with "
            "`accelerate launch --multi_gpu` and pass --cpu"
        )
    config.mixed_precision = accelerator.mixed_precision
    config.grad_accum = accelerator.gradient_accumulation_steps
    return accelerator


def tracker_config(config: RunConfig) -> dict[str, Any]:
    """The settings as TensorBoard hparams accept them (numbers, strings, booleans)."""
    return {
        k: v if isinstance(v, int | float | str | bool) else str(v)
        for k, v in dataclasses.asdict(config).items()
    }
