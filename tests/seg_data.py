"""A tiny Cityscapes-format dataset and a tiny DeepLab-V3 config for the segmentation tests.

Scenes are learnable in a few iterations: every image is a few axis-aligned regions, each of a
class with its own base colour (plus noise), so colour decides the class; mmseg's real pipeline
(random resize, crop, flip, photometric distortion) still runs on them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mmengine.config import Config

from hpff_zoo.seg import smoke

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "segmentation"
IMAGE_SIZE = (128, 256)  # height, width
CROP = (64, 128)


def recipe(name: str) -> Path:
    return RECIPES / f"deeplabv3_r101-d8_cityscapes-512x1024_40k_{name}.py"


def make_cityscapes(root: Path, train: int = 8, val: int = 3, seed: int = 0) -> Path:
    """The smoke run's generated Cityscapes (:mod:`hpff_zoo.seg.smoke`) at 128×256."""
    return smoke.make_cityscapes(root, {"train": train, "val": val}, IMAGE_SIZE, seed)


def tiny_config(name: str, data_root: Path, work_dir: Path, iters: int, **model) -> Config:
    """The recipe ``name`` shrunk for CPU tests: ResNetV1c-18 at 1/8 width, a 64×128 crop.

    Only sizes change (depth, widths, crop, image scale, schedule length, workers); the model
    type, method, heads, losses, pipelines and TTA are the recipe's.
    """
    cfg = Config.fromfile(recipe(name))
    cfg.work_dir = str(work_dir)
    cfg.model.pretrained = None
    cfg.model.update(model)
    cfg.model.data_preprocessor.size = CROP
    cfg.model.backbone.update(depth=18, stem_channels=16, base_channels=8)
    cfg.model.decode_head.update(in_channels=64, channels=16)
    cfg.model.auxiliary_head.update(in_channels=32, channels=16)
    scale = IMAGE_SIZE[::-1]
    cfg.train_pipeline[2].scale = scale
    cfg.train_pipeline[3].crop_size = CROP
    cfg.test_pipeline[1].scale = scale
    cfg.train_dataloader.update(batch_size=4, num_workers=0, persistent_workers=False)
    cfg.train_dataloader.dataset.pipeline = cfg.train_pipeline
    for loader in ("val_dataloader", "test_dataloader"):
        cfg[loader].update(num_workers=0, persistent_workers=False)
        cfg[loader].dataset.pipeline = cfg.test_pipeline
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[loader].dataset.data_root = str(data_root)
    cfg.optim_wrapper.optimizer.lr = 0.05
    cfg.param_scheduler[0].end = iters
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=iters + 1)
    cfg.default_hooks.checkpoint.interval = iters
    cfg.default_hooks.logger.interval = max(1, iters // 2)
    cfg.env_cfg.mp_cfg.opencv_num_threads = 1
    cfg.randomness = dict(seed=0)  # the same run every time: no flaky thresholds
    cfg.log_level = "WARNING"
    return cfg


def tiny_model(name: str, **model):
    """The tiny recipe's segmentor, built without a runner (unit tests)."""
    from mmseg.registry import MODELS

    cfg = tiny_config(name, Path("unused"), Path("unused"), 1, **model)
    return MODELS.build(cfg.model)


def tiny_batch(size: int = 4, seed: int = 0):
    """Normalised images ``(B, 3, 64, 128)``, label maps ``(B, 64, 128)`` and data samples."""
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    rng = np.random.default_rng(seed)
    scenes = [smoke.scene(rng, IMAGE_SIZE) for _ in range(size)]
    images = torch.tensor(np.stack([s[0][: CROP[0], : CROP[1]] for s in scenes]))
    labels = torch.tensor(np.stack([s[1][: CROP[0], : CROP[1]] for s in scenes])).long()
    labels[:, :4] = 255  # an ignored band, like crop padding
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    inputs = (images.permute(0, 3, 1, 2).float() - mean) / std
    samples = [
        SegDataSample(gt_sem_seg=PixelData(data=label[None]), metainfo={"img_shape": CROP})
        for label in labels
    ]
    return inputs, labels, samples


def r101_model(name: str, crop: tuple[int, int]):
    """The recipe ``name``'s own DeepLab-V3 R101-D8, only the crop reduced and no download."""
    from mmseg.registry import MODELS

    cfg = Config.fromfile(recipe(name))
    cfg.model.pretrained = None
    cfg.model.data_preprocessor.size = crop
    return MODELS.build(cfg.model)


def raw_batch(size: tuple[int, int], count: int = 2, classes: int = 19, seed: int = 0) -> dict:
    """``train_step`` input as a dataloader gives it: uint8 images, random label maps.

    Images smaller than the model's crop are padded by its data preprocessor (label 255), as
    mmseg pads any training image the random resize left smaller than the crop.
    """
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    generator = torch.Generator().manual_seed(seed)
    inputs = [
        torch.randint(0, 256, (3, *size), generator=generator, dtype=torch.uint8)
        for _ in range(count)
    ]
    samples = [
        SegDataSample(
            gt_sem_seg=PixelData(data=torch.randint(0, classes, (1, *size), generator=generator)),
            metainfo={"img_shape": size, "ori_shape": size},
        )
        for _ in range(count)
    ]
    return {"inputs": inputs, "data_samples": samples}


def peak_training_bytes(model, data: dict) -> int:
    """Bytes one steady training step allocates (the first step is run unmeasured)."""
    import torch
    from mmengine.optim import OptimWrapper

    from hpff_zoo import MemoryMeter

    model.train()
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    model.train_step(data, wrapper)  # first step allocates what persists; measure a steady one
    with MemoryMeter() as meter:
        model.train_step(data, wrapper)
    return meter.report.peak_bytes
