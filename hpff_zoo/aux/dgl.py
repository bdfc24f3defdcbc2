"""DGL auxiliary network (Belilovsky et al., "Decoupled Greedy Learning of CNNs", ICML 2020).

DGL trains each module with a small classifier and cross-entropy. Its ``"paper"`` preset is DGL's
``cnn`` auxiliary problem: two 3×3 conv-BN-ReLU layers at the module's resolution (width min(C,
128), maps capped at 32×32 so 224-px backbones stay affordable), a 2×2 average pool and a linear
classifier. The ``"cheap"`` preset follows DGL's own ``mlp-sr`` idea of pooling before computing.
Any :class:`~hpff_zoo.aux.arch.AuxArch` applies.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import AuxNet, AuxSpec, LossPart, register_aux
from .layers import classifier

MAX_WIDTH = 128


@register_aux("dgl")
class DGLAux(AuxNet):
    stacks_patches = True  # cross-entropy (and BCE) means

    def __init__(self, spec: AuxSpec) -> None:
        super().__init__()
        arch = spec.arch
        self.pool = arch.pool
        self.classifier = classifier(
            spec.channels,
            spec.size,
            spec.num_classes,
            arch,
            spec.global_grid,
            arch.width or min(spec.channels, MAX_WIDTH),
            first_stride=lambda side: 1,
        )

    def forward(
        self,
        feature: Tensor,
        target: Tensor,
        image: Tensor | None = None,
        part: LossPart = "all",
    ) -> Tensor:
        return F.cross_entropy(self.classifier(feature), target)
