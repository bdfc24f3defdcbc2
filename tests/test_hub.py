"""Exported checkpoints come back identical: through the Hub cache offline, a local folder, a
shipped folder, the plain timm model; the auxiliary file lets local training continue."""

from __future__ import annotations

import json
import shutil

import pytest
import safetensors.torch
import timm
import torch

import hpff_zoo
from hpff_zoo import hub
from hpff_zoo.models import TAGS, available_tags, tags

from .hub_helpers import (  # noqa: F401  (the *_fixture names are fixtures)
    TAG,
    exported_fixture,
    fmnist_batch,
    offline_hub_fixture,
    outputs,
    populate_cache,
    record,
    train_briefly,
)

WEIGHTS = "model.safetensors"


def test_export_writes_a_hub_folder_in_timm_format(exported):
    model, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "run.json",
    ]  # fmt: skip
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "hpff_resnet32"
    assert config["pretrained_cfg"]["tag"] == "fmnist_e2e"
    assert config["model_args"]["method"] == "e2e"
    assert config["pretrained_cfg"]["input_size"] == [1, 28, 28]
    weights = safetensors.torch.load_file(folder / "model.safetensors")
    assert set(weights) == set(model.backbone.state_dict())  # backbone only, plain names


def test_offline_round_trip_through_a_hand_populated_hub_cache(exported, tmp_path, monkeypatch):
    model, folder = exported
    populate_cache(tmp_path / "hf-cache", TAGS[TAG].hf_hub_id, folder)
    monkeypatch.setattr(tags, "HUB_PUBLISHED", {TAG})
    x, _ = fmnist_batch()

    by_tag = timm.create_model(TAG, pretrained=True)
    by_repo = timm.create_model(f"hf-hub:{TAGS[TAG].hf_hub_id}", pretrained=True)
    fresh = timm.create_model(TAG)

    assert torch.equal(outputs(by_tag, x), outputs(model, x))
    assert torch.equal(outputs(by_repo, x), outputs(model, x))
    assert not torch.equal(outputs(fresh, x), outputs(model, x))
    assert isinstance(by_repo, hpff_zoo.LocalModel) and by_repo.method == "e2e"


def test_local_dir_and_hub_loader_round_trip(exported):
    model, folder = exported
    x, _ = fmnist_batch()
    assert torch.equal(outputs(timm.create_model(f"local-dir:{folder}", pretrained=True), x),
                       outputs(model, x))  # fmt: skip
    assert torch.equal(outputs(hub.load_model(folder), x), outputs(model, x))


def test_shipped_folder_resolves_offline_when_the_hub_cannot(exported, tmp_path, monkeypatch):
    model, _ = exported
    x, _ = fmnist_batch()
    assert TAG not in available_tags()
    with pytest.raises(hpff_zoo.models.PretrainedWeightsError):
        timm.create_model(TAG, pretrained=True)

    hub.export_model(model, tmp_path / "shipped" / TAG, tag=TAG, record=record())
    assert TAG in available_tags()
    shipped_only = timm.create_model(TAG, pretrained=True)
    monkeypatch.setattr(tags, "HUB_PUBLISHED", {TAG})  # published, but offline and not cached
    hub_unreachable = timm.create_model(TAG, pretrained=True)

    assert torch.equal(outputs(shipped_only, x), outputs(model, x))
    assert torch.equal(outputs(hub_unreachable, x), outputs(model, x))


def test_exported_weights_load_strictly_into_the_plain_timm_model(exported):
    model, folder = exported
    x, _ = fmnist_batch()
    plain = timm.create_model("cifar_resnet32", in_chans=1)
    plain.load_state_dict(safetensors.torch.load_file(folder / "model.safetensors"), strict=True)
    overlay = dict(file=str(folder / "model.safetensors"), num_classes=10, input_size=(1, 28, 28))
    via_timm = timm.create_model(
        "cifar_resnet32", pretrained=True, in_chans=1, pretrained_cfg_overlay=overlay
    )
    assert torch.equal(outputs(plain, x), outputs(model, x))
    assert torch.equal(outputs(via_timm, x), outputs(model, x))


def test_any_timm_backbone_exports_to_its_plain_timm_config(tmp_path):
    model = hpff_zoo.from_timm("resnet18", num_modules=2, method="dgl", input_size=(3, 64, 64))
    train_briefly(model, steps=1)
    folder = hub.export_model(model, tmp_path / "r18", record=record(dataset="in1k"))
    x = torch.randn(2, 3, 64, 64)

    plain = timm.create_model(
        "resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(folder / WEIGHTS))
    )
    reloaded = hub.load_model(folder)
    assert json.loads((folder / "config.json").read_text())["architecture"] == "resnet18"
    assert torch.equal(outputs(plain, x), outputs(model, x))
    assert torch.equal(outputs(reloaded, x), outputs(model, x))
    assert (reloaded.method, reloaded.partition.starts) == ("dgl", model.partition.starts)


def test_aux_file_restores_the_auxiliaries_and_training_continues(tmp_path):
    model = timm.create_model("hpff_resnet32.fmnist_infopro_k16", num_modules=3)
    train_briefly(model)
    folder = hub.export_model(model, tmp_path / "aux", record=record(), include_aux=True)
    x, y = fmnist_batch(8)

    resumed = hub.load_model(folder)
    aux_only = timm.create_model("hpff_resnet32.fmnist_infopro_k16", num_modules=3)
    hub.load_aux(aux_only, folder / "aux.safetensors")
    for key, value in model.aux.state_dict().items():
        assert torch.equal(resumed.aux.state_dict()[key], value)
        assert torch.equal(aux_only.aux.state_dict()[key], value)
    assert resumed.partition.starts == model.partition.starts

    # Same weights, same batch: the first local step's losses match the original model's.
    assert resumed.train().local_step(x, y) == pytest.approx(model.train().local_step(x, y))
    history = train_briefly(resumed, steps=4)
    assert history[-1] < history[0]

    # Fine-tuning in another setting: the recorded split and auxiliaries are left behind.
    regrouped = hub.load_model(folder, num_modules=2, method="dgl")
    assert (regrouped.num_modules, regrouped.method) == (2, "dgl")
    weights = safetensors.torch.load_file(folder / WEIGHTS)
    assert all(torch.equal(regrouped.backbone.state_dict()[k], v) for k, v in weights.items())


def test_pretrained_with_new_classes_resets_head_and_auxiliaries(exported):
    model, folder = exported
    overlay = dict(file=str(folder / WEIGHTS))
    tuned = timm.create_model(
        TAG, pretrained=True, num_classes=5, method="dgl", num_modules=2,
        pretrained_cfg_overlay=overlay,
    )  # fmt: skip
    assert tuned.backbone.fc.out_features == 5
    assert tuned.aux["independent"]["module1"].classifier[-1].out_features == 5
    for key, value in model.backbone.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(tuned.backbone.state_dict()[key], value), key
    x, y = fmnist_batch()
    assert set(tuned.local_step(x, y % 5)) == {"module1", "head"}


def test_features_only_gives_the_pretrained_backbone_feature_maps(exported):
    model, folder = exported
    x, _ = fmnist_batch()
    overlay = dict(file=str(folder / WEIGHTS))
    features = timm.create_model(
        TAG, pretrained=True, features_only=True, pretrained_cfg_overlay=overlay
    ).eval()
    maps = features(x)
    assert [m.shape[1] for m in maps] == features.feature_info.channels() == [16, 16, 32, 64]
    with torch.no_grad():
        assert torch.equal(maps[-1], model.backbone.forward_features(x))


def test_push_uploads_the_exported_folder_and_nothing_pickled(exported, tmp_path, monkeypatch):
    _, folder = exported
    calls = []

    class FakeApi:  # records what timm's push_to_hf_hub would also call
        def __init__(self, **kwargs):
            calls.append(("init", kwargs))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            return "commit"

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    assert hub.push_folder(folder, "me/my-run", private=True) == "commit"
    assert calls[1] == ("create_repo", "me/my-run", dict(private=True, exist_ok=True))
    assert calls[2][1]["folder_path"] == folder and calls[2][1]["repo_id"] == "me/my-run"

    unsafe = tmp_path / "unsafe"
    shutil.copytree(folder, unsafe)
    (unsafe / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="pickle files"):
        hub.push_folder(unsafe, "me/my-run")


def test_cli_exports_a_recipes_output_dir_under_its_tag(exported, tmp_path):
    """A plain timm export of the backbone (timm's save_for_hf) is wrapped in the tag's setting."""
    model, _ = exported
    run = tmp_path / "run"
    data = dict(input_size=(1, 28, 28), mean=(0.2860,), std=(0.3530,))
    timm.models.save_for_hf(model.backbone, run, safe_serialization=True, data_config=data)
    record().save(run / "run.json")
    assert hub.main(["export", str(run), str(tmp_path / "out"), "--tag", TAG]) == 0

    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["architecture"], config["pretrained_cfg"]["tag"]) == (
        "hpff_resnet32",
        "fmnist_e2e",
    )
    x, _ = fmnist_batch()
    assert torch.equal(outputs(hub.load_model(tmp_path / "out"), x), outputs(model, x))


def test_e2e_model_records_hilo_and_pff_as_off(tmp_path):
    """E2E has no auxiliaries, so HiLo and PFF settings given to it (the recipes' default flags)
    do not apply: its export says so, and the E2E tag accepts it."""
    model = timm.create_model(TAG, hilo=2, pff=2)
    folder = hub.export_model(model, tmp_path / "out", tag=TAG, record=record())
    model_args = json.loads((folder / "config.json").read_text())["model_args"]
    assert (model_args["method"], model_args["hilo"], model_args["pff"]) == ("e2e", False, 1)
