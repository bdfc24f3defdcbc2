"""MLAAN auxiliary networks (Zhang et al., "MLAAN: Scaling Supervised Local Learning with
Multilaminar Leap Augmented Auxiliary Network", AAAI 2025; official code Wendy231015/MLAAN).

MLAAN is two ideas the library already has, put together:

- *Multilaminar Local Modules* (MLM): every module has an independent auxiliary and a cascaded
  one, whose loss also trains the previous module: the HiLo schedule (cascade size 2, weights
  0.001 / 0.999, as in the official code) of :class:`~hpff_zoo.local.LocalModel`. With HiLo the
  independent level is a linear probe (global pool, linear, cross-entropy: the official
  ``net_classifier``), built as a :class:`~hpff_zoo.aux.dgl.DGLAux` of that architecture.
- *Leap Augmented Modules* (LAM): the cascaded auxiliary runs copies of later backbone layers
  before its classifier, the first of them as MAN's pair (:class:`~hpff_zoo.aux.man.MANAux`): a
  frozen EMA copy of the live layer plus a trainable copy, their outputs added; the further
  layers are trainable copies. A pooled linear classifier with cross-entropy closes it (the
  official ``aux_classifier``). The leap layers are chosen as AugLocal samples them
  (:func:`~hpff_zoo.aux.auglocal.spread`), with every shape-changing atom kept so that exact
  copies chain: up to ``copies`` atoms (the ``"paper"`` preset: 4), always ending with the last.

Official code against paper, and what is followed here:

- *EMA of every leap module (paper) or of the last one (code).* The paper describes EMA updates
  that carry the backbone's progress into every leap module; the official ResNet code updates
  only the last module's EMA copy (``EMA_Net[-1]``), so every other EMA copy keeps the weights
  it was copied with at initialisation. Here every EMA copy follows its live layer after every
  optimizer step (θ_ema ← m θ_ema + (1 − m) θ, m = 0.995 from the README command; the code's
  default is 0.999, its script's 1.0): the paper's description.
- *Which layers leap.* The official code reads hand tables per architecture and K
  (``configAuxPlus_new.py``; ResNet-32 K=15: module 1 leaps through layer2.0, layer3.0,
  layer3.2, layer3.4; the last modules through fewer). Here the rule of :func:`leap_atoms`
  reproduces their structure (stage transitions kept, at most 4 layers, ending at the last
  layer) for any backbone: ResNet-32's stage-1 and stage-2 entries exactly or within one
  layer, not every table entry (ResNet-110's stage-1 modules leap to layer3.16, not layer3.2).
- The official code's first module has no independent loss (its output is only trained through
  the second module's cascade); with HiLo the library gives every module an independent loss
  (weight 0.001). The official last module trains through the cascade head loss only, as HiLo's
  last window here does.
- PFF is not in the official code; with ``pff > 1`` the leap auxiliary runs per patch (its
  whole loss counts as dense, like MAN's). Without HiLo (``hilo=False``) each module gets the
  leap auxiliary alone: the paper's LAM-only ablation.

Gradient isolation: the independent loss reaches its own module only; the cascaded (leap) loss
of the window ending at module j reaches modules j−1 and j (HiLo k = 2), nothing earlier; no
gradient reaches the live layer behind an EMA copy.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from .auglocal import CopiedAtoms, LaterAtom, downsampling, later_atoms, reduction, spread
from .base import AuxNet, AuxSpec, register_aux
from .dgl import DGLAux
from .man import MANAux


def leap_atoms(spec: AuxSpec) -> list[LaterAtom]:
    """The later atoms module ``spec.module_index``'s leap auxiliary copies, in order.

    Every atom that changes the shape is kept, and the last atom; the rest, up to
    ``spec.arch.copies`` in all, is AugLocal's uniform sample of the atoms after the last
    shape change (the official tables leap into the last stage; this rule gives their
    ResNet-32 entries for the first two stages).
    """
    later = later_atoms(spec)
    wanted = spec.arch.copies or 1
    changes = {a.index for a in later if a.in_shape != a.out_shape}
    keep = changes | {later[-1].index}
    after = max(changes, default=later[0].index - 1)
    rest = [a.index for a in later if a.index > after and a.index not in keep]
    need = wanted - len(keep)
    if need > 0 and rest:
        keep |= {rest[p] for p in (i - 1 for i in spread(0, len(rest), need))}
    return [a for a in later if a.index in keep]


class LeapAux(MANAux):
    """MLAAN's leap augmented auxiliary: MAN's EMA + trainable pair on the first leap atom,
    trainable copies of the others, a pooled linear classifier."""

    def __init__(self, spec: AuxSpec) -> None:
        super().__init__(spec)
        self.pool = spec.arch.pool

    def look_ahead_block(self, spec: AuxSpec) -> nn.Module:
        first = leap_atoms(spec)[0]
        if first.module is None:
            raise ValueError(f"MLAAN's first leap atom ({first.index}) is a function, not a module")
        return first.module

    def make_reduce(self, spec: AuxSpec) -> nn.Module:
        leap = leap_atoms(spec)
        return reduction(spec.arch, spec.grid, downsampling(leap[0].in_shape, leap, spec.tokens))

    def make_followers(self, spec: AuxSpec) -> nn.Module:
        first, *rest = leap_atoms(spec)
        return CopiedAtoms(rest, first.out_shape, spec.tokens, bridge=False)

    def make_head(self, spec: AuxSpec) -> AuxNet:
        return DGLAux(replace(spec, arch=replace(spec.arch, pool=None), pff_scope="all"))


@register_aux("mlaan", default_budget=False, options=("momentum",))
def mlaan_aux(spec: AuxSpec) -> AuxNet:
    """The independent level under HiLo is a classifier of ``spec.arch``; otherwise a leap."""
    if spec.hilo and not spec.cascade:
        return DGLAux(spec)
    return LeapAux(spec)
