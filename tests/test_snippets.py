"""The Python code of every model card and of the README's timm sections runs as written.

Each block is executed offline (``HF_HUB_OFFLINE=1``), from a copy of the card's folder (the
plain-timm snippet reads the ``model.safetensors`` next to the card) holding an RGB
``image.png``, so a 1-channel tag's snippet must convert it. The cards' shell blocks (training
runs: minutes on CPU for the shipped tags, ImageNet for the planned ones) are not executed.
"""

import re
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from PIL import Image

from hpff_zoo.models import TAGS

ROOT = Path(__file__).resolve().parents[1]
MODEL_CARDS = ROOT / "model_cards"
CARDS = sorted(MODEL_CARDS.glob("*/README.md"))
README_SECTIONS = ("Use it from timm", "Pretrained weights and the Hub")


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE)


def section(markdown: str, heading: str) -> str:
    start = markdown.index(f"\n## {heading}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end >= 0 else None]


def run_blocks(blocks: list[str], where: str) -> dict:
    """Execute ``blocks`` in order in one namespace, as a reader pasting them would."""
    assert blocks, f"no Python code in {where}"
    namespace: dict = {"__name__": "__main__"}
    for block in blocks:
        exec(compile(block, where, "exec"), namespace)
    return namespace


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_every_catalogue_tag_has_a_card():
    assert {card.parent.name for card in CARDS} == set(TAGS)


@pytest.mark.parametrize("card", CARDS, ids=[card.parent.name for card in CARDS])
def test_card_code_runs_as_written(card, tmp_path, monkeypatch, offline):
    folder = tmp_path / card.parent.name
    shutil.copytree(card.parent, folder)
    pixels = torch.randint(0, 256, (40, 48, 3), generator=torch.Generator().manual_seed(0))
    Image.fromarray(pixels.to(torch.uint8).numpy(), mode="RGB").save(folder / "image.png")
    monkeypatch.chdir(folder)

    namespace = run_blocks(python_blocks(card.read_text()), str(card))

    assert namespace["logits"].shape == (1, TAGS[card.parent.name].dataset.num_classes)
    if "plain_logits" in namespace:  # same weights, same preprocessing, without hpff_zoo's model
        torch.testing.assert_close(namespace["plain_logits"], namespace["logits"])


@pytest.mark.parametrize("heading", README_SECTIONS)
def test_readme_timm_sections_run_as_written(heading, tmp_path, monkeypatch, offline):
    (tmp_path / "model_cards").symlink_to(MODEL_CARDS)  # paths relative to the repository
    monkeypatch.chdir(tmp_path)
    text = section((ROOT / "README.md").read_text(), heading)
    run_blocks(python_blocks(text), f"README.md, section {heading!r}")


@pytest.mark.parametrize("card", CARDS, ids=[card.parent.name for card in CARDS])
def test_card_shell_commands_are_complete(card):
    """Not executed (training runs), but copyable: no ``<placeholder>`` left to fill in."""
    blocks = re.findall(r"^```bash\n(.*?)^```", card.read_text(), flags=re.DOTALL | re.MULTILINE)
    assert blocks and not any(re.search(r"<[a-z ]+>", block) for block in blocks)
