"""Save a trained model into its run directory in the Hub folder format.

The run directory then carries everything ``python -m hpff_zoo.hub export`` and
``recipes/finetune.py --init`` need: ``model.safetensors`` (the backbone, plain timm names),
``aux.safetensors`` (the auxiliary networks, to continue local training) and a ``config.json``
that rebuilds the model in the setting it was trained in and says truthfully what it was trained
on; the run's ``run.json`` is written beside them by the recipe. It loads with::

    hpff_zoo.hub.load_model("path/to/output")
    timm.create_model("local-dir:path/to/output", pretrained=True)  # after import hpff_zoo
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..local import LocalModel

__all__ = ["save_model"]

DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def save_model(
    model: LocalModel,
    output_dir: str | os.PathLike,
    dataset: str,
    data_config: dict[str, Any] | None = None,
    label_names: Sequence[str] | None = None,
) -> Path:
    """Write ``model`` with :func:`hpff_zoo.hub.write_model_files` (auxiliaries included).

    Args:
        model: the trained ``LocalModel``.
        output_dir: the run directory (created if needed).
        dataset: what it was trained on (``--dataset``), for the config's description.
        data_config: the preprocessing the weights were trained with (channels, size, mean,
            std), recorded in the config's ``pretrained_cfg``.
        label_names: class names, recorded as ``label_names``.
    """
    from ..hub import write_model_files  # the Hub module imports the card and FLOP machinery

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    write_model_files(
        model,
        output,
        dataset=dataset,
        data_config={k: v for k, v in (data_config or {}).items() if k in DATA_CONFIG_KEYS},
        label_names=label_names,
        include_aux=True,
    )
    return output
