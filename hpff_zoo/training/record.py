"""What a finished training run writes about itself: the figures its model card may show.

A card must not show a figure its run did not measure (see :class:`hpff_zoo.cards.RunRecord`).
The peak step memory is measured here, after training, on the run's own batch shape, for the
trained setting and for E2E on the same backbone, with one function
(:func:`hpff_zoo.measure.step_peak_bytes`): both figures then count the same things, and the
ratio between them is the memory the method saves.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..local import LocalModel
from ..measure import step_peak_bytes

__all__ = ["peak_memory_against_e2e"]


def _fresh_copy(module: nn.Module) -> nn.Module:
    twin = copy.deepcopy(module)
    for parameter in twin.parameters():
        parameter.grad = None
    return twin


def peak_memory_against_e2e(model: LocalModel, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """Peak bytes of one training step of ``model``'s setting and of E2E, on batch ``(x, y)``.

    Both run on copies, so the trained model's weights, gradients and BatchNorm statistics are
    left as they are.
    """
    local = step_peak_bytes(_fresh_copy(model), x, y)
    if model.method == "e2e":
        return local, local
    e2e = LocalModel(
        _fresh_copy(model.backbone), num_modules=1, method="e2e", input_size=model.input_size
    )
    return local, step_peak_bytes(e2e, x, y)
