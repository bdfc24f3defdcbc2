"""``HPFFEncoderDecoder``: mmseg's EncoderDecoder trained with local learning.

With ``method="e2e"`` it *is* mmseg's ``EncoderDecoder`` (same modules, same losses, same state
dict). With a local method, the backbone is partitioned into K gradient-isolated modules by the
core's partitioner, modules 1..K-1 get per-pixel auxiliaries (with HiLo cascades and PFF), and
module K feeds the decode head (ASPP) and the auxiliary head (FCN). :meth:`train_step` streams
the step module by module through the core's schedule, calling the runner's ``OptimWrapper``
for every backward and stepping it once, so the runner, its hooks, AMP, gradient accumulation and
schedulers work unchanged; data-parallel runs average the gradients once before that step
(:mod:`hpff_zoo.seg.distributed`). Inference (``predict``, TTA) is the plain segmentor's:
auxiliaries are unused there.

State dict: mmseg's keys (``backbone.``, ``decode_head.``, ``auxiliary_head.``) plus
``local_aux.`` for the auxiliary networks, so a checkpoint's segmentation weights load into a
stock ``EncoderDecoder`` (``strict=False`` drops the auxiliaries).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn
from urllib.error import URLError

import torch
from mmengine.dist import get_world_size
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import OptimWrapper
from mmengine.structures import PixelData
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from torch import Tensor, nn

from ..local import OFFICIAL_HILO_WEIGHTS
from .aux import SEG_AUX_METHODS
from .distributed import average_gradients
from .local import BackboneChain, DenseLocalModel

__all__ = ["SEG_METHODS", "HPFFEncoderDecoder", "PretrainedUnavailableError"]

SEG_METHODS = ("e2e", *SEG_AUX_METHODS)
# The partitioner runs the backbone for real to find its atoms: at most 128 px a side (ResNets
# are size-agnostic), while memory costs are measured at the full crop on fake tensors.
TRACE_SIDE = 128


class PretrainedUnavailableError(RuntimeError):
    """The configured pretrained backbone could not be fetched (offline, unreachable URL)."""


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
        if get_world_size() == 1:
            # Single process: SyncBN is plain BN. Convert before partitioning, since the
            # partition's atoms hold the backbone's layers (the runner's would come too late).
            self.backbone = revert_sync_batchnorm(self.backbone)
        crop = self._crop_size()
        channels = self._input_channels()
        with _sync_bn_as_bn(self.backbone):
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
                input_size=(channels, *crop),
                trace_size=(channels, *(min(side, TRACE_SIDE) for side in crop)),
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

    def _input_channels(self) -> int:
        """Image channels, from the preprocessor's normalisation (1 for grayscale configs)."""
        mean = getattr(self.data_preprocessor, "mean", None)
        return 3 if mean is None else int(mean.numel())

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

    def init_weights(self) -> None:
        """mmengine's weight initialisation; a pretrained backbone that cannot be downloaded is
        one clear error saying how to start otherwise, instead of a raw ``URLError``."""
        try:
            super().init_weights()
        except URLError as error:
            init_cfg = self.backbone.init_cfg
            source = init_cfg.get("checkpoint") if isinstance(init_cfg, dict) else None
            raise PretrainedUnavailableError(
                f"cannot download the pretrained backbone {source or ''} ({error.reason}). "
                "Offline? Start from an hpff-zoo ResNet checkpoint (recipes/segmentation.py "
                "--backbone-checkpoint SOURCE), from random weights (--cfg-options "
                "model.pretrained=None), or put the file in torch's hub cache "
                "($TORCH_HOME/hub/checkpoints) first."
            ) from error

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
                "module); a single loss over the whole network would be end-to-end training. "
                "Under a distributed launcher wrap the model with "
                "model_wrapper_cfg=dict(type='HPFFDistributedDataParallel') (the recipes do)"
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
        """One training iteration; local methods stream it through ``optim_wrapper``.

        Every loss of the streamed step goes through ``optim_wrapper.backward`` (loss scaling
        for AMP), divided by the wrapper's accumulation factor. On the iteration that steps the
        optimizer, the gradients are averaged over processes once (data-parallel runs, see
        :mod:`hpff_zoo.seg.distributed`) and every loss is checked before the step.
        """
        if self._local is None:
            return super().train_step(data, optim_wrapper)
        count = optim_wrapper.inner_count
        scale = float(optim_wrapper.scale_loss(torch.ones(())))  # 1 / accumulation factor

        def backward(loss: Tensor) -> None:
            optim_wrapper.backward(loss * scale)

        with optim_wrapper.optim_context(self):
            data = self.data_preprocessor(data, True)
            inputs = data["inputs"]
            self._check_batch_size(inputs)
            labels = torch.stack([s.gt_sem_seg.data[0] for s in data["data_samples"]]).long()
            module_losses = self._local.local_step(inputs, labels, backward)
        # mmengine counts iterations by backward calls (one per iteration in update_params);
        # the streamed step made many, and accumulation must see one.
        optim_wrapper._inner_count = count + 1
        losses = {k: v.detach() for k, v in self._local.head_losses.items()}
        bad = self._non_finite(module_losses, losses)
        if optim_wrapper.should_update():
            if average_gradients(self.parameters(), flag=bool(bad)):  # bad on any process
                optim_wrapper.zero_grad()
                self._stop(bad or {"another process (see its error)": math.nan})
            optim_wrapper.step()
            optim_wrapper.zero_grad()
        elif bad:
            optim_wrapper.zero_grad()
            self._stop(bad)
        for name, value in module_losses.items():
            if name != "head":
                losses[f"{name}.loss_local"] = torch.tensor(value, device=inputs.device)
        _, log_vars = self.parse_losses(losses)
        return log_vars

    def _non_finite(
        self, module_losses: dict[str, float], head_losses: dict[str, Tensor]
    ) -> dict[str, float]:
        """Where this step's losses are NaN/inf: ``{"module2 (local loss)": nan, ...}``."""
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
        return bad

    def _stop(self, bad: dict[str, float]) -> NoReturn:
        """Refuse to step on a NaN/inf loss, naming where it came from.

        Every local loss has already been back-propagated into its own module, so one bad loss
        has put NaN into that module's gradient only; stepping would write it into the weights
        and every later step would be NaN too, with the log naming no culprit. The caller has
        discarded the gradients; ``FloatingPointError`` stops the run before the optimizer steps.
        """
        found = ", ".join(f"{where} = {value}" for where, value in bad.items())
        raise FloatingPointError(
            f"method={self.method!r}: non-finite loss in {found}; the optimizer was not "
            "stepped. Check that batch's images and labels, the learning rate, or the "
            "module's auxiliary (model.local_aux)."
        )


@contextmanager
def _sync_bn_as_bn(module: nn.Module) -> Iterator[None]:
    """Run SyncBN layers as plain BN for a while: the partitioner's passes on CPU tensors.

    In a distributed run the backbone keeps its SyncBN, but the partitioner runs it in training
    mode on CPU (fake) tensors while the model is built, where SyncBN would demand a GPU and a
    collective. The layers' class is swapped for ``BatchNorm2d`` (same parameters and buffers),
    then restored.
    """
    swapped = [(m, type(m)) for m in module.modules() if isinstance(m, nn.SyncBatchNorm)]
    for m, _ in swapped:
        m.__class__ = nn.BatchNorm2d
    try:
        yield
    finally:
        for m, cls in swapped:
            m.__class__ = cls
