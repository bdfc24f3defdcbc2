"""Small building blocks shared by the auxiliary networks."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .arch import AuxArch


def conv_bn_relu(in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_chs),
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
