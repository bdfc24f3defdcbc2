"""timm model families added by hpff_zoo; importing registers them with timm."""

from . import cifar_resnet, hpff  # noqa: F401  (registration side effects)
from .cifar_resnet import CifarResNet
from .hpff import HPFF_MODELS

__all__ = ["HPFF_MODELS", "CifarResNet"]
