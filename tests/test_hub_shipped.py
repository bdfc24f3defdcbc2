"""The weights shipped in model_cards/ reproduce what their cards say, offline.

Each shipped tag is loaded the way a user loads it (``timm.create_model(tag, pretrained=True)``
with the Hub unreachable, so the shipped folder is what resolves) and evaluated on the real
Fashion-MNIST test set (Debian package ``dataset-fashion-mnist``) with the preprocessing timm
derives from the model's own pretrained cfg: on the first 2,000 test images against the card's
figure for them by default, on all 10,000 against its headline figure under ``-m slow``. A tag
without shipped weights, or a machine without the dataset, skips with the reason.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import timm
import torch
from PIL import Image

from hpff_zoo.aux.arch import resolve_aux_arch
from hpff_zoo.cards import RunRecord
from hpff_zoo.models import TAGS, shipped_folder

FASHION_MNIST = Path(os.environ.get("HPFF_ZOO_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FMNIST_TAGS = sorted(name for name, spec in TAGS.items() if spec.dataset.short == "fmnist")
# Percentage points: a few of the 10,000 predictions may flip with thread count or BLAS.
TOLERANCE = 0.1


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _shipped(name: str) -> Path:
    folder = shipped_folder(name)
    if folder is None:
        pytest.skip(f"no shipped weights for {name} yet (model_cards/{name}/model.safetensors)")
    return folder


def _read_idx(stem: str) -> np.ndarray:
    """An idx file (MNIST format), gzipped or not."""
    for path, opener in ((FASHION_MNIST / f"{stem}.gz", gzip.open), (FASHION_MNIST / stem, open)):
        if path.is_file():
            with opener(path, "rb") as f:
                data = f.read()
            dims = data[3]
            shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
            return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)
    pytest.skip(f"no Fashion-MNIST in {FASHION_MNIST} (apt-get install dataset-fashion-mnist)")


@pytest.mark.parametrize("name", sorted(TAGS))
def test_shipped_folder_matches_its_tag(name):
    folder = _shipped(name)
    config = json.loads((folder / "config.json").read_text())
    spec = TAGS[name]
    assert config["architecture"] == spec.arch
    assert config["pretrained_cfg"]["tag"] == spec.tag
    assert tuple(config["pretrained_cfg"]["input_size"]) == spec.dataset.data_cfg["input_size"]
    setting = ("method", "num_modules", "hilo", "pff")
    expected, recorded = spec.model_kwargs(), config["model_args"]
    assert {k: recorded[k] for k in setting} == {k: expected[k] for k in setting}
    # Folders exported before auxiliaries were recorded lack these; where present they match.
    if "aux" in recorded:
        arch = resolve_aux_arch(expected["method"], recorded["aux"])
        assert arch == resolve_aux_arch(expected["method"], expected["aux"])
    # A PFF scope means nothing without PFF (hub export does not check it there either).
    for key in ("aux_budget", "pff_scope") if expected["pff"] > 1 else ("aux_budget",):
        assert recorded.get(key, expected[key]) == expected[key]
    assert RunRecord.load(folder / "run.json").top1 > 0


def _top1(name: str, count: int | None = None) -> float:
    """Top-1 (%) of the shipped ``name`` on the first ``count`` test images (None: all)."""
    images, labels = _read_idx("t10k-images-idx3-ubyte"), _read_idx("t10k-labels-idx1-ubyte")
    images, labels = images[:count], labels[:count]
    model = timm.create_model(name, pretrained=True).eval()
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), 500):
            chunk = images[start : start + 500]
            x = torch.stack([transform(Image.fromarray(image, mode="L")) for image in chunk])
            predictions = model(x).argmax(dim=1).numpy()
            correct += int((predictions == labels[start : start + 500]).sum())
    return 100.0 * correct / len(images)


@pytest.mark.parametrize("name", FMNIST_TAGS)
def test_shipped_fashion_mnist_checkpoint_reproduces_its_quick_figure(name):
    record = RunRecord.load(_shipped(name) / "run.json")
    assert record.eval_split == "test" and record.quick_eval_images == 2_000
    top1 = _top1(name, record.quick_eval_images)
    card = record.quick_eval_top1
    assert abs(top1 - card) <= TOLERANCE, f"{name}: measured {top1:.2f}, card {card}"


@pytest.mark.slow
@pytest.mark.parametrize("name", FMNIST_TAGS)
def test_shipped_fashion_mnist_checkpoint_reproduces_its_card_accuracy(name):
    record = RunRecord.load(_shipped(name) / "run.json")
    assert record.eval_split == "test" and record.num_eval == 10_000
    top1 = _top1(name)
    assert abs(top1 - record.top1) <= TOLERANCE, f"{name}: measured {top1:.2f}, card {record.top1}"
