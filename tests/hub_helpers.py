"""Helpers for the Hub tests: an offline Hub, a hand-populated cache, a small exported model.

Test modules import the fixtures ``offline_hub_fixture`` (autouse) and ``exported_fixture``
(requested as ``exported``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub.file_download import repo_folder_name

from hpff_zoo import hub
from hpff_zoo.cards import RunRecord
from hpff_zoo.models import TimmBackbone, pretrained

from .helpers import batch

# The fastest catalogue tag to build and train: E2E, one module, Fashion-MNIST-shaped input.
TAG = "hpff_resnet32.fmnist_e2e"
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def offline_hub(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """No network, an empty Hub cache and an empty shipped-weights folder under ``root``."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root / "hf-cache"))
    monkeypatch.setenv(pretrained.SHIPPED_DIR_ENV, str(root / "shipped"))


@pytest.fixture(autouse=True)
def offline_hub_fixture(monkeypatch, tmp_path):
    offline_hub(monkeypatch, tmp_path)


@pytest.fixture(scope="module", name="exported")
def exported_fixture(tmp_path_factory):
    """(trained model, exported folder) of :data:`TAG`, shared by a module's tests."""
    return exported_e2e(tmp_path_factory.mktemp("e2e"))


def populate_cache(cache: Path, repo_id: str, folder: Path | None) -> Path:
    """Lay ``folder``'s files (None: an empty snapshot to write into) out as the Hub cache does
    after a download of ``repo_id``."""
    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    if folder is None:
        (repo / "snapshots" / SNAPSHOT).mkdir(parents=True)
    else:
        shutil.copytree(folder, repo / "snapshots" / SNAPSHOT)
    return repo


def record(**overrides) -> RunRecord:
    fields = dict(
        dataset="fashion_mnist", epochs=1, top1=10.0, top5=50.0, command="pytest",
        hardware="the test machine", peak_memory_bytes=1000, wall_time_s=1.0,
    )  # fmt: skip
    return RunRecord(**(fields | overrides))


def fmnist_batch(size: int = 4):
    return batch(size, channels=1, resolution=28)


def train_briefly(model: torch.nn.Module, steps: int = 2) -> list[float]:
    """A few optimizer steps, so exported weights differ from any fresh initialisation."""
    x, y = fmnist_batch(8) if model.input_size[0] == 1 else batch(8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    totals = []
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        totals.append(sum(model.local_step(x, y).values()))
        optimizer.step()
    return totals


def exported_e2e(root: Path):
    """(trained model in eval mode, its exported folder) for :data:`TAG`."""
    model = timm.create_model(TAG)
    train_briefly(model)
    folder = hub.export_model(model, root / "export", tag=TAG, record=record())
    return model.eval(), folder


def outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def cache_timm_weights(cache: Path, backbone: TimmBackbone, seed: int = 0) -> dict:
    """Put a freshly initialised ``backbone.base`` in the Hub cache as timm's repository of
    ``backbone`` holds it (``model.safetensors``); returns the saved state dict.

    Made-up weights with the real file layout: timm's loader and huggingface_hub's cache lookup
    (``HF_HUB_OFFLINE``) read it exactly as they read a download of the real repository."""
    torch.manual_seed(seed)
    state = timm.create_model(backbone.base).state_dict()
    repo = populate_cache(cache, backbone.hf_hub_id, None)
    safetensors.torch.save_file(state, repo / "snapshots" / SNAPSHOT / "model.safetensors")
    return state
