"""The code of the model cards, the README and ``docs/`` runs as written; their links resolve.

Each Python block is executed offline (``HF_HUB_OFFLINE=1``): a card's from a copy of the card's
folder (the plain-timm snippet reads the ``model.safetensors`` next to the card) holding an RGB
``image.png``, so a 1-channel tag's snippet must convert it; the README's one section at a time,
as a reader pasting that section's blocks would, and each ``docs/`` page as a whole. The README
commands marked ``(offline)`` run as written without the Hub; the segmentation smoke line runs
in ``test_seg_smoke.py``. The other shell blocks (training runs: minutes on CPU for the shipped
tags, GPU-days for the paper's) are not executed.
"""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from PIL import Image

from hpff_zoo.models import TAGS, TIMM_BACKBONES

from .hub_helpers import cache_timm_weights, offline_hub
from .recipe_helpers import check, recipe_env

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MODEL_CARDS = ROOT / "model_cards"
CARDS = sorted(MODEL_CARDS.glob("*/README.md"))
DOCS = sorted((ROOT / "docs").glob("*.md"))
RESULTS = sorted((ROOT / "recipes" / "results").rglob("README.md"))
README_SECTIONS = ("Use it from timm", "Pretrained weights and the Hub")  # must hold code
README_MAX_LINES = 300  # a guide read in ten minutes; results and details live in the linked pages
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE)


def section(markdown: str, heading: str) -> str:
    start = markdown.index(f"\n## {heading}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end >= 0 else None]


def headings(markdown: str, level: str = "#+") -> list[str]:
    """Headings outside code blocks (a shell comment in a block is not a heading)."""
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.DOTALL | re.MULTILINE)
    return re.findall(rf"^{level} (.+)$", prose, flags=re.MULTILINE)


def readme_python_sections() -> list[str]:
    text = README.read_text()
    return [h for h in headings(text, "##") if python_blocks(section(text, h))]


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


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
    assert {card.parent.name for card in CARDS} == {*TAGS, *TIMM_BACKBONES}


def _card_param(card: Path):
    """A timm-backbone card builds a 224-px model (minutes on CPU): slow."""
    slow = card.parent.name in TIMM_BACKBONES
    return pytest.param(card, id=card.parent.name, marks=pytest.mark.slow if slow else ())


@pytest.mark.parametrize("card", [_card_param(card) for card in CARDS])
def test_card_code_runs_as_written(card, tmp_path, monkeypatch, offline):
    folder = tmp_path / card.parent.name
    shutil.copytree(card.parent, folder)
    name = card.parent.name
    if name in TIMM_BACKBONES:  # timm's file, from a Hub cache built here (fresh weights)
        offline_hub(monkeypatch, tmp_path)
        cache_timm_weights(tmp_path / "hf-cache", TIMM_BACKBONES[name])
    num_classes = (TAGS[name].dataset.num_classes if name in TAGS
                   else TIMM_BACKBONES[name].timm_cfg["num_classes"])  # fmt: skip
    pixels = torch.randint(0, 256, (40, 48, 3), generator=torch.Generator().manual_seed(0))
    Image.fromarray(pixels.to(torch.uint8).numpy(), mode="RGB").save(folder / "image.png")
    monkeypatch.chdir(folder)

    namespace = run_blocks(python_blocks(card.read_text()), str(card))

    assert namespace["logits"].shape == (1, num_classes)
    if "plain_logits" in namespace:  # same weights, same preprocessing, without hpff_zoo's model
        torch.testing.assert_close(namespace["plain_logits"], namespace["logits"])


def test_readme_is_a_short_guide_whose_timm_sections_hold_code():
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    assert all(python_blocks(section(text, heading)) for heading in README_SECTIONS)


@pytest.mark.parametrize("heading", readme_python_sections())
def test_readme_sections_run_as_written(heading, tmp_path, monkeypatch, offline):
    (tmp_path / "model_cards").symlink_to(MODEL_CARDS)  # paths relative to the repository
    monkeypatch.chdir(tmp_path)
    text = section(README.read_text(), heading)
    run_blocks(python_blocks(text), f"README.md, section {heading!r}")


@pytest.mark.parametrize(
    "page", [p for p in DOCS if python_blocks(p.read_text())], ids=lambda page: page.name
)
def test_docs_code_runs_as_written(page, tmp_path, monkeypatch, offline):
    from accelerate.state import AcceleratorState

    monkeypatch.chdir(tmp_path)
    try:
        run_blocks(python_blocks(page.read_text()), str(page.relative_to(ROOT)))
    finally:  # docs/training.md starts Accelerate, whose state is one per process
        AcceleratorState._reset_state(reset_partial_state=True)


def readme_offline_commands() -> list[str]:
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(), flags=re.DOTALL | re.MULTILINE)
    lines = [line for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("python ") and line.endswith("(offline)")]


def test_readme_shows_an_offline_dry_run():
    assert any("--dry-run" in command for command in readme_offline_commands())


@pytest.mark.parametrize("command", readme_offline_commands())
def test_readme_offline_commands_run_without_the_hub(command, tmp_path):
    args = shlex.split(command, comments=True)
    args[0] = sys.executable
    if "--dry-run" in args:  # writes nothing, but an earlier run's output/ must not matter
        args += ["--output-dir", str(tmp_path / "out")]
    result = subprocess.run(
        args, cwd=ROOT, env=recipe_env(), capture_output=True, text=True, timeout=300
    )
    stdout = check(result)
    assert ("estimate" if "--dry-run" in args else "usage:") in stdout
    assert not (tmp_path / "out").exists()


def link_resolves(page: Path, target: str) -> bool:
    path, _, fragment = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    if not resolved.exists():
        return False
    return not fragment or fragment in map(anchor, headings(resolved.read_text()))


@pytest.mark.parametrize(
    "page", [README, *DOCS, *RESULTS], ids=lambda page: str(page.relative_to(ROOT))
)
def test_markdown_links_resolve(page):
    """Every relative link names a file or folder that exists, and a heading where it has #."""
    relative = [t for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", t)]
    broken = [target for target in relative if not link_resolves(page, target)]  # https: skipped
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"
