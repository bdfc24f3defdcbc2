"""AugLocal auxiliary network (Ma et al., "Scaling Supervised Local Learning with Augmented
Auxiliary Networks", ICLR 2024; official code ChenxiangMA/AugLocal).

A small hand-designed auxiliary sees only what its module computes; AugLocal instead builds module
j's auxiliary from the backbone's own *later* layers, so that the local loss judges the module's
features the way the rest of the network will use them. Module j (ending at atom a of N) gets
d_j of the atoms after it, sampled uniformly and always ending with the last one: atom indices
``round(a + (N − 1 − a) / d_j · i)`` for i = 1..d_j, or every later atom where there are no more
than d_j. The depth shrinks linearly towards the output ("pyramidal"):
``d_j = max(1, round(d · (1 − τ r) + τ r))`` with r = j / (K − 2) the module's relative depth, so
the first auxiliary has d layers and the last about ``d (1 − τ) + τ``. The copies are the
auxiliary's own parameters (deep copies, trained by the local loss only; the backbone's layers
are never trained through them). A global average pool and a linear classifier with
cross-entropy follow (the ``"paper"`` preset: d = 3, τ = 0.5).

What the official code does and where this implementation departs from it (the paper's text is
not in this repository's offline sources; where the code and the paper's summary in the issue
differ, the code is followed, except as listed):

- *Copies, not fresh layers.* The official code does not copy the sampled layers: it builds new,
  randomly initialised BasicBlocks of the sampled layers' widths (its own ResNet class; it
  asserts 16/32/64 channels and 32/96-px images), gives the first block after each channel
  increase stride 2 and the incoming channel count, and adds a 1×1 downsampling shortcut. Here
  the auxiliary holds deep copies of the backbone's own atoms, taken when the model is built, so
  any timm backbone works (a pretrained one lends its weights to the copies as well). Where a
  copy expects another shape than the one before it delivers (a skipped stage transition), a
  *bridge* adapts it: average pooling by the spatial factor, then a 1×1 convolution and
  BatchNorm to the expected channels. The official construction folds the same adaptation into
  the block's first convolution.
- The official head adds a BatchNorm1d before the linear layer when d_j ≤ 1; the head here is
  the architecture's classifier (``AuxArch``: pool, linear) whatever the depth.
- The official ``round`` is Python's (ties to even) on the same expression, kept here, so the
  sampled atoms match its tables for ResNet-32 K=16 and ResNet-110 K=55.
- The official script has no HiLo and no PFF; here they are the library's plug-ins (the
  ``hpff_*`` models turn both on by default; ``hilo=False, pff=1`` is AugLocal as published).
  A budget (``aux_budget``) pools the map before the copies and then drops copies.

Gradient isolation: the loss of module j's auxiliary reaches module j only (and, with HiLo, the
modules of its cascade window); the copies share no parameter with the backbone.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch.nn.functional as F
from torch import Tensor, nn

from .arch import AuxArch
from .base import AuxNet, AuxSpec, LossPart, register_aux
from .layers import CapResolution, classifier, patch_pool
from .man import through


@dataclass(frozen=True)
class LaterAtom:
    """One backbone atom after a module: its live module and its (batch-free) shapes."""

    index: int
    module: nn.Module | None
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


def later_atoms(spec: AuxSpec) -> list[LaterAtom]:
    """The backbone's atoms after module ``spec.module_index``, in order, with their shapes."""
    partition = spec.partition
    if partition is None:
        raise ValueError(
            "this method copies the backbone's later atoms and needs AuxSpec.partition "
            "(build it through LocalModel / timm.create_model('hpff_...'))"
        )
    start = partition.starts[spec.module_index + 1]
    shapes = [c.output_shape[1:] for c in partition.costs]
    return [
        LaterAtom(i, partition.atoms[i].as_module(), shapes[i - 1], shapes[i])
        for i in range(start, len(partition.atoms))
    ]


def spread(last: int, available: int, depth: int) -> list[int]:
    """AugLocal's uniform sample: ``depth`` of the ``available`` indices after ``last``.

    The last index is always among them; with ``depth >= available`` all are.
    """
    if depth >= available:
        return list(range(last + 1, last + available + 1))
    return [round(last + available / depth * i) for i in range(1, depth + 1)]


def auglocal_depth(arch: AuxArch, relative_depth: float) -> int:
    """d_j: ``arch.copies`` at the first module, shrinking pyramidally by ``arch.pyramid``.

    ``copies=None`` copies nothing: the auxiliary is its classifier alone (the cheap linear
    probe HiLo's independent level gets, whose gradient enters the backbone at weight 0.001).
    """
    if arch.copies is None:
        return 0
    shrink = arch.pyramid * relative_depth
    return max(1, round(arch.copies * (1 - shrink) + shrink))


class Bridge(nn.Module):
    """Adapts a map to the shape a copied atom expects: pool by ``factor``, 1×1 conv + BN.

    ``factor`` is the whole map's spatial reduction; a PFF patch or a pooled map is reduced by
    the same factor (rounded up), so the bridge works at any input size.
    """

    def __init__(self, in_chs: int, out_chs: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.project = None
        if in_chs != out_chs:
            self.project = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, bias=False), nn.BatchNorm2d(out_chs)
            )

    def extra_repr(self) -> str:
        return f"factor={self.factor}"

    def forward(self, x: Tensor) -> Tensor:
        if self.factor > 1:
            h, w = x.shape[-2:]
            x = F.adaptive_avg_pool2d(x, (math.ceil(h / self.factor), math.ceil(w / self.factor)))
        return x if self.project is None else self.project(x)


def _bridge(have: tuple[int, ...], want: tuple[int, ...], atom: LaterAtom) -> Bridge:
    if len(have) != 3 or len(want) != 3:
        raise ValueError(
            f"cannot bridge a {have} output to atom {atom.index}, which takes {want}: copied "
            "token blocks must follow blocks of the same shape"
        )
    (c_in, h_in, w_in), (c_out, h_out, w_out) = have, want
    factor = h_in // h_out if h_out else 0
    if not factor or h_in != factor * h_out or w_in != factor * w_out:
        raise ValueError(
            f"cannot bridge a {h_in}x{w_in} map to atom {atom.index}, which takes "
            f"{h_out}x{w_out}: only whole-factor downsampling is supported"
        )
    return Bridge(c_in, c_out, factor)


class CopiedAtoms(nn.Module):
    """Deep copies of backbone atoms applied in order to a ``(B, C, h, w)`` map.

    Args:
        atoms: the atoms to copy.
        start_shape: shape (batch-free, as the partition measured it) of what the first copy
            receives.
        tokens: the atoms take token sequences (the map is re-tokenised for each).
        bridge: put a :class:`Bridge` where a copy expects another shape; without it a
            mismatch is an error (the caller chose a chain whose shapes follow on).
    """

    def __init__(
        self,
        atoms: Sequence[LaterAtom],
        start_shape: tuple[int, ...],
        tokens: bool,
        bridge: bool,
    ) -> None:
        super().__init__()
        self.tokens = tokens
        self.indices = tuple(atom.index for atom in atoms)  # the backbone atoms copied
        layers: list[nn.Module] = []
        self.copied: list[bool] = []  # per layer: a copied atom (True) or a bridge
        shape = start_shape
        for atom in atoms:
            if atom.module is None:
                raise ValueError(f"atom {atom.index} is a function, not a module to copy")
            if atom.in_shape != shape:
                if not bridge:
                    raise ValueError(f"atom {atom.index} takes {atom.in_shape}, not {shape}")
                layers.append(_bridge(shape, atom.in_shape, atom))
                self.copied.append(False)
            layers.append(copy.deepcopy(atom.module).requires_grad_(True))
            self.copied.append(True)
            shape = atom.out_shape
        self.layers = nn.ModuleList(layers)
        self.out_shape = shape

    @property
    def out_channels(self) -> int:
        return self.out_shape[-1] if self.tokens else self.out_shape[0]

    def forward(self, x: Tensor) -> Tensor:
        for layer, copied in zip(self.layers, self.copied):
            x = through(layer, x, self.tokens and copied)
        return x


def reduction(arch: AuxArch, grid: int, shrink: int = 1) -> nn.Module:
    """What runs before the copies: ``arch.pool``'s average pooling of each of the
    ``grid``² patches (the whole map pooled to ``arch.pool``), or nothing. The copies then run
    on the pooled map, which is what makes the ``cheap`` preset cheap.

    Never below ``shrink``, what the copies downsample a side by (:func:`downsampling`): a
    chain that halves its input twice (VGG's max-pools) gets at least 4×4, so that its last
    copy still sees a pixel.
    """
    pool = patch_pool(arch, grid)
    return nn.Identity() if pool is None else CapResolution(max(pool, shrink))


def downsampling(start_shape: tuple[int, ...], atoms: Sequence[LaterAtom], tokens: bool) -> int:
    """How many times smaller a side of a ``start_shape`` map is after the copies of ``atoms``
    (1: the same size, or token sequences)."""
    if tokens or not atoms:
        return 1
    return max(1, -(-start_shape[-1] // atoms[-1].out_shape[-1]))


def copy_classifier(spec: AuxSpec, channels: int) -> nn.Sequential:
    """The head after the copies: ``spec.arch``'s classifier (pooling was done before)."""
    arch = replace(spec.arch, pool=None)
    return classifier(
        channels, spec.size, spec.num_classes, arch, 1, arch.width or channels, lambda side: 1
    )


@register_aux("auglocal", default_budget=False)
class AugLocalAux(AuxNet):
    """AugLocal's auxiliary: d_j copied later atoms (bridged where shapes skip), then a
    pooled linear classifier with cross-entropy."""

    def __init__(self, spec: AuxSpec) -> None:
        super().__init__()
        self.pool = spec.arch.pool
        self.num_copies = auglocal_depth(spec.arch, spec.depth)
        later = later_atoms(spec)
        picked = set(spread(later[0].index - 1, len(later), self.num_copies))
        start = spec.partition.module_output_shape(spec.module_index)[1:]
        chosen = [atom for atom in later if atom.index in picked]
        shrink = downsampling(start, chosen, spec.tokens)
        self.reduce = reduction(spec.arch, spec.global_grid, shrink)
        self.layers = CopiedAtoms(chosen, start, spec.tokens, bridge=True)
        self.classifier = copy_classifier(spec, self.layers.out_channels)

    def forward(
        self,
        feature: Tensor,
        target: Tensor,
        image: Tensor | None = None,
        part: LossPart = "all",
    ) -> Tensor:
        return F.cross_entropy(self.classifier(self.layers(self.reduce(feature))), target)
