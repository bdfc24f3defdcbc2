"""InfoPro auxiliary network (Wang et al., "Revisiting Locally Supervised Learning", ICLR 2021).

InfoPro keeps each module's features informative about the input by asking a small decoder to
reconstruct the image from them, while a small classifier keeps them discriminative. The local
loss is ``λ_rec · BCE(decoder(h), image) + λ_cls · CE(classifier(h), y)``, with (λ_rec, λ_cls)
interpolated linearly in module depth from ``lambdas[0]`` (first module) to ``lambdas[1]``
(last supervised module). The defaults (5, 0) → (0.5, 1) are InfoPro's published CIFAR setting
for K=16.

Classifier: InfoPro's ``2c2f`` head (two 3×3 conv-BN-ReLU at width min(2C, 64), the first with
stride 2 on maps larger than 8×8, global pool, 128-unit hidden layer, linear), with
cross-entropy. InfoPro's best CIFAR runs used a supervised-contrastive loss instead; CE is used
here for all methods alike. Decoder: 3×3 conv-BN-ReLU to 12 channels, bilinear upsampling to the
target size, 3×3 conv to the image channels, BCE against the de-normalised input. The target is
the input downsampled once per step to at most 64 px a side, so the decoder stays small on 224-px
backbones (the official ImageNet decoders work at 224 px). With HiLo, the independent auxiliary
is the classifier alone and the cascade auxiliary carries the reconstruction, as in the official
HPFF code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import AuxNet, AuxSpec, register_aux
from .layers import conv_bn_relu

DEFAULT_LAMBDAS = ((5.0, 0.0), (0.5, 1.0))
MAX_TARGET_SIZE = 64
DECODER_WIDTH = 12
HIDDEN_FEATURES = 128


def infopro_lambdas(depth: float, lambdas=DEFAULT_LAMBDAS) -> tuple[float, float]:
    """(λ_rec, λ_cls) at relative depth ``depth`` in [0, 1]."""
    (rec_a, cls_a), (rec_b, cls_b) = lambdas
    return rec_a + (rec_b - rec_a) * depth, cls_a + (cls_b - cls_a) * depth


class ConvClassifier(nn.Sequential):
    """InfoPro's ``2c2f`` classifier head, generalised to any channel count.

    The stride follows the whole map's size (as InfoPro's per-stage configs do), so a PFF patch
    costs its share of the full map's FLOPs, no more.
    """

    def __init__(self, channels: int, size: tuple[int, int], num_classes: int) -> None:
        width = min(2 * channels, 64)
        stride = 2 if min(size) > 8 else 1
        super().__init__(
            conv_bn_relu(channels, width, stride=stride),
            conv_bn_relu(width, width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(width, HIDDEN_FEATURES),
            nn.ReLU(inplace=True),
            nn.Linear(HIDDEN_FEATURES, num_classes),
        )


class ReconstructionDecoder(nn.Module):
    """Predicts a region of the reconstruction target from a feature patch; returns the BCE loss.

    The 3×3 conv to 12 channels runs at the feature's own resolution and only its 12-channel
    output is upsampled, not the C-channel feature as in InfoPro's CIFAR decoder: the same two
    convolutions, a fraction of the cost on deep, low-resolution modules (the official ImageNet
    decoders likewise reduce channels before upsampling).
    """

    def __init__(self, spec: AuxSpec) -> None:
        super().__init__()
        self.reduce = conv_bn_relu(spec.channels, DECODER_WIDTH)
        self.predict = nn.Conv2d(DECODER_WIDTH, spec.image_channels, 3, padding=1)

    def forward(self, feature: Tensor, target: Tensor) -> Tensor:
        x = self.reduce(feature)
        if x.shape[-2:] != target.shape[-2:]:
            x = F.interpolate(x, size=target.shape[-2:], mode="bilinear", align_corners=True)
        logits = self.predict(x)
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def _per_channel(values: tuple[float, ...], channels: int) -> Tensor:
    if len(values) != channels:  # e.g. RGB statistics on a 1-channel model
        values = (sum(values) / len(values),) * channels
    return torch.tensor(values, dtype=torch.float32).view(1, channels, 1, 1)


@register_aux("infopro")
class InfoProAux(AuxNet):
    needs_image = True

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
        channels = spec.image_channels
        self.register_buffer("mean", _per_channel(spec.mean, channels), persistent=False)
        self.register_buffer("std", _per_channel(spec.std, channels), persistent=False)

    def make_classifier(self, spec: AuxSpec) -> nn.Module:
        """The classification branch (a subclass may predict per pixel instead)."""
        return ConvClassifier(spec.channels, spec.size, spec.num_classes)

    def classification_loss(self, feature: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(self.classifier(feature), target)

    def prepare_image(self, x: Tensor) -> Tensor:
        """The de-normalised input in [0, 1], at most 64 px a side: the reconstruction target."""
        target = (x * self.std + self.mean).clamp(0.0, 1.0)
        h, w = target.shape[-2:]
        if max(h, w) > MAX_TARGET_SIZE:
            target = F.adaptive_avg_pool2d(
                target, (min(h, MAX_TARGET_SIZE), min(w, MAX_TARGET_SIZE))
            )
        return target

    def forward(self, feature: Tensor, target: Tensor, image: Tensor | None = None) -> Tensor:
        loss = feature.new_zeros(())
        if self.classifier is not None:
            loss = loss + self.lambda_cls * self.classification_loss(feature, target)
        if self.decoder is not None:
            if image is None:
                raise ValueError("InfoPro needs the input image for its reconstruction loss")
            loss = loss + self.lambda_rec * self.decoder(feature, image)
        return loss
