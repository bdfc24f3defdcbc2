"""The three recipes train and evaluate through mmengine's Runner on a tiny Cityscapes copy.

Each recipe (E2E, InfoPro K=4, InfoPro+HPFF K=4) runs mmseg's real pipeline and evaluator, shrunk
only in size (see ``seg_data.tiny_config``): a fresh model's mIoU, a short training run, then
single-scale and multi-scale + flip mIoU of the result. Resuming a run (torch ≥ 2.6 loads
checkpoints ``weights_only``) and the launcher's errors are checked too.
"""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

import pytest

pytest.importorskip("mmseg", reason='segmentation extra not installed: pip install -e ".[seg]"')

from mmengine.runner import Runner

import hpff_zoo.seg  # noqa: F401
from hpff_zoo.seg.config import use_tta

from .seg_data import make_cityscapes, recipe, tiny_config

ITERS = 24


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory) -> Path:
    return make_cityscapes(tmp_path_factory.mktemp("cityscapes"))


def _miou(cfg) -> float:
    return float(Runner.from_cfg(copy.deepcopy(cfg)).test()["mIoU"])


@pytest.mark.parametrize("name", ["e2e", "infopro-k4", "hpff-k4"])
def test_recipe_trains_and_beats_a_fresh_model(name, cityscapes, tmp_path):
    cfg = tiny_config(name, cityscapes, tmp_path / "run", ITERS)
    fresh = _miou(cfg)
    Runner.from_cfg(copy.deepcopy(cfg)).train()
    checkpoint = tmp_path / "run" / f"iter_{ITERS}.pth"
    trained = {}
    for mode in ("ss", "ms-flip"):
        test_cfg = copy.deepcopy(cfg)
        test_cfg.load_from = str(checkpoint)
        test_cfg.work_dir = str(tmp_path / mode)
        use_tta(test_cfg, mode)
        trained[mode] = _miou(test_cfg)
    print(f"\n{name}: mIoU fresh {fresh:.2f}, after {ITERS} iterations {trained}")
    assert trained["ss"] > fresh + 5
    assert trained["ms-flip"] > fresh + 5


def test_local_run_resumes_from_its_checkpoint(cityscapes, tmp_path):
    cfg = tiny_config("hpff-k4", cityscapes, tmp_path, 2)
    Runner.from_cfg(copy.deepcopy(cfg)).train()
    cfg = tiny_config("hpff-k4", cityscapes, tmp_path, 3)
    cfg.resume = True
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 3  # started from iteration 2's checkpoint, optimizer state and all
    assert (tmp_path / "iter_3.pth").exists()


def _launcher():
    path = Path(__file__).resolve().parents[1] / "recipes" / "segmentation.py"
    spec = importlib.util.spec_from_file_location("segmentation_launcher", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launcher_reports_missing_data_with_the_preparation_steps(tmp_path):
    launcher = _launcher()
    args = launcher.parse_args(
        ["train", str(recipe("hpff-k4")), "--data-root", str(tmp_path / "nowhere")]
    )
    with pytest.raises(FileNotFoundError, match=r"train does not exist.*cityscapes\.py"):
        launcher.build_config(args)
    empty = tmp_path / "empty"
    (empty / "leftImg8bit" / "train").mkdir(parents=True)
    args = launcher.parse_args(["train", str(recipe("e2e")), "--data-root", str(empty)])
    with pytest.raises(FileNotFoundError, match=r"holds no \*_leftImg8bit\.png"):
        launcher.build_config(args)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["trian", "x"], "invalid choice: 'trian'; did you mean 'train'?"),
        (["train", "MISSPELT"], r"config: no such file '.*_hpff_k4\.py'; did you mean \S*hpff-k4"),
        (["test", "RECIPE", "work_dirs/none/iter_9.pth"], "checkpoint: no such file"),
        (["train", "RECIPE", "--launcher", "slrum"], "did you mean 'slurm'?"),
    ],
)  # fmt: skip
def test_launcher_mistakes_are_one_line_with_the_closest_names(argv, message, capsys):
    """No usage screen, no FileNotFoundError traceback from inside mmengine's config loader."""
    config = str(recipe("hpff-k4"))
    argv = [{"RECIPE": config, "MISSPELT": config.replace("-k4", "_k4")}.get(a, a) for a in argv]
    with pytest.raises(SystemExit):
        _launcher().parse_args(argv)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert re.search(message, line), line


def test_launcher_builds_each_tta_mode(cityscapes, tmp_path):
    launcher = _launcher()
    checkpoint = tmp_path / "ckpt.pth"
    checkpoint.touch()  # the launcher checks that it exists
    for mode, model in [("ss", "HPFFEncoderDecoder"), ("ms-flip", "SegTTAModel")]:
        args = launcher.parse_args(
            ["test", str(recipe("e2e")), str(checkpoint), "--tta", mode,
             "--data-root", str(cityscapes)]
        )  # fmt: skip
        cfg = launcher.build_config(args)
        assert cfg.model.type == model
        assert cfg.load_from == str(checkpoint)
    flips = [t.prob for t in cfg.test_dataloader.dataset.pipeline[1].transforms[1]]
    assert flips == [0.0, 1.0]
