"""The zoo's catalogue: every pretrained tag, the run that makes it, and where its weights live.

A tag names one training run, ``<arch>.<dataset>_<method>[_k<K>][_hpff][_<aux>]`` (``_hpff`` =
HiLo cascade size 2 + PFF 2×2; ``_<aux>`` names auxiliaries other than the ones the first tags
shipped with, e.g. ``_paper``), for example ``hpff_resnet32.fmnist_infopro_k16_hpff``. Its
:class:`TagSpec` holds everything that run fixes: the dataset and its preprocessing, the local
method and its settings (applied as defaults when the tag is created, so a downloaded checkpoint
comes back in the setting it was trained in), the planned schedule, and the Hub repository
``<HUB_ORG>/<tag>`` its weights are published to. The timm pretrained cfgs in
:mod:`hpff_zoo.models.hpff` and the model cards in ``model_cards/`` are both generated from it.

Which tags actually have weights is not a property of the spec: :data:`HUB_PUBLISHED` lists the
tags uploaded to the Hub, and a tag whose Hub-ready folder ships in ``model_cards/<tag>/`` has
weights too (see :mod:`hpff_zoo.models.pretrained`).

:data:`TIMM_BACKBONES` is the other kind of tag: no hpff-zoo run at all, but timm's own published
ImageNet weights for the plain backbone (``hpff_resnet101.a1h_in1k`` reads
``timm/resnet101.a1h_in1k``), with untrained auxiliary networks. They are the ImageNet models'
default tags, so that ``timm.create_model("hpff_resnet101", pretrained=True)`` works wherever
timm's own ``resnet101`` pretrained call does, as a starting point for local fine-tuning and
segmentation transfer, while the HPFF-trained ImageNet tags above stay planned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import get_pretrained_cfg

from ..local import CHEAP_AUX

__all__ = [
    "DATASETS",
    "HUB_ORG",
    "HUB_PUBLISHED",
    "PAPERS",
    "TAGS",
    "TIMM_BACKBONES",
    "Dataset",
    "Paper",
    "TagSpec",
    "TimmBackbone",
]

HUB_ORG = "hpff-zoo"
WEIGHTS_FILE = "model.safetensors"

# Tags whose weights have been uploaded to ``<HUB_ORG>/<tag>``; add a tag here after pushing it.
HUB_PUBLISHED: set[str] = set()


@dataclass(frozen=True)
class Paper:
    """A paper a model card cites."""

    key: str
    arxiv: str
    title: str
    authors: str
    venue: str
    year: int

    @property
    def bibtex(self) -> str:
        return (
            f"@inproceedings{{{self.key},\n  title={{{self.title}}},\n  author={{{self.authors}}},"
            f"\n  booktitle={{{self.venue}}},\n  year={{{self.year}}},\n"
            f"  eprint={{{self.arxiv}}},\n  archivePrefix={{arXiv}}\n}}"
        )


PAPERS = {
    "hpff": Paper(
        "su2024hpff",
        "2407.05638",
        "HPFF: Hierarchical Locally Supervised Learning with Patch Feature Fusion",
        "Su, Junhao and He, Chenghao and Zhu, Feiyu and Xu, Xiaojie and Guan, Dongzhi and Si,"
        " Chenyang",
        "European Conference on Computer Vision (ECCV)",
        2024,
    ),
    "infopro": Paper(
        "wang2021infopro",
        "2101.10832",
        "Revisiting Locally Supervised Learning: an Alternative to End-to-end Training",
        "Wang, Yulin and Ni, Zanlin and Song, Shiji and Yang, Le and Huang, Gao",
        "International Conference on Learning Representations (ICLR)",
        2021,
    ),
    "dgl": Paper(
        "belilovsky2020dgl",
        "1901.08164",
        "Decoupled Greedy Learning of CNNs",
        "Belilovsky, Eugene and Eickenberg, Michael and Oyallon, Edouard",
        "International Conference on Machine Learning (ICML)",
        2020,
    ),
    "predsim": Paper(
        "nokland2019predsim",
        "1901.06656",
        "Training Neural Networks with Local Error Signals",
        "N{\\o}kland, Arild and Eidnes, Lars Hiller",
        "International Conference on Machine Learning (ICML)",
        2019,
    ),
}


@dataclass(frozen=True)
class Dataset:
    """A training dataset as the recipes name it, with the preprocessing its models expect.

    Attributes:
        key: the recipes' ``--dataset`` value and the tag prefix's long form.
        short: the tag prefix (``fmnist``, ``cifar10``, ``in1k``).
        title: the name a card prints.
        hub_id: the dataset on the Hugging Face Hub (card metadata).
        recipe: the recipe script that trains on it (``cifar`` or ``imagenet``).
        num_classes, num_train, num_test: split sizes, for cards and compute estimates.
        data_cfg: timm pretrained-cfg data fields (input_size, mean, std, crop, interpolation);
            ``None`` keeps the backbone's own.
    """

    key: str
    short: str
    title: str
    hub_id: str
    recipe: str
    num_classes: int
    num_train: int
    num_test: int
    data_cfg: dict[str, Any]


_SMALL = dict(crop_pct=1.0, interpolation="bilinear")
DATASETS = {
    d.short: d
    for d in (
        Dataset(
            "cifar10", "cifar10", "CIFAR-10", "uoft-cs/cifar10", "cifar", 10, 50_000, 10_000,
            dict(input_size=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465),
                 std=(0.2470, 0.2435, 0.2616), **_SMALL),
        ),
        Dataset(
            "fashion_mnist", "fmnist", "Fashion-MNIST", "zalando-datasets/fashion_mnist", "cifar",
            10, 60_000, 10_000,
            dict(input_size=(1, 28, 28), mean=(0.2860,), std=(0.3530,), **_SMALL),
        ),
        Dataset(
            "imagenet", "in1k", "ImageNet-1k", "ILSVRC/imagenet-1k", "imagenet", 1000,
            1_281_167, 50_000,
            dict(input_size=(3, 224, 224), mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                 crop_pct=0.875, interpolation="bilinear"),
        ),
    )
}  # fmt: skip


@dataclass(frozen=True)
class TagSpec:
    """One pretrained tag: the training run that produces its weights.

    Attributes:
        arch: the hpff_* model name.
        base: the plain timm model the weights load into without hpff_zoo.
        dataset: what it is trained on.
        method, num_modules, hilo, pff: the local-learning setting (``hilo`` = cascade size or
            ``False``; ``pff`` = grid size, 1 = off).
        epochs: the planned schedule, for the reproduce command and the compute estimate.
        preset: the recipe preset (``recipes/presets/<preset>.yaml``) fixing the rest of the
            schedule (batch, learning rate, training subset), if any.
        train_images: images per epoch when the preset trains on a subset (compute estimate).
        aux, aux_budget, pff_scope: the auxiliary networks that trained it (see
            :mod:`hpff_zoo.aux.arch`); ``None``: the model's defaults.
    """

    arch: str
    base: str
    dataset: Dataset
    method: str
    num_modules: int
    hilo: int | bool
    pff: int
    epochs: int
    preset: str | None = None
    train_images: int | None = None
    aux: str | None = None
    aux_budget: float | None = None
    pff_scope: str | None = None

    @property
    def tag(self) -> str:
        name = f"{self.dataset.short}_{self.method}"
        if self.method != "e2e":
            name += f"_k{self.num_modules}"
        if self.hilo == 2 and self.pff == 2:
            name += "_hpff"
        else:
            name += f"_hilo{self.hilo}" if self.hilo else ""
            name += f"_pff{self.pff}" if self.pff > 1 else ""
        return name + self.aux_suffix

    @property
    def aux_suffix(self) -> str:
        """``_<preset>[<budget in %>]`` when the tag pins other auxiliaries than the ones an
        unsuffixed tag means (:data:`~hpff_zoo.local.CHEAP_AUX`, the default when the first
        tags shipped), so that a tag's name stays true after the defaults change: ``_paper``
        is the official architecture, ``_paper10`` it held to 10 % of the module's FLOPs. The
        PFF scope is not in the name: a tag's card and cfg state it."""
        pinned = dict(aux=self.aux, aux_budget=self.aux_budget, pff_scope=self.pff_scope)
        if self.aux is None or pinned == CHEAP_AUX:
            return ""
        return f"_{self.aux}{round(self.aux_budget * 100) if self.aux_budget else ''}"

    @property
    def name(self) -> str:
        return f"{self.arch}.{self.tag}"

    @property
    def hf_hub_id(self) -> str:
        return f"{HUB_ORG}/{self.name}"

    @property
    def papers(self) -> tuple[Paper, ...]:
        return (PAPERS["hpff"], *((PAPERS[self.method],) if self.method in PAPERS else ()))

    def train_command(self, output_dir: str | None = None) -> str:
        """The recipe command line that trains this tag (the recipes' flags, paper defaults).

        The model is named by its tag, so the run gets the tag's preprocessing (input size,
        channels, mean/std) and the export's tag check passes.
        """
        output_dir = output_dir or f"runs/{self.name}"
        flags = [f"--model {self.name}", f"--dataset {self.dataset.key}", f"--method {self.method}"]
        if self.method != "e2e":
            flags += [f"--num-modules {self.num_modules}", f"--hilo {int(self.hilo)}"]
            flags += [f"--pff {self.pff}"]
        flags += [f"--preset {self.preset}"] if self.preset else []
        flags += [f"--epochs {self.epochs}", f"--output-dir {output_dir}"]
        return f"accelerate launch recipes/{self.dataset.recipe}.py " + " ".join(flags)

    def model_kwargs(self) -> dict[str, Any]:
        """The local-learning settings this tag was trained with."""
        kwargs = dict(
            method=self.method, num_modules=self.num_modules, hilo=self.hilo, pff=self.pff
        )
        if self.aux is not None:  # a pinned architecture, budget and scope (else the defaults)
            kwargs.update(aux=self.aux, aux_budget=self.aux_budget, pff_scope=self.pff_scope)
        return kwargs

    def pretrained_cfg(self, has_weights: bool = True) -> dict[str, Any]:
        """The timm pretrained cfg: weights location, preprocessing, head names under backbone.

        Args:
            has_weights: whether the tag's weights exist (published or shipped). timm counts a
                tag with a weights location as pretrained (``timm.list_pretrained``, its test
                suite), so a tag without weights gets none.
        """
        base = get_pretrained_cfg(self.base)
        data = self.dataset.data_cfg
        source = dict(hf_hub_id=self.hf_hub_id, hf_hub_filename=WEIGHTS_FILE) if has_weights else {}
        return dict(
            **source,
            num_classes=self.dataset.num_classes,
            **data,
            fixed_input_size=base.fixed_input_size,
            pool_size=_pool_size(base.pool_size, base.input_size, data["input_size"]),
            first_conv=f"backbone.{base.first_conv}",
            classifier=f"backbone.{base.classifier}",
            license="apache-2.0",
            paper_ids=tuple(f"arXiv:{p.arxiv}" for p in self.papers),
            paper_name=PAPERS["hpff"].title,
            description=self.description,
        )

    @property
    def description(self) -> str:
        how = "end-to-end backpropagation (baseline)"
        if self.method != "e2e":
            how = f"{self.method} local learning, K={self.num_modules}"
            how += f", HiLo k={self.hilo}" if self.hilo else ", no HiLo"
            how += f", PFF {self.pff}x{self.pff}" if self.pff > 1 else ", no PFF"
        if self.aux_suffix:
            budget = f" at {self.aux_budget:.0%} of each module's FLOPs" if self.aux_budget else ""
            how += f", {self.aux} auxiliaries{budget}"
            how += f", PFF scope '{self.pff_scope}'" if self.pff > 1 else ""
        return f"{self.base} trained on {self.dataset.title} with {how}"


def _pool_size(
    base_pool: tuple[int, int] | None, base_input: tuple[int, ...], input_size: tuple[int, ...]
) -> tuple[int, int] | None:
    """The final feature map's size at ``input_size``, from the backbone's at its own input.

    The backbone's stride-2 stages (padded convolutions) round odd sizes up: a CIFAR ResNet,
    8×8 at 32 px, gives 7×7 at Fashion-MNIST's 28 px.
    """
    if base_pool is None:
        return None
    return tuple(
        math.ceil(size * pool / base)
        for size, pool, base in zip(input_size[-2:], base_pool, base_input[-2:])
    )


def _spec(arch: str, base: str, dataset: str, method: str, k: int, hpff: bool, epochs: int):
    hilo, pff = (2, 2) if hpff else (False, 1)
    return TagSpec(arch, base, DATASETS[dataset], method, k, hilo, pff, epochs)


def _fmnist_spec(method: str, k: int, hpff: bool, aux: dict[str, Any] = CHEAP_AUX) -> TagSpec:
    """A Fashion-MNIST tag trained on all 60,000 images with preset ``fmnist-full`` (16 epochs on
    one CPU core), with the auxiliaries that trained it pinned (by default
    :data:`~hpff_zoo.local.CHEAP_AUX`, the default of the first tags' time), so that the tag
    keeps meaning them after the defaults changed."""
    spec = _spec("hpff_resnet32", "cifar_resnet32", "fmnist", method, k, hpff, epochs=16)
    return replace(spec, preset="fmnist-full", train_images=60_000, **aux)


# The paper's InfoPro* auxiliaries as the official code runs them: unbudgeted, PFF on the
# decoder's loss only (with PFF off the scope does not matter).
_PAPER_AUX = dict(aux="paper", aux_budget=None, pff_scope="decoder")


# The first tag of each architecture is its default (timm's rule when no tag has weights yet);
# it is the paper's main setting, so `timm.create_model("hpff_resnet32")` stays a CIFAR model.
_CATALOGUE = (
    _spec("hpff_resnet32", "cifar_resnet32", "cifar10", "infopro", 16, True, 400),
    _fmnist_spec("infopro", 16, True),
    _fmnist_spec("infopro", 16, False),
    _fmnist_spec("dgl", 16, True),
    _fmnist_spec("dgl", 16, False),
    _fmnist_spec("e2e", 1, False),
    _fmnist_spec("infopro", 16, True, aux=_PAPER_AUX),
    _fmnist_spec("infopro", 16, False, aux=_PAPER_AUX),
    _spec("hpff_resnet110", "cifar_resnet110", "cifar10", "infopro", 55, True, 400),
    _spec("hpff_resnet101", "resnet101", "in1k", "infopro", 4, True, 90),
    _spec("hpff_resnet101", "resnet101", "in1k", "infopro", 4, False, 90),
    _spec("hpff_resnet152", "resnet152", "in1k", "infopro", 4, True, 90),
    _spec("hpff_resnext101_32x8d", "resnext101_32x8d", "in1k", "infopro", 4, True, 90),
    _spec("hpff_vgg13", "vgg13", "in1k", "dgl", 10, True, 90),
    _spec("hpff_vit_base_patch16_224", "vit_base_patch16_224", "in1k", "dgl", 12, True, 90),
)
TAGS: dict[str, TagSpec] = {spec.name: spec for spec in _CATALOGUE}


# The pretrained-cfg fields a timm-backbone tag takes over from timm's own cfg of those weights:
# where they are and the preprocessing they were trained with. Not ``url``: timm would prefer a
# legacy torch.hub download (a pickle file) over the Hub whenever one is cached.
_TIMM_CFG_FIELDS = (
    "hf_hub_id", "input_size", "test_input_size", "fixed_input_size", "min_input_size",
    "interpolation", "crop_pct", "test_crop_pct", "crop_mode", "mean", "std", "num_classes",
    "pool_size", "license", "origin_url", "paper_ids", "paper_name",
)  # fmt: skip
_HONEST = (
    "backbone trained end to end by timm, auxiliary networks untrained: a starting point for "
    "local fine-tuning and segmentation transfer, not an HPFF-trained ImageNet model"
)


@dataclass(frozen=True)
class TimmBackbone:
    """A tag whose backbone weights are timm's own published weights for the plain model.

    No hpff-zoo run made them: timm loads ``timm/<base>.<tag>`` from the Hub (its cache,
    ``HF_HUB_OFFLINE``, ``pretrained_cfg_overlay``) strictly into ``model.backbone``, and the
    auxiliary networks keep their fresh initialisation. The local-learning setting is the
    architecture's paper default unless the caller passes another one.

    Attributes:
        arch: the hpff_* model name.
        base: the plain timm model.
        tag: timm's pretrained tag of ``base`` (it names the hpff tag too).
        why: why these weights were chosen among timm's tags for ``base`` (the card says it).
    """

    arch: str
    base: str
    tag: str
    why: str

    @property
    def name(self) -> str:
        return f"{self.arch}.{self.tag}"

    @property
    def timm_name(self) -> str:
        return f"{self.base}.{self.tag}"

    @property
    def timm_cfg(self) -> dict[str, Any]:
        return get_pretrained_cfg(self.timm_name).to_dict()

    @property
    def hf_hub_id(self) -> str:
        return self.timm_cfg["hf_hub_id"]

    @property
    def description(self) -> str:
        return f"{self.base} with timm's {self.hf_hub_id} ImageNet weights; {_HONEST}"

    def model_kwargs(self) -> dict[str, Any]:
        """None: timm's weights fix no local-learning setting."""
        return {}

    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's cfg of the weights, with the head names under ``backbone.``."""
        timm_cfg = self.timm_cfg
        cfg = {key: timm_cfg[key] for key in _TIMM_CFG_FIELDS if timm_cfg.get(key) is not None}
        return dict(
            cfg,
            hf_hub_filename=WEIGHTS_FILE,
            first_conv=f"backbone.{timm_cfg['first_conv']}",
            classifier=f"backbone.{timm_cfg['classifier']}",
            description=self.description,
        )


_DEFAULT = "timm's default weights for {base} (timm.create_model('{base}', pretrained=True))"
TIMM_BACKBONES: dict[str, TimmBackbone] = {
    b.name: b
    for b in (
        TimmBackbone(
            "hpff_resnet101", "resnet101", "a1h_in1k",
            _DEFAULT.format(base="resnet101") + ", ResNet Strikes Back procedure A1h, "
            "ImageNet-1k only, apache-2.0",
        ),
        TimmBackbone(
            "hpff_resnet152", "resnet152", "a1h_in1k",
            _DEFAULT.format(base="resnet152") + ", ResNet Strikes Back procedure A1h, "
            "ImageNet-1k only, apache-2.0",
        ),
        TimmBackbone(
            "hpff_resnext101_32x8d", "resnext101_32x8d", "tv_in1k",
            _DEFAULT.format(base="resnext101_32x8d") + ": torchvision's ImageNet-1k weights at "
            "the paper's 224 px, bsd-3-clause; the fb_wsl/fb_swsl/fb_ssl weights saw "
            "Instagram/YFCC data and are non-commercial (cc-by-nc-4.0), tv2_in1k trains at "
            "176 px",
        ),
        TimmBackbone(
            "hpff_vgg13", "vgg13", "tv_in1k",
            _DEFAULT.format(base="vgg13") + " and its only ImageNet weights: torchvision's, "
            "bsd-3-clause",
        ),
        TimmBackbone(
            "hpff_vit_base_patch16_224", "vit_base_patch16_224", "augreg2_in21k_ft_in1k",
            _DEFAULT.format(base="vit_base_patch16_224") + ": AugReg ImageNet-21k pretraining "
            "fine-tuned on ImageNet-1k, apache-2.0",
        ),
    )
}  # fmt: skip
