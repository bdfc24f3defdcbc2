"""mmseg backbones built from hpff_zoo's timm models, for segmentation at CPU scale.

``CifarResNetBackbone`` is the CIFAR ResNet family (``cifar_resnet32``, ...; the backbones of the
shipped ``hpff_resnet32.*`` tags) as an mmseg backbone: ``forward`` returns the stage outputs
(strides 1, 2, 4), and its children and parameter names are timm's, so

- :class:`~hpff_zoo.seg.HPFFEncoderDecoder` partitions it like an mmseg ResNet (``res_layers``,
  ``out_indices``), and
- a classification checkpoint loads into it as it is (``HPFFTransfer``: every tensor but the
  classifier ``fc``), which is why :func:`hpff_zoo.seg.config.use_backbone_checkpoint` skips the
  mmseg ResNet variant detection for it (:attr:`takes_timm_state_dict`).
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor

import hpff_zoo.models  # noqa: F401  (registers cifar_resnet* in timm)

__all__ = ["CifarResNetBackbone"]


@MODELS.register_module()
class CifarResNetBackbone(BaseModule):
    """A timm CIFAR ResNet without pooling and classifier; returns stages ``out_indices``.

    Args:
        arch: timm model name (``cifar_resnet32``, ``cifar_resnet110``, ...).
        in_channels: input channels (1 for Fashion-MNIST's grayscale).
        out_indices: which of the three stages' outputs ``forward`` returns; must end with the
            last stage.
        init_cfg: mmengine initialisation (``dict(type="HPFFTransfer", checkpoint=...)``);
            ``None`` keeps timm's initialisation.
    """

    takes_timm_state_dict = True

    def __init__(
        self,
        arch: str = "cifar_resnet32",
        in_channels: int = 1,
        out_indices: Sequence[int] = (0, 1, 2),
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(init_cfg)
        model = timm.create_model(arch, in_chans=in_channels, num_classes=0, global_pool="")
        self.conv1, self.bn1, self.act1 = model.conv1, model.bn1, model.act1
        self.res_layers = ["layer1", "layer2", "layer3"]
        for name in self.res_layers:
            self.add_module(name, getattr(model, name))
        self.out_indices = tuple(out_indices)
        if not self.out_indices or self.out_indices[-1] != len(self.res_layers) - 1:
            raise ValueError(f"out_indices must end with the last stage (2), got {out_indices}")

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        x = self.act1(self.bn1(self.conv1(x)))
        outputs = []
        for index, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if index in self.out_indices:
                outputs.append(x)
        return tuple(outputs)
