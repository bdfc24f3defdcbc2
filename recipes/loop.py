"""The data-parallel training loop of ``cifar.py``, ``imagenet.py`` and ``finetune.py``.

Written as Accelerate's own examples are, over ``hpff_zoo.training``: one ``Accelerator``,
``prepare``, ``accumulate``, ``backward``, then evaluation every epoch and the saved model. The
recipes differ only in their defaults (the paper's hyperparameters for their family) and in how
they build the model; ``--module-parallel`` runs ``module_parallel.py``'s loop instead.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from accelerate.utils import set_seed
from module_parallel import train_module_parallel

from hpff_zoo.training import (
    BuildModel,
    Run,
    RunConfig,
    average_buffers,
    build_checked,
    command_line,
    configure_threads,
    create_optimizer,
    create_scheduler,
    describe_run,
    load_data,
    make_accelerator,
    make_loaders,
    synced_gradients,
    test_metrics,
)

PRESETS = Path(__file__).resolve().parent / "presets"  # the recipes' presets (--preset NAME)


def train(config: RunConfig, build_model: BuildModel) -> dict[str, Any]:
    """Train, evaluate every epoch, checkpoint, save; returns the last epoch's record."""
    threads = configure_threads(config.threads)
    if config.module_parallel:
        return train_module_parallel(config, build_model, threads)
    accelerator = make_accelerator(config)
    set_seed(config.seed, deterministic=config.deterministic)
    processes = accelerator.num_processes
    command = command_line(
        f"accelerate launch --multi_gpu --num_processes {processes}" if processes > 1 else None
    )
    run = Run(config, accelerator, command)  # its clock includes loading and the header

    # Build: data, model, loaders, the header (with a timed step), optimizer and schedule.
    data = load_data(config, accelerator)
    net = build_checked(config, build_model, data)
    loaders = make_loaders(config, processes, data, net)
    steps_per_epoch = math.ceil(len(loaders.train) / config.grad_accum)
    input_size = loaders.data_config["input_size"]
    accelerator.print(
        describe_run(config, accelerator, data, net, input_size, steps_per_epoch, threads)
    )
    if config.dry_run:
        return {}
    optimizer = create_optimizer(config, net.parameters())
    scheduler = create_scheduler(config, optimizer, steps_per_epoch)
    model, optimizer, train_loader, test_loader, scheduler = accelerator.prepare(
        net, optimizer, loaders.train, loaders.test, scheduler
    )
    run.begin()  # --resume: the checkpoint's weights, optimizer, schedule and position

    # The loop: one local-learning step per batch, the optimizer step, evaluation per epoch.
    record: dict[str, Any] = {}
    for epoch in run.epochs():
        model.train()
        for x, y in run.batches(epoch, loaders.train_set, train_loader):
            with accelerator.accumulate(model):
                with synced_gradients(accelerator, model), run.meter():
                    losses = net.local_step(x, y, backward=accelerator.backward)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            run.after_batch(net, losses, x.shape[0], scheduler.get_last_lr()[0])
        stats = run.epoch_stats()  # the training's loss, peak memory, throughput and time
        average_buffers(accelerator, net)  # one model (BatchNorm statistics) on every process
        results = test_metrics(accelerator, model, test_loader)
        record = run.end_epoch(epoch, {"processes": processes, **stats, **results})
    if not record:  # resumed after the last epoch: report the saved model's accuracy
        record = {"kind": "final", **test_metrics(accelerator, model, test_loader)}

    # Save: model.safetensors + config.json, run.json, --push-to-hub, the final line.
    run.finish(net, data, loaders.data_config, record, config.micro_batch // processes)
    return record
