"""Transfer: hpff_zoo / timm ResNet classification checkpoints into mmseg backbones, counted."""

from __future__ import annotations

import pytest

pytest.importorskip("mmseg", reason='segmentation extra not installed: pip install -e ".[seg]"')

import timm
import torch
from mmengine.config import Config
from mmseg.registry import MODELS
from safetensors.torch import save_file

import hpff_zoo
from hpff_zoo.seg import backbone_overrides, load_hpff_state_dict, transfer_backbone
from hpff_zoo.seg.config import use_backbone_checkpoint
from hpff_zoo.seg.transfer import map_timm_resnet

from .seg_data import recipe

# timm variant -> the mmseg backbone whose stem and downsampling it shares
VARIANTS = {
    "plain": (dict(), "ResNet"),
    "deep stem": (dict(stem_type="deep", stem_width=32), "ResNetV1c"),
    "deep stem + avg-down": (dict(stem_type="deep", stem_width=32, avg_down=True), "ResNetV1d"),
}


def _export(tmp_path, **timm_kwargs):
    """An hpff_zoo classification model (K=2) exported as ``model.safetensors`` in a folder."""
    model = hpff_zoo.from_timm("resnet18", num_modules=2, num_classes=7, **timm_kwargs)
    with torch.no_grad():  # a distinct value in every tensor, running stats and counters too
        for i, tensor in enumerate(model.backbone.state_dict().values()):
            tensor.copy_(torch.rand(tensor.shape) + i if tensor.is_floating_point() else i)
    folder = tmp_path / "export"
    folder.mkdir()
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    return folder, model.backbone.state_dict()


def _build_backbone(kind: str, depth: int = 18):
    return MODELS.build(dict(type=kind, depth=depth, dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_backbone_tensor_is_loaded(variant, tmp_path):
    timm_kwargs, kind = VARIANTS[variant]
    folder, timm_state = _export(tmp_path, **timm_kwargs)
    state = load_hpff_state_dict(folder)
    assert set(state) == set(timm_state)  # backbone. prefix stripped, aux. dropped
    assert backbone_overrides(state) == {"type": kind, "depth": 18}
    backbone = _build_backbone(kind)
    report = transfer_backbone(backbone, folder)
    total = len(backbone.state_dict())
    assert report.loaded == report.total == total
    assert report.ignored == ("fc.bias", "fc.weight")
    # 100 %: every tensor of the backbone equals a checkpoint tensor, and each is used once.
    loaded = backbone.state_dict()
    used = set()
    for name, tensor in loaded.items():
        same = [k for k, v in timm_state.items() if v.shape == tensor.shape and v.equal(tensor)]
        assert len(same) == 1, f"{name} was not loaded"
        used.update(same)
    assert len(used) == total == len(timm_state) - 2  # everything but the classifier


def test_a_checkpoint_that_does_not_fit_fails_with_the_names(tmp_path):
    folder, _ = _export(tmp_path)  # a 7×7 stem
    state = load_hpff_state_dict(folder)
    with pytest.raises(ValueError, match=r"missing \['stem\.0\.weight"):
        map_timm_resnet(state, _build_backbone("ResNetV1c"))
    del state["layer2.0.conv1.weight"]
    with pytest.raises(ValueError, match=r"missing \['layer2\.0\.conv1\.weight'\]"):
        map_timm_resnet(state, _build_backbone("ResNet"))


def test_launcher_option_switches_the_stem_and_loads_through_init_weights(tmp_path):
    """--backbone-checkpoint with a 7×7-stem export: ResNetV1c becomes ResNet, all loaded."""
    folder, timm_state = _export(tmp_path)
    cfg = Config.fromfile(recipe("hpff-k4"))
    cfg.model.backbone.depth = 18
    assert use_backbone_checkpoint(cfg, str(folder)) == {"type": "ResNet", "depth": 18}
    assert cfg.model.pretrained is None
    backbone = MODELS.build(cfg.model.backbone)
    backbone.init_weights()  # what the runner does before training
    for name, tensor in backbone.state_dict().items():
        torch.testing.assert_close(tensor, timm_state[name], msg=name)
    cfg.model.backbone.depth = 50
    with pytest.raises(ValueError, match="ResNet-18, the config builds a ResNet-50"):
        use_backbone_checkpoint(cfg, str(folder))


def test_plain_timm_resnet101_fills_mmseg_resnet101(tmp_path):
    """The paper's backbone size: timm's resnet101 names cover mmseg's ResNet-101 exactly."""
    model = timm.create_model("resnet101")
    timm.models.save_for_hf(model, tmp_path)
    state = load_hpff_state_dict(tmp_path)
    assert backbone_overrides(state) == {"type": "ResNet", "depth": 101}
    backbone = _build_backbone("ResNet", depth=101)
    report = transfer_backbone(backbone, tmp_path)
    assert report.loaded == report.total == len(backbone.state_dict()) == len(state) - 2
    assert report.parameters == sum(p.numel() for p in model.parameters()) - 2049 * 1000


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a local file or folder nor a Hub id"):
        load_hpff_state_dict(str(tmp_path / "no" / "such" / "export"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors"):
        load_hpff_state_dict(tmp_path / "empty")


@pytest.mark.slow
def test_hpff_resnet101_export_fills_the_recipe_backbone(tmp_path):
    """An hpff_resnet101 checkpoint (model.safetensors) initialises the 101 recipe's backbone.

    Saved with safetensors directly: timm's save_for_hf needs ``num_features`` on the model,
    which LocalModel does not expose yet.
    """
    model = timm.create_model("hpff_resnet101", num_classes=19)
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    cfg = Config.fromfile(recipe("hpff-k4"))
    assert use_backbone_checkpoint(cfg, str(tmp_path)) == {"type": "ResNet", "depth": 101}
    backbone = MODELS.build(cfg.model.backbone)
    backbone.init_weights()
    expected = model.backbone.state_dict()
    loaded = backbone.state_dict()
    assert len(loaded) == len(expected) - 2  # all but fc.weight, fc.bias
    for name, tensor in loaded.items():
        torch.testing.assert_close(tensor, expected[name], msg=name)
