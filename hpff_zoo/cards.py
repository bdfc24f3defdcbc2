"""Model cards: a template filled from the model itself and from what its training run measured.

A trained card prints only figures recorded by the run that produced the weights
(:class:`RunRecord`: accuracy, peak memory, hardware, wall time, the exact command); everything
else (architecture, setting, preprocessing, parameter count) is read from the model being
exported. A card for a tag that is not trained yet says so, gives the command that trains it and
an estimate of the compute, derived from the floating-point operations of one real training step
counted with torch's own FLOP formulas (``torch.utils.flop_counter``).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from string import Template
from typing import Any

import timm
import torch
from huggingface_hub import EvalResult, ModelCardData

from .aux.arch import AUX_PRESET_NAMES, resolve_aux_arch
from .local import LocalModel
from .measure import step_flops
from .models import tags
from .models.hpff import HPFF_MODELS
from .models.tags import DATASETS, PAPERS, TAGS, Dataset, Paper, TagSpec, TimmBackbone

__all__ = [
    "QUICK_EVAL_IMAGES",
    "CardFacts",
    "ComputeEstimate",
    "RunRecord",
    "card_facts",
    "describe_hardware",
    "estimate_compute",
    "render_card",
    "render_timm_backbone_card",
]

ASSUMED_TFLOPS = 50.0  # sustained throughput the GPU-hour estimate assumes (stated in the card)


QUICK_EVAL_IMAGES = 2_000  # the slice of the eval split a record also reports (quick checks)


@dataclass(frozen=True)
class RunRecord:
    """What one training run measured; the only source of figures in a trained card.

    Attributes:
        dataset: dataset key (``fashion_mnist``), tag prefix (``fmnist``) or a free name.
        epochs: epochs trained.
        top1, top5: accuracy in percent on ``eval_split``.
        command: the exact command line that trained the run.
        hardware: what it ran on (e.g. ``"2-core x86-64 CPU, no GPU"``).
        eval_split, num_eval: the split and number of images the accuracy is measured on.
        num_train: the number of training images (fewer than the dataset's for a subset run).
        batch_size: training batch size.
        wall_time_s: training wall time.
        peak_memory_bytes: peak training memory of one step (``hpff_zoo.MemoryMeter``).
        e2e_peak_memory_bytes: the same measurement for E2E training at the same batch size.
        quick_eval_images, quick_eval_top1: top-1 on the first ``quick_eval_images`` images of
            ``eval_split`` (in the dataset's order), from the same final evaluation: a figure a
            quick check can re-measure without the whole split.
        notes: anything a reader should know (deviations from the paper's schedule, ...).
    """

    dataset: str
    epochs: int
    top1: float
    command: str
    hardware: str
    top5: float | None = None
    eval_split: str = "test"
    num_eval: int | None = None
    num_train: int | None = None
    batch_size: int | None = None
    wall_time_s: float | None = None
    peak_memory_bytes: int | None = None
    e2e_peak_memory_bytes: int | None = None
    quick_eval_images: int | None = None
    quick_eval_top1: float | None = None
    notes: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        unknown, missing = set(data) - names, required - set(data)
        if unknown or missing:
            raise ValueError(
                "invalid run record: "
                + (f"unknown fields {sorted(unknown)}; " if unknown else "")
                + (f"missing fields {sorted(missing)}; " if missing else "")
                + f"fields are {sorted(names)}"
            )
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> RunRecord:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read the run record {path}: {err}") from err
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")


def describe_hardware() -> str:
    """What this process trains on, for :attr:`RunRecord.hardware`."""
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        return f"{count}x {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPU cores, no GPU"


@dataclass(frozen=True)
class ComputeEstimate:
    """Training compute of a planned run, from one measured step."""

    flops_per_image: float
    images: int
    epochs: int

    @property
    def total_flops(self) -> float:
        return self.flops_per_image * self.images * self.epochs

    def gpu_hours(self, tflops: float = ASSUMED_TFLOPS) -> float:
        return self.total_flops / (tflops * 1e12) / 3600

    def describe(self) -> str:
        petaflops = self.total_flops / 1e15
        total = f"{petaflops:,.0f}" if petaflops >= 10 else f"{petaflops:.2g}"
        hours = self.gpu_hours()
        time = f"roughly {hours:,.0f} GPU-hours" if hours >= 1 else f"{hours * 60:.0f} GPU-minutes"
        time = time if hours * 60 >= 1 else "under a GPU-minute"
        return (
            f"one training step costs {self.flops_per_image / 1e9:.3g} GFLOP per image (forward"
            " and backward of the backbone and the auxiliary networks, counted with torch's FLOP"
            f" formulas on one step of this setting), so {self.epochs} epochs over "
            f"{self.images:,} images need about {total} PFLOP: {time} at an assumed "
            f"sustained {ASSUMED_TFLOPS:.0f} TFLOP/s (an assumption, not a measurement; small "
            "models run far below it)"
        )


def estimate_compute(
    spec: TagSpec, model: LocalModel | None = None, batch_size: int = 2
) -> ComputeEstimate:
    """Count the FLOPs of one real local step of ``spec``'s model on random data."""
    model = (model or timm.create_model(spec.name)).train()
    x = torch.randn(batch_size, *spec.dataset.data_cfg["input_size"])
    y = torch.randint(0, spec.dataset.num_classes, (batch_size,))
    flops = step_flops(model, x, y) / batch_size
    return ComputeEstimate(flops, spec.train_images or spec.dataset.num_train, spec.epochs)


@dataclass(frozen=True)
class CardFacts:
    """What a card says about the model, read from the model itself."""

    name: str
    arch: str
    base: str
    dataset: Dataset | None
    dataset_name: str
    method: str
    num_modules: int
    cascade_size: int
    pff: int
    input_size: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    num_params: int
    hf_hub_id: str | None
    auxiliaries: str = ""
    ships_aux: bool = False  # the folder holds the trained auxiliary networks (aux.safetensors)

    @property
    def papers(self) -> tuple[Paper, ...]:
        return (PAPERS["hpff"], *((PAPERS[self.method],) if self.method in PAPERS else ()))

    @property
    def setting(self) -> str:
        if self.method == "e2e":
            return "end-to-end backpropagation (the baseline)"
        hilo = f"HiLo cascade size {self.cascade_size}" if self.cascade_size > 1 else "no HiLo"
        pff = f"PFF {self.pff}×{self.pff} patches" if self.pff > 1 else "no PFF"
        method = {"infopro": "InfoPro", "dgl": "DGL", "predsim": "PredSim"}.get(self.method)
        modules = f"K={self.num_modules} gradient-isolated modules"
        aux = f", {self.auxiliaries}" if self.auxiliaries else ""
        return f"{method or self.method}, {modules}, {hilo}, {pff}{aux}"


def describe_auxiliaries(model: LocalModel) -> str:
    """The auxiliary networks ``model`` trains with, in words: which preset of its method, held
    to which budget, PFF on which losses. Tags differing only there (``_paper``) need it said."""
    if model.method == "e2e":
        return ""
    preset = next(
        (f"`{name}`" for name in AUX_PRESET_NAMES
         if resolve_aux_arch(model.method, name) == model.aux_arch),
        "custom",
    )  # fmt: skip
    budget = f" at {model.aux_budget:.0%} of each module's FLOPs" if model.aux_budget else ""
    words = f"{preset} auxiliaries{budget or ' (unbudgeted)'}"
    if model.pff > 1 and model.pff_scope != "all":
        words += f", PFF on the {model.pff_scope} losses only"
    return words


def find_dataset(name: str) -> Dataset | None:
    """The catalogue dataset called ``name`` (key, tag prefix or title), if any."""
    for dataset in DATASETS.values():
        if name.lower() in (dataset.key, dataset.short, dataset.title.lower()):
            return dataset
    return None


def card_facts(
    model: LocalModel, name: str, dataset: str, hf_hub_id: str | None, ships_aux: bool = False
) -> CardFacts:
    cfg = model.backbone.pretrained_cfg
    known = find_dataset(dataset)
    return CardFacts(
        name=name,
        arch=getattr(model, "pretrained_cfg", {}).get("architecture", ""),
        base=cfg.get("architecture", type(model.backbone).__name__),
        dataset=known,
        dataset_name=known.title if known else dataset,
        method=model.method,
        num_modules=model.num_modules,
        cascade_size=model.cascade_size,
        pff=model.pff,
        input_size=tuple(model.input_size),
        mean=tuple(cfg.get("mean", ())),
        std=tuple(cfg.get("std", ())),
        num_classes=model.num_classes,
        num_params=sum(p.numel() for p in model.backbone.parameters()),
        hf_hub_id=hf_hub_id,
        auxiliaries=describe_auxiliaries(model),
        ships_aux=ships_aux,
    )


# --- rendering ----------------------------------------------------------------------------------

_CARD = Template("""\
---
$front_matter
---
# $name

$summary

| | |
|---|---|
| Model | $arch_line |
| Parameters | $params M (the plain backbone; auxiliary networks are training-only) |
| Dataset | $dataset_line |
| Input | $input_line |
| Training | $setting |
| Epochs | $epochs_line |
| License | apache-2.0 |

$body
## Use

```python
$usage
```

## Citation

$citations
""")

_USAGE = """\
import timm
import torch
from PIL import Image

import hpff_zoo  # registers the hpff_* models with timm

$create
transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
image = Image.open("image.png").convert("$mode")  # $mode_note
with torch.no_grad():
    logits = model(transform(image).unsqueeze(0))
# Fine-tune on N classes (fresh head and auxiliaries): num_classes=N
# Features for detection / segmentation: features_only=True
"""
_CONTINUE = """\
# Continue local training with its trained auxiliary networks (this folder ships them):
#   from hpff_zoo import hub
#   model = hub.load_model("$load_name")
"""
_TRAINED = """\
model = timm.create_model("$load_name", pretrained=True).eval()"""
_PLANNED = """\
# No weights yet (pretrained=True raises an error naming the tags that have weights): the
# tag's setting and preprocessing with fresh weights, to train with model.local_step.
model = timm.create_model("$load_name").eval()"""
_PLAIN_USAGE = """
# The same weights in the plain timm model (no LocalModel wrapper), loaded strictly$where;
# $needs
plain = timm.create_model(
    "$base",
    pretrained=True,
    num_classes=$num_classes,
    in_chans=$in_chans,
    pretrained_cfg_overlay=dict(
        $source,
        num_classes=$num_classes,
        input_size=$input_size,
        mean=$mean,
        std=$std,
    ),
).eval()
plain_transform = timm.data.create_transform(**timm.data.resolve_data_config(model=plain))
with torch.no_grad():
    plain_logits = plain(plain_transform(image).unsqueeze(0))
"""


def _mib(value: int | None) -> str:
    return "not measured" if value is None else f"{value / 2**20:.1f} MiB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not measured"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{seconds / 60:.1f} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _percent(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.2f} %"


def _front_matter(facts: CardFacts, record: RunRecord | None) -> str:
    dataset_id = facts.dataset.hub_id if facts.dataset else None
    results = None
    if record is not None:
        results = [
            EvalResult(
                task_type="image-classification",
                dataset_type=dataset_id or facts.dataset_name,
                dataset_name=facts.dataset_name,
                dataset_split=record.eval_split,
                metric_type="accuracy",
                metric_name="top-1 accuracy",
                metric_value=record.top1,
            )
        ]
    return ModelCardData(
        library_name="timm",
        license="apache-2.0",
        pipeline_tag="image-classification",
        tags=["image-classification", "timm", "hpff-zoo", "local-learning", facts.method],
        datasets=[dataset_id] if dataset_id else None,
        model_name=facts.name,
        eval_results=results,
    ).to_yaml()


def _results(facts: CardFacts, record: RunRecord) -> str:
    memory = _mib(record.peak_memory_bytes)
    if record.peak_memory_bytes and record.e2e_peak_memory_bytes:
        ratio = record.peak_memory_bytes / record.e2e_peak_memory_bytes
        if ratio < 1:
            memory += f" ({1 - ratio:.0%} less than E2E)"
        elif ratio > 1:
            memory += f" ({ratio - 1:.0%} more)"
    images = f", {record.num_eval:,} images" if record.num_eval else ""
    notes = [record.notes] if record.notes else []
    if record.quick_eval_images and record.quick_eval_top1 is not None:
        notes.append(
            f"Top-1 on the first {record.quick_eval_images:,} images of the {record.eval_split} "
            f"split: {_percent(record.quick_eval_top1)} (what a quick check re-measures)."
        )
    notes = "".join(f"\n{note}\n" for note in notes)
    out = _output_dir(record.command)
    return (
        "## Results\n\n"
        f"Measured by the run that produced these weights, on the {record.eval_split} split"
        f"{images}:\n\n"
        "| top-1 | top-5 | peak training memory | E2E peak memory (same batch) | hardware |"
        " training time |\n|---|---|---|---|---|---|\n"
        f"| {_percent(record.top1)} | {_percent(record.top5)} | {memory} |"
        f" {_mib(record.e2e_peak_memory_bytes)} | {record.hardware} |"
        f" {_duration(record.wall_time_s)} |\n{notes}\n"
        "## Reproduce\n\n```bash\n"
        f"{record.command}\n"
        f"python -m hpff_zoo.hub export {out} model_cards/{facts.name} --tag {facts.name}"
        f" --record {out}/run.json --overwrite\n```\n"
    )


def _output_dir(command: str) -> str:
    """The ``--output-dir`` of a recorded recipe command, so that the card's export line runs
    after it as written (a placeholder when the command does not say)."""
    args = shlex.split(command)
    for i, arg in enumerate(args):
        if arg == "--output-dir" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--output-dir="):
            return arg.split("=", 1)[1]
    return "<output dir>"


def _plan(spec: TagSpec, estimate: ComputeEstimate | None) -> str:
    text = (
        "## Not trained yet\n\n"
        "No weights are published for this tag: `timm.create_model"
        f'("{spec.name}", pretrained=True)` raises an error that names the tags that have '
        "weights. This card describes the planned run. Train it with:\n\n```bash\n"
        f"{spec.train_command()}\n"
        f"python -m hpff_zoo.hub export runs/{spec.name} model_cards/{spec.name} --tag {spec.name}"
        f" --record runs/{spec.name}/run.json --overwrite\n```\n"
    )
    if estimate is not None:
        text += f"\nEstimated compute: {estimate.describe()}.\n"
    return text


def _summary(facts: CardFacts, status: str) -> str:
    how = (
        "with end-to-end backpropagation, the baseline of the local-learning tags"
        if facts.method == "e2e"
        else f"without end-to-end backpropagation: {facts.setting}"
    )
    return (
        f"`{facts.base}` trained on {facts.dataset_name} {how}. Made with hpff-zoo, an "
        f"implementation of HPFF (ECCV 2024) on timm. Status: {status}."
    )


def render_card(
    facts: CardFacts,
    record: RunRecord | None = None,
    spec: TagSpec | None = None,
    estimate: ComputeEstimate | None = None,
) -> str:
    """The README.md of a Hub folder: trained (``record``) or planned (``spec``)."""
    if (record is None) == (spec is None):
        raise ValueError("render a card from a run record (trained) or a tag spec (planned)")
    dataset = facts.dataset
    sizes = ""
    if dataset:
        used = ""
        if record and record.num_train and record.num_train < dataset.num_train:
            used = f"{record.num_train:,} of the "
        sizes = f" ({used}{dataset.num_train:,} training / {dataset.num_test:,} evaluation images)"
    epochs = (
        f"{record.epochs}" + (f" (batch {record.batch_size})" if record.batch_size else "")
        if record
        else f"{spec.epochs} (planned)"
    )
    in_chans = facts.input_size[0]
    # A catalogue tag's Hub repo exists once published; until then its weights are the files
    # next to the card (the shipped folder).
    catalogue = facts.name in TAGS
    from_hub = facts.hf_hub_id is not None and (not catalogue or facts.name in tags.HUB_PUBLISHED)
    source = (
        f'hf_hub_id="{facts.hf_hub_id}",\n        hf_hub_filename="model.safetensors"'
        if from_hub
        else 'file="model.safetensors"'
    )
    load_name = facts.name if facts.arch else "local-dir:."
    if not facts.arch and from_hub:
        load_name = f"hf-hub:{facts.hf_hub_id}"
    mode, mode_note = (
        ("L", "the model takes 1-channel (grayscale) images")
        if in_chans == 1
        else ("RGB", f"the model takes {in_chans}-channel images")
    )
    create = Template(_TRAINED if record else _PLANNED).substitute(load_name=load_name)
    if load_name == "local-dir:.":
        create = "# Run from this folder (local-dir:. reads its config.json).\n" + create
    usage = Template(_USAGE).substitute(create=create, mode=mode, mode_note=mode_note)
    if record and facts.ships_aux:  # hub.load_model reads a folder as a path, not local-dir:
        folder_or_tag = "." if load_name == "local-dir:." else load_name
        usage += Template(_CONTINUE).substitute(load_name=folder_or_tag)
    if record:
        usage += Template(_PLAIN_USAGE).substitute(
            base=facts.base,
            num_classes=facts.num_classes,
            in_chans=in_chans,
            source=source,
            where="" if from_hub else " from this folder's model.safetensors (run from here)",
            input_size=facts.input_size,
            mean=facts.mean,
            std=facts.std,
            needs=(
                f"{facts.base} is registered by `import hpff_zoo` (timm has no 32-px ResNets)"
                if facts.base.startswith("cifar_")
                else "this needs timm only"
            ),
        )
    status = "trained" if record else "planned, not trained yet"
    return _CARD.substitute(
        front_matter=_front_matter(facts, record).strip(),
        name=facts.name,
        summary=_summary(facts, status),
        arch_line=(f"`{facts.arch}`, " if facts.arch else "")
        + f"the weights of the plain timm model `{facts.base}`",
        params=f"{facts.num_params / 1e6:.2f}",
        dataset_line=f"{facts.dataset_name}{sizes}, {facts.num_classes} classes",
        input_line=f"{'×'.join(map(str, facts.input_size))}, mean {facts.mean}, std {facts.std}",
        setting=facts.setting,
        epochs_line=epochs,
        body=_results(facts, record) if record else _plan(spec, estimate),
        usage=usage.rstrip("\n"),
        citations="\n\n".join(f"```bibtex\n{p.bibtex}\n```" for p in facts.papers),
    )


# --- timm-backbone tags ------------------------------------------------------------------------

_TIMM_CARD = Template("""\
---
$front_matter
---
# $name

`$base` with timm's own ImageNet weights
([$hf_hub_id](https://huggingface.co/$hf_hub_id)), wrapped for local learning by hpff-zoo. The
backbone was trained end to end by timm; the auxiliary networks are untrained (fresh). A starting
point for local fine-tuning and segmentation transfer, **not an HPFF-trained ImageNet model**:
$planned

| | |
|---|---|
| Model | `$arch` (its default tag), the weights of the plain timm model `$base` |
| Parameters | $params M (the plain backbone; auxiliary networks are training-only) |
| Backbone weights | [$hf_hub_id](https://huggingface.co/$hf_hub_id), trained end to end by timm |
| Why these | $why |
| Auxiliary networks | untrained: fresh, for the setting built ($setting by default) |
| Input | $input_line |
| License | $license (timm's, for these weights) |

## Use

```python
import timm
import torch
from PIL import Image

import hpff_zoo  # registers the hpff_* models with timm

# timm's file, downloaded once into the Hub cache (HF_HUB_OFFLINE=1: the cache only).
model = timm.create_model("$name", pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
image = Image.open("image.png").convert("RGB")
with torch.no_grad():
    logits = model(transform(image).unsqueeze(0))

# The same file in timm's own $base, without hpff_zoo's wrapper: the same outputs.
plain = timm.create_model("$timm_name", pretrained=True).eval()
with torch.no_grad():
    plain_logits = plain(transform(image).unsqueeze(0))
# Local fine-tuning on N classes (fresh head and auxiliaries): num_classes=N, method=..., ...
# Features for detection / segmentation: features_only=True
```

Local fine-tuning and segmentation transfer from these weights:

```bash
python recipes/finetune.py --init $name --dataset /data/images --method $method \\
    --num-modules $num_modules --hilo 2 --pff 2
$segmentation
```
""")


def render_timm_backbone_card(backbone: TimmBackbone, planned: list[str]) -> str:
    """The README.md of a timm-backbone tag: where its weights come from and what they are not.

    Args:
        backbone: the tag.
        planned: the HPFF-trained tags of the same architecture (planned or trained here).
    """
    cfg = backbone.pretrained_cfg()
    plain = timm.create_model(backbone.base, device="meta")
    defaults = HPFF_MODELS[backbone.arch][1]
    method, num_modules = defaults["method"], defaults["num_modules"]
    listed = ", ".join(f"`{name}`" for name in planned) or "none yet"
    segmentation = (
        f"python recipes/segmentation.py train CONFIG --backbone-checkpoint {backbone.name}"
        if backbone.base.startswith("resnet")
        else "# segmentation transfer (--backbone-checkpoint) reads timm ResNets only"
    )
    front_matter = ModelCardData(
        library_name="timm",
        license=cfg["license"],
        pipeline_tag="image-classification",
        tags=["image-classification", "timm", "hpff-zoo", "local-learning"],
        datasets=[DATASETS["in1k"].hub_id],
        base_model=backbone.hf_hub_id,
        model_name=backbone.name,
    ).to_yaml()
    return _TIMM_CARD.substitute(
        front_matter=front_matter.strip(),
        name=backbone.name,
        arch=backbone.arch,
        base=backbone.base,
        timm_name=backbone.timm_name,
        hf_hub_id=backbone.hf_hub_id,
        planned=f"this architecture's HPFF-trained ImageNet tags ({listed}) are planned; their "
        "cards give the training command and its compute estimate.",
        params=f"{sum(p.numel() for p in plain.parameters()) / 1e6:.2f}",
        why=backbone.why,
        setting=f"{method}, K={num_modules}, HiLo cascade size 2, PFF 2×2",
        method=method,
        num_modules=num_modules,
        input_line=f"{'×'.join(map(str, cfg['input_size']))}, mean {cfg['mean']}, std "
        f"{cfg['std']}, {cfg['interpolation']}, crop {cfg['crop_pct']}",
        license=cfg["license"],
        segmentation=segmentation,
    )
