"""hpff_zoo for semantic segmentation with mmsegmentation (optional extra: ``pip install .[seg]``).

``import hpff_zoo.seg`` makes mmseg importable on mmcv-lite and torch ≥ 2.6 checkpoints
resumable (see :mod:`hpff_zoo.seg._compat`), then registers in mmseg's registries:

- ``HPFFEncoderDecoder`` (``MODELS``): DeepLab-V3 & co. trained as K gradient-isolated modules
  with the core's streamed schedule (HiLo, PFF), or plain with ``method="e2e"``;
- ``HPFFDistributedDataParallel`` (``MODEL_WRAPPERS``): data-parallel training of every method,
  local ones with one gradient average per optimizer step;
- ``HPFFTransfer`` (``WEIGHT_INITIALIZERS``): a backbone ``init_cfg`` that loads an hpff_zoo /
  timm ResNet checkpoint into an mmseg ResNet, every tensor accounted for;
- ``CifarResNetBackbone`` (``MODELS``): the CIFAR ResNets of the ``hpff_resnet32`` tags as a
  backbone, ``FashionMNISTScenesDataset`` (``DATASETS``): scenes of real Fashion-MNIST items,
  generated on first use, and ``StepMemoryHook`` (``HOOKS``): one iteration's peak memory.

Configs: ``recipes/segmentation/``; launcher: ``recipes/segmentation.py``.
"""

from __future__ import annotations

try:
    import mmseg  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        'hpff_zoo.seg needs the segmentation extra: pip install -e ".[seg]"'
    ) from error

from . import _compat

_compat.install()

from .aux import SEG_AUX_METHODS, build_seg_aux  # noqa: E402
from .backbones import CifarResNetBackbone  # noqa: E402
from .distributed import HPFFDistributedDataParallel, average_gradients  # noqa: E402
from .fmnist_scenes import FashionMNISTScenesDataset  # noqa: E402
from .hooks import StepMemoryHook  # noqa: E402
from .local import BackboneChain, DenseLocalModel  # noqa: E402
from .segmentor import SEG_METHODS, HPFFEncoderDecoder, PretrainedUnavailableError  # noqa: E402
from .transfer import (  # noqa: E402
    HPFFTransferInit,
    TransferReport,
    backbone_overrides,
    load_hpff_state_dict,
    transfer_backbone,
)

__all__ = [
    "SEG_AUX_METHODS",
    "SEG_METHODS",
    "BackboneChain",
    "CifarResNetBackbone",
    "DenseLocalModel",
    "FashionMNISTScenesDataset",
    "HPFFDistributedDataParallel",
    "HPFFEncoderDecoder",
    "HPFFTransferInit",
    "PretrainedUnavailableError",
    "StepMemoryHook",
    "TransferReport",
    "average_gradients",
    "backbone_overrides",
    "build_seg_aux",
    "load_hpff_state_dict",
    "transfer_backbone",
]
