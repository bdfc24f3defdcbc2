"""The data-parallel Accelerate training loop of ``cifar.py``, ``imagenet.py`` and ``finetune.py``.

A recipe is a set of defaults (the paper's hyperparameters for its family) plus a way to build
the model; the command line, data, loaders, accelerator and optimizer are in ``common.py``
(shared with ``module_parallel.py``), and the loop is here, written the way Accelerate's own
examples are: one ``Accelerator``, ``prepare``, ``accumulate``, ``backward``, ``save_state`` /
``load_state``, trackers. Only public ``hpff_zoo`` API is used.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from common import (
    check_model,
    command_line,
    create_optimizer,
    describe_run,
    final_line,
    first_line,
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
from module_parallel import train_module_parallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import hpff_zoo
from hpff_zoo.cards import RunRecord
from hpff_zoo.data import TransformedDataset
from hpff_zoo.hub import RECORD_FILE, push_model
from hpff_zoo.training import (
    CheckpointManager,
    MetricsWriter,
    TrainingProgress,
    average_buffers,
    configure_threads,
    local_step,
    save_model,
    summarize_losses,
    unweighted_losses,
    warmup_cosine,
)

BuildModel = Callable[[argparse.Namespace, Any], hpff_zoo.LocalModel]


@dataclass
class _Run:
    """Everything one training run holds, and its two phases: an epoch, and its end."""

    args: argparse.Namespace
    accelerator: Accelerator
    model: torch.nn.Module  # as prepared (DDP-wrapped on several processes)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_set: TransformedDataset
    train_loader: DataLoader
    test_loader: DataLoader
    checkpoints: CheckpointManager
    metrics: MetricsWriter
    command: str  # this process's command line (the original one is progress.command)
    session_start: float  # perf_counter() when this process started the run
    progress: TrainingProgress = field(default_factory=TrainingProgress)
    elapsed_before: float = 0.0  # training time of the interrupted runs this one resumes

    @property
    def net(self) -> hpff_zoo.LocalModel:
        return self.accelerator.unwrap_model(self.model)

    def elapsed(self) -> float:
        """Wall time of the whole run: this process's, plus that of the runs it resumes."""
        return self.elapsed_before + time.perf_counter() - self.session_start

    def save_checkpoint(self) -> None:
        average_buffers(self.accelerator, self.net)  # one model on every process and on disk
        self.progress.elapsed_s = self.elapsed()
        self.checkpoints.save(self.accelerator, self.progress.step)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train the rest of ``epoch`` (all of it unless resumed mid-epoch)."""
        args, accelerator, progress = self.args, self.accelerator, self.progress
        self.train_loader.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        skip = progress.batch_in_epoch
        loader = (
            accelerator.skip_first_batches(self.train_loader, skip) if skip else self.train_loader
        )
        self.model.train()
        bar = tqdm(
            total=len(self.train_loader),
            initial=skip,
            desc=f"epoch {epoch + 1}/{args.epochs}",
            unit="batch",
            disable=not accelerator.is_local_main_process,
            dynamic_ncols=True,
        )
        start, images, rate, peak = time.perf_counter(), 0, None, None
        for x, y in loader:
            with accelerator.accumulate(self.model):
                if peak is None:  # the first step of the epoch runs under the memory meter
                    with hpff_zoo.MemoryMeter(accelerator.device) as meter:
                        losses = local_step(accelerator, self.model, x, y)
                    peak = meter.report.peak_mib
                else:
                    losses = local_step(accelerator, self.model, x, y)
                losses = unweighted_losses(self.net, losses)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
            progress.batch_in_epoch += 1
            progress.loss_sum += losses["head"]
            progress.loss_count += 1
            images += x.shape[0] * accelerator.num_processes
            rate = images / (time.perf_counter() - start)
            bar.set_postfix_str(f"{summarize_losses(losses)} | {rate:.0f} img/s", refresh=False)
            bar.update()
            if accelerator.sync_gradients:
                progress.step += 1
                self._after_step(epoch, losses)
        bar.close()
        return {
            "peak_step_mib": peak,
            "images_per_second": rate,
            "epoch_seconds": time.perf_counter() - start,
        }

    def _after_step(self, epoch: int, losses: dict[str, float]) -> None:
        step, args = self.progress.step, self.args
        if step % args.log_every == 0:
            record = {
                "step": step,
                "epoch": epoch + 1,
                "lr": self.scheduler.get_last_lr()[0],
                **{f"loss/{k}": v for k, v in losses.items()},
            }
            self.accelerator.log(record, step=step)
            self.metrics.write({"kind": "step", **record})
        if args.checkpoint_every_steps and step % args.checkpoint_every_steps == 0:
            self.save_checkpoint()

    def end_epoch(self, epoch: int, stats: dict[str, Any]) -> dict[str, Any]:
        """Evaluate, report, log and (when due) checkpoint; returns the epoch's record."""
        accelerator, progress = self.accelerator, self.progress
        average_buffers(accelerator, self.net)
        results = test_metrics(accelerator, self.model, self.test_loader)
        sums = torch.tensor([progress.loss_sum, progress.loss_count], device=accelerator.device)
        sums = accelerator.reduce(sums, reduction="sum")
        record = {
            "kind": "epoch",
            "epoch": epoch + 1,
            "step": progress.step,
            "processes": accelerator.num_processes,
            "train_loss": (sums[0] / sums[1].clamp(min=1)).item(),
            **results,
            **stats,
        }
        peak = stats["peak_step_mib"]
        accelerator.print(
            f"epoch {epoch + 1}/{self.args.epochs}  train loss {record['train_loss']:.4f}  "
            f"test top-1 {results['test_top1']:.2f}%  top-5 {format_top5(results['test_top5'])}  "
            "peak step memory "
            + (f"{peak:.1f} MiB" if peak is not None else "-")
            + f"  {stats['epoch_seconds']:.1f} s"
        )
        accelerator.log(
            {k: v for k, v in record.items() if isinstance(v, float | int)}, step=progress.step
        )
        self.metrics.write(record)
        progress.epoch = epoch + 1
        progress.start_epoch()
        every = self.args.checkpoint_every_epochs
        if every and progress.epoch % every == 0:
            self.save_checkpoint()
        return record


def build_checked(args: argparse.Namespace, build_model: BuildModel, data) -> hpff_zoo.LocalModel:
    """``build_model``, with a setting the model cannot take (K above its blocks, a PFF grid
    finer than a feature map, a HiLo cascade longer than K) as one line."""
    try:
        model = build_model(args, data)
    except ValueError as error:
        raise SystemExit(f"error: {first_line(error)}") from None
    check_model(args, model)
    return model


def _push(args, net: hpff_zoo.LocalModel, record: RunRecord) -> None:
    tag = args.model if args.model in hpff_zoo.models.TAGS else None
    try:
        push_model(net, args.push_to_hub, record=record, tag=tag)
    except Exception as error:  # the run is saved: say how to publish it by hand
        raise SystemExit(
            f"error: --push-to-hub {args.push_to_hub} failed ({first_line(error)}); the trained "
            f"model is in {args.output_dir}: publish it with `python -m hpff_zoo.hub export "
            f"{args.output_dir} EXPORT_DIR` then `python -m hpff_zoo.hub push EXPORT_DIR "
            f"{args.push_to_hub}`"
        ) from error
    print(f"pushed to https://huggingface.co/{args.push_to_hub}")


def train(args: argparse.Namespace, build_model: BuildModel) -> dict[str, Any]:
    """Train, evaluate every epoch, checkpoint, export; returns the last epoch's record."""
    threads = configure_threads(args.threads)
    if args.module_parallel:
        return train_module_parallel(args, build_model, threads)
    start = time.perf_counter()
    accelerator = make_accelerator(args)
    set_seed(args.seed, deterministic=args.deterministic)
    output = Path(args.output_dir)
    data = load_data(args, accelerator)
    model = with_memory_format(args, build_checked(args, build_model, data))
    loaders = make_loaders(args, accelerator.num_processes, data, model)
    data_config, train_set, train_loader, test_loader = loaders
    steps_per_epoch = math.ceil(len(train_loader) / args.grad_accum)
    accelerator.print(
        describe_run(args, accelerator, data, model, data_config, steps_per_epoch, threads)
    )
    if args.dry_run:
        return {}

    optimizer = create_optimizer(args, model.parameters())
    total_steps = args.epochs * steps_per_epoch
    warmup_steps = min(total_steps, round(args.warmup_epochs * steps_per_epoch))
    scheduler = warmup_cosine(optimizer, total_steps, warmup_steps, args.min_lr / args.lr)
    prepared = accelerator.prepare(model, optimizer, train_loader, test_loader, scheduler)
    model, optimizer, train_loader, test_loader, scheduler = prepared
    checkpoints = CheckpointManager(output / "checkpoints", keep=args.keep_checkpoints)
    metrics = MetricsWriter(output / "metrics.jsonl", enabled=accelerator.is_main_process)
    command = command_line(
        f"accelerate launch --multi_gpu --num_processes {accelerator.num_processes}"
        if accelerator.num_processes > 1
        else None
    )
    run = _Run(
        args,
        accelerator,
        model,
        optimizer,
        scheduler,
        train_set,
        train_loader,
        test_loader,
        checkpoints,
        metrics,
        command,
        start,
        TrainingProgress(command=command),
    )
    accelerator.register_for_checkpointing(run.progress)

    if accelerator.is_main_process:
        checkpoints.remove_partial()
    accelerator.wait_for_everyone()
    resume = resume_point(args, checkpoints)
    tracker_kwargs: dict[str, Any] = {}
    if resume is not None:
        load_checkpoint(resume, checkpoints, lambda: accelerator.load_state(str(resume)))
        done = run.progress
        run.elapsed_before = done.elapsed_s
        accelerator.print(
            f"resumed from {resume}: {done.epoch} epochs + {done.batch_in_epoch} batches done, "
            f"step {done.step}"
        )
        # What the interrupted run logged after this checkpoint is logged again: drop it.
        metrics.keep(
            lambda r: r["step"] <= done.step if r["kind"] == "step" else r["epoch"] <= done.epoch
        )
        tracker_kwargs = {"tensorboard": {"purge_step": done.step + 1}}
    else:  # a new run: no record of an earlier one in this directory stays
        metrics.keep(lambda r: False)
    accelerator.init_trackers("hpff", config=tracker_config(args), init_kwargs=tracker_kwargs)

    record: dict[str, Any] = {}
    for epoch in range(run.progress.epoch, args.epochs):
        record = run.end_epoch(epoch, run.train_epoch(epoch))
    if not record:  # resumed after the last epoch: report the saved model's accuracy
        record = {"kind": "final", **test_metrics(accelerator, model, test_loader)}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_model(run.net, output, args.dataset, data_config, data.label_names)
        batch = args.batch_size // args.grad_accum // accelerator.num_processes
        run_record = make_run_record(
            args, run.net, data, record, run.progress, run.command, run.elapsed(), batch
        )
        run_record.save(output / RECORD_FILE)
        if args.push_to_hub:
            _push(args, run.net, run_record)
    accelerator.print(final_line(record, output, accelerator))
    accelerator.end_training()
    return record
