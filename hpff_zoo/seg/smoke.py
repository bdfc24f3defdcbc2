"""A CPU smoke run of any segmentation recipe: generated Cityscapes-format data, the real model.

``recipes/segmentation.py train CONFIG --smoke`` checks an install end to end in a few minutes on
CPUs, before a GPU run: mmseg's real pipeline, the recipe's real model (DeepLab-V3 R101-D8, local
method, HiLo, PFF), training, a checkpoint and mIoU on the generated val split. Only sizes shrink:
:func:`make_cityscapes` writes a handful of 256×512 scenes (few axis-aligned regions of
Cityscapes classes, each with its own colour) in Cityscapes' file layout, and :func:`use_smoke`
trains on 128×256 crops of them, batch 2, a few iterations, from randomly initialised weights (no
download) unless ``--backbone-checkpoint`` gives an hpff_zoo checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from mmengine.config import Config

__all__ = [
    "CLASSES",
    "SMOKE_CHECKPOINTS",
    "SMOKE_CROP",
    "SMOKE_ITERS",
    "make_cityscapes",
    "scene",
    "smoke_checkpoint_dir",
    "use_smoke",
]

CLASSES = (0, 2, 8, 10, 13)  # Cityscapes train ids: road, building, vegetation, sky, car
COLOURS = np.array([[128, 64, 128], [70, 70, 70], [107, 142, 35], [70, 130, 180], [0, 0, 142]])
SMOKE_IMAGE = (256, 512)  # height, width of the generated scenes
SMOKE_CROP = (128, 256)
SMOKE_ITERS = 4
SMOKE_IMAGES = {"train": 4, "val": 2}
# A smoke checkpoint only proves saving works, and R101-D8's weights alone are about 400 MB: it
# goes to the system's temporary folder, not into the user's work dir.
SMOKE_CHECKPOINTS = Path(tempfile.gettempdir()) / "hpff_zoo-smoke"


def smoke_checkpoint_dir(work_dir: str | os.PathLike) -> Path:
    """Where a smoke run with ``work_dir`` saves its checkpoint: mmengine's ``CheckpointHook``
    joins its ``out_dir`` and the work dir's last folder name (its log says so too)."""
    return SMOKE_CHECKPOINTS / Path(work_dir).name


def scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and its train-id label map: sky over road, rectangles of other classes.

    Colour decides the class, so a model learns the scenes in a few iterations.
    """
    height, width = size
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[: rng.integers(height // 5, height // 2)] = 3
    for _ in range(rng.integers(2, 5)):  # buildings, trees, cars as rectangles
        kind = rng.integers(1, 5)
        top, left = rng.integers(0, height - height // 8), rng.integers(0, width - width // 16)
        rows = rng.integers(height // 10, height * 3 // 8)
        cols = rng.integers(width // 20, width // 4)
        labels[top : top + rows, left : left + cols] = kind
    image = COLOURS[labels] + rng.normal(0, 12, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), np.array(CLASSES, np.uint8)[labels]


def make_cityscapes(
    root: str | Path,
    counts: dict[str, int] | None = None,
    size: tuple[int, int] = SMOKE_IMAGE,
    seed: int = 0,
) -> Path:
    """Write ``leftImg8bit/{split}/city/*_leftImg8bit.png`` and ``gtFine/.../*_labelTrainIds``."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (counts or SMOKE_IMAGES).items():
        for i in range(count):
            image, labels = scene(rng, size)
            stem = f"city_{i:06d}_000019"
            for folder, suffix, array in (
                ("leftImg8bit", "leftImg8bit", image),
                ("gtFine", "gtFine_labelTrainIds", labels),
            ):
                path = root / folder / split / "city" / f"{stem}_{suffix}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                # Written aside and renamed: the processes of a distributed smoke run all write
                # the same files, and none may read one half-written.
                partial = path.with_name(f".{os.getpid()}.{path.name}")
                Image.fromarray(array).save(partial, format="PNG")
                os.replace(partial, path)
    return root


def _transform(pipeline: list, kind: str) -> dict:
    found = [t for t in pipeline if t["type"] == kind]
    if len(found) != 1:
        raise ValueError(f"--smoke expects one {kind} in the config's pipeline, found {found}")
    return found[0]


def use_smoke(cfg: Config, iters: int = SMOKE_ITERS) -> Path:
    """Shrink ``cfg`` to a CPU smoke run on data generated under its work dir; returns the data.

    Sizes only: the crop (128×256), the generated images' scale, batch 2 (DeepLab-V3's ASPP
    needs 2), ``iters`` iterations with one validation at the end, no dataloader workers, and a
    checkpoint of the weights without the optimizer state, in :data:`SMOKE_CHECKPOINTS`. The
    ImageNet backbone download is dropped (weights start random); a ``--backbone-checkpoint``
    applied afterwards still fills the backbone.
    """
    root = make_cityscapes(Path(cfg.work_dir) / "smoke_cityscapes")
    height, width = SMOKE_IMAGE
    cfg.model.pretrained = None
    cfg.model.data_preprocessor.size = SMOKE_CROP
    train = cfg.train_dataloader
    _transform(train.dataset.pipeline, "RandomResize").scale = (width, height)
    _transform(train.dataset.pipeline, "RandomCrop").crop_size = SMOKE_CROP
    train.update(batch_size=2, num_workers=0, persistent_workers=False)
    for loader in ("val_dataloader", "test_dataloader"):
        _transform(cfg[loader].dataset.pipeline, "Resize").scale = (width, height)
        cfg[loader].update(num_workers=0, persistent_workers=False)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[loader].dataset.data_root = str(root)
    cfg.train_cfg.update(max_iters=iters, val_interval=iters)
    for scheduler in cfg.param_scheduler:
        scheduler.end = min(scheduler.get("end", iters), iters)
    # Without SGD's momentum (R101: about 800 MB with it) for a run nobody resumes.
    cfg.default_hooks.checkpoint.update(
        interval=iters, save_optimizer=False, out_dir=str(SMOKE_CHECKPOINTS)
    )
    cfg.default_hooks.logger.interval = 1
    cfg.env_cfg.cudnn_benchmark = False
    return root
