"""Readers for the image-classification layouts users keep on disk.

Three layouts are recognised in a local directory (or in its single sub-directory, as unpacked
archives usually leave them):

* **CIFAR python batches**: ``data_batch_1..5`` + ``test_batch`` (+ ``batches.meta``) for
  CIFAR-10, ``train`` + ``test`` (+ ``meta``) for CIFAR-100.
* **idx files** (MNIST, Fashion-MNIST, KMNIST, ...): ``train-images-idx3-ubyte`` and
  ``train-labels-idx1-ubyte``, ``t10k-...`` for the test split, gzipped or not, with ``-`` or
  ``.`` before ``idx``.
* **image folder**: ``<split>/<class>/<image>`` or ``<class>/<image>``, loaded by ``datasets``'
  own ``imagefolder`` builder.

Each reader returns ``datasets.Dataset`` objects with an ``image`` column (``datasets.Image``)
and a ``label`` column (``datasets.ClassLabel``), so everything downstream sees one shape of data
whatever the source. Anything else is a :class:`DatasetError` that lists what was found.
"""

from __future__ import annotations

import gzip
import io
import pickle
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = [
    "DatasetError",
    "detect_layout",
    "load_local",
    "read_cifar",
    "read_idx",
    "read_idx_arrays",
    "read_idx_file",
    "smallest_image_size",
]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
IDX_SPLITS = {"train": "train", "test": "t10k"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetError(ValueError):
    """A dataset could not be resolved or read; the message says what to pass instead."""


def dataset_from_arrays(images: np.ndarray, labels: np.ndarray, names: Sequence[str]):
    """A ``datasets.Dataset`` with ``image`` (PNG-encoded) and ``label`` columns."""
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))}
    )
    return datasets.Dataset.from_dict(
        {"image": list(images), "label": labels.astype(np.int64)}, features=features
    )


# --- idx (MNIST family) ----------------------------------------------------------------------


def read_idx_file(path: Path) -> np.ndarray:
    """Read one idx file (optionally gzipped) into an array of its declared shape and type."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path} is not an idx file (bad magic number {data[:4].hex()})")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    payload = data[4 + 4 * dims :]
    if len(payload) != expected:
        raise DatasetError(
            f"{path} declares shape {shape} ({expected} bytes) but holds {len(payload)} bytes"
        )
    return np.frombuffer(payload, dtype=dtype).reshape(shape)


def _idx_path(root: Path, prefix: str, kind: str, rank: int) -> Path | None:
    pattern = re.compile(rf"^{prefix}-{kind}[-.]idx{rank}-ubyte(\.gz)?$")
    matches = sorted(p for p in root.iterdir() if pattern.match(p.name))
    return matches[0] if matches else None


def _has_idx(root: Path) -> bool:
    return any(re.search(r"idx[13]-ubyte(\.gz)?$", p.name) for p in root.iterdir())


def read_idx_arrays(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, labels), "test": ...}`` of an idx directory, as numpy arrays.

    For consumers that need the raw pixels rather than a ``datasets.Dataset`` (the segmentation
    scenes compose them onto canvases).
    """
    splits = {}
    for split, prefix in IDX_SPLITS.items():
        images_path = _idx_path(root, prefix, "images", 3)
        labels_path = _idx_path(root, prefix, "labels", 1)
        missing = [
            f"{prefix}-{kind}-idx{rank}-ubyte[.gz]"
            for kind, rank, path in (("images", 3, images_path), ("labels", 1, labels_path))
            if path is None
        ]
        if missing:
            raise DatasetError(f"idx directory {root} lacks {', '.join(missing)}")
        images, labels = read_idx_file(images_path), read_idx_file(labels_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(
                f"{images_path.name} {images.shape} and {labels_path.name} {labels.shape} are "
                "not N images of H×W with N labels"
            )
        splits[split] = (images, labels.astype(np.int64))
    return splits


def read_idx(root: Path, names: Sequence[str] | None = None):
    """Train and test splits of an idx directory (``train-*`` and ``t10k-*`` files)."""
    splits = read_idx_arrays(root)
    num_classes = int(max(labels.max() for _, labels in splits.values())) + 1
    names = list(names) if names else [str(i) for i in range(num_classes)]
    return {split: dataset_from_arrays(x, y, names) for split, (x, y) in splits.items()}


# --- CIFAR python batches ---------------------------------------------------------------------


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as handle:
        try:
            batch = pickle.load(handle, encoding="bytes")
        except Exception as error:  # pickle raises many types on foreign files
            raise DatasetError(f"{path} is not a CIFAR python batch ({error})") from error
    if not isinstance(batch, dict):
        raise DatasetError(f"{path} is not a CIFAR python batch (no dictionary inside)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _cifar_kind(root: Path) -> str | None:
    if all((root / name).is_file() for name in (*CIFAR10_FILES, "test_batch")):
        return "cifar10"
    if (root / "train").is_file() and (root / "test").is_file():
        return "cifar100"
    return None


def read_cifar(root: Path):
    """Train and test splits of a CIFAR-10 or CIFAR-100 python-batch directory."""
    kind = _cifar_kind(root)
    if kind is None:
        raise DatasetError(
            f"{root} has neither CIFAR-10 batches (data_batch_1..5, test_batch) nor "
            "CIFAR-100 files (train, test)"
        )
    train_files = CIFAR10_FILES if kind == "cifar10" else ("train",)
    test_files = ("test_batch",) if kind == "cifar10" else ("test",)
    label_key = "labels" if kind == "cifar10" else "fine_labels"
    meta_file, names_key = (
        ("batches.meta", "label_names") if kind == "cifar10" else ("meta", "fine_label_names")
    )

    def load(files: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        batches = [_unpickle(root / name) for name in files]
        for name, batch in zip(files, batches):
            if "data" not in batch or label_key not in batch:
                raise DatasetError(f"{root / name} lacks the 'data' or '{label_key}' entry")
        data = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels

    splits = {"train": load(train_files), "test": load(test_files)}
    if (root / meta_file).is_file():
        names = [
            n.decode() if isinstance(n, bytes) else n
            for n in _unpickle(root / meta_file)[names_key]
        ]
    else:
        names = [str(i) for i in range(int(splits["train"][1].max()) + 1)]
    return {split: dataset_from_arrays(x, y, names) for split, (x, y) in splits.items()}


# --- image folders ----------------------------------------------------------------------------


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _is_class_folder_tree(root: Path) -> bool:
    """``root/<class>/<image>``: sub-directories that directly hold images."""
    classes = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    return bool(classes) and all(any(_is_image(p) for p in d.iterdir()) for d in classes)


def _imagefolder_splits(root: Path) -> dict[str, Path] | None:
    """Split name -> class-folder tree, or None when ``root`` is not an image folder."""
    if _is_class_folder_tree(root):
        return {"train": root}
    splits = {
        d.name: d
        for d in root.iterdir()
        if d.is_dir() and not d.name.startswith(".") and _is_class_folder_tree(d)
    }
    return splits or None


def read_imagefolder(root: Path, cache_dir: str | None = None):
    """Splits of an image-folder tree through ``datasets``' ``imagefolder`` builder."""
    import datasets

    splits = _imagefolder_splits(root)
    if splits is None:
        raise DatasetError(
            f"{root} is not an image folder (<class>/<image> or <split>/<class>/<image>)"
        )
    for folder in splits.values():
        classes = [d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]
        if len(classes) < 2:  # the imagefolder builder would silently drop the label column
            raise DatasetError(
                f"{folder} holds one class folder ({classes[0]}/); a classifier needs at least "
                "two: add one sub-directory per class beside it"
            )
    data_files = {
        name: [str(p) for p in sorted(folder.glob("*/*")) if _is_image(p)]
        for name, folder in splits.items()
    }
    with _quiet_progress():  # local files: no "Downloading data" bars
        loaded = datasets.load_dataset("imagefolder", data_files=data_files, cache_dir=cache_dir)
    return dict(loaded)


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """``datasets``' progress bars off (if they were on) for the duration of the block."""
    import datasets

    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            datasets.enable_progress_bars()


def smallest_image_size(split) -> tuple[int, int] | None:
    """(width, height) of the narrowest and of the shortest image of a ``datasets`` split with
    an ``image`` column, or None when it holds no images.

    Every image counts, not the first: one folder can mix 20 px and 97 px images. Only the
    headers are read (PIL opens lazily, the column is read undecoded), so 60,000 images take
    about a second rather than a decode each.
    """
    import datasets
    from PIL import Image

    feature = split.features.get("image")
    if not isinstance(feature, datasets.Image) or len(split) == 0:
        return None
    widths, heights = [], []
    for item in split.cast_column("image", datasets.Image(decode=False))["image"]:
        source = item["path"] if item.get("bytes") is None else io.BytesIO(item["bytes"])
        with Image.open(source) as image:
            widths.append(image.width)
            heights.append(image.height)
    return min(widths), min(heights)


# --- layout detection -------------------------------------------------------------------------

LAYOUTS = {
    "cifar": (lambda root: _cifar_kind(root) is not None, read_cifar),
    "idx": (_has_idx, read_idx),
    "imagefolder": (lambda root: _imagefolder_splits(root) is not None, read_imagefolder),
}
LAYOUT_HELP = (
    "CIFAR python batches (data_batch_1..5 + test_batch, or CIFAR-100's train + test), "
    "MNIST-style idx files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-...), or an image folder (<split>/<class>/<image> or <class>/<image>)"
)


def detect_layout(root: Path) -> tuple[str, Path]:
    """(layout name, directory holding it) for ``root`` or its only sub-directory."""
    if not root.exists():
        raise DatasetError(f"no such directory: {root}")
    if not root.is_dir():
        raise DatasetError(f"{root} is a file; pass the directory that holds the dataset")
    candidates = [root]
    children = [d for d in root.iterdir() if not d.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir():
        candidates.append(children[0])  # e.g. cifar-10-batches-py/ inside the given folder
    for folder in candidates:
        for name, (matches, _) in LAYOUTS.items():
            if matches(folder):
                return name, folder
    found = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in children)[:12])
    raise DatasetError(
        f"{root} matches no supported layout. Expected {LAYOUT_HELP}; found: {found or 'nothing'}"
    )


def load_local(root: Path, label_names: Sequence[str] | None = None) -> dict:
    """Split name -> ``datasets.Dataset`` for a local directory in any supported layout."""
    layout, folder = detect_layout(root)
    if layout == "idx":
        return read_idx(folder, label_names)
    return LAYOUTS[layout][1](folder)
