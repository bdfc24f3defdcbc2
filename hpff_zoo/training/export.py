"""Save a trained backbone as ``model.safetensors`` + timm ``config.json``.

Kept to one function so that the Hub export module (model card, push) can take its place. The
saved directory loads with plain timm once ``hpff_zoo`` is imported (for the CIFAR ResNets)::

    timm.create_model("local-dir:path/to/output", pretrained=True)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["save_backbone"]

DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def save_backbone(
    model: nn.Module,
    output_dir: str | os.PathLike,
    data_config: dict[str, Any] | None = None,
    label_names: Sequence[str] | None = None,
) -> Path:
    """Write ``model.backbone`` (or ``model`` itself) with timm's ``save_for_hf``.

    Args:
        model: a ``LocalModel`` or a plain timm model.
        output_dir: directory to write ``model.safetensors`` and ``config.json`` into.
        data_config: the preprocessing the weights were trained with (channels, size, mean,
            std), recorded in the config's ``pretrained_cfg``.
        label_names: class names, recorded as ``label_names``.
    """
    from timm.models import save_for_hf

    backbone = getattr(model, "backbone", model)
    save_for_hf(
        backbone,
        output_dir,
        model_config={"label_names": list(label_names)} if label_names else None,
        safe_serialization=True,
        data_config={k: v for k, v in (data_config or {}).items() if k in DATA_CONFIG_KEYS},
    )
    return Path(output_dir)
