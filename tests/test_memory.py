"""The memory saving is measured, not assumed: peaks of real local steps against E2E."""

from __future__ import annotations

import timm
import torch

from hpff_zoo import MemoryMeter
from hpff_zoo.measure import step_peak_bytes

from .helpers import batch


def test_meter_counts_live_tensors_and_their_release():
    with MemoryMeter() as meter:
        a = torch.ones(1024, 256)  # 1 MiB
        b = torch.ones(1024, 256)  # 2 MiB live
        del a
        c = torch.ones(1024, 512)  # 1 + 2 = 3 MiB live: the peak
        del b, c
        d = torch.ones(1024, 128).view(-1)  # a view allocates nothing more
        d.add_(1)  # nor does an in-place op
    assert meter.report.peak_bytes == 3 * 2**20
    assert meter.report.end_bytes == 2**19


def test_meter_ignores_tensors_that_existed_before():
    weight = torch.randn(512, 512)
    with MemoryMeter() as meter:
        weight.t()  # a view of existing memory
        weight.mul_(2)
    assert meter.report.peak_bytes == 0


def test_resnet110_k55_local_step_needs_a_fraction_of_e2e_memory():
    x, y = batch(32)
    e2e = step_peak_bytes(timm.create_model("hpff_resnet110", method="e2e"), x, y)
    hpff = step_peak_bytes(timm.create_model("hpff_resnet110"), x, y)
    plain = step_peak_bytes(timm.create_model("hpff_resnet110", hilo=False, pff=1), x, y)
    print(
        f"\nResNet-110 K=55 bs32 peak: E2E {e2e / 2**20:.1f} MiB, InfoPro {plain / 2**20:.1f} "
        f"MiB ({plain / e2e:.3f}), InfoPro+HPFF {hpff / 2**20:.1f} MiB ({hpff / e2e:.3f})"
    )
    assert hpff < 0.22 * e2e
    assert plain < 0.22 * e2e


def test_pff_lowers_the_peak_of_resnet32_k16_infopro():
    x, y = batch(32)
    peaks = {
        (hilo, pff): step_peak_bytes(
            timm.create_model("hpff_resnet32", hilo=hilo, pff=pff, aux="paper"), x, y
        )
        for hilo in (False, 2)
        for pff in (1, 2)
    }
    e2e = step_peak_bytes(timm.create_model("hpff_resnet32", method="e2e"), x, y)
    print("\nResNet-32 K=16 bs32 peak / E2E:", {k: round(v / e2e, 3) for k, v in peaks.items()})
    assert peaks[(2, 2)] < peaks[(2, 1)]  # InfoPro+HPFF below InfoPro+HiLo without PFF
    assert peaks[(False, 2)] < peaks[(False, 1)]  # and PFF alone below plain InfoPro
    assert peaks[(2, 2)] < 0.60 * e2e


def test_cpu_heap_is_trimmed_after_every_nth_module_release_and_the_last(monkeypatch):
    from hpff_zoo import cpu_heap

    model = timm.create_model("hpff_resnet32", num_classes=10, num_modules=8)
    x, y = batch(4)
    trims = []
    monkeypatch.setattr(cpu_heap, "trim", lambda: trims.append(1))
    # 7 modules release their graphs: n = 4 trims after the 4th and the 7th, n = 8 after the 7th.
    for every, expected in ((0, 0), (1, 7), (4, 2), (7, 1), (8, 1)):
        trims.clear()
        model.trim_cpu_heap = every
        model.local_step(x, y)
        assert len(trims) == expected, every
