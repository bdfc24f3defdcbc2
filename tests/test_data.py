"""hpff_zoo.data: every local layout loads, known names find system copies, bad input is clear.

Each layout is written on the fly in the format users keep on disk (idx files as in the MNIST
archives, CIFAR python pickles, image folders), small enough to read in milliseconds.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpff_zoo.data import (
    KNOWN_DATASETS,
    DatasetError,
    KnownDataset,
    TransformedDataset,
    create_transforms,
    detect_layout,
    load_image_classification,
    read_idx_file,
    resolve_data_config,
    smallest_image_size,
)

RNG = np.random.default_rng(0)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def make_idx_dir(root: Path, train: int = 12, test: int = 6, gz: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", train), ("t10k", test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", RNG.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 3)
    return root


def make_cifar10_dir(root: Path, per_batch: int = 4) -> Path:
    root.mkdir(parents=True)

    def dump(name: str, labels: list[int]) -> None:
        data = RNG.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        with open(root / name, "wb") as handle:
            pickle.dump({b"data": data, b"labels": labels}, handle)

    for i in range(1, 6):
        dump(f"data_batch_{i}", [(i + j) % 10 for j in range(per_batch)])
    dump("test_batch", list(range(per_batch)))
    names = [f"class{i}".encode() for i in range(10)]
    with open(root / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": names}, handle)
    return root


def make_image_folder(root: Path, splits=("train", "test"), classes=("cat", "dog"), n=3) -> Path:
    for split in splits:
        for name in classes:
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_idx_directory(tmp_path):
    data = load_image_classification(str(make_idx_dir(tmp_path / "mnist")))
    assert (len(data.train), len(data.test), data.num_classes, data.channels) == (12, 6, 3, 1)
    assert data.train[4]["label"] == 1 and data.train[0]["image"].size == (28, 28)


def test_idx_directory_uncompressed_and_nested(tmp_path):
    make_idx_dir(tmp_path / "outer" / "raw", gz=False)  # the single sub-directory is looked into
    data = load_image_classification(str(tmp_path / "outer"))
    assert len(data.train) == 12


def test_cifar10_batches_in_their_archive_folder(tmp_path):
    make_cifar10_dir(tmp_path / "cifar-10-batches-py")
    data = load_image_classification(str(tmp_path))
    assert (len(data.train), len(data.test), data.channels) == (20, 4, 3)
    assert data.label_names[3] == "class3"
    image = np.asarray(data.test[0]["image"])
    assert image.shape == (32, 32, 3)


def test_cifar100_files(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    for name, n in (("train", 6), ("test", 2)):
        labels = list(range(n))
        data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
        with open(root / name, "wb") as handle:
            pickle.dump({b"data": data, b"fine_labels": labels, b"coarse_labels": labels}, handle)
    data = load_image_classification(str(root))
    assert (len(data.train), len(data.test), data.num_classes) == (6, 2, 6)


def test_image_folder_with_splits(tmp_path):
    data = load_image_classification(str(make_image_folder(tmp_path / "pets")))
    assert (len(data.train), len(data.test), data.label_names) == (6, 6, ["cat", "dog"])


def test_image_folder_of_one_class_is_told_so(tmp_path):
    root = make_image_folder(tmp_path / "cats", splits=("",), classes=("cat",), n=2)
    with pytest.raises(
        DatasetError, match=r"one class folder \(cat/\); a classifier needs at least two"
    ):
        load_image_classification(str(root))


def test_local_image_folder_prints_no_progress_bars(tmp_path, capfd):
    import datasets

    load_image_classification(str(make_image_folder(tmp_path / "pets")))
    err = capfd.readouterr().err
    assert "Downloading" not in err and "Generating" not in err, err
    assert datasets.is_progress_bar_enabled()  # turned back on


def test_smallest_image_size_reads_every_image(tmp_path):
    root = make_image_folder(tmp_path / "mixed", splits=("",), classes=("a", "b"), n=2)
    Image.fromarray(np.zeros((97, 15, 3), dtype=np.uint8)).save(root / "b" / "tall.png")
    Image.fromarray(np.zeros((12, 60, 3), dtype=np.uint8)).save(root / "a" / "wide.png")
    data = load_image_classification(str(root), test_fraction=0.2, seed=0)
    both = [smallest_image_size(data.train), smallest_image_size(data.test)]
    assert (min(w for w, _ in both), min(h for _, h in both)) == (15, 12)


def test_image_folder_without_splits_holds_out_a_stratified_test_set(tmp_path):
    root = make_image_folder(tmp_path / "flat", splits=("",), classes=("a", "b"), n=5)
    data = load_image_classification(str(root), test_fraction=0.4, seed=3)
    assert (len(data.train), len(data.test)) == (6, 4)
    assert sorted(data.test["label"]) == [0, 0, 1, 1]
    again = load_image_classification(str(root), test_fraction=0.4, seed=3)
    assert np.array_equal(np.asarray(data.test[0]["image"]), np.asarray(again.test[0]["image"]))


def test_known_name_uses_the_system_copy(tmp_path, monkeypatch):
    make_idx_dir(tmp_path / "fashion")
    known = KNOWN_DATASETS["fashion_mnist"]
    patched = KnownDataset(known.hub_id, local_dirs=(str(tmp_path / "fashion"),),
                           label_names=known.label_names)  # fmt: skip
    monkeypatch.setitem(KNOWN_DATASETS, "fashion_mnist", patched)
    data = load_image_classification("fashion_mnist")
    assert data.source == str(tmp_path / "fashion") and data.label_names[9] == "Ankle boot"


DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
needs_debian_fashion_mnist = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)


@needs_debian_fashion_mnist
def test_debian_fashion_mnist_is_where_the_name_looks():
    assert str(DEBIAN_FASHION_MNIST) in KNOWN_DATASETS["fashion_mnist"].local_dirs
    assert detect_layout(DEBIAN_FASHION_MNIST) == ("idx", DEBIAN_FASHION_MNIST)
    labels = read_idx_file(DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz")
    assert np.bincount(labels).tolist() == [1000] * 10


@pytest.mark.slow
@needs_debian_fashion_mnist
def test_debian_fashion_mnist_loads_by_name():
    data = load_image_classification("fashion_mnist")
    assert (len(data.train), len(data.test), data.channels) == (60000, 10000, 1)


def test_embedded_mnist_subset_is_split_reproducibly():
    data = load_image_classification("mnist5k")
    assert (len(data.train), len(data.test), data.num_classes) == (4000, 1000, 10)
    assert np.bincount(data.test["label"]).tolist() == [100] * 10
    subset = data.limit(train=50, seed=1)
    assert len(subset.train) == 50 and len(set(subset.train["label"])) > 5


@pytest.mark.parametrize(
    "layout,message",
    [
        ("missing", "no such directory"),
        ("empty", "matches no supported layout.*found: nothing"),
        ("stray files", "matches no supported layout.*notes.txt"),
        ("images without class folders", "matches no supported layout"),
        ("idx without labels", "lacks t10k-labels-idx1-ubyte"),
        ("idx with a bad magic number", "is not an idx file"),
        ("idx with a truncated file", "declares shape"),
        ("cifar batch that is not a pickle", "is not a CIFAR python batch"),
    ],
)
def test_bad_paths_and_layouts_are_clear_errors(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "stray files":
        (root / "notes.txt").write_text("hello")
    elif layout == "images without class folders":
        Image.new("RGB", (8, 8)).save(root / "a.png")
        (root / "b.txt").write_text("not an image")
    elif layout.startswith("idx"):
        make_idx_dir(root)
        if layout == "idx without labels":
            (root / "t10k-labels-idx1-ubyte.gz").unlink()
        elif layout == "idx with a bad magic number":
            with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "wb") as handle:
                handle.write(b"\x1f\x00\x08\x01" + bytes(8))
        else:
            with gzip.open(root / "t10k-images-idx3-ubyte.gz", "wb") as handle:
                handle.write(
                    bytes([0, 0, 8, 3]) + (6).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
                )
    elif layout.startswith("cifar"):
        make_cifar10_dir(root / "cifar-10-batches-py")
        (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match=message):
        load_image_classification(str(root))


def test_one_channel_model_gets_one_channel_statistics():
    import timm

    model = timm.create_model("cifar_resnet32", in_chans=1)
    config = resolve_data_config(model)
    assert config["input_size"] == (1, 32, 32)
    assert len(config["mean"]) == len(config["std"]) == 1
    assert config["mean"][0] == pytest.approx(sum((0.4914, 0.4822, 0.4465)) / 3)


@pytest.mark.parametrize("channels", [1, 3])
def test_images_are_converted_to_the_model_channels(channels):
    rgb = {"image": Image.fromarray(RNG.integers(0, 256, (28, 28, 3), dtype=np.uint8)), "label": 2}
    gray = {"image": Image.fromarray(RNG.integers(0, 256, (28, 28), dtype=np.uint8)), "label": 1}
    config = {"input_size": (channels, 32, 32), "mean": (0.5,) * channels, "std": (0.5,) * channels}
    _, eval_transform = create_transforms(config)
    dataset = TransformedDataset([rgb, gray], eval_transform, channels)
    assert [tuple(dataset[i][0].shape) for i in range(2)] == [(channels, 32, 32)] * 2


def test_augmentation_depends_only_on_seed_epoch_and_index():
    images = [
        {"image": Image.fromarray(RNG.integers(0, 256, (32, 32), dtype=np.uint8)), "label": 0}
    ]
    config = {"input_size": (1, 32, 32), "mean": (0.5,), "std": (0.5,)}
    train_transform, _ = create_transforms(config, hflip=0.5, crop_padding=8)
    dataset = TransformedDataset(images * 4, train_transform, 1, seed=7)
    first = [dataset[i][0] for i in range(4)]
    torch.rand(100)  # global random state moves on: the augmentation must not care
    assert all(torch.equal(a, dataset[i][0]) for i, a in reversed(list(enumerate(first))))
    assert not torch.equal(first[0], first[1])  # different indices, different crops
    dataset.set_epoch(1)
    assert not torch.equal(first[0], dataset[0][0])
