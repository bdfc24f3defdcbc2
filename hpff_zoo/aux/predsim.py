"""PredSim auxiliary network (Nøkland & Eidnes, "Training Neural Networks with Local Error
Signals", ICML 2019).

Two local losses mixed by β: a *prediction* loss (cross-entropy of a linear classifier on the
average-pooled features, pooled so the classifier sees at most 4096 inputs) and a *similarity
matching* loss (mean squared error between the batch's cosine-similarity matrix of a 3×3 conv of
the features and that of the one-hot labels). ``loss = (1 - β) · pred + β · sim`` with β = 0.99,
as in the original code. Features enter the similarity matrix as their per-channel spatial
standard deviation, centred and L2-normalised per sample, as the original does.

Of an :class:`~hpff_zoo.aux.arch.AuxArch` PredSim reads ``pool`` (both branches see the map
pooled to it), and ``convs``, ``width`` and ``kernel`` for the similarity branch's convolutions
(the ``"paper"`` preset: one 3×3 conv at C channels).
"""

from __future__ import annotations

import itertools
import math

import torch.nn.functional as F
from torch import Tensor, nn

from .base import AuxNet, AuxSpec, LossPart, register_aux
from .layers import CapResolution, patch_pool

DEFAULT_BETA = 0.99
MAX_PREDICTION_INPUTS = 4096


def similarity_matrix(x: Tensor) -> Tensor:
    """Cosine similarity between the samples of a batch, as PredSim computes it."""
    if x.dim() == 4:
        x = x.flatten(2).std(dim=2) if x.shape[1] > 3 and x.shape[2] * x.shape[3] > 1 else x
    x = x.flatten(1)
    centred = x - x.mean(dim=1, keepdim=True)
    normed = centred / (centred.norm(dim=1, keepdim=True) + 1e-8)
    return (normed @ normed.t()).clamp(-1, 1)


@register_aux("predsim", options=("beta",))
class PredSimAux(AuxNet):
    def __init__(self, spec: AuxSpec) -> None:
        super().__init__()
        self.beta = spec.options.get("beta", DEFAULT_BETA)
        self.num_classes = spec.num_classes
        arch, grid = spec.arch, spec.global_grid
        pool = patch_pool(arch, grid)
        self.pool = arch.pool
        self.reduce = CapResolution(pool) if pool is not None else nn.Identity()
        h, w = (-(-side // grid) for side in spec.size)
        if pool is not None:
            h, w = min(h, pool), min(w, pool)
        # Pool by the smallest factor that brings C·h·w down to the 4096-input budget.
        factor = math.ceil(math.sqrt(spec.channels * h * w / MAX_PREDICTION_INPUTS))
        self.pool_size = (max(1, h // max(1, factor)), max(1, w // max(1, factor)))
        self.predict = nn.Linear(
            spec.channels * self.pool_size[0] * self.pool_size[1], spec.num_classes
        )
        width = arch.width or spec.channels
        channels = [spec.channels] + [width] * arch.convs
        self.similarity = nn.Sequential(
            *(
                nn.Conv2d(c_in, c_out, arch.kernel, padding=arch.kernel // 2, bias=False)
                for c_in, c_out in itertools.pairwise(channels)
            )
        )

    def forward(
        self,
        feature: Tensor,
        target: Tensor,
        image: Tensor | None = None,
        part: LossPart = "all",
    ) -> Tensor:
        feature = self.reduce(feature)
        pooled = F.adaptive_avg_pool2d(feature, self.pool_size).flatten(1)
        prediction = F.cross_entropy(self.predict(pooled), target)
        one_hot = F.one_hot(target, self.num_classes).to(feature.dtype)
        sim = F.mse_loss(similarity_matrix(self.similarity(feature)), similarity_matrix(one_hot))
        return (1 - self.beta) * prediction + self.beta * sim
