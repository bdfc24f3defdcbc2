"""PFF: the auxiliary sees n² patches tiling the feature map once, and its memory really drops."""

from __future__ import annotations

import pytest
import timm
import torch

from hpff_zoo import MemoryMeter
from hpff_zoo.patches import grid_slices

from .helpers import batch


@pytest.mark.parametrize("size,n", [((8, 8), 2), ((7, 5), 2), ((14, 14), 4), ((3, 3), 1)])
def test_grid_tiles_the_map_exactly_once(size, n):
    cover = torch.zeros(size, dtype=torch.int64)
    patches = list(grid_slices(*size, n))
    for rows, cols in patches:
        cover[rows, cols] += 1
    assert len(patches) == n * n
    assert torch.equal(cover, torch.ones_like(cover))


def test_grid_refuses_more_patches_than_positions():
    with pytest.raises(ValueError, match="4x4 patches"):
        list(grid_slices(2, 8, 4))


@pytest.mark.parametrize("n", [1, 2])
def test_aux_sees_n_squared_patches_covering_the_module_output(n):
    # The paper's DGL auxiliary sees the map at full resolution (the cheap one pools it first).
    model = timm.create_model(
        "hpff_resnet32", num_modules=4, method="dgl", hilo=False, pff=n, aux="paper"
    )
    x, y = batch(4)
    seen = []
    aux = model.aux["independent"]["module2"]
    aux.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    model.local_step(x, y)
    with torch.no_grad():
        h = model._run_module(1, model._run_module(0, x))
    assert len(seen) == n * n
    rows = [torch.cat(seen[i * n : (i + 1) * n], dim=3) for i in range(n)]
    torch.testing.assert_close(torch.cat(rows, dim=2), h)


def test_vit_tokens_are_gridded_and_patched():
    model = timm.create_model(
        "hpff_vit_base_patch16_224",
        img_size=64,
        depth=3,
        num_modules=3,
        num_classes=5,
        aux="paper",
    )
    seen = []
    model.aux["independent"]["module1"].register_forward_pre_hook(
        lambda _m, args: seen.append(tuple(args[0].shape))
    )
    x, y = batch(2, resolution=64, classes=5)
    model.local_step(x, y)
    assert seen == [(2, 768, 2, 2)] * 4  # 4×4 token grid, 2×2 PFF patches


def test_pff_lowers_the_auxiliary_peak_memory():
    """Only the auxiliary part, on the same module output.

    Its activations shrink by n²; what remains is the map-sized gradient of the module output,
    which the module's backward needs whatever the grid (1/3 of the pff=1 peak here).
    """
    x, y = batch(64)
    peaks = {}
    for n in (1, 2):
        model = timm.create_model(
            "hpff_resnet32", num_modules=4, hilo=False, pff=n, aux="paper"
        ).train()
        h = model._run_module(0, x).detach()
        aux = model.aux["independent"]["module1"]
        image = aux.prepare_image(x)
        model._aux_gradient(aux, h, y, image, lambda loss: loss.backward())  # allocate .grad
        with MemoryMeter() as meter:
            model._aux_gradient(aux, h, y, image, lambda loss: loss.backward())
        peaks[n] = meter.report.peak_bytes
    print(f"\nauxiliary peak: pff=1 {peaks[1] / 2**20:.2f} MiB, pff=2 {peaks[2] / 2**20:.2f} MiB")
    assert peaks[2] < 0.75 * peaks[1]
