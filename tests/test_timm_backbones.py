"""The ImageNet models' default tags: timm's own published weights in the backbone, offline.

Each test builds a Hub cache from a freshly initialised timm model saved as the file of timm's
repository (``timm/resnet101.a1h_in1k`` ...), then loads through the real path: timm's pretrained
cfg with ``hf_hub_id``, huggingface_hub's cache lookup under ``HF_HUB_OFFLINE=1``, hpff_zoo's
checkpoint filter into ``model.backbone``. Building a 224-px hpff_* model is slow on CPU (the
partitioner measures every block), so only ResNet-101, the headline call, runs by default.
"""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch

from hpff_zoo import hub
from hpff_zoo.models import TAGS, TIMM_BACKBONES, PretrainedWeightsError, available_tags, hpff
from hpff_zoo.seg.transfer import load_hpff_state_dict

from .hub_helpers import cache_timm_weights, offline_hub_fixture  # noqa: F401  (autouse)

HEADLINE = "hpff_resnet101.a1h_in1k"
MODEL_CARDS = Path(__file__).resolve().parents[1] / "model_cards"
OTHERS = sorted(set(TIMM_BACKBONES) - {HEADLINE})


def _cache(tmp_path, name: str) -> dict:
    return cache_timm_weights(tmp_path / "hf-cache", TIMM_BACKBONES[name])


def _assert_backbone_is(model, state: dict) -> None:
    own = model.backbone.state_dict()
    assert own.keys() == state.keys()
    assert all(torch.equal(own[key], value) for key, value in state.items())


def _check_loads_into_the_backbone(tmp_path, name: str) -> None:
    state = _cache(tmp_path, name)
    arch = TIMM_BACKBONES[name].arch
    torch.manual_seed(1)
    model = timm.create_model(arch, pretrained=True)  # the default tag: no tag named
    assert model.pretrained_cfg["tag"] == TIMM_BACKBONES[name].tag
    _assert_backbone_is(model, state)
    return model


@pytest.mark.slow  # 97 s at load average 7.6 on 2 cores: the 224-px partitioner, not the load
def test_the_headline_call_loads_timms_cached_weights_into_the_backbone(tmp_path):
    model = _check_loads_into_the_backbone(tmp_path, HEADLINE)
    assert model.uses_aux and (model.method, model.num_modules) == ("infopro", 4)
    # timm's own call reads the same cached file: the two backbones are one set of weights.
    plain = timm.create_model("resnet101", pretrained=True)
    _assert_backbone_is(model, plain.state_dict())


@pytest.mark.slow
@pytest.mark.parametrize("name", OTHERS)
def test_every_imagenet_default_tag_loads_timms_cached_weights_into_the_backbone(tmp_path, name):
    _check_loads_into_the_backbone(tmp_path, name)


@pytest.mark.slow
def test_the_auxiliary_networks_stay_fresh_and_a_new_head_loads_too(tmp_path):
    state = _cache(tmp_path, HEADLINE)
    torch.manual_seed(1)
    fresh = timm.create_model(HEADLINE, num_classes=10, method="dgl", num_modules=2)
    torch.manual_seed(1)
    loaded = timm.create_model(HEADLINE, pretrained=True, num_classes=10, method="dgl",
                               num_modules=2)  # fmt: skip
    fresh_aux, loaded_aux = fresh.aux.state_dict(), loaded.aux.state_dict()
    assert loaded_aux and all(torch.equal(fresh_aux[k], v) for k, v in loaded_aux.items())
    head = {"backbone.fc.weight", "backbone.fc.bias"}
    for key, value in loaded.backbone.state_dict().items():
        if f"backbone.{key}" not in head:
            assert torch.equal(value, state[key])
    assert loaded.get_classifier().out_features == 10


def test_offline_without_a_cache_is_one_line_naming_the_repository_before_any_work(monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("the model was built before the weights were found")

    monkeypatch.setattr(hpff, "build_model_with_cfg", no_build)
    for name, backbone in TIMM_BACKBONES.items():
        with pytest.raises(PretrainedWeightsError) as error:
            timm.create_model(backbone.arch, pretrained=True)
        message = str(error.value)
        assert "\n" not in message and name in message and backbone.hf_hub_id in message
        for knob in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_HOME", "pretrained_cfg_overlay"):
            assert knob in message


@pytest.mark.slow  # huggingface_hub's connection retries: 25 s at load average 7.6
def test_without_network_the_error_says_so(monkeypatch):
    """Not offline, but the Hub unreachable (a closed local port as its endpoint)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(
        huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
        "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}",
    )  # fmt: skip
    with pytest.raises(PretrainedWeightsError, match="no network") as error:
        timm.create_model(HEADLINE, pretrained=True)
    assert "timm/resnet101.a1h_in1k" in str(error.value)


def test_the_default_tags_say_what_their_weights_are_and_are_not():
    for name, backbone in TIMM_BACKBONES.items():
        cfg = timm.models.get_pretrained_cfg(backbone.arch)  # the default tag
        assert f"{backbone.arch}.{cfg.tag}" == name
        assert cfg.hf_hub_id == f"timm/{backbone.timm_name}" == backbone.hf_hub_id
        assert cfg.url is None and cfg.hf_hub_filename == "model.safetensors"
        timm_cfg = timm.models.get_pretrained_cfg(backbone.timm_name)
        for key in ("input_size", "mean", "std", "interpolation", "crop_pct", "num_classes"):
            assert getattr(cfg, key) == getattr(timm_cfg, key), key
        assert cfg.classifier == f"backbone.{timm_cfg.classifier}"
        for words in ("trained end to end by timm", "auxiliary networks untrained",
                      "local fine-tuning and segmentation transfer",
                      "not an HPFF-trained ImageNet model"):  # fmt: skip
            assert words in cfg.description
        # the planned HPFF-trained tags stay, unlisted until they have weights
        planned = [n for n, spec in TAGS.items() if spec.arch == backbone.arch]
        assert planned and not set(planned) & set(timm.list_pretrained("hpff*"))
    assert set(TIMM_BACKBONES) <= set(timm.list_pretrained("hpff*"))
    assert set(TIMM_BACKBONES) <= set(available_tags())


def test_hub_list_and_the_cards_say_it_in_words(capsys):
    assert hub.main(["list"]) == 0
    listing = capsys.readouterr().out
    for name, backbone in TIMM_BACKBONES.items():
        row = next(line for line in listing.splitlines() if line.startswith(name + " "))
        assert "auxiliary networks untrained" in row and f"hub:{backbone.hf_hub_id}" in row
        card = (MODEL_CARDS / name / "README.md").read_text()
        assert "not an HPFF-trained ImageNet model" in card and backbone.hf_hub_id in card
        assert "trained end to end by timm" in card and "untrained" in card


def test_segmentation_transfer_reads_a_default_tag_from_the_cache(tmp_path):
    state = _cache(tmp_path, HEADLINE)
    loaded = load_hpff_state_dict(HEADLINE)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())


@pytest.mark.slow
def test_finetune_recipe_starts_local_training_from_a_default_tag(tmp_path):
    import numpy as np
    from PIL import Image

    from .recipe_helpers import QUICK, check, recipe_env, run_recipe

    _cache(tmp_path, HEADLINE)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    env = recipe_env(HF_HUB_CACHE=str(tmp_path / "hf-cache"))
    output = tmp_path / "finetuned"
    stdout = check(run_recipe(
        "finetune.py", "--init", HEADLINE, "--dataset", str(tmp_path / "images"), "--epochs", "1",
        "--batch-size", "6", "--method", "dgl", "--num-modules", "2", "--img-size", "64",
        "--output-dir", str(output), *QUICK, env=env,
    ))  # fmt: skip
    assert "dgl, K=2" in stdout and (output / "model.safetensors").is_file()
