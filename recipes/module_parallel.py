"""``--module-parallel S``: the recipes' training loop with the model's modules on S processes.

Launched with one process per stage (``torchrun --nproc_per_node S recipes/cifar.py
--module-parallel S``, or ``accelerate launch --num_processes S``; gloo on CPU, NCCL on GPU).
Every process reads the same batches (the loader is not sharded: stage s needs the labels, and
the images for reconstruction losses) and trains its stage with
:class:`hpff_zoo.ModuleParallel`; after every epoch the stages exchange weights, so every process
evaluates its shard of the test set with the whole model and the first one exports it.

Differences from the data-parallel loop, each refused with a clear message: no checkpoints or
``--resume`` (each stage's optimizer state lives in its own process), no ``--grad-accum``
(``--micro-batches`` cuts each batch instead), no fp16 loss scaling (bf16 works).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from common import create_optimizer, load_data, make_accelerator, make_loaders
from tqdm.auto import tqdm

from hpff_zoo.parallel import ModuleParallel, init_stages
from hpff_zoo.training import (
    MetricsWriter,
    ThreadChoice,
    evaluate,
    save_model,
    summarize_losses,
    unweighted_losses,
    warmup_cosine,
)


def check_args(args: argparse.Namespace) -> None:
    """Refuse the loop features module-parallel training does not offer."""
    unsupported = {
        "--resume": args.resume is not None,
        "--grad-accum > 1 (use --micro-batches)": args.grad_accum not in (None, 1),
        "--mixed-precision fp16 (bf16 works)": args.mixed_precision == "fp16",
        "--push-to-hub (publish the export with python -m hpff_zoo.hub)": args.push_to_hub
        is not None,
    }
    refused = [flag for flag, given in unsupported.items() if given]
    if refused:
        raise SystemExit(f"--module-parallel does not support {', '.join(refused)}")
    if args.batch_size % args.micro_batches:
        raise SystemExit(
            f"--batch-size {args.batch_size} does not split into {args.micro_batches} micro-batches"
        )


def train_module_parallel(
    args: argparse.Namespace, build_model, threads: ThreadChoice
) -> dict[str, Any]:
    """Train, evaluate every epoch, export; returns the last epoch's record."""
    check_args(args)
    try:
        init_stages(timeout=args.stage_timeout)  # before Accelerate, which reuses the group
    except RuntimeError as error:
        raise SystemExit(f"error: {error}") from None
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    data = load_data(args, accelerator)
    model = build_model(args, data).to(accelerator.device)
    try:
        stage = ModuleParallel(model, args.module_parallel, micro_batches=args.micro_batches)
    except ValueError as error:  # wrong number of processes, MAN, ...: one clear message
        raise SystemExit(f"error: {error}") from None
    # The loop's loaders with one process per batch: every stage reads the whole batch.
    data_config, train_set, train_loader, test_loader = make_loaders(args, 1, data, model)
    test_loader = accelerator.prepare(test_loader)
    optimizer = create_optimizer(args, stage.parameters())
    total_steps = args.epochs * len(train_loader)
    warmup_steps = min(total_steps, round(args.warmup_epochs * len(train_loader)))
    scheduler = warmup_cosine(optimizer, total_steps, warmup_steps, args.min_lr / args.lr)
    output = Path(args.output_dir)
    metrics = MetricsWriter(output / "metrics.jsonl", enabled=accelerator.is_main_process)
    accelerator.print(
        f"module-parallel over {stage.num_stages} processes, {threads.describe()}:\n"
        f"{stage.describe()}"
    )

    record: dict[str, Any] = {}
    for epoch in range(args.epochs):
        train_set.set_epoch(epoch)
        # The same shuffle on every stage, whatever else drew from the global generator.
        train_loader.sampler.generator = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        model.train()
        bar = tqdm(
            train_loader,
            desc=f"epoch {epoch + 1}/{args.epochs}",
            unit="batch",
            disable=not stage.is_last,  # the stage that sees the head's loss
            dynamic_ncols=True,
        )
        start, losses = time.perf_counter(), {}
        for x, y in bar:
            with accelerator.autocast():
                losses = stage.step(x, y, backward=accelerator.backward)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            if stage.is_last:
                bar.set_postfix_str(
                    summarize_losses(unweighted_losses(model, losses)), refresh=False
                )
        seconds = time.perf_counter() - start
        stage.synchronize()
        results = evaluate(accelerator, model, test_loader)
        record = {
            "kind": "epoch",
            "epoch": epoch + 1,
            "stages": stage.num_stages,
            "test_top1": results["top1"],
            "test_top5": results["top5"],
            "test_loss": results["loss"],
            "epoch_seconds": seconds,
            "images_per_second": len(train_loader) * args.batch_size / seconds,
        }
        metrics.write(record)
        accelerator.print(
            f"epoch {epoch + 1}/{args.epochs}  test top-1 {results['top1']:.2f}%  "
            f"top-5 {results['top5']:.2f}%  {seconds:.1f} s ({record['images_per_second']:.0f} "
            "img/s)"
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_model(model, output, args.dataset, data_config, data.label_names)
    accelerator.end_training()
    return record
