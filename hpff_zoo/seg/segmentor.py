"""``HPFFEncoderDecoder``: mmseg's EncoderDecoder trained with local learning.

With ``method="e2e"`` it *is* mmseg's ``EncoderDecoder`` (same modules, same losses, same state
dict). With a local method, the backbone is partitioned into K gradient-isolated modules by the
core's partitioner, modules 1..K-1 get per-pixel auxiliaries (with HiLo cascades and PFF), and
module K feeds the decode head (ASPP) and the auxiliary head (FCN). :meth:`train_step` streams
the step module by module through the core's schedule, calling the runner's ``OptimWrapper``
for every backward and stepping it once, so the runner, its hooks, AMP and schedulers work
unchanged. Inference (``predict``, TTA) is the plain segmentor's: auxiliaries are unused there.

State dict: mmseg's keys (``backbone.``, ``decode_head.``, ``auxiliary_head.``) plus
``local_aux.`` for the auxiliary networks, so a checkpoint's segmentation weights load into a
stock ``EncoderDecoder`` (``strict=False`` drops the auxiliaries).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from mmengine.dist import get_world_size
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import OptimWrapper
from mmengine.structures import PixelData
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from torch import Tensor

from ..local import OFFICIAL_HILO_WEIGHTS
from .aux import SEG_AUX_METHODS
from .local import BackboneChain, DenseLocalModel

__all__ = ["SEG_METHODS", "HPFFEncoderDecoder"]

SEG_METHODS = ("e2e", *SEG_AUX_METHODS)
# The partitioner runs the backbone for real to find its atoms: at most 128 px a side (ResNets
# are size-agnostic), while memory costs are measured at the full crop on fake tensors.
TRACE_SIDE = 128


@MODELS.register_module()
class HPFFEncoderDecoder(EncoderDecoder):
    """EncoderDecoder with a K-module local-learning backbone.

    Args:
        method: ``"e2e"`` (plain DeepLab-V3 training), ``"infopro"`` or ``"dgl"``.
        num_modules: K, gradient-isolated modules of the backbone (K=1 is E2E).
        hilo: ``False`` or the HiLo cascade size (``True`` = 2).
        pff: PFF grid size n for the auxiliaries (1 turns PFF off).
        splits, balance, hilo_weights, aux_options: as in :class:`hpff_zoo.LocalModel`.
        **kwargs: ``EncoderDecoder``'s arguments (backbone, decode_head, auxiliary_head,
            data_preprocessor with ``size`` = the training crop, train_cfg, test_cfg, ...).
    """

    def __init__(
        self,
        method: str = "infopro",
        num_modules: int = 4,
        hilo: int | bool = 2,
        pff: int = 2,
        splits: Sequence[int | str] | None = None,
        balance: str = "memory",
        hilo_weights: Sequence[float] = OFFICIAL_HILO_WEIGHTS,
        aux_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if method not in SEG_METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {list(SEG_METHODS)}")
        super().__init__(**kwargs)
        self.method = method
        self._local: DenseLocalModel | None = None
        if method == "e2e" or num_modules == 1:
            return
        if get_world_size() > 1:
            raise RuntimeError(
                f"method={method!r} trains single-process (one GPU): its streamed step cannot run "
                "under DistributedDataParallel. Launch without a distributed launcher."
            )
        # Single process: SyncBN is plain BN. Convert before partitioning, since the partition's
        # atoms hold the backbone's layers (the runner's own conversion would come too late).
        self.backbone = revert_sync_batchnorm(self.backbone)
        crop = self._crop_size()
        local = DenseLocalModel(
            self._backbone_chain(),
            self._head_losses,
            num_modules=num_modules,
            method=method,
            hilo=hilo,
            pff=pff,
            splits=splits,
            balance=balance,
            hilo_weights=tuple(hilo_weights),
            aux_options=aux_options,
            input_size=(3, *crop),
            trace_size=(3, *(min(side, TRACE_SIDE) for side in crop)),
        )
        object.__setattr__(self, "_local", local)  # shares the backbone: not a submodule
        self.local_aux = local.aux

    # --- construction -----------------------------------------------------------------------

    @property
    def local(self) -> DenseLocalModel | None:
        """The core LocalModel driving training (``None`` for E2E)."""
        return self._local

    def _crop_size(self) -> tuple[int, int]:
        size = getattr(self.data_preprocessor, "size", None)
        if size is None:
            raise ValueError(
                "local methods partition the backbone at the training crop: set "
                "model.data_preprocessor.size = crop_size (as mmseg's configs do)"
            )
        return int(size[0]), int(size[1])

    def _backbone_chain(self) -> BackboneChain:
        backbone = self.backbone
        stages = getattr(backbone, "res_layers", None)
        indices = tuple(getattr(backbone, "out_indices", ()))
        if stages is None or not indices:
            raise ValueError(
                f"{type(backbone).__name__} is not an mmseg ResNet-style backbone (res_layers, "
                "out_indices); local methods partition ResNet, ResNetV1c and ResNetV1d"
            )
        if indices[-1] != len(stages) - 1:
            raise ValueError("backbone.out_indices must end with the last stage")
        scale = 255.0  # SegDataPreProcessor normalises 0..255 pixels
        preprocessor = self.data_preprocessor
        return BackboneChain(
            backbone,
            stage_names=[stages[i] for i in indices],
            num_classes=self.num_classes,
            mean=(preprocessor.mean.flatten() / scale).tolist(),
            std=(preprocessor.std.flatten() / scale).tolist(),
        )

    # --- training ---------------------------------------------------------------------------

    def _head_losses(self, inputs: list[Tensor], labels: Tensor) -> dict[str, Tensor]:
        """The decode and auxiliary heads' losses on stage outputs, as ``loss`` computes them."""
        samples = [SegDataSample(gt_sem_seg=PixelData(data=label[None])) for label in labels]
        if self.with_neck:
            inputs = self.neck(inputs)
        losses = self._decode_head_forward_train(inputs, samples)
        if self.with_auxiliary_head:
            losses.update(self._auxiliary_head_forward_train(inputs, samples))
        return losses

    def loss(self, inputs: Tensor, data_samples: list) -> dict:
        if self._local is not None:
            raise RuntimeError(
                f"method={self.method!r} trains through train_step (streamed, module by "
                "module); a single loss over the whole network would be end-to-end training"
            )
        self._check_batch_size(inputs)
        return super().loss(inputs, data_samples)

    def _check_batch_size(self, inputs: Tensor) -> None:
        if self.training and inputs.shape[0] < 2 and hasattr(self.decode_head, "image_pool"):
            raise ValueError(
                "DeepLab-V3's ASPP image-pooling branch applies BatchNorm to a 1×1 map: training "
                "needs at least 2 images per batch (train_dataloader.batch_size >= 2)"
            )

    def train_step(self, data: Any, optim_wrapper: OptimWrapper) -> dict[str, Tensor]:
        """One training iteration; local methods stream it through ``optim_wrapper``."""
        if self._local is None:
            return super().train_step(data, optim_wrapper)
        if getattr(optim_wrapper, "_accumulative_counts", 1) != 1:
            raise ValueError("gradient accumulation is not supported with local methods")
        with optim_wrapper.optim_context(self):
            data = self.data_preprocessor(data, True)
            inputs = data["inputs"]
            self._check_batch_size(inputs)
            labels = torch.stack([s.gt_sem_seg.data[0] for s in data["data_samples"]]).long()
            module_losses = self._local.local_step(inputs, labels, optim_wrapper.backward)
        losses = {k: v.detach() for k, v in self._local.head_losses.items()}
        self._check_finite(module_losses, losses, optim_wrapper)
        optim_wrapper.step()
        optim_wrapper.zero_grad()
        for name, value in module_losses.items():
            if name != "head":
                losses[f"{name}.loss_local"] = torch.tensor(value, device=inputs.device)
        _, log_vars = self.parse_losses(losses)
        return log_vars

    def _check_finite(
        self,
        module_losses: dict[str, float],
        head_losses: dict[str, Tensor],
        optim_wrapper: OptimWrapper,
    ) -> None:
        """Refuse to step on a NaN/inf loss, naming where it came from.

        Every local loss has already been back-propagated into its own module, so one bad loss
        has put NaN into that module's gradient only; stepping would write it into the weights
        and every later step would be NaN too, with the log naming no culprit. Gradients are
        discarded and ``FloatingPointError`` stops the run before the optimizer steps.
        """
        bad = {
            f"{name} (local loss)": value
            for name, value in module_losses.items()
            if name != "head" and not math.isfinite(value)
        }
        bad.update(
            {
                f"module{self._local.num_modules} ({name})": float(value)
                for name, value in head_losses.items()
                if "loss" in name and not torch.isfinite(value).all()
            }
        )
        if bad:
            optim_wrapper.zero_grad()
            found = ", ".join(f"{where} = {value}" for where, value in bad.items())
            raise FloatingPointError(
                f"method={self.method!r}: non-finite loss in {found}; the optimizer was not "
                "stepped. Check that batch's images and labels, the learning rate, or the "
                "module's auxiliary (model.local_aux)."
            )
