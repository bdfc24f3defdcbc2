"""The recipes' own DeepLab-V3 R101-D8 (ResNet-101, dilated, ASPP), only the crop reduced for CPU.

The tiny test configs shrink the backbone; what only shows at the real depth and with real
batches (images the random resize left smaller than the crop, padded with the ignore label) is
checked here on two images.
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("mmseg", reason='segmentation extra not installed: pip install -e ".[seg]"')

import torch
from mmengine.optim import OptimWrapper

import hpff_zoo.seg  # noqa: F401

from .seg_data import peak_training_bytes, r101_model, raw_batch

CROP = (128, 256)


def test_r101_hpff_step_is_finite_on_images_padded_to_the_crop():
    """Two 64×128 images padded to the 128×256 crop: three of the four PFF label patches hold
    only the ignore label (issue 17: module1-3 loss_local = nan on step 1). Each module's local
    loss, the heads' losses and every weight after the step must be finite."""
    model = r101_model("hpff-k4", CROP).train()
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    logs = model.train_step(raw_batch((64, 128)), wrapper)
    assert {"module1.loss_local", "module2.loss_local", "module3.loss_local"} <= set(logs)
    bad = {k: float(v) for k, v in logs.items() if not math.isfinite(float(v))}
    assert not bad, f"non-finite losses: {bad}"
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("crop", [CROP, (256, 512)], ids=lambda c: f"{c[0]}x{c[1]}")
def test_r101_peak_training_memory_e2e_infopro_hpff(crop):
    """Peak memory of one steady training step, E2E vs InfoPro K4 vs InfoPro+HPFF K4.

    ``python -m pytest tests/test_seg_r101.py -m slow -s`` prints the figures (MemoryMeter:
    bytes allocated by the step beyond parameters and the batch; on CPU, or CUDA if used).
    """
    data = raw_batch(crop)
    peaks = {}
    for name in ("e2e", "infopro-k4", "hpff-k4"):
        peaks[name] = peak_training_bytes(r101_model(name, crop), data)
    print(
        f"\nDeepLab-V3 R101-D8, crop {crop[0]}x{crop[1]}, batch 2, peak training memory (MiB): "
        + ", ".join(f"{k} {v / 2**20:.1f} ({v / peaks['e2e']:.3f})" for k, v in peaks.items())
    )
    assert peaks["hpff-k4"] < peaks["e2e"]
    assert peaks["infopro-k4"] < peaks["e2e"]
