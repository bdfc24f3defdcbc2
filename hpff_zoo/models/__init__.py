"""timm model families added by hpff_zoo; importing registers them with timm."""

from . import cifar_resnet, hpff  # noqa: F401  (registration side effects)
from .cifar_resnet import CifarResNet
from .hpff import HPFF_MODELS
from .pretrained import (
    NoWeightsError,
    PretrainedWeightsError,
    available_tags,
    shipped_dir,
    shipped_folder,
)
from .tags import HUB_ORG, TAGS, TIMM_BACKBONES, TagSpec, TimmBackbone

__all__ = [
    "HPFF_MODELS",
    "HUB_ORG",
    "TAGS",
    "TIMM_BACKBONES",
    "CifarResNet",
    "NoWeightsError",
    "PretrainedWeightsError",
    "TagSpec",
    "TimmBackbone",
    "available_tags",
    "shipped_dir",
    "shipped_folder",
]
