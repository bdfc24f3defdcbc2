"""DGL auxiliary network (Belilovsky et al., "Decoupled Greedy Learning of CNNs", ICML 2020).

DGL's ``cnn`` auxiliary problem: two 3×3 conv-BN-ReLU layers at the module's resolution, a 2×2
average pool and a linear classifier, trained with cross-entropy. On CIFAR ResNets (16-64
channels, ≤32×32 maps) this is DGL's own network; on wider and larger maps the width is capped at
128 channels and the input pooled to at most 32×32 so the auxiliary stays cheap next to its
module.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .base import AuxNet, AuxSpec, register_aux
from .layers import cap_resolution, conv_bn_relu

MAX_WIDTH = 128
MAX_RESOLUTION = 32


@register_aux("dgl")
class DGLAux(AuxNet):
    def __init__(self, spec: AuxSpec) -> None:
        super().__init__()
        width = min(spec.channels, MAX_WIDTH)
        self.features = nn.Sequential(
            cap_resolution(MAX_RESOLUTION),
            conv_bn_relu(spec.channels, width),
            conv_bn_relu(width, width),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * width, spec.num_classes)

    def forward(self, feature: Tensor, target: Tensor, image: Tensor | None = None) -> Tensor:
        return F.cross_entropy(self.classifier(self.features(feature)), target)
