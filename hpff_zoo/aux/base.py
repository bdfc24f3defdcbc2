"""What every auxiliary network shares: its construction spec, its interface, and the registry.

An auxiliary network turns one (patch of a) module's feature map into a scalar local loss. The
training schedule in :mod:`hpff_zoo.streamed` only ever calls ``aux(feature, target, image, part)``,
so a new local method is one file in this package that subclasses :class:`AuxNet` and registers
itself with :func:`register_aux`.

Its losses come in two kinds, because PFF may patch one and not the other: *global* losses
predict one thing per image (a class), *dense* ones one thing per position (a reconstructed
pixel, a per-pixel class). With ``pff_scope="decoder"`` (the official HPFF code) only dense
losses see PFF patches and global ones see the whole map; with ``"all"`` both see patches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from torch import Tensor, nn

from .arch import AuxArch

if TYPE_CHECKING:
    from ..partition import Partition

__all__ = [
    "AUX_METHODS",
    "AUX_OPTIONS",
    "PFF_SCOPES",
    "UNBUDGETED_METHODS",
    "AuxNet",
    "AuxSpec",
    "LossPart",
    "build_aux",
    "register_aux",
]

PFF_SCOPES = ("decoder", "all")
LossPart = Literal["all", "global", "dense"]


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
        partition: the backbone's partition, and ``module_index`` the (0-based) module this
            auxiliary supervises, for methods that copy later backbone atoms (AugLocal, MLAAN).
        tokens: the module outputs a token sequence, seen by auxiliaries as a (B, C, h, w) grid.
        options: method-specific keyword options (e.g. ``{"beta": 0.99}`` for PredSim).
        arch: the auxiliary architecture (see :mod:`hpff_zoo.aux.arch`).
        pff_scope: which losses see PFF patches: ``"decoder"`` (dense losses only) or ``"all"``.
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
    partition: Partition | None = field(default=None, repr=False, compare=False)
    module_index: int = 0
    tokens: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    arch: AuxArch = field(default_factory=AuxArch)
    pff_scope: str = "all"

    @property
    def global_grid(self) -> int:
        """The PFF grid that global (image-level) losses see: 1 unless the scope is ``"all"``."""
        return self.grid if self.pff_scope == "all" else 1


class AuxNet(nn.Module):
    """An auxiliary network: ``forward(feature, target, image, part) -> scalar loss``.

    ``feature`` is a ``(B, C, h, w)`` patch of a module's output, ``target`` the class labels (or
    the matching patch of a label map) and ``image`` the matching region of
    ``prepare_image(input)``, passed only to subclasses that set ``needs_image``. ``part`` asks
    for the ``"global"`` losses, the ``"dense"`` ones or ``"all"``; :attr:`global_parts` and
    :attr:`dense_parts` say which the network has.
    """

    needs_image: ClassVar[bool] = False
    # True where before_step reads live backbone weights (MAN's and MLAAN's EMA copies): such an
    # auxiliary must live in the process that holds those weights.
    follows_backbone: ClassVar[bool] = False
    # Which kinds of loss it has (instance attributes where they depend on the spec). No
    # annotations: TorchScript, scripting a model's inference path, would read them as fields.
    global_parts = True
    dense_parts = False
    pool = None  # the side the whole map is pooled to first (AuxArch.pool), if any
    # True where the loss of a stack of equal patches is the mean of their losses (a per-sample
    # mean) and every BatchNorm is a PatchBatchNorm2d, so the patches may run as one batch.
    stacks_patches = False

    @property
    def image_key(self) -> Any:
        """Auxiliaries with equal keys share one ``prepare_image`` result per step."""
        return None

    def map_side(self, part: LossPart) -> int | None:
        """The side a module's whole map is average-pooled to before ``part``'s patches are cut.

        The schedule pools once per map rather than once per patch (average pooling and tiling
        commute); ``None``: the patches come from the map at its own resolution.
        """
        return self.pool

    def before_step(self) -> None:
        """Called at the start of every local step, after the previous optimizer update."""

    def prepare_image(self, x: Tensor) -> Tensor:
        """The image patches are cut from, computed once per step (e.g. a downsampled target)."""
        return x

    def forward(
        self,
        feature: Tensor,
        target: Tensor,
        image: Tensor | None = None,
        part: LossPart = "all",
    ) -> Tensor:
        raise NotImplementedError


AUX_METHODS: dict[str, Callable[[AuxSpec], AuxNet]] = {}
# The ``AuxSpec.options`` keys each method's auxiliaries read: LocalModel refuses any other, which
# would otherwise be ignored without a word (a misspelt ``lambda`` trains with the defaults).
AUX_OPTIONS: dict[str, tuple[str, ...]] = {}
# Methods whose auxiliaries hold copies of backbone blocks: the copies are the method, not a
# size the default budget should trim (an explicit ``aux_budget`` still applies).
UNBUDGETED_METHODS: set[str] = set()
Factory = TypeVar("Factory", bound=Callable[[AuxSpec], AuxNet])


def register_aux(
    name: str, default_budget: bool = True, options: tuple[str, ...] = ()
) -> Callable[[Factory], Factory]:
    """Decorator adding a local method to :data:`AUX_METHODS` under ``name``: an
    :class:`AuxNet` subclass, or a function of the spec where a method builds different
    networks for different levels (MLAAN). ``default_budget=False`` lists it in
    :data:`UNBUDGETED_METHODS`; ``options`` are the ``spec.options`` keys it reads
    (:data:`AUX_OPTIONS`)."""

    def decorator(factory: Factory) -> Factory:
        AUX_METHODS[name] = factory
        AUX_OPTIONS[name] = options
        if not default_budget:
            UNBUDGETED_METHODS.add(name)
        return factory

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
