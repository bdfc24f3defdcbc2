"""Running the recipes and CLIs as a user does: separate processes on the embedded data."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
QUICK = ["--report-to", "none", "--workers", "0", "--checkpoint-every-epochs", "0"]


def recipe_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", **extra)
    return env


def run_recipe(script: str, *args: str, launcher=(), timeout: int = 900, env=None):
    command = [*launcher] if launcher else [sys.executable]
    result = subprocess.run(
        [*command, str(RECIPES / script), *args],
        cwd=ROOT, env=env or recipe_env(), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return result


def check(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def epochs(output: Path) -> list[dict]:
    lines = (output / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "epoch"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_module(module: str, *args: str, env=None, timeout: int = 300):
    """``python -m module args`` from the repository root, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT, env=env or recipe_env(), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The error a failed command printed; it must be one line, without a traceback."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def image_folder(root: Path, size: int, per_class: int = 8) -> Path:
    """``root/{train,test}/{a,b}/<i>.png``: two classes of random ``size``-px grey images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root
