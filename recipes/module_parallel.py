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

import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from hpff_zoo.parallel import ModuleParallel, init_stages
from hpff_zoo.training import (
    BuildModel,
    Run,
    RunConfig,
    RunError,
    ThreadChoice,
    build_checked,
    command_line,
    create_optimizer,
    create_scheduler,
    format_top5,
    load_data,
    make_accelerator,
    make_loaders,
    summarize_losses,
    test_metrics,
    unweighted_losses,
)

MODEL_FILE = "model.safetensors"  # the synchronised model (every stage's weights), in a checkpoint


def check_config(config: RunConfig) -> None:
    """Refuse the loop features module-parallel training does not offer."""
    unsupported = {
        "--checkpoint-every-steps (checkpoints are taken at epoch ends)": (
            config.checkpoint_every_steps > 0
        ),
        "--grad-accum > 1 (use --micro-batches)": config.grad_accum not in (None, 1),
        "--mixed-precision fp16 (bf16 works)": config.mixed_precision == "fp16",
        "--push-to-hub (publish the export with python -m hpff_zoo.hub)": config.push_to_hub
        is not None,
    }
    refused = [flag for flag, given in unsupported.items() if given]
    if refused:
        raise RunError(f"--module-parallel does not support {', '.join(refused)}")
    if config.batch_size % config.micro_batches:
        raise RunError(f"--batch-size {config.batch_size} does not split into "
                       f"{config.micro_batches} micro-batches")  # fmt: skip


def train_module_parallel(
    config: RunConfig, build_model: BuildModel, threads: ThreadChoice
) -> dict[str, Any]:
    """Train, evaluate and checkpoint every epoch, save; returns the last epoch's record."""
    check_config(config)
    try:
        init_stages(timeout=config.stage_timeout)  # before Accelerate, which reuses the group
    except RuntimeError as error:
        raise RunError(str(error)) from None
    accelerator = make_accelerator(config)
    set_seed(config.seed)
    data = load_data(config, accelerator)
    model = build_checked(config, build_model, data).to(accelerator.device)
    try:
        stage = ModuleParallel(model, config.module_parallel, micro_batches=config.micro_batches)
    except ValueError as error:  # wrong number of processes, MAN, ...: one clear message
        raise RunError(str(error)) from None
    # The loop's loaders with one process per batch: every stage reads the whole batch.
    loaders = make_loaders(config, 1, data, model)
    test_loader = accelerator.prepare(loaders.test)
    accelerator.print(f"module-parallel over {stage.num_stages} processes, "
                      f"{threads.describe()}:\n{stage.describe()}")  # fmt: skip
    if config.dry_run:
        return {}
    optimizer = create_optimizer(config, stage.parameters())
    scheduler = create_scheduler(config, optimizer, len(loaders.train))
    run = Run(config, accelerator, command_line(f"torchrun --nproc_per_node {stage.num_stages}"))

    def save(directory: Path) -> None:  # the model once, each stage's optimizer and schedule
        if accelerator.is_main_process:
            state = stage.model.state_dict()
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
                      directory / MODEL_FILE)  # fmt: skip
        state = dict(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict())
        torch.save(state | {"progress": run.progress.state_dict()}, directory / stage_file)

    def load(directory: Path) -> None:
        stage.model.load_state_dict(load_file(directory / MODEL_FILE))
        state = torch.load(directory / stage_file, map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        run.progress.load_state_dict(state["progress"])

    stage_file = f"stage-{stage.stage}.pt"
    run.begin(load, save)

    record: dict[str, Any] = {}
    for epoch in run.epochs():
        stats = _train_epoch(config, accelerator, stage, optimizer, scheduler, loaders, epoch)
        stage.synchronize()  # every stage now holds the whole model
        results = test_metrics(accelerator, model, test_loader)
        run.progress.step += len(loaders.train)
        line = (f"test top-1 {results['test_top1']:.2f}%  top-5 "
                f"{format_top5(results['test_top5'])}  {stats['epoch_seconds']:.1f} s "
                f"({stats['images_per_second']:.0f} img/s)")  # fmt: skip
        record = run.end_epoch(epoch, {**stats, **results}, line)
    if not record:  # resumed after the last epoch: report the saved model's accuracy
        record = test_metrics(accelerator, model, test_loader)
    run.finish(model, data, loaders.data_config, record, config.batch_size // config.micro_batches)
    return record


def _train_epoch(config, accelerator, stage: ModuleParallel, optimizer, scheduler, loaders,
                 epoch) -> dict[str, Any]:  # fmt: skip
    """One epoch of this process's stage; its timings."""
    loaders.train_set.set_epoch(epoch)
    # The same shuffle on every stage, whatever else drew from the global generator.
    loaders.train.sampler.generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    stage.model.train()
    bar = tqdm(
        loaders.train,
        desc=f"epoch {epoch + 1}/{config.epochs}",
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
            losses = unweighted_losses(stage.model, losses)
            bar.set_postfix_str(summarize_losses(losses), refresh=False)
    seconds = time.perf_counter() - start
    return {
        "stages": stage.num_stages,
        "epoch_seconds": seconds,
        "images_per_second": len(loaders.train) * config.batch_size / seconds,
    }
