"""InfoPro auxiliary network (Wang et al., "Revisiting Locally Supervised Learning", ICLR 2021).

InfoPro keeps each module's features informative about the input by asking a small decoder to
reconstruct the image from them, while a small classifier keeps them discriminative. The local
loss is ``λ_rec · BCE(decoder(h), image) + λ_cls · CE(classifier(h), y)``, with (λ_rec, λ_cls)
interpolated linearly in module depth from ``lambdas[0]`` (first module) to ``lambdas[1]``
(last supervised module). The defaults (5, 0) → (0.5, 1) are InfoPro's published CIFAR setting
for K=16.

The architecture comes from an :class:`~hpff_zoo.aux.arch.AuxArch`. Its ``"paper"`` preset is
the official one: the ``2c2f`` classifier (two 3×3 conv-BN-ReLU at width min(2C, 64), the first
with stride 2 on maps larger than 8×8, global pool, 128-unit hidden layer, linear) with
cross-entropy, and the decoder that resizes the features to the reconstruction's size, then 3×3
conv-BN-ReLU to 12 channels and a 3×3 conv to the image channels, with BCE against the
de-normalised input (at most 64 px a side, so 224-px backbones stay affordable). InfoPro's best
CIFAR runs used a supervised-contrastive loss instead; CE is used here for all methods alike. With
HiLo, the independent auxiliary is the classifier alone and the cascade auxiliary carries the
reconstruction, as in the official HPFF code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import AuxNet, AuxSpec, LossPart, register_aux
from .layers import classifier, conv_bn_relu

DEFAULT_LAMBDAS = ((5.0, 0.0), (0.5, 1.0))
MAX_TARGET_SIZE = 64
MAX_WIDTH = 64


def infopro_lambdas(depth: float, lambdas=DEFAULT_LAMBDAS) -> tuple[float, float]:
    """(λ_rec, λ_cls) at relative depth ``depth`` in [0, 1]."""
    (rec_a, cls_a), (rec_b, cls_b) = lambdas
    return rec_a + (rec_b - rec_a) * depth, cls_a + (cls_b - cls_a) * depth


def infopro_classifier(spec: AuxSpec) -> nn.Sequential:
    """InfoPro's ``NcMf`` classifier as ``spec.arch`` sizes it (``2c2f`` in the paper preset)."""
    arch = spec.arch
    return classifier(
        spec.channels,
        spec.size,
        spec.num_classes,
        arch,
        spec.global_grid,
        arch.width or min(2 * spec.channels, MAX_WIDTH),
        first_stride=lambda side: 2 if side > 8 else 1,
    )


class ReconstructionDecoder(nn.Module):
    """Predicts a region of the reconstruction target from a feature patch; returns the BCE loss.

    The feature patch is first resized to the target patch (bilinear up, average-pool down),
    then decoded, as the official decoder does: at ``decoder_size`` 8 a deep module's decoder
    costs a few percent of the module, at the paper's full resolution more than the module.
    """

    def __init__(self, spec: AuxSpec) -> None:
        super().__init__()
        width = spec.arch.decoder_width
        self.reduce = conv_bn_relu(spec.channels, width)
        self.predict = nn.Conv2d(width, spec.image_channels, 3, padding=1)

    def forward(self, feature: Tensor, target: Tensor) -> Tensor:
        size = target.shape[-2:]
        if feature.shape[-2] < size[0] or feature.shape[-1] < size[1]:
            feature = F.interpolate(feature, size=size, mode="bilinear", align_corners=True)
        elif feature.shape[-2:] != size:
            feature = F.adaptive_avg_pool2d(feature, size)
        logits = self.predict(self.reduce(feature))
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def _per_channel(values: tuple[float, ...], channels: int) -> Tensor:
    if len(values) != channels:  # e.g. RGB statistics on a 1-channel model
        values = (sum(values) / len(values),) * channels
    return torch.tensor(values, dtype=torch.float32).view(1, channels, 1, 1)


@register_aux("infopro", options=("lambdas",))
class InfoProAux(AuxNet):
    stacks_patches = True  # cross-entropy (and BCE) means
    needs_image = True
    dense_classifier = False  # a per-pixel classifier (segmentation) sees PFF patches too

    def __init__(self, spec: AuxSpec) -> None:
        super().__init__()
        if spec.hilo and not spec.cascade:
            # Official HPFF: with HiLo the independent level is a plain classifier.
            self.lambda_rec, self.lambda_cls = 0.0, 1.0
        else:
            lambdas = spec.options.get("lambdas", DEFAULT_LAMBDAS)
            self.lambda_rec, self.lambda_cls = infopro_lambdas(spec.depth, lambdas)
        self.decoder = ReconstructionDecoder(spec) if self.lambda_rec else None
        self.classifier = self.make_classifier(spec) if self.lambda_cls else None
        self.global_parts = self.classifier is not None and not self.dense_classifier
        self.dense_parts = self.decoder is not None or (
            self.classifier is not None and self.dense_classifier
        )
        self.decoder_size = spec.arch.decoder_size or MAX_TARGET_SIZE
        # Sides the classifier and the decoder pool the whole map to (None: its own size).
        self.classifier_side = None if self.dense_classifier else spec.arch.pool
        self.decoder_side = self.decoder_size if self.decoder_size < max(spec.size) else None
        channels = spec.image_channels
        self.register_buffer("mean", _per_channel(spec.mean, channels), persistent=False)
        self.register_buffer("std", _per_channel(spec.std, channels), persistent=False)

    def make_classifier(self, spec: AuxSpec) -> nn.Module:
        """The classification branch (a subclass may predict per pixel instead)."""
        return infopro_classifier(spec)

    def classification_loss(self, feature: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(self.classifier(feature), target)

    @property
    def image_key(self) -> int:
        return self.decoder_size

    def _classifies(self, part: LossPart) -> bool:
        if self.classifier is None:
            return False
        return part == "all" or (part == "dense") == self.dense_classifier

    def _decodes(self, part: LossPart) -> bool:
        return self.decoder is not None and part != "global"

    def map_side(self, part: LossPart) -> int | None:
        # Where both branches see the patch, pool only as far as the larger of the two sides
        # (the other branch pools further itself).
        sides = [self.classifier_side] if self._classifies(part) else []
        sides += [self.decoder_side] if self._decodes(part) else []
        return None if not sides or None in sides else max(sides)

    def prepare_image(self, x: Tensor) -> Tensor:
        """The de-normalised input in [0, 1], pooled to ``decoder_size``: the target."""
        target = (x * self.std + self.mean).clamp(0.0, 1.0)
        h, w = target.shape[-2:]
        if max(h, w) > self.decoder_size:
            size = (min(h, self.decoder_size), min(w, self.decoder_size))
            target = F.adaptive_avg_pool2d(target, size)
        return target

    def forward(
        self,
        feature: Tensor,
        target: Tensor,
        image: Tensor | None = None,
        part: LossPart = "all",
    ) -> Tensor:
        loss = feature.new_zeros(())
        if self._classifies(part):
            loss = loss + self.lambda_cls * self.classification_loss(feature, target)
        if self._decodes(part):
            if image is None:
                raise ValueError("InfoPro needs the input image for its reconstruction loss")
            loss = loss + self.lambda_rec * self.decoder(feature, image)
        return loss
