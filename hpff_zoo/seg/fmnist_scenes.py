"""Fashion-MNIST scenes: a small semantic-segmentation set made of real Fashion-MNIST images.

Each scene is a black square canvas with a few Fashion-MNIST items pasted at random places (later
items occlude earlier ones); a pixel's label is the class of the item whose own pixels cover it
(item intensity above :data:`THRESHOLD`), 0 (background) elsewhere: 11 classes. Scenes are a
function of their parameters and the seed, so every run and every process sees the same set.
Train scenes draw items from Fashion-MNIST's train split, val scenes from its test split (no item
is seen in both), which is also what the shipped ``hpff_resnet32.fmnist_*`` classifiers were
trained on (train split): a backbone transferred from them has seen the train items, never the
val items.

:class:`FashionMNISTScenesDataset` is an mmseg dataset (``DATASETS``) that writes its split on
first use into ``data_root/data_prefix`` as PNGs (``img_dir/<split>/*.png``, 8-bit grayscale,
and ``ann_dir/<split>/*.png``, the label map), with a ``scenes.json`` recording the parameters;
a folder made with other parameters is an error rather than silently reused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from ..data.formats import DatasetError, read_idx_arrays
from ..data.sources import FASHION_MNIST_CLASSES, KNOWN_DATASETS

__all__ = ["CLASSES", "THRESHOLD", "FashionMNISTScenesDataset", "compose_scene", "write_scenes"]

CLASSES = ("background", *FASHION_MNIST_CLASSES)
THRESHOLD = 32  # of 255: an item's own pixels; fainter ones are its black surround
MANIFEST = "scenes.json"
_FMNIST_SPLITS = ("train", "test")


def default_source() -> Path:
    """The installed Fashion-MNIST idx folder (Debian's ``dataset-fashion-mnist``)."""
    known = KNOWN_DATASETS["fashion_mnist"]
    return Path(known.local_dirs[0])


def compose_scene(
    rng: np.random.Generator,
    images: np.ndarray,
    labels: np.ndarray,
    canvas: int,
    items: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """One ``canvas``×``canvas`` uint8 image and its label map from ``items[0]..items[1]`` items.

    ``labels`` are Fashion-MNIST's 0..9; the map holds ``label + 1`` (0 is background).
    """
    side = images.shape[-1]
    if canvas < side:
        raise ValueError(f"canvas {canvas} px is smaller than an item ({side} px)")
    image = np.zeros((canvas, canvas), np.uint8)
    label_map = np.zeros((canvas, canvas), np.uint8)
    for index in rng.integers(0, len(images), rng.integers(items[0], items[1] + 1)):
        top, left = rng.integers(0, canvas - side + 1, 2)
        item = images[index]
        mask = item > THRESHOLD
        window = (slice(top, top + side), slice(left, left + side))
        image[window][mask] = item[mask]
        label_map[window][mask] = labels[index] + 1
    return image, label_map


def write_scenes(
    img_dir: Path,
    ann_dir: Path,
    fmnist_split: str,
    num_images: int,
    canvas: int,
    items: Sequence[int],
    seed: int,
    source: str | Path | None = None,
) -> None:
    """Write ``num_images`` scenes (``{i:05d}.png`` in both folders) unless already there.

    Files are written aside and renamed, so concurrent processes never read a half-written one.
    """
    from PIL import Image

    params = dict(
        fmnist_split=fmnist_split,
        num_images=num_images,
        canvas=canvas,
        items=list(items),
        seed=seed,
        threshold=THRESHOLD,
    )
    manifest = img_dir / MANIFEST
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        if found != params:
            raise DatasetError(
                f"{img_dir} holds Fashion-MNIST scenes made with {found}, not {params}: "
                "use another data_root or delete the folder"
            )
        return
    if fmnist_split not in _FMNIST_SPLITS:
        raise ValueError(
            f"fmnist_split must be one of {list(_FMNIST_SPLITS)}, not {fmnist_split!r}"
        )
    low, high = items
    if not 1 <= low <= high:
        raise ValueError(f"items must be (min, max) with 1 <= min <= max, not {tuple(items)}")
    root = Path(source) if source else default_source()
    if not root.is_dir():
        raise DatasetError(
            f"Fashion-MNIST not found at {root}: {KNOWN_DATASETS['fashion_mnist'].local_hint}"
        )
    images, labels = read_idx_arrays(root)[fmnist_split]
    rng = np.random.default_rng(seed)
    for folder in (img_dir, ann_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(num_images):
        image, label_map = compose_scene(rng, images, labels, canvas, (low, high))
        for folder, array in ((img_dir, image), (ann_dir, label_map)):
            path = folder / f"{i:05d}.png"
            partial = path.with_name(f".{os.getpid()}.{path.name}")
            Image.fromarray(array).save(partial, format="PNG")
            os.replace(partial, path)
    partial = manifest.with_name(f".{os.getpid()}.{MANIFEST}")
    partial.write_text(json.dumps(params))
    os.replace(partial, manifest)


@DATASETS.register_module()
class FashionMNISTScenesDataset(BaseSegDataset):
    """Fashion-MNIST scenes (see the module docstring), generated on first use.

    Args:
        scenes: ``fmnist_split`` (``"train"`` or ``"test"``: where the items come from),
            ``num_images``, ``canvas`` (side in px), ``items`` ((min, max) per scene), ``seed``,
            and optionally ``source`` (the Fashion-MNIST idx folder).
        **kwargs: :class:`~mmseg.datasets.BaseSegDataset`'s (``data_root``, ``data_prefix``
            with ``img_path`` and ``seg_map_path``, ``pipeline``, ...).
    """

    METAINFO: ClassVar[dict] = dict(
        classes=CLASSES,
        palette=[
            [0, 0, 0],
            [31, 119, 180],
            [255, 127, 14],
            [44, 160, 44],
            [214, 39, 40],
            [148, 103, 189],
            [140, 86, 75],
            [227, 119, 194],
            [127, 127, 127],
            [188, 189, 34],
            [23, 190, 207],
        ],  # black + matplotlib's tab10
    )

    def __init__(
        self,
        scenes: dict,
        img_suffix: str = ".png",
        seg_map_suffix: str = ".png",
        reduce_zero_label: bool = False,
        **kwargs,
    ) -> None:
        self.generate_split(dict(kwargs, scenes=scenes))
        super().__init__(
            img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix,
            reduce_zero_label=reduce_zero_label,
            **kwargs,
        )

    @staticmethod
    def generate_split(dataset_cfg: dict) -> None:
        """Generate the split a dataset config describes, if not yet there (the launcher checks
        data before the runner builds datasets, so it calls this first)."""
        root = Path(dataset_cfg.get("data_root") or ".")
        prefix = dataset_cfg.get("data_prefix") or {}
        if "img_path" not in prefix or "seg_map_path" not in prefix:
            raise ValueError(
                "FashionMNISTScenesDataset needs data_prefix img_path and seg_map_path"
            )
        write_scenes(
            root / prefix["img_path"], root / prefix["seg_map_path"], **dataset_cfg["scenes"]
        )
