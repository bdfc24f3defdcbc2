"""Fashion-MNIST scenes: the generated set, and one iteration of each method through the recipe.

The transfer measurement (issue 25) runs these configs in full; here a tiny version of the set
(8 train, 2 val scenes) checks that each method trains from its shipped checkpoint through
``recipes/segmentation.py`` and validates, and that the flip test mode runs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mmseg", reason='segmentation extra not installed: pip install -e ".[seg]"')

from hpff_zoo.data.formats import DatasetError
from hpff_zoo.seg import CifarResNetBackbone, report
from hpff_zoo.seg.fmnist_scenes import THRESHOLD, compose_scene, default_source, write_scenes

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "segmentation"
CHECKPOINTS = {
    "e2e": "hpff_resnet32.fmnist_e2e",
    "infopro-k4": "hpff_resnet32.fmnist_infopro_k16",
    "hpff-k4": "hpff_resnet32.fmnist_infopro_k16_hpff",
}
needs_fmnist = pytest.mark.skipif(
    not default_source().is_dir(), reason=f"Fashion-MNIST not installed at {default_source()}"
)


def _config(method: str) -> Path:
    return CONFIGS / f"deeplabv3_resnet32_fmnist-scenes-64_{method}.py"


def _launcher():
    path = CONFIGS.parent / "segmentation.py"
    spec = importlib.util.spec_from_file_location("seg_launcher", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scene_labels_are_the_pasted_items_own_pixels():
    rng = np.random.default_rng(0)
    items = np.zeros((3, 28, 28), np.uint8)
    items[:, 4:24, 8:20] = [[[200]], [[THRESHOLD + 1]], [[THRESHOLD]]]  # the last is too faint
    image, labels = compose_scene(rng, items, np.array([4, 7, 9]), 64, (6, 6))
    assert image.shape == labels.shape == (64, 64)
    assert set(np.unique(labels)) <= {0, 5, 8}  # class + 1; item 2 never labels a pixel
    np.testing.assert_array_equal(labels > 0, image > THRESHOLD)
    with pytest.raises(ValueError, match="smaller than an item"):
        compose_scene(rng, items, np.array([4, 7, 9]), 20, (1, 1))


@needs_fmnist
def test_scenes_are_deterministic_and_a_folder_of_other_scenes_is_refused(tmp_path):
    params = dict(fmnist_split="test", num_images=3, canvas=56, items=(2, 3), seed=5)
    for name in ("a", "b"):
        write_scenes(tmp_path / name / "img", tmp_path / name / "ann", **params)
    for kind in ("img", "ann"):
        for path in sorted((tmp_path / "a" / kind).glob("*.png")):
            assert path.read_bytes() == (tmp_path / "b" / kind / path.name).read_bytes()
    write_scenes(tmp_path / "c" / "img", tmp_path / "c" / "ann", **dict(params, seed=6))
    first = [(tmp_path / name / "ann" / "00000.png").read_bytes() for name in ("a", "c")]
    assert first[0] != first[1]
    with pytest.raises(DatasetError, match="use another data_root"):
        write_scenes(tmp_path / "a" / "img", tmp_path / "a" / "ann", **dict(params, seed=6))


def test_cifar_backbone_needs_the_last_stage():
    with pytest.raises(ValueError, match="must end with the last stage"):
        CifarResNetBackbone(out_indices=(0, 1))


@needs_fmnist
@pytest.mark.parametrize("method", list(CHECKPOINTS))
def test_one_iteration_of_each_method_from_its_shipped_checkpoint(method, tmp_path):
    """Train one iteration from the shipped K=16 (or E2E) backbone, validate, log step memory."""
    work = tmp_path / "run"
    tiny = [
        "train_dataloader.dataset.scenes.num_images=8",
        "val_dataloader.dataset.scenes.num_images=2",
        "test_dataloader.dataset.scenes.num_images=2",
        "train_cfg.max_iters=2",
        "train_cfg.val_interval=2",
        "default_hooks.checkpoint.interval=2",
        "custom_hooks.0.iteration=1",
    ]
    launcher = _launcher()
    launcher.main(
        ["train", str(_config(method)), "--data-root", str(tmp_path / "data"), "--work-dir",
         str(work), "--backbone-checkpoint", str(ROOT / "model_cards" / CHECKPOINTS[method]),
         "--cfg-options", *tiny]
    )  # fmt: skip
    log = next(work.glob("*/*.log")).read_text()
    assert "HPFFTransfer: loaded 198/198 backbone tensors" in log
    memory = json.loads((work / "step_memory.json").read_text())
    assert memory["peak_mib"] > 0 and memory["batch_size"] == 8
    # mmengine's visualizer is a process-wide singleton (its scalars.json stays in the first
    # run's folder), so the validation is read from this run's own log.
    miou = re.findall(r"Iter\(val\) \[2/2\].*mIoU: ([\d.]+)", log)
    assert len(miou) == 1 and math.isfinite(float(miou[0]))
    if method == "e2e":  # the flip test mode on the trained checkpoint
        metrics = launcher.main(
            ["test", str(_config(method)), str(work / "iter_2.pth"), "--tta", "flip",
             "--data-root", str(tmp_path / "data"), "--work-dir", str(tmp_path / "test"),
             "--cfg-options", *tiny]
        )  # fmt: skip
        assert math.isfinite(metrics["mIoU"])


def test_report_reads_each_figure_from_the_file_the_run_wrote(tmp_path, capsys):
    run = tmp_path / "e2e-scratch"
    (run / "20261204_000000" / "vis_data").mkdir(parents=True)
    scalars = [
        dict(loss=0.9, time=0.4, step=25),
        dict(loss=0.7, time=0.5, step=50),
        dict(mIoU=31.5, aAcc=80.0, step=50),
        dict(loss=0.6, time=0.5, step=60),
        dict(mIoU=35.25, aAcc=86.0, step=60),
    ]
    lines = "\n".join(json.dumps(s) for s in scalars) + "\n"
    (run / "20261204_000000" / "vis_data" / "scalars.json").write_text(lines)
    (run / "step_memory.json").write_text(json.dumps(dict(peak_mib=12.5)))
    (run / "test_flip" / "20261204_010000").mkdir(parents=True)
    (run / "test_flip" / "20261204_010000" / "20261204_010000.json").write_text('{"mIoU": 36.0}')
    (reports,) = report.main([str(run), "--out", str(tmp_path / "out")])
    assert (reports.miou, reports.miou_flip, reports.step_peak_mib) == (35.25, 36.0, 12.5)
    assert reports.val_miou == [(50, 31.5), (60, 35.25)]
    assert reports.train_seconds == pytest.approx(0.4 * 25 + 0.5 * 25 + 0.5 * 10)
    row = "| e2e-scratch | 35.25 | 36.00 | 31.5 @50, 35.2 @60 | 12.5 | 0.5 |"
    assert row in (tmp_path / "out" / "report.md").read_text() and row in capsys.readouterr().out
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "missing")])
    assert "not a work dir" in capsys.readouterr().err


def test_report_reads_a_resumed_run_whole(tmp_path):
    """A run stopped after iteration 75 and resumed from its iteration-50 checkpoint: the
    second session's scalars supersede the first's from step 75 on, each iteration counted once."""
    run = tmp_path / "hpff-k4-scratch"
    sessions = {
        "20261206_230000": [
            dict(loss=0.9, time=0.4, step=25),
            dict(loss=0.7, time=0.4, step=50),
            dict(mIoU=31.5, step=50),
            dict(loss=0.65, time=0.4, step=75),  # re-trained after the resume
        ],
        "20261207_010000": [
            dict(loss=0.6, time=0.3, step=75),
            dict(loss=0.5, time=0.3, step=100),
            dict(mIoU=40.0, step=100),
        ],
    }
    for stamp, scalars in sessions.items():
        (run / stamp / "vis_data").mkdir(parents=True)
        lines = "\n".join(json.dumps(s) for s in scalars) + "\n"
        (run / stamp / "vis_data" / "scalars.json").write_text(lines)
    reports = report.read_run(run)
    assert reports.val_miou == [(50, 31.5), (100, 40.0)]
    assert reports.loss == [(25, 0.9), (50, 0.7), (75, 0.6), (100, 0.5)]
    assert reports.train_seconds == pytest.approx(0.4 * 50 + 0.3 * 50)


def test_schedule_table_lines_up_reports_by_their_schedule_length(tmp_path, capsys):
    """Files in any order; a run missing from the shorter schedule gets a dash and no gain, one
    missing from the longest gets its own last doubling's gain, marked with its schedule."""

    def write(name: str, schedule: int, mious: dict) -> str:
        records = [dict(name=n, val_miou=[[schedule // 2, 1.0], [schedule, m]], miou=m)
                   for n, m in mious.items()]  # fmt: skip
        (tmp_path / name).write_text(json.dumps(records))
        return str(tmp_path / name)

    long = write("report.json", 19200, {"e2e-scratch": 69.85, "hpff-k4-scratch": 67.90})
    mid = write(
        "report-9600.json",
        9600,
        {"e2e-scratch": 68.19, "hpff-k4-scratch": 66.22, "infopro-k4-scratch": 66.99},
    )
    short = write("report-4800.json", 4800, {"e2e-scratch": 64.94, "infopro-k4-scratch": 64.23})
    report.main(["--schedules", long, short, mid])
    out = capsys.readouterr().out
    assert "| run | 4,800 | 9,600 | 19,200 | gain of the last doubling |" in out
    assert "| e2e-scratch | 64.94 | 68.19 | 69.85 | +1.66 |" in out
    assert "| hpff-k4-scratch | – | 66.22 | 67.90 | +1.68 |" in out
    assert "| infopro-k4-scratch | 64.23 | 66.99 | – | +2.76 at 9,600 |" in out
    with pytest.raises(SystemExit):
        report.main([long, "--schedules", short])
    assert "not both or neither" in capsys.readouterr().err
