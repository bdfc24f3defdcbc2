"""Bad checkpoints, configs and requests fail with a message that says what is wrong."""

from __future__ import annotations

import json
import shutil

import pytest
import timm
import torch

from hpff_zoo import hub
from hpff_zoo.cards import RunRecord
from hpff_zoo.models import PretrainedWeightsError

from .hub_helpers import (  # noqa: F401  (the *_fixture names are fixtures)
    TAG,
    exported_fixture,
    offline_hub_fixture,
    record,
)


@pytest.fixture
def copy(exported, tmp_path):
    """A writable copy of the exported folder."""
    return shutil.copytree(exported[1], tmp_path / "copy")


def _from_file(path, **kwargs):
    overlay = dict(file=str(path), **kwargs.pop("overlay", {}))
    return timm.create_model(TAG, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_weights(copy, damage):
    weights = copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00" * 64)
    with pytest.raises(PretrainedWeightsError, match="not a readable safetensors file"):
        _from_file(weights)
    # The file to delete is named, not the whole run folder that holds it.
    with pytest.raises(PretrainedWeightsError, match="truncated or corrupt") as error:
        hub.load_model(copy)
    assert f"{weights} is not a readable" in str(error.value), error.value


def test_config_naming_an_unknown_architecture(copy):
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(config | {"architecture": "resnet_from_mars"}))
    with pytest.raises(ValueError, match=r"architecture 'resnet_from_mars'.*registers"):
        hub.load_model(copy)
    (copy / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        hub.load_model(copy)


def test_head_size_mismatch(copy):
    message = r"classifier backbone\.fc has 10 outputs.*num_classes=7"
    with pytest.raises(PretrainedWeightsError, match=message):
        _from_file(copy / "model.safetensors", num_classes=7, overlay=dict(num_classes=7))


def test_checkpoint_of_another_architecture(copy):
    with pytest.raises(PretrainedWeightsError, match="does not match hpff_resnet110: missing"):
        timm.create_model(
            "hpff_resnet110.cifar10_infopro_k55_hpff", pretrained=True, num_modules=2,
            in_chans=1, pretrained_cfg_overlay=dict(file=str(copy / "model.safetensors")),
        )  # fmt: skip


def test_aux_of_another_setting_or_class_count(tmp_path):
    name = "hpff_resnet32.fmnist_infopro_k16"
    # K=3: module 2's InfoPro aux has a classifier (module 1's starts at λ_cls = 0 and has none).
    model = timm.create_model(name, num_modules=3)
    folder = hub.export_model(model, tmp_path / "aux", record=record(), include_aux=True)
    other_classes = timm.create_model(name, num_modules=3, num_classes=3)
    with pytest.raises(ValueError, match="trained for another number of classes"):
        hub.load_aux(other_classes, folder / "aux.safetensors")
    other_method = timm.create_model(name, num_modules=3, method="dgl")
    with pytest.raises(ValueError, match="another setting"):
        hub.load_aux(other_method, folder / "aux.safetensors")


def test_unpublished_tag_names_the_tags_that_have_weights(exported, tmp_path):
    unpublished = "hpff_resnet101.in1k_infopro_k4_hpff"
    # Nothing shipped: the tags with weights are timm's backbones, this architecture's included.
    first = r"has no published weights.*with weights: .*hpff_resnet101\.a1h"
    with pytest.raises(PretrainedWeightsError, match=first):
        timm.create_model(unpublished, pretrained=True)
    hub.export_model(exported[0], tmp_path / "shipped" / TAG, tag=TAG, record=record())
    shipped = rf"{unpublished} has no.*with weights: .*{TAG}"
    with pytest.raises(PretrainedWeightsError, match=shipped):
        timm.create_model(unpublished, pretrained=True)


def test_pickle_weights_are_refused_unless_allowed(exported, copy):
    model, _ = exported
    pickled = copy / "weights.pth"
    torch.save(model.backbone.state_dict(), pickled)
    with pytest.raises(PretrainedWeightsError, match=r"refusing to load .*weights\.pth"):
        _from_file(pickled)
    (copy / "model.safetensors").rename(copy / "pytorch_model.bin.unused")
    torch.save(model.backbone.state_dict(), copy / "pytorch_model.bin")
    with pytest.raises(ValueError, match="refusing to unpickle"):
        hub.load_model(copy)
    x = torch.randn(2, 1, 28, 28)
    allowed = _from_file(pickled, allow_pickle=True).eval()
    with torch.no_grad():
        assert torch.equal(allowed(x), model(x))


def test_export_refuses_a_model_that_does_not_match_its_tag(exported, tmp_path):
    model = timm.create_model("hpff_resnet32", num_modules=2)
    with pytest.raises(ValueError, match=r"not match tag .*method: tag 'e2e', model 'infopro'"):
        hub.export_model(model, tmp_path / "x", tag=TAG, record=record())
    with pytest.raises(ValueError, match="unknown tag"):
        hub.export_model(model, tmp_path / "x", tag="hpff_resnet32.imaginary", record=record())
    with pytest.raises(FileExistsError, match="overwrite"):
        hub.export_model(exported[0], exported[1], tag=TAG, record=record())


def test_export_checks_a_tags_pinned_auxiliaries(tmp_path):
    """Weights trained with other auxiliaries than a tag pins cannot be published as it."""
    tag = "hpff_resnet32.fmnist_infopro_k16_hpff_paper"
    trained = timm.create_model(tag)  # the tag's own setting: paper, unbudgeted, decoder
    cheap = timm.create_model(tag, aux="cheap", aux_budget=0.1, pff_scope="all")
    budgeted = timm.create_model(tag, aux_budget=0.1)
    for mismatch, wrong in [(cheap, "aux:"), (budgeted, "aux_budget")]:
        with pytest.raises(ValueError, match=rf"not match tag {tag}: .*{wrong}"):
            hub.export_model(mismatch, tmp_path / "x", tag=tag, record=record())
    folder = hub.export_model(trained, tmp_path / "ok", tag=tag, record=record())
    assert (folder / "README.md").is_file()


def test_run_record_validation(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"dataset": "fmnist", "top1": 90.0, "accuracy": 1}))
    with pytest.raises(ValueError, match=r"unknown fields \['accuracy'\].*missing fields"):
        RunRecord.load(path)


def test_cli_help_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        hub.main(["export", "--help"])
    assert exit_info.value.code == 0
    assert "--tag" in capsys.readouterr().out
    missing = str(tmp_path / "missing")
    assert hub.main(["export", missing, str(tmp_path / "out")]) == 1
    assert f"{missing} does not exist" in capsys.readouterr().err
    e2e = ["--e2e-record", str(tmp_path / "e2e.json")]
    assert hub.main(["export", missing, str(tmp_path / "out"), *e2e]) == 1
    assert f"{missing} does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert hub.main(["export", str(tmp_path / "empty"), str(tmp_path / "out")]) == 1
    assert "has no run.json" in capsys.readouterr().err
