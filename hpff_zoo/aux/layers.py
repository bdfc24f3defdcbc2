"""Small building blocks shared by the auxiliary networks."""

from __future__ import annotations

from torch import nn


def conv_bn_relu(in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
    )


def cap_resolution(max_size: int) -> nn.Module:
    """Average-pool a feature map down to at most ``max_size`` on each side (no-op if smaller).

    Auxiliary nets were designed for CIFAR's 32×32 maps; on 224-px backbones this keeps their
    cost a small fraction of the module they supervise.
    """
    return _CapResolution(max_size)


class _CapResolution(nn.Module):
    def __init__(self, max_size: int) -> None:
        super().__init__()
        self.max_size = max_size

    def forward(self, x):
        h, w = x.shape[-2:]
        if h <= self.max_size and w <= self.max_size:
            return x
        return nn.functional.adaptive_avg_pool2d(x, (min(h, self.max_size), min(w, self.max_size)))
