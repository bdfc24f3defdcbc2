"""What a finished training run writes about itself: ``run.json`` (the figures its model card
may show) and the last line it prints.

A card must not show a figure its run did not measure (see :class:`hpff_zoo.cards.RunRecord`).
The peak step memory is measured here, after training, on the run's own batch shape, for the
trained setting and for E2E on the same backbone, with one function
(:func:`hpff_zoo.measure.step_peak_bytes`): both figures then count the same things, and the
ratio between them is the memory the method saves.
"""

from __future__ import annotations

import copy
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..cards import QUICK_EVAL_IMAGES, RunRecord, describe_hardware
from ..data import ImageClassificationData
from ..local import LocalModel
from ..measure import example_batch, step_peak_bytes
from .checkpoint import TrainingProgress
from .config import RunConfig

__all__ = [
    "command_line",
    "final_line",
    "format_top5",
    "make_run_record",
    "peak_memory_against_e2e",
]


def _fresh_copy(module: nn.Module) -> nn.Module:
    twin = copy.deepcopy(module)
    for parameter in twin.parameters():
        parameter.grad = None
    return twin


def peak_memory_against_e2e(model: LocalModel, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """Peak bytes of one training step of ``model``'s setting and of E2E, on batch ``(x, y)``.

    Both run on copies, so the trained model's weights, gradients and BatchNorm statistics are
    left as they are. The E2E figure is plain backprop, also when ``model`` checkpoints.
    """
    local = step_peak_bytes(_fresh_copy(model), x, y)
    backbone = _fresh_copy(model.backbone)
    if getattr(backbone, "grad_checkpointing", False):  # the baseline is plain E2E
        backbone.set_grad_checkpointing(False)
    elif model.method == "e2e":
        return local, local
    e2e = LocalModel(backbone, num_modules=1, method="e2e", input_size=model.input_size)
    return local, step_peak_bytes(e2e, x, y)


def command_line(launcher: str | None = None) -> str:
    """This process's command line as the user would type it again (``launcher``: how the
    processes were started, e.g. ``torchrun --nproc_per_node 2``; default ``python``)."""
    return f"{launcher or 'python'} {shlex.join(sys.argv)}"


def make_run_record(
    config: RunConfig,
    net: LocalModel,
    data: ImageClassificationData,
    record: dict[str, Any],
    progress: TrainingProgress,
    command: str,
    wall_time: float,
    batch: int,
) -> RunRecord:
    """What this run measured, for ``run.json`` and the model card (see ``hpff_zoo.cards``);
    ``record`` is the last epoch's (its ``test_*`` figures).

    ``progress.command`` is the command that started the run, ``command`` this process's (they
    differ after ``--resume``). Peak memory depends on shapes only, so it is measured on a
    synthetic batch of the per-process size ``batch`` rather than by drawing from the
    (distributed) train loader on one process.
    """
    x, y = example_batch(net, batch, None, next(net.parameters()).device)
    peak, e2e_peak = peak_memory_against_e2e(net, x, y)
    notes = [f"peak step memory measured at the per-process batch of {x.shape[0]}"]
    if config.max_train_samples:
        notes.insert(0, f"trained on a random subset of {len(data.train):,} training images")
    if progress.command != command:
        notes.append(f"resumed with `{command}`")
    top5 = record["test_top5"]
    return RunRecord(
        dataset=config.dataset,
        epochs=config.epochs,
        top1=round(record["test_top1"], 2),
        top5=None if top5 is None else round(top5, 2),
        command=progress.command,
        hardware=describe_hardware(),
        eval_split=data.test_split,
        num_eval=len(data.test),
        num_train=len(data.train),
        batch_size=config.batch_size,
        wall_time_s=round(wall_time, 1),
        peak_memory_bytes=peak,
        e2e_peak_memory_bytes=e2e_peak,
        quick_eval_images=min(QUICK_EVAL_IMAGES, len(data.test)),
        quick_eval_top1=round(record["test_top1_first"], 2),
        notes="; ".join(notes),
    )


def format_top5(value: float | None) -> str:
    """A top-5 accuracy for a printed line; ``-`` where there is none (five classes or fewer)."""
    return "-" if value is None else f"{value:.2f}%"


def final_line(record: dict[str, Any], output: Path, tensorboard: bool) -> str:
    """The last line of a run: its accuracy and everything it wrote, where."""
    return (
        f"test accuracy: top-1 {record['test_top1']:.2f}%  top-5 {format_top5(record['test_top5'])}"
        f"  (outputs in {output}: model.safetensors + config.json, run.json, metrics.jsonl"
        + (", TensorBoard logs in logs/" if tensorboard else "")
        + ")"
    )
