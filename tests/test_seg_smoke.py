"""The documented CPU smoke run and the launcher's one-line errors, run as a user runs them."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mmseg", reason='segmentation extra not installed: pip install -e ".[seg]"')

from mmengine.config import Config
from mmseg.registry import MODELS

import hpff_zoo.seg  # noqa: F401
from hpff_zoo.seg import PretrainedUnavailableError
from hpff_zoo.seg.config import use_batch_norm
from hpff_zoo.seg.smoke import SMOKE_CHECKPOINTS, SMOKE_ITERS, smoke_checkpoint_dir, use_smoke

from .seg_data import make_cityscapes, recipe

ROOT = Path(__file__).resolve().parents[1]
UNREACHABLE = "http://127.0.0.1:9/resnet101_v1c.pth"  # the discard port: refused at once


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _readme_smoke_command() -> list[str]:
    lines = [
        line
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith("python recipes/segmentation.py train") and "--smoke" in line
    ]
    assert len(lines) == 1, f"expected one smoke command in README.md, found {lines}"
    return shlex.split(lines[0])


# The heaviest default case was this one: the R101 DeepLab-V3 smoke run peaks at about 7 GB of
# RSS and 72 s on 2 cores, and two suites sharing a 24 GB machine were OOM-killed in it
# (2026-12-03). test_seg_train keeps a fast trained case of each method, test_seg_r101 an R101
# step; this README command runs under -m slow.
@pytest.mark.slow
def test_readme_smoke_command_trains_checkpoints_and_validates(tmp_path):
    """The README's line, only the work dir moved to a temporary folder."""
    args = _readme_smoke_command()
    args[0] = sys.executable
    args[args.index("--work-dir") + 1] = str(tmp_path)
    result = _run(args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Iter(train) [4/4]" in output and "mIoU" in output
    assert (smoke_checkpoint_dir(tmp_path) / "iter_4.pth").is_file()
    assert "nan" not in output.split("Iter(train) [4/4]")[1].split("\n")[0]


def test_offline_pretrained_download_is_one_line_with_what_to_do(tmp_path):
    data = make_cityscapes(tmp_path / "data", train=1, val=1)
    result = _run(
        [sys.executable, "recipes/segmentation.py", "train", str(recipe("hpff-k4")),
         "--data-root", str(data), "--work-dir", str(tmp_path / "run"),
         "--cfg-options", f"model.pretrained={UNREACHABLE}"],
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot download the pretrained backbone {UNREACHABLE}")
    assert "--backbone-checkpoint" in last and "model.pretrained=None" in last
    assert "Traceback" not in result.stderr


def test_pretrained_failure_is_a_typed_error_for_runner_users():
    """Users driving mmengine's Runner themselves catch the same error from init_weights."""
    cfg = Config.fromfile(recipe("e2e"))
    cfg.model.pretrained = UNREACHABLE
    cfg.model.backbone.depth = 18
    cfg.model.decode_head.update(in_channels=512, channels=16)
    cfg.model.auxiliary_head.update(in_channels=256, channels=16)
    model = MODELS.build(cfg.model)
    with pytest.raises(PretrainedUnavailableError, match="--backbone-checkpoint"):
        model.init_weights()


def test_smoke_and_data_root_together_is_a_clear_error(tmp_path):
    result = _run(
        [sys.executable, "recipes/segmentation.py", "train", str(recipe("e2e")), "--smoke",
         "--data-root", str(tmp_path)],
        timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--smoke generates its own data: drop --data-root" in result.stderr


def test_use_batch_norm_replaces_every_syncbn():
    cfg = Config.fromfile(recipe("hpff-k4"))
    assert use_batch_norm(cfg) == 3  # backbone, decode head, auxiliary head
    assert "SyncBN" not in str(cfg.model.to_dict())
    assert use_batch_norm(cfg) == 0


@pytest.mark.slow
def test_smoke_run_trains_data_parallel_on_two_cpu_processes(tmp_path):
    """`torchrun --nproc_per_node 2 ... --launcher pytorch --smoke`: gloo, BN, HPFF wrapper."""
    args = _readme_smoke_command()
    args[args.index("--work-dir") + 1] = str(tmp_path)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]  # fmt: skip
    result = _run([*launcher, *args[1:], "--launcher", "pytorch"], timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Iter(train) [4/4]" in output and "mIoU" in output
    assert (smoke_checkpoint_dir(tmp_path) / "iter_4.pth").is_file()


@pytest.mark.slow
def test_smoke_run_starts_from_an_hpff_resnet101_checkpoint(tmp_path):
    """The documented transfer, end to end: an hpff_resnet101 classification checkpoint fills
    every tensor of the recipe's DeepLab backbone (switched to the 7×7-stem ResNet) and trains."""
    import timm
    from safetensors.torch import save_file

    export = tmp_path / "export"
    export.mkdir()
    classifier = timm.create_model("hpff_resnet101", num_classes=19)
    save_file(classifier.state_dict(), str(export / "model.safetensors"))
    args = _readme_smoke_command()
    args[0] = sys.executable
    args[args.index("--work-dir") + 1] = str(tmp_path / "run")
    result = _run([*args, "--backbone-checkpoint", str(export)], timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert re.search(r"HPFFTransfer: loaded (\d+)/\1 backbone tensors", output), output[-4000:]
    assert "model.backbone.type=ResNet" in output
    assert (smoke_checkpoint_dir(tmp_path / "run") / "iter_4.pth").is_file()


def test_smoke_checkpoint_keeps_weights_only(tmp_path):
    """The smoke run's checkpoint leaves out SGD's momentum (it doubled an 800 MB file)."""
    cfg = Config.fromfile(recipe("hpff-k4"))
    cfg.work_dir = str(tmp_path)
    use_smoke(cfg)
    hook = cfg.default_hooks.checkpoint
    assert hook.save_optimizer is False and hook.interval == SMOKE_ITERS
    assert Path(hook.out_dir) == SMOKE_CHECKPOINTS  # not the work dir (400 MB for R101)
