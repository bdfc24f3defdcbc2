"""What every auxiliary network shares: its construction spec, its interface, and the registry.

An auxiliary network turns one (patch of a) module's feature map into a scalar local loss. The
training schedule in :mod:`hpff_zoo.local` only ever calls ``aux(feature, target, image)``, so a
new local method is one file in this package that subclasses :class:`AuxNet` and registers
itself with :func:`register_aux`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

__all__ = ["AUX_METHODS", "AuxNet", "AuxSpec", "build_aux", "register_aux"]


@dataclass(frozen=True)
class AuxSpec:
    """Everything an auxiliary network may need to size itself.

    Attributes:
        channels: channels of the feature map it receives.
        size: ``(height, width)`` of the module's whole feature map.
        grid: PFF grid size n: the auxiliary receives n×n patches of the map, one at a time.
        num_classes: number of target classes.
        image_channels: channels of the network input (reconstruction targets).
        mean, std: per-channel normalisation of the input, to undo it for reconstruction.
        depth: position of the module among the supervised ones, 0.0 (first) to 1.0 (last);
            InfoPro interpolates its loss weights along it.
        cascade: True for a HiLo cascade auxiliary, False for a module's independent one.
        hilo: whether the model uses HiLo at all (InfoPro then keeps its independent
            auxiliaries classification-only, as the official HPFF code does).
        next_block: the first block of the next module (shared with the backbone, never to be
            trained through the auxiliary), for methods that look ahead such as MAN.
        tokens: the module outputs a token sequence, seen by auxiliaries as a (B, C, h, w) grid.
        options: method-specific keyword options (e.g. ``{"beta": 0.99}`` for PredSim).
    """

    channels: int
    size: tuple[int, int]
    num_classes: int
    grid: int = 1
    image_channels: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    depth: float = 0.0
    cascade: bool = False
    hilo: bool = False
    next_block: nn.Module | None = field(default=None, repr=False, compare=False)
    tokens: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def patch_size(self) -> tuple[int, int]:
        """Size of the (largest) PFF patch the auxiliary receives."""
        return (-(-self.size[0] // self.grid), -(-self.size[1] // self.grid))


class AuxNet(nn.Module):
    """An auxiliary network: ``forward(feature, target, image) -> scalar loss``.

    ``feature`` is a ``(B, C, h, w)`` patch of a module's output, ``target`` the class labels and
    ``image`` the matching region of ``prepare_image(input)``, passed only to subclasses that
    set ``needs_image``.
    """

    needs_image: ClassVar[bool] = False

    def before_step(self) -> None:
        """Called at the start of every local step, after the previous optimizer update."""

    def prepare_image(self, x: Tensor) -> Tensor:
        """The image patches are cut from, computed once per step (e.g. a downsampled target)."""
        return x

    def forward(self, feature: Tensor, target: Tensor, image: Tensor | None = None) -> Tensor:
        raise NotImplementedError


AUX_METHODS: dict[str, Callable[[AuxSpec], AuxNet]] = {}


def register_aux(name: str) -> Callable[[type[AuxNet]], type[AuxNet]]:
    """Class decorator adding a local method to :data:`AUX_METHODS` under ``name``."""

    def decorator(cls: type[AuxNet]) -> type[AuxNet]:
        AUX_METHODS[name] = cls
        return cls

    return decorator


def build_aux(method: str, spec: AuxSpec) -> AuxNet:
    """Instantiate the auxiliary network of ``method`` for one module."""
    try:
        factory = AUX_METHODS[method]
    except KeyError:
        raise ValueError(
            f"unknown local method {method!r}; choose from {sorted(AUX_METHODS)}"
        ) from None
    return factory(spec)
