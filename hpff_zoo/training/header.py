"""What a run will do, said before it starts: the header a recipe prints, with an estimated
duration from one timed step (and proof, before anything is written, that the model trains at
the run's input size)."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import torch
from accelerate import Accelerator

from ..data import EMBEDDED, KNOWN_DATASETS, ImageClassificationData
from ..local import LocalModel
from .config import RunConfig
from .errors import RunError, first_line
from .threads import ThreadChoice

__all__ = ["describe_run", "format_duration", "time_per_image"]


def format_duration(seconds: float) -> str:
    """``17 d 3 h``, ``2 h 05 min``, ``3 min 20 s``, ``12 s``."""
    minutes, hours, days = seconds / 60, seconds / 3600, seconds / 86400
    if days >= 1:
        return f"{int(days)} d {int(hours % 24)} h"
    if hours >= 1:
        return f"{int(hours)} h {int(minutes % 60):02d} min"
    if minutes >= 1:
        return f"{int(minutes)} min {int(seconds % 60):02d} s"
    return f"{seconds:.0f} s"


def time_per_image(
    accelerator: Accelerator, net: LocalModel, input_size: Sequence[int], batch: int
) -> tuple[float, float]:
    """Seconds per image of a training step and of evaluation, timed on a copy of ``net``.

    Building the batch at the run's input size also proves, before any output is written, that
    the model can train at that size (a ViT's fixed input, a PFF grid too fine for the last
    feature map): a ``ValueError`` is one line.
    """
    probe = copy.deepcopy(net).train()
    x = torch.randn(batch, *input_size, device=accelerator.device)
    y = torch.randint(0, probe.num_classes, (batch,), device=accelerator.device)

    def train_step() -> None:
        with accelerator.autocast():
            probe.local_step(x, y)

    def eval_step() -> None:
        with torch.no_grad(), accelerator.autocast():
            probe.eval()(x)

    try:
        train_step()  # warm-up: allocator, kernels, lazy initialisation
    except ValueError as error:
        raise RunError(first_line(error)) from None
    timings = []
    for step in (train_step, eval_step):
        start, repeats = time.perf_counter(), 0
        while repeats < 3 and (repeats == 0 or time.perf_counter() - start < 0.5):
            step()
            repeats += 1
        timings.append((time.perf_counter() - start) / repeats / batch)
    return timings[0], timings[1]


def _layout(net: LocalModel) -> str:
    """The layout the backbone's weights really have (a 1x1 or 1-channel kernel is both)."""
    for module in net.backbone.modules():
        conv = isinstance(module, torch.nn.Conv2d)
        if conv and module.in_channels > 1 and module.kernel_size != (1, 1):
            return "NCHW" if module.weight.is_contiguous() else "channels-last"
    return "NCHW"


def _no_preset(dataset: str) -> str:
    """What the schedule is when no preset set it: the recipe's defaults, which are the paper's
    schedule for the recipe's own data sets (also by their Hub id: ``ILSVRC/imagenet-1k``). For
    other data (a folder, another Hub id) the header says so, since a 400-epoch batch-1024
    schedule rarely fits a new folder."""
    hub_ids = {known.hub_id for known in KNOWN_DATASETS.values()}
    if dataset in KNOWN_DATASETS or dataset == EMBEDDED or dataset in hub_ids:
        return "no preset: the recipe's defaults"
    return (
        "no preset: the recipe's defaults, set for its paper data sets, not for this data; "
        "choose --epochs, --batch-size and --lr (or --preset) for it"
    )


def _learning_rate(config: RunConfig) -> str:
    """The rate and its warm-up as the scheduler will run them: a warm-up as long as the run or
    longer is cut to the run (:func:`~hpff_zoo.training.create_scheduler`), so the rate only
    rises, to ``lr`` at the last step, and never decays: said, not left to be found."""
    if 0 < config.epochs <= config.warmup_epochs:
        return (
            f"lr {config.lr} reached at the last step: the {config.warmup_epochs:g} warm-up epochs "
            f"outlast the {config.epochs}-epoch run, so it warms up throughout, with no cosine"
        )
    return (
        f"lr {config.lr} with {config.warmup_epochs:g} warm-up epochs then cosine to "
        f"{config.min_lr:g}"
    )


def describe_run(
    config: RunConfig,
    accelerator: Accelerator,
    data: ImageClassificationData,
    net: LocalModel,
    input_size: Sequence[int],
    steps_per_epoch: int,
    threads: ThreadChoice,
) -> str:
    """The run header: data, model, processes and threads, the effective schedule, and an
    estimated duration from one timed step, all before the first training step."""
    setting = "end-to-end backpropagation"
    if net.method != "e2e":
        setting = (
            f"{net.method}, K={net.num_modules}, HiLo k={net.cascade_size}, PFF {net.pff}x{net.pff}"
        )
    processes = accelerator.num_processes
    timed_batch = min(max(1, config.micro_batch // processes), 16)
    train_s, eval_s = time_per_image(accelerator, net, input_size, timed_batch)
    epoch_s = (steps_per_epoch * config.batch_size * train_s + len(data.test) * eval_s) / processes
    preset = f"preset {config.preset}" if config.preset else _no_preset(config.dataset)
    return (
        f"data   {data.source}: {len(data.train)} train / {len(data.test)} test images, "
        f"{data.num_classes} classes, {data.channels}-channel images\n"
        f"model  {config.model}: {setting}, input {tuple(input_size)}, "
        f"{sum(p.numel() for p in net.backbone.parameters()) / 1e6:.2f} M backbone parameters\n"
        f"run    {processes} process(es) on {accelerator.device} "
        f"({accelerator.distributed_type.value}), {threads.describe()}, mixed precision "
        f"{config.mixed_precision}, {_layout(net)} layout\n"
        f"schedule  {config.epochs} epochs x {steps_per_epoch} steps of batch "
        f"{config.batch_size} (x{config.grad_accum} accumulation), {_learning_rate(config)}; "
        f"{preset}\n"
        f"estimate  about {format_duration(config.epochs * epoch_s)} in all, "
        f"{format_duration(epoch_s)} per epoch (a step timed here at batch {timed_batch}: "
        f"{1000 * train_s:.2f} ms per training image, {1000 * eval_s:.2f} ms per test image)"
    )
