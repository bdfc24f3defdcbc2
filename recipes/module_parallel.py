"""``--module-parallel S``: the recipes' training loop with the model's modules on S processes.

Launched with one process per stage (``torchrun --nproc_per_node S recipes/cifar.py
--module-parallel S``, or ``accelerate launch --num_processes S``; gloo on CPU, NCCL on GPU).
Every process reads the same batches (the loader is not sharded: stage s needs the labels, and
the images for reconstruction losses) and trains its stage with
:class:`hpff_zoo.ModuleParallel`; after every epoch the stages exchange weights, so every process
evaluates its shard of the test set with the whole model and the first one exports it.

A run writes what a data-parallel run writes (metrics.jsonl, TensorBoard logs, run.json, the
model in the Hub folder format) and checkpoints at epoch ends: the synchronised model once, and
each stage's optimizer and schedule in its own file, since they live in its process only; so
``--resume`` continues it. Refused with a clear message: step checkpoints (the stages hold
different weights until the epoch's exchange), ``--grad-accum`` (``--micro-batches`` cuts each
batch instead), fp16 loss scaling (bf16 works), ``--push-to-hub``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from common import (
    command_line,
    create_optimizer,
    final_line,
    format_top5,
    load_checkpoint,
    load_data,
    make_accelerator,
    make_loaders,
    make_run_record,
    resume_point,
    test_metrics,
    tracker_config,
    with_memory_format,
)
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from hpff_zoo.hub import RECORD_FILE
from hpff_zoo.parallel import ModuleParallel, init_stages
from hpff_zoo.training import (
    CheckpointManager,
    MetricsWriter,
    ThreadChoice,
    TrainingProgress,
    save_model,
    summarize_losses,
    unweighted_losses,
    warmup_cosine,
)

MODEL_FILE = "model.safetensors"  # the synchronised model (every stage's weights), in a checkpoint


def check_args(args: argparse.Namespace) -> None:
    """Refuse the loop features module-parallel training does not offer."""
    unsupported = {
        "--checkpoint-every-steps (checkpoints are taken at epoch ends)": (
            args.checkpoint_every_steps > 0
        ),
        "--grad-accum > 1 (use --micro-batches)": args.grad_accum not in (None, 1),
        "--mixed-precision fp16 (bf16 works)": args.mixed_precision == "fp16",
        "--push-to-hub (publish the export with python -m hpff_zoo.hub)": args.push_to_hub
        is not None,
    }
    refused = [flag for flag, given in unsupported.items() if given]
    if refused:
        raise SystemExit(f"error: --module-parallel does not support {', '.join(refused)}")
    if args.batch_size % args.micro_batches:
        raise SystemExit(
            f"error: --batch-size {args.batch_size} does not split into {args.micro_batches} "
            "micro-batches"
        )


class _StageState:
    """A stage's checkpoint: the model (written by the first process) and, per stage, the
    optimizer, the schedule and the training position."""

    def __init__(self, accelerator: Accelerator, stage: ModuleParallel, optimizer, scheduler):
        self.accelerator, self.stage = accelerator, stage
        self.optimizer, self.scheduler = optimizer, scheduler
        self.file = f"stage-{stage.stage}.pt"

    def save(self, directory: Path, progress: TrainingProgress) -> None:
        if self.accelerator.is_main_process:
            state = self.stage.model.state_dict()
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
                      directory / MODEL_FILE)  # fmt: skip
        state = dict(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict())
        torch.save(state | {"progress": progress.state_dict()}, directory / self.file)

    def load(self, directory: Path, progress: TrainingProgress) -> None:
        self.stage.model.load_state_dict(load_file(directory / MODEL_FILE))
        state = torch.load(directory / self.file, map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        progress.load_state_dict(state["progress"])


def train_module_parallel(
    args: argparse.Namespace, build_model, threads: ThreadChoice
) -> dict[str, Any]:
    """Train, evaluate and checkpoint every epoch, export; returns the last epoch's record."""
    start = time.perf_counter()
    check_args(args)
    try:
        init_stages(timeout=args.stage_timeout)  # before Accelerate, which reuses the group
    except RuntimeError as error:
        raise SystemExit(f"error: {error}") from None
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    data = load_data(args, accelerator)
    model = with_memory_format(args, build_model(args, data)).to(accelerator.device)
    try:
        stage = ModuleParallel(model, args.module_parallel, micro_batches=args.micro_batches)
    except ValueError as error:  # wrong number of processes, MAN, ...: one clear message
        raise SystemExit(f"error: {error}") from None
    # The loop's loaders with one process per batch: every stage reads the whole batch.
    data_config, train_set, train_loader, test_loader = make_loaders(args, 1, data, model)
    test_loader = accelerator.prepare(test_loader)
    accelerator.print(
        f"module-parallel over {stage.num_stages} processes, {threads.describe()}:\n"
        f"{stage.describe()}"
    )
    if args.dry_run:
        return {}
    optimizer = create_optimizer(args, stage.parameters())
    total_steps = args.epochs * len(train_loader)
    warmup_steps = min(total_steps, round(args.warmup_epochs * len(train_loader)))
    scheduler = warmup_cosine(optimizer, total_steps, warmup_steps, args.min_lr / args.lr)
    output = Path(args.output_dir)
    metrics = MetricsWriter(output / "metrics.jsonl", enabled=accelerator.is_main_process)
    checkpoints = CheckpointManager(output / "checkpoints", keep=args.keep_checkpoints)
    state = _StageState(accelerator, stage, optimizer, scheduler)
    command = command_line(f"torchrun --nproc_per_node {stage.num_stages}")
    progress = TrainingProgress(command=command)
    if accelerator.is_main_process:
        checkpoints.remove_partial()
    accelerator.wait_for_everyone()
    resume, elapsed_before, tracker_kwargs = resume_point(args, checkpoints), 0.0, {}
    if resume is not None:
        load_checkpoint(resume, checkpoints, lambda: state.load(resume, progress))
        elapsed_before = progress.elapsed_s
        accelerator.print(f"resumed from {resume}: {progress.epoch} epochs done")
        metrics.keep(lambda r: r["epoch"] <= progress.epoch)
        tracker_kwargs = {"tensorboard": {"purge_step": progress.step + 1}}
    else:
        metrics.keep(lambda r: False)
    accelerator.init_trackers("hpff", config=tracker_config(args), init_kwargs=tracker_kwargs)

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - start

    record: dict[str, Any] = {}
    for epoch in range(progress.epoch, args.epochs):
        record = _train_epoch(args, accelerator, stage, optimizer, scheduler, train_set,
                              train_loader, epoch)  # fmt: skip
        stage.synchronize()
        results = test_metrics(accelerator, model, test_loader)
        progress.epoch, progress.step = epoch + 1, progress.step + len(train_loader)
        record |= {"step": progress.step, **results}
        metrics.write(record)
        accelerator.log({k: v for k, v in record.items() if isinstance(v, float | int)},
                        step=progress.step)  # fmt: skip
        accelerator.print(
            f"epoch {epoch + 1}/{args.epochs}  test top-1 {results['test_top1']:.2f}%  "
            f"top-5 {format_top5(results['test_top5'])}  {record['epoch_seconds']:.1f} s "
            f"({record['images_per_second']:.0f} img/s)"
        )
        every = args.checkpoint_every_epochs
        if every and progress.epoch % every == 0:
            progress.elapsed_s = elapsed()
            checkpoints.save(accelerator, progress.step, lambda d: state.save(d, progress))
    if not record:  # resumed after the last epoch: report the saved model's accuracy
        record = test_metrics(accelerator, model, test_loader)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_model(model, output, args.dataset, data_config, data.label_names)
        run_record = make_run_record(args, model, data, record, progress, command, elapsed(),
                                     args.batch_size // args.micro_batches)  # fmt: skip
        run_record.save(output / RECORD_FILE)
    accelerator.print(final_line(record, output, accelerator))
    accelerator.end_training()
    return record


def _train_epoch(
    args, accelerator, stage: ModuleParallel, optimizer, scheduler, train_set, train_loader, epoch
) -> dict[str, Any]:
    """One epoch of this process's stage; the epoch's record (timings)."""
    train_set.set_epoch(epoch)
    # The same shuffle on every stage, whatever else drew from the global generator.
    train_loader.sampler.generator = torch.Generator().manual_seed(args.seed * 1000 + epoch)
    stage.model.train()
    bar = tqdm(
        train_loader,
        desc=f"epoch {epoch + 1}/{args.epochs}",
        unit="batch",
        disable=not stage.is_last,  # the stage that sees the head's loss
        dynamic_ncols=True,
    )
    start = time.perf_counter()
    for x, y in bar:
        with accelerator.autocast():
            losses = stage.step(x, y, backward=accelerator.backward)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if stage.is_last:
            bar.set_postfix_str(
                summarize_losses(unweighted_losses(stage.model, losses)), refresh=False
            )
    seconds = time.perf_counter() - start
    return {
        "kind": "epoch",
        "epoch": epoch + 1,
        "stages": stage.num_stages,
        "epoch_seconds": seconds,
        "images_per_second": len(train_loader) * args.batch_size / seconds,
    }
