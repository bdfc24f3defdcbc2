"""The paper's learning-rate schedule: linear warm-up, then cosine annealing, per optimizer step."""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["warmup_cosine"]


def _factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0
) -> LambdaLR:
    """Learning rate rising linearly over ``warmup_steps``, then cosine down to
    ``min_ratio`` × the base rate at ``total_steps`` (Loshchilov & Hutter, as in the paper)."""
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps})")
    factor = partial(
        _factor, total_steps=total_steps, warmup_steps=warmup_steps, min_ratio=min_ratio
    )
    return LambdaLR(optimizer, factor)
