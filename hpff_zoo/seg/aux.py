"""Auxiliary networks for segmentation: per-pixel classification, plus InfoPro's reconstruction.

The classification auxiliaries of :mod:`hpff_zoo.aux` pool a feature map into one prediction per
image; a segmentation module must instead be kept useful *per pixel*. Each auxiliary here gets a
patch of a module's output and the matching patch of the label map (the schedule in
:mod:`hpff_zoo.streamed` cuts dense targets into the PFF grid) and predicts a class per position
with the head mmseg uses as DeepLab-V3's auxiliary head (FCN: one 3×3 conv-BN-ReLU and a 1×1
classifier), its logits upsampled to the label patch as mmseg's decode heads do.

- ``dgl``: that per-pixel cross-entropy alone.
- ``infopro``: ``λ_rec · reconstruction + λ_cls · per-pixel cross-entropy``: the core's
  InfoPro auxiliary (depth-interpolated weights, reconstruction decoder) with this per-pixel
  classifier in place of its image classifier.

PredSim's similarity matching compares whole images within a batch and has no per-pixel
counterpart, so it is not offered here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from ..aux import AuxNet, AuxSpec
from ..aux.base import LossPart
from ..aux.infopro import InfoProAux
from ..aux.layers import conv_bn_relu

__all__ = ["IGNORE_INDEX", "SEG_AUX_METHODS", "PixelClassifier", "build_seg_aux"]

IGNORE_INDEX = 255  # mmseg's label for "no class" (Cityscapes' void, crop padding)
MAX_WIDTH = 256  # the channels of DeepLab-V3's FCN auxiliary head
DROPOUT = 0.1


class PixelClassifier(nn.Module):
    """FCN-style per-pixel classifier; ``forward`` returns the cross-entropy on a label patch.

    The loss is averaged over *all* the patch's pixels, ignored ones counting as zero (mmseg's
    ``CrossEntropyLoss`` default, ``avg_non_ignore=False``, which the decode heads use), not over
    the non-ignored ones as ``F.cross_entropy`` does. Two reasons: a PFF patch may hold only
    ignored pixels (an image padded to the crop, a void region), where the mean over no pixel
    is 0/0 = NaN and poisons the whole module's gradient; and with equal patches the n² patch
    losses then average to exactly the whole map's loss, so PFF changes only memory.
    """

    def __init__(self, spec: AuxSpec) -> None:
        super().__init__()
        width = spec.arch.width or min(spec.channels, MAX_WIDTH)
        self.features = conv_bn_relu(spec.channels, width)
        self.dropout = nn.Dropout2d(DROPOUT)
        self.classifier = nn.Conv2d(width, spec.num_classes, 1)

    def forward(self, feature: Tensor, labels: Tensor) -> Tensor:
        logits = self.classifier(self.dropout(self.features(feature)))
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        summed = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        return summed / labels.numel()


class PixelDGLAux(AuxNet):
    global_parts = False
    dense_parts = True

    def __init__(self, spec: AuxSpec) -> None:
        super().__init__()
        self.classifier = PixelClassifier(spec)

    def forward(
        self,
        feature: Tensor,
        target: Tensor,
        image: Tensor | None = None,
        part: LossPart = "all",
    ) -> Tensor:
        return self.classifier(feature, target)


class PixelInfoProAux(InfoProAux):
    """The core's InfoPro auxiliary with its classifier replaced by :class:`PixelClassifier`."""

    dense_classifier = True

    def make_classifier(self, spec: AuxSpec) -> nn.Module:
        return PixelClassifier(spec)

    def classification_loss(self, feature: Tensor, target: Tensor) -> Tensor:
        return self.classifier(feature, target)


SEG_AUX_METHODS: dict[str, Callable[[AuxSpec], AuxNet]] = {
    "dgl": PixelDGLAux,
    "infopro": PixelInfoProAux,
}


def build_seg_aux(method: str, spec: AuxSpec) -> AuxNet:
    """The segmentation auxiliary network of ``method`` for one module."""
    if method not in SEG_AUX_METHODS:
        raise ValueError(
            f"local method {method!r} has no segmentation auxiliary; choose from "
            f"{sorted(SEG_AUX_METHODS)} (or 'e2e')"
        )
    return SEG_AUX_METHODS[method](spec)
