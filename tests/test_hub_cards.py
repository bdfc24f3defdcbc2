"""The tag catalogue as timm sees it, and the model cards generated from it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from hpff_zoo.cards import card_facts, estimate_compute, render_card
from hpff_zoo.models import HPFF_MODELS, HUB_ORG, TAGS, TIMM_BACKBONES, available_tags

from .hub_helpers import TAG, record

MODEL_CARDS = Path(__file__).resolve().parents[1] / "model_cards"


@pytest.mark.parametrize("name", sorted(TAGS))
def test_every_tag_has_a_complete_timm_pretrained_cfg(name):
    cfg = timm.models.get_pretrained_cfg(name)
    spec = TAGS[name]
    if name in available_tags():  # a weights location only where weights exist
        assert cfg.hf_hub_id == f"{HUB_ORG}/{name}" and cfg.hf_hub_filename == "model.safetensors"
    else:
        assert cfg.hf_hub_id is None and not cfg.has_weights
    assert len(cfg.mean) == len(cfg.std) == cfg.input_size[0]
    assert cfg.num_classes == spec.dataset.num_classes
    assert cfg.classifier.startswith("backbone.") and cfg.first_conv.startswith("backbone.")
    assert cfg.license and "arXiv:2407.05638" in cfg.paper_ids
    assert name.split(".")[0] == spec.arch and HPFF_MODELS[spec.arch][0] == spec.base


def test_every_model_has_tags_and_keeps_its_paper_default():
    """The default tag is timm's weights for an ImageNet model (no setting of its own: the
    paper's default applies), the paper's main run for a CIFAR one."""
    for arch, (_, defaults) in HPFF_MODELS.items():
        name = f"{arch}.{timm.models.get_pretrained_cfg(arch).tag}"
        if name in TIMM_BACKBONES:
            assert TIMM_BACKBONES[name].model_kwargs() == {}
        else:
            spec = TAGS[name]
            assert (spec.method, spec.num_modules) == (defaults["method"], defaults["num_modules"])
        assert any(s.arch == arch for s in TAGS.values())  # the HPFF-trained tags stay
    assert timm.models.get_pretrained_cfg("hpff_resnet32").input_size == (3, 32, 32)


def test_a_tag_brings_its_setting_and_preprocessing():
    model = timm.create_model(TAG)
    assert (model.method, model.num_modules, model.input_size) == ("e2e", 1, (1, 28, 28))
    assert model.backbone.pretrained_cfg["mean"] == TAGS[TAG].dataset.data_cfg["mean"]


def test_compute_estimate_counts_a_real_training_step():
    spec = TAGS[TAG]
    model = timm.create_model(TAG)
    estimate = estimate_compute(spec, model)
    with FlopCounterMode(display=False) as forward:
        model.backbone(torch.randn(2, 1, 28, 28))
    # E2E: one forward and a backward about twice its cost.
    assert 2.5 < estimate.flops_per_image / (forward.get_total_flops() / 2) < 3.5
    # The tag trains on all 60,000 images per epoch (preset fmnist-full).
    assert estimate.total_flops == estimate.flops_per_image * spec.train_images * spec.epochs


def test_cards_show_measured_figures_or_say_not_trained():
    model = timm.create_model(TAG)
    facts = card_facts(model, TAG, "fashion_mnist", TAGS[TAG].hf_hub_id)
    trained = render_card(facts, record=record(top1=87.65, e2e_peak_memory_bytes=4000))
    assert "87.65 %" in trained and "75% less than E2E" in trained
    assert "value: 87.65" in trained  # Hub metadata (model-index)
    assert "first 2,000" not in trained
    quick = render_card(facts, record=record(quick_eval_images=2000, quick_eval_top1=88.15))
    assert "Top-1 on the first 2,000 images of the test split: 88.15 %" in quick
    planned = render_card(facts, spec=TAGS[TAG])
    assert "Not trained yet" in planned and TAGS[TAG].train_command() in planned
    assert "%" not in planned.split("## Use")[0]  # no accuracy figure in a planned card
    with pytest.raises(ValueError, match="run record"):
        render_card(facts)


def test_a_card_tells_how_to_continue_local_training_only_when_it_ships_the_auxiliaries():
    model = timm.create_model(TAG)
    plain, with_aux = (
        render_card(card_facts(model, TAG, "fashion_mnist", None, ships_aux=ships), record())
        for ships in (False, True)
    )
    assert "load_model" not in plain
    assert f'model = hub.load_model("{TAG}")' in with_aux


@pytest.mark.parametrize("name", sorted(TAGS))
def test_shipped_model_cards_cover_the_catalogue(name):
    card = (MODEL_CARDS / name / "README.md").read_text()
    assert f"# {name}" in card
    if not (MODEL_CARDS / name / "model.safetensors").exists():
        assert "Not trained yet" in card and TAGS[name].train_command() in card
        assert "GFLOP per image" in card


def test_rendered_cards_pass_the_repository_formatter(tmp_path):
    """Cards land in model_cards/, which CI checks with `ruff format --check`."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    model = timm.create_model(TAG)
    for hub_id in (TAGS[TAG].hf_hub_id, None):
        facts = card_facts(model, TAG, "fashion_mnist", hub_id)
        (tmp_path / "README.md").write_text(render_card(facts, record=record()))
        config = MODEL_CARDS.parent / "pyproject.toml"
        command = [ruff, "format", "--check", "--config", str(config), str(tmp_path / "README.md")]
        check = subprocess.run(command)
        assert check.returncode == 0
