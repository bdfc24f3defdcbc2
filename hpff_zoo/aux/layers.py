"""Small building blocks shared by the auxiliary networks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .arch import AuxArch


class PatchBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` that can normalise a stack of PFF patches as if each patch ran alone.

    Running an auxiliary once on its n² patches stacked along the batch saves n² - 1 launches
    of every small kernel, but a plain BatchNorm would pool the patches' batch statistics.
    While ``groups`` > 1 (see :func:`patch_groups`), a training-mode forward normalises each
    group of ``batch // groups`` consecutive samples with its own statistics and updates the
    running statistics once per group, in order: the numbers n² separate calls give.
    Parameters and buffers are BatchNorm2d's, so checkpoints do not see the difference.
    """

    groups = 1

    def forward(self, x: Tensor) -> Tensor:
        if self.groups == 1 or not self.training:
            return super().forward(x)
        g, (batch, channels, *spatial) = self.groups, x.shape
        # (g·n, C, ...) -> (n, g·C, ...): one channel per (group, channel), one batch_norm call.
        by_group = x.reshape(g, batch // g, channels, *spatial).transpose(0, 1)
        by_group = by_group.reshape(batch // g, g * channels, *spatial)
        weight = None if self.weight is None else self.weight.repeat(g)
        bias = None if self.bias is None else self.bias.repeat(g)
        # With momentum 1 the kernel leaves each group's batch mean and unbiased variance in
        # these buffers, so the statistics are computed once, by batch_norm itself.
        stats: tuple[Tensor | None, Tensor | None] = (None, None)
        if self.track_running_stats:  # in the running statistics' dtype, as BatchNorm2d keeps them
            like = self.running_mean
            stats = (like.new_zeros(g * channels), like.new_ones(g * channels))
        out = F.batch_norm(by_group, *stats, weight, bias, True, 1.0, self.eps)
        if self.track_running_stats:
            self._track(*stats, g)
        out = out.reshape(batch // g, g, channels, *spatial).transpose(0, 1)
        return out.reshape(x.shape)

    @torch.no_grad()
    def _track(self, means: Tensor, variances: Tensor, groups: int) -> None:
        for mean, var in zip(means.view(groups, -1), variances.view(groups, -1)):
            self.num_batches_tracked += 1
            factor = self.momentum
            if factor is None:  # cumulative moving average, as BatchNorm2d does
                factor = 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
            self.running_var.lerp_(var.to(self.running_var.dtype), factor)


@contextmanager
def patch_groups(module: nn.Module, groups: int) -> Iterator[None]:
    """Within the block, ``module``'s :class:`PatchBatchNorm2d` layers see ``groups`` patches."""
    norms = [m for m in module.modules() if isinstance(m, PatchBatchNorm2d)] if groups > 1 else []
    for norm in norms:
        norm.groups = groups
    try:
        yield
    finally:
        for norm in norms:
            norm.groups = 1


def conv_bn_relu(in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False),
        PatchBatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
    )


def cap_resolution(x: Tensor, max_size: int | None) -> Tensor:
    """``x`` average-pooled to at most ``max_size`` a side (as is if smaller or ``None``).

    Exact multiples use ``avg_pool2d``, the same numbers as ``adaptive_avg_pool2d`` at about
    two thirds of its time on CPU.
    """
    if max_size is None:
        return x
    h, w = x.shape[-2:]
    if h <= max_size and w <= max_size:
        return x
    out = (min(h, max_size), min(w, max_size))
    if h % out[0] == 0 and w % out[1] == 0:
        kernel = (h // out[0], w // out[1])
        return nn.functional.avg_pool2d(x, kernel, kernel)
    return nn.functional.adaptive_avg_pool2d(x, out)


class CapResolution(nn.Module):
    """Average-pool a map down to at most ``max_size`` on each side (no-op if already smaller).

    Pooling first is what makes a cheap auxiliary cheap (DGL's MLP-SR idea): every layer after
    it runs on ``max_size``² positions whatever the module's resolution.
    """

    def __init__(self, max_size: int) -> None:
        super().__init__()
        self.max_size = max_size

    def extra_repr(self) -> str:
        return f"max_size={self.max_size}"

    def forward(self, x: Tensor) -> Tensor:
        return cap_resolution(x, self.max_size)


def patch_pool(arch: AuxArch, grid: int) -> int | None:
    """The side a patch of an n×n grid is pooled to, so the whole map is pooled to ``arch.pool``."""
    return None if arch.pool is None else max(1, -(-arch.pool // grid))


def classifier(
    channels: int,
    size: tuple[int, int],
    num_classes: int,
    arch: AuxArch,
    grid: int,
    width: int,
    first_stride: Callable[[int], int],
) -> nn.Sequential:
    """An image-level classifier head built from ``arch`` (InfoPro's ``NcMf``, DGL's ``cnn``).

    Args:
        channels, size: the module's whole feature map (C, (H, W)).
        grid: the PFF grid the classifier's input is cut into (1: the whole map).
        width: conv channels (the method's rule when ``arch.width`` is ``None``).
        first_stride: stride of the first conv given the whole map's (pooled) side; a rule of
            the whole map, so a patch costs its share of the whole map's FLOPs, no more.
    """
    layers: list[nn.Module] = []
    side = min(size)
    pool = patch_pool(arch, grid)
    if pool is not None:
        layers.append(CapResolution(pool))
        side = min(side, arch.pool)
    in_chs = channels
    for i in range(arch.convs):
        stride = first_stride(side) if i == 0 else 1
        layers.append(conv_bn_relu(in_chs, width, arch.kernel, stride))
        in_chs = width
    layers += [nn.AdaptiveAvgPool2d(arch.head_pool), nn.Flatten()]
    features = in_chs * arch.head_pool**2
    for _ in range(arch.fcs - 1):
        layers += [nn.Linear(features, arch.hidden), nn.ReLU(inplace=True)]
        features = arch.hidden
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)
