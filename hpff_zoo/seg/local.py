"""The core's :class:`~hpff_zoo.LocalModel` over an mmseg backbone, with a dense head loss.

Everything that makes local learning work (the partitioner, the streamed schedule with HiLo
cascades, PFF patches) is the core's; this module only adapts its two ends to segmentation:

- :class:`BackboneChain` shows an mmseg backbone (``ResNetV1c`` and friends: ``forward`` returns
  a tuple of stage outputs) to :func:`hpff_zoo.partition.partition_backbone` as the timm-like
  feature extractor it expects. It registers the backbone's own children under their own names,
  so the partition's atoms and parameter names are the backbone's; it is never registered in the
  segmentor, so the segmentor's state dict stays mmseg's.
- :class:`DenseLocalModel` builds per-pixel auxiliaries (:mod:`hpff_zoo.seg.aux`), takes label
  maps as targets, records the stage outputs the decode heads read while the modules run, and
  replaces the classifier's cross-entropy by the segmentor's head losses. Stage outputs produced
  by an earlier module reach the heads detached: only the last module (and, with HiLo, the window
  of modules before it) learns from the heads, exactly as the last module's classifier in the
  classification models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..aux import AuxNet, AuxSpec
from ..local import LocalModel
from ..streamed import Backward
from .aux import build_seg_aux

__all__ = ["BackboneChain", "DenseLocalModel", "HeadLoss"]

# (stage outputs the heads read, label maps) -> {name: loss or metric}, mmseg's loss dict
HeadLoss = Callable[[list[Tensor], Tensor], dict[str, Tensor]]


class BackboneChain(nn.Module):
    """An mmseg backbone whose children run one after the other, seen as a timm extractor.

    Args:
        backbone: an mmseg backbone whose ``forward`` runs its children in sequence and returns a
            tuple of stage outputs ending with the last child's output (mmseg's ResNets).
        stage_names: the children whose outputs the backbone returns, in order.
        num_classes: classes of the segmentation task (sizes the auxiliaries).
        mean, std: input normalisation on the 0..1 scale (InfoPro's reconstruction target).
    """

    def __init__(
        self,
        backbone: nn.Module,
        stage_names: Sequence[str],
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        for name, child in backbone.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "_source", backbone)  # held, not registered
        self.stage_names = tuple(stage_names)
        self.num_classes = num_classes
        self.pretrained_cfg = {"mean": tuple(mean), "std": tuple(std)}

    def forward_features(self, x: Tensor) -> Tensor:
        return self._source(x)[-1]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x  # the heads live in the segmentor; see DenseLocalModel.head_loss

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)


class DenseLocalModel(LocalModel):
    """LocalModel whose targets are label maps and whose head is a segmentor's decode heads.

    Args:
        chain: the backbone as a :class:`BackboneChain`.
        head_loss_fn: computes the heads' losses from the stage outputs and the label maps.
        **kwargs: :class:`~hpff_zoo.LocalModel` options (``num_modules``, ``method``, ``hilo``,
            ``pff``, ``splits``, ``balance``, ``hilo_weights``, ``aux_options``,
            ``input_size``).
    """

    def __init__(self, chain: BackboneChain, head_loss_fn: HeadLoss, **kwargs) -> None:
        super().__init__(chain, **kwargs)
        object.__setattr__(self, "_head_loss_fn", head_loss_fn)
        self.stage_atoms = self._stage_atoms()
        self._stages: dict[int, Tensor] = {}
        self.head_losses: dict[str, Tensor] = {}

    def _stage_atoms(self) -> dict[str, int]:
        """Name of the atom that ends each stage -> the stage's position in the outputs."""
        names = [atom.name for atom in self.partition.atoms]
        ends = {}
        for position, stage in enumerate(self.backbone.stage_names):
            inside = [n for n in names if n == stage or n.startswith(f"{stage}.")]
            if not inside:
                raise ValueError(f"no atom of the partition belongs to stage {stage!r}")
            ends[inside[-1]] = position
        return ends

    def _new_aux(self, spec: AuxSpec) -> AuxNet:
        return build_seg_aux(self.method, spec)

    def _check_batch(self, x: Tensor, y: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.input_size[0]:
            raise ValueError(f"expected images of shape (B, {self.input_size[0]}, H, W)")
        if y.shape != (x.shape[0], *x.shape[-2:]) or y.dtype != torch.long:
            raise ValueError(
                f"expected label maps of shape {(x.shape[0], *x.shape[-2:])} and dtype long, "
                f"got {tuple(y.shape)} {y.dtype}"
            )

    def local_step(
        self, x: Tensor, y: Tensor, backward: Backward | None = None
    ) -> dict[str, float]:
        try:
            return super().local_step(x, y, backward)
        finally:
            self._stages.clear()  # stage outputs live for one step only

    def _run_module(self, index: int, x: Tensor) -> Tensor:
        """Run module ``index``, recording the stage outputs the heads will read.

        Outputs of earlier modules are recorded detached: the heads may read them, but their
        loss must not reach those modules (gradient isolation).
        """
        last = index == self.num_modules - 1
        for atom in self.partition.module_atoms(index):
            x = self._run_atom(index, atom, x)
            if atom.name in self.stage_atoms:
                self._stages[self.stage_atoms[atom.name]] = x if last else x.detach()
        return x

    def head_loss(self, features: Tensor, y: Tensor) -> Tensor:
        """Sum of the heads' losses (mmseg's ``loss*`` entries); the rest is kept for logs."""
        stages = [self._stages[i] for i in range(len(self.stage_atoms))]
        self.head_losses = self._head_loss_fn(stages, y)
        return sum(v for k, v in self.head_losses.items() if "loss" in k)
