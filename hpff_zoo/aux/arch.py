"""Auxiliary architectures as data: one :class:`AuxArch` says what every auxiliary looks like.

Local learning spends most of its extra compute in the auxiliary networks (a 2c2f classifier costs
about 0.8 of the CIFAR BasicBlock it supervises), so their size is the main speed knob and must be
a setting a checkpoint records, not a constant in a file. Every method reads the same fields:

- the classifier: ``pool`` (the side the input map is average-pooled to before anything else),
  ``convs`` conv-BN-ReLU layers of ``kernel`` × ``kernel`` at ``width`` channels, pooling to a
  ``head_pool`` grid, then ``fcs`` linear layers (``hidden`` units between them) — InfoPro's
  ``NcMf`` configurations, DGL's ``cnn`` and ``mlp-sr`` auxiliaries and PredSim's prediction and
  similarity branches are all points of this space;
- the reconstruction decoder (InfoPro, MAN, segmentation InfoPro): it works at ``decoder_size``
  (the side of the reconstructed image) with ``decoder_width`` hidden channels;
- the copied backbone layers (AugLocal, MLAAN): ``copies`` later atoms of the backbone run
  before the classifier, their number shrinking with module depth by ``pyramid``.

:data:`AUX_PRESETS` names whole architectures per method: ``"paper"`` is the official code's
(InfoPro/HPFF ``2c2f`` classifier and full-resolution decoder, DGL's ``cnn`` auxiliary, PredSim's
3×3 similarity convolution), ``"cheap"`` is the small design the defaults were chosen from by
measurement (see recipes/results/accuracy-aux/README.md): DGL's MLP-SR idea of pooling before
computing, one conv, a decoder at 8×8. A ``dict`` overrides fields of the method's paper
architecture.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..choices import did_you_mean, unknown_name

__all__ = ["AUX_PRESETS", "AUX_PRESET_NAMES", "AuxArch", "resolve_aux_arch"]


@dataclass(frozen=True)
class AuxArch:
    """Architecture of a method's auxiliary networks (``None`` = the method's own rule).

    Attributes:
        pool: the side a module's (whole) feature map is average-pooled to before the
            auxiliary's first layer; each PFF patch is pooled by the same factor. ``None`` keeps
            the map's resolution.
        convs: conv-BN-ReLU layers of the classifier (InfoPro's ``Nc``).
        width: their channels; ``None``: the method's rule (InfoPro min(2C, 64), DGL min(C, 128),
            PredSim C).
        kernel: their kernel size (1 gives DGL's pointwise MLP-SR layers).
        head_pool: the grid the classifier average-pools to before its linear layers (InfoPro
            1, DGL 2).
        fcs: linear layers after pooling (InfoPro's ``Mf``): ``fcs - 1`` hidden layers of
            ``hidden`` units, then the output layer.
        hidden: units of the hidden linear layers.
        decoder_size: side of the image the decoder reconstructs (the input, average-pooled);
            ``None``: the input's own size, at most 64.
        decoder_width: hidden channels of the decoder.
        copies: how many of the backbone's later atoms (blocks) an auxiliary copies and runs
            before its classifier (AugLocal's auxiliary depth d, MLAAN's leap depth); ``None``
            for methods that copy none.
        pyramid: AugLocal's pyramidal coefficient τ: the first module's auxiliary copies
            ``copies`` atoms, the last one's ``copies · (1 − τ) + τ`` (linear in between).
        hilo_independent: with HiLo, the architecture of each module's *independent* auxiliary
            (its gradient enters the backbone at weight 0.001, so it can be far cheaper than
            the cascade auxiliary that trains the module); ``None``: this same architecture.
    """

    pool: int | None = None
    convs: int = 2
    width: int | None = None
    kernel: int = 3
    head_pool: int = 1
    fcs: int = 2
    hidden: int = 128
    decoder_size: int | None = None
    decoder_width: int = 12
    copies: int | None = None
    pyramid: float = 0.0
    hilo_independent: AuxArch | None = None

    def __post_init__(self) -> None:
        for name in ("pool", "width", "decoder_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"aux {name} must be None or >= 1, got {value!r}")
        for name in ("kernel", "head_pool", "fcs", "hidden", "decoder_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"aux {name} must be >= 1, got {getattr(self, name)!r}")
        if self.convs < 0 or self.kernel % 2 == 0:
            raise ValueError("aux convs must be >= 0 and kernel odd")
        if self.copies is not None and self.copies < 1:
            raise ValueError(f"aux copies must be None or >= 1, got {self.copies!r}")
        if not 0.0 <= self.pyramid <= 1.0:
            raise ValueError(f"aux pyramid must be in [0, 1], got {self.pyramid!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def cheaper(self, map_side: int, image_side: int, min_decoder: int = 1) -> AuxArch | None:
        """The next step down the budget ladder, or ``None`` from the cheapest architecture.

        Steps halve the side the auxiliary pools to and of the image its decoder reconstructs
        (``map_side`` and ``image_side`` stand for unset values; the decoder keeps at least
        ``min_decoder`` pixels a side, the PFF grid cuts it), then drop conv layers (down to
        InfoPro's ``0cMf``: pool, then linear layers), then copied backbone atoms, then hidden
        linear layers.
        """
        pool = self.pool or map_side
        decoder = self.decoder_size or min(image_side, 64)
        if pool > 1 or decoder > min_decoder:
            return replace(
                self,
                pool=max(1, _ceil_div(pool, 2)),
                decoder_size=max(min_decoder, _ceil_div(decoder, 2)),
            )
        if self.convs > 0:
            return replace(self, convs=self.convs - 1)
        if self.copies is not None and self.copies > 1:
            return replace(self, copies=self.copies - 1)
        if self.fcs > 1:
            return replace(self, fcs=self.fcs - 1)
        return None


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


_INFOPRO_PAPER = AuxArch()
# Global average pool and one linear layer: InfoPro's 0c1f ("greedy SL") head.
_LINEAR_PROBE = AuxArch(pool=1, convs=0, fcs=1)
_CHEAP = AuxArch(pool=8, convs=1, decoder_size=8, hilo_independent=_LINEAR_PROBE)
_AUGLOCAL_PAPER = AuxArch(convs=0, fcs=1, copies=3, pyramid=0.5)
_MLAAN_PAPER = AuxArch(convs=0, fcs=1, copies=4, hilo_independent=_LINEAR_PROBE)

# method -> preset name -> architecture. "paper": the official code's auxiliaries.
AUX_PRESETS: dict[str, dict[str, AuxArch]] = {
    "infopro": {"paper": _INFOPRO_PAPER, "cheap": _CHEAP},
    "man": {"paper": _INFOPRO_PAPER, "cheap": _CHEAP},
    # DGL's `cnn` auxiliary: two 3×3 convs, 2×2 pool, one linear layer (maps capped at 32×32).
    "dgl": {
        "paper": AuxArch(pool=32, convs=2, head_pool=2, fcs=1),
        "cheap": AuxArch(pool=8, convs=1, head_pool=2, fcs=1, hilo_independent=_LINEAR_PROBE),
    },
    # PredSim: one 3×3 similarity conv at C channels; the prediction branch pools to ≤ 4096.
    "predsim": {
        "paper": AuxArch(convs=1, fcs=1),
        "cheap": AuxArch(pool=8, convs=1, fcs=1, hilo_independent=_LINEAR_PROBE),
    },
    # AugLocal: d = 3 copied later layers, pyramid τ = 0.5 (the ResNet-110 README command and
    # run.sh), then global pool and one linear layer.
    "auglocal": {
        "paper": _AUGLOCAL_PAPER,
        "cheap": replace(_AUGLOCAL_PAPER, pool=8, hilo_independent=_LINEAR_PROBE),
    },
    # MLAAN: a linear probe on each module (the independent level) and leap auxiliaries of up
    # to 4 copied later layers with a pooled linear classifier (the cascade level).
    "mlaan": {"paper": _MLAAN_PAPER, "cheap": replace(_MLAAN_PAPER, pool=8)},
}


AUX_PRESET_NAMES = ("paper", "cheap")


def resolve_aux_arch(method: str, aux: str | AuxArch | dict[str, Any] | None) -> AuxArch:
    """The architecture ``aux`` names for ``method``: a preset name, overrides, or itself.

    A ``dict`` overrides fields of the method's ``"paper"`` architecture, so a checkpoint's
    recorded ``aux`` (always a full dict, see :meth:`AuxArch.to_dict`) rebuilds it exactly.
    """
    presets = AUX_PRESETS.get(method, AUX_PRESETS["infopro"])
    if aux is None:
        return presets["paper"]
    if isinstance(aux, AuxArch):
        return aux
    if isinstance(aux, str):
        if aux not in presets:
            raise ValueError(unknown_name("aux preset", aux, presets))
        return presets[aux]
    if isinstance(aux, dict):
        known = {f.name for f in fields(AuxArch)}
        unknown = sorted(set(aux) - known)
        if unknown:
            near = "".join(did_you_mean(name, known) for name in unknown)
            raise ValueError(f"unknown aux fields {unknown}{near} (AuxArch has {sorted(known)})")
        independent = aux.get("hilo_independent")
        if isinstance(independent, dict):
            aux = {**aux, "hilo_independent": AuxArch(**independent)}
        return replace(presets["paper"], **aux)
    raise TypeError(f"aux must be a preset name, a dict or an AuxArch, not {type(aux).__name__}")
