"""hpff_zoo.training in one process: bf16 on CPU, checkpoints, schedule, export round trip.

The multi-process and crash behaviour is exercised end to end in test_recipes.py.
"""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
import timm
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from hpff_zoo.training import (
    CheckpointManager,
    TrainingProgress,
    evaluate,
    local_step,
    save_model,
    summarize_losses,
    warmup_cosine,
)

from .helpers import batch


@pytest.fixture
def accelerator_factory():
    """CPU accelerators with a test's own settings (conftest resets Accelerate's state)."""
    return lambda **kwargs: Accelerator(cpu=True, **kwargs)


def test_bf16_step_on_cpu(accelerator_factory):
    accelerator = accelerator_factory(mixed_precision="bf16")
    model = timm.create_model("hpff_resnet32", num_modules=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    dtypes = []
    model.backbone.layer2[0].conv1.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    x, y = batch(4)
    before = [p.detach().clone() for p in model.parameters()]
    losses = local_step(accelerator, model, x, y)
    optimizer.step()
    assert set(losses) == {"module1", "module2", "module3", "head"}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert dtypes == [torch.bfloat16]  # the step really ran under bf16 autocast
    params = list(model.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in params)
    assert any(not torch.equal(a, p) for a, p in zip(before, params))


def test_gradient_accumulation_scales_every_loss(accelerator_factory):
    """Two accumulated half batches through accelerator.backward = one averaged pair."""
    accelerator = accelerator_factory(gradient_accumulation_steps=2)
    model = timm.create_model("hpff_resnet32", num_modules=3)
    model = accelerator.prepare(model)
    x, y = batch(8)
    for half in (slice(0, 4), slice(4, 8)):
        with accelerator.accumulate(model):
            local_step(accelerator, model, x[half], y[half])
    accumulated = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    for half in (slice(0, 4), slice(4, 8)):
        model.local_step(x[half], y[half])
    summed = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(accumulated) == len(summed) > 0
    assert all(torch.allclose(a, s / 2, atol=1e-6) for a, s in zip(accumulated, summed))


def test_checkpoints_are_atomic_and_pruned(tmp_path, accelerator_factory):
    accelerator = accelerator_factory()
    model = accelerator.prepare(torch.nn.Linear(2, 2))
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    manager = CheckpointManager(tmp_path / "checkpoints", keep=2)
    for step in (3, 7, 12):
        progress.step = step
        manager.save(accelerator, step)
    partial = tmp_path / "checkpoints" / ".tmp-checkpoint-00000099"  # a save killed midway
    partial.mkdir()
    assert [p.name for p in manager.checkpoints()] == ["checkpoint-00000007", "checkpoint-00000012"]
    assert manager.latest().name == "checkpoint-00000012"
    manager.remove_partial()
    assert not partial.exists()

    with torch.no_grad():
        model.weight.zero_()
    progress.step = 0
    accelerator.load_state(str(manager.latest()))
    assert progress.step == 12 and model.weight.abs().sum() > 0


def test_warmup_cosine_schedule():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.8)
    scheduler = warmup_cosine(optimizer, total_steps=20, warmup_steps=4, min_ratio=0.1)
    rates = []
    for _ in range(20):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.2) and rates[3] == pytest.approx(0.8)
    assert rates[4] == pytest.approx(0.8) and all(a >= b for a, b in pairwise(rates[4:]))
    assert scheduler.get_last_lr()[0] == pytest.approx(0.08)
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine(optimizer, total_steps=3, warmup_steps=5)


def test_saved_run_model_reloads_in_its_setting_and_says_what_it_was_trained_on(tmp_path):
    from hpff_zoo.hub import load_model

    model = timm.create_model("hpff_resnet32", num_classes=3, in_chans=1, num_modules=4)
    data_config = {"input_size": (1, 32, 32), "mean": (0.47,), "std": (0.25,)}
    save_model(model, tmp_path, "mnist5k", data_config, ["a", "b", "c"])
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == "hpff_resnet32" and config["label_names"] == ["a", "b", "c"]
    assert config["model_args"]["method"] == "infopro" and config["model_args"]["num_modules"] == 4
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [1, 32, 32] and cfg["mean"] == [0.47] and cfg["tag"] is None
    assert cfg["description"].startswith("cifar_resnet32 trained on mnist5k with InfoPro, K=4")
    for name in ("model.safetensors", "aux.safetensors", "config.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    loaded = load_model(tmp_path).eval()
    assert loaded.num_modules == 4 and loaded.method == "infopro"
    x = batch(2, channels=1)[0]
    assert torch.allclose(loaded(x), model.eval()(x))
    plain = timm.create_model("cifar_resnet32", num_classes=3, in_chans=1)
    plain.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)


def test_loss_summary_names_first_middle_and_last_module():
    losses = {f"module{i}": i / 10 for i in range(1, 16)} | {"head": 0.5}
    assert summarize_losses(losses) == "head 0.500 | m1 0.100 m8 0.800 m15 1.500"
    assert summarize_losses({"head": 1.0}) == "head 1.000"


class _Fixed(torch.nn.Module):
    """Predicts class 0 for every image whose first pixel is positive, else class 1."""

    def forward(self, x):
        positive = (x.flatten(1)[:, 0] > 0).float()
        return torch.stack([positive, 1 - positive], dim=1)


def test_evaluate_reports_top1_on_the_first_examples_in_order(accelerator_factory):
    accelerator = accelerator_factory()
    x = torch.tensor([1.0, 1.0, -1.0, 1.0, -1.0, -1.0]).reshape(6, 1, 1, 1)
    y = torch.tensor([0, 0, 0, 1, 1, 1])  # right, right, wrong, wrong, right, right
    loader = torch.utils.data.DataLoader(list(zip(x, y)), batch_size=4)
    results = evaluate(accelerator, _Fixed(), loader, first=3)
    assert results["top1"] == pytest.approx(100 * 4 / 6)
    assert results["top1_first"] == pytest.approx(100 * 2 / 3)
    assert "top1_first" not in evaluate(accelerator, _Fixed(), loader)


def test_pretrained_starts_local_training_from_the_tags_weights():
    """``--model TAG --pretrained``: the tag's backbone weights with fresh auxiliaries and the
    requested setting; published as a fine-tune, not as the tag."""
    from types import SimpleNamespace

    from hpff_zoo.hub import load_model
    from hpff_zoo.training import RunConfig, create_local_model

    tag = "hpff_resnet32.fmnist_e2e"  # shipped: loads offline
    data = SimpleNamespace(channels=1, num_classes=10)
    config = RunConfig(model=tag, method="dgl", num_modules=2, hilo=0, pff=1, pretrained=True)
    model = create_local_model(config, data)
    shipped = load_model(tag).backbone.state_dict()
    assert (model.method, model.num_modules) == ("dgl", 2)
    assert all(torch.equal(v, shipped[k]) for k, v in model.backbone.state_dict().items())
    fresh = create_local_model(RunConfig(**{**vars(config), "pretrained": False}), data)
    assert not torch.equal(fresh.backbone.conv1.weight, model.backbone.conv1.weight)
    assert config.published_tag() is None and RunConfig(model=tag).published_tag() == tag
