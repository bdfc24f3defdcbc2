"""Test helpers: deterministic batches, and a slow, obviously-correct reference for the
gradients local_step must produce.

Every loss is rebuilt in one ordinary autograd graph starting from a detached module input, so
what reaches module j is exactly what the method prescribes: its own auxiliary losses and, with
HiLo, the cascade loss of every window of k modules that contains it, carried through the modules
of that window and no further.
"""

from __future__ import annotations

import torch

from hpff_zoo.patches import grid_slices


def batch(size: int = 8, channels: int = 3, resolution: int = 32, classes: int = 10):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(size, channels, resolution, resolution, generator=generator)
    y = torch.randint(0, classes, (size,), generator=generator)
    return x, y


def patched_loss(model, aux, h, y, x):
    """The PFF loss in one graph: the average of the auxiliary's loss over the n×n patches of
    the full-resolution map (each patch pooled by the auxiliary itself).

    With ``pff_scope="decoder"`` only the dense losses are patched; the global ones see the
    whole map.
    """
    feature = model._to_map(h)
    n = model.pff
    prepared = aux.prepare_image(x)
    if n == 1 or model.pff_scope == "all":
        return _patch_average(aux, feature, y, prepared, n, "all")
    total = 0
    if aux.global_parts:
        total = total + _patch_average(aux, feature, y, prepared, 1, "global")
    if aux.dense_parts:
        total = total + _patch_average(aux, feature, y, prepared, n, "dense")
    return total


def _patch_average(aux, feature, y, prepared, n, part):
    image_slices = list(grid_slices(*prepared.shape[-2:], n))
    label_slices = list(grid_slices(*y.shape[-2:], n)) if y.dim() >= 3 else None  # label maps
    total = 0
    for i, (rows, cols) in enumerate(grid_slices(*feature.shape[-2:], n)):
        image = prepared[..., image_slices[i][0], image_slices[i][1]] if aux.needs_image else None
        target = y if label_slices is None else y[..., label_slices[i][0], label_slices[i][1]]
        total = total + aux(feature[..., rows, cols], target, image, part) / (n * n)
    return total


def _cascade_loss(model, end, h, y, x):
    """The loss closing the window that ends at module ``end`` (None if no window ends there)."""
    if end == model.num_modules - 1:
        return model.head_loss(h, y)
    if model._has_cascade_aux(end):
        return patched_loss(model, model.aux["cascade"][f"module{end + 1}"], h, y, x)
    return None


def expected_module_gradients(model, x, y):
    """Expected gradient of every module's backbone parameters, module by module."""
    num, k = model.num_modules, model.cascade_size
    w_ind, w_cas = model.hilo_weights if k > 1 else (1.0, 0.0)
    with torch.no_grad():
        inputs = [x]
        for j in range(num - 1):
            inputs.append(model._run_module(j, inputs[-1]))

    expected = []
    for j in range(num):
        params = list(model.module_parameters(j))
        h = model._run_module(j, inputs[j].detach())
        if j == num - 1:
            loss = model.head_loss(h, y)
        else:
            aux = model.aux["independent"][f"module{j + 1}"]
            loss = w_ind * patched_loss(model, aux, h, y, x)
            own_cascade = _cascade_loss(model, j, h, y, x)
            if own_cascade is not None:
                loss = loss + w_cas * own_cascade
        # Windows ending after j that still contain j: ends j+1 .. j+k-1.
        for end in range(j + 1, min(num, j + k)):
            out = h
            for m in range(j + 1, end + 1):
                out = model._run_module(m, out)
            cascade = _cascade_loss(model, end, out, y, x)
            if cascade is not None:
                loss = loss + w_cas * cascade
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        expected.append([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)])
    return expected
