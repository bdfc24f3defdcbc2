"""Initialise an mmseg ResNet backbone from an hpff_zoo (timm) classification checkpoint.

timm and mmseg name ResNet weights almost alike; what differs is the stem, and the stem is also
where the *architectures* differ:

============================  ====================  ========================================
timm checkpoint               mmseg backbone        mapping
============================  ====================  ========================================
``resnet101`` (7×7 stem)      ``ResNet`` (V1b)      identity
``resnet101c`` (deep stem)    ``ResNetV1c``         ``conv1.{0,1,3,4,6}`` → ``stem.{...}``,
                                                    ``bn1`` → ``stem.7``
``resnet101d`` (+ avg-down)   ``ResNetV1d``         as V1c (downsample indices already agree)
============================  ====================  ========================================

DeepLab-V3's published configs use ``ResNetV1c``; ``hpff_resnet101`` wraps timm's ``resnet101``
(a 7×7 stem), whose stem cannot fill a deep stem. :func:`backbone_overrides` therefore reads the
variant off the checkpoint and names the mmseg backbone it fits (mmseg ships V1b DeepLab-V3
configs too, ``deeplabv3_r101b-d8``); the launcher applies it and says so. Every backbone tensor
must be filled and every checkpoint tensor outside the classifier (``fc``) and the auxiliary
networks (``aux.``) must be used, or :func:`map_timm_resnet` raises with the names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from mmengine.logging import print_log
from mmengine.registry import WEIGHT_INITIALIZERS
from torch import Tensor, nn

from ..models.tags import TIMM_BACKBONES

__all__ = [
    "TransferReport",
    "backbone_overrides",
    "load_hpff_state_dict",
    "map_timm_resnet",
    "transfer_backbone",
]

_DEEP_STEM = {f"conv1.{i}.": f"stem.{i}." for i in (0, 1, 3, 4, 6)} | {"bn1.": "stem.7."}
_IGNORED = ("fc.",)  # timm's classifier: no counterpart in a segmentation backbone
_DEPTHS = {
    ("basic", (2, 2, 2, 2)): 18,
    ("basic", (3, 4, 6, 3)): 34,
    ("bottleneck", (3, 4, 6, 3)): 50,
    ("bottleneck", (3, 4, 23, 3)): 101,
    ("bottleneck", (3, 8, 36, 3)): 152,
}


@dataclass(frozen=True)
class TransferReport:
    """What :func:`transfer_backbone` loaded: ``loaded`` of the backbone's ``total`` tensors."""

    loaded: int
    total: int
    parameters: int
    ignored: tuple[str, ...]


def load_hpff_state_dict(source: str | Path) -> dict[str, Tensor]:
    """The timm backbone's state dict from an hpff_zoo export, a weights file, or a Hub id.

    ``source`` is a directory written by ``timm.models.save_for_hf`` (``model.safetensors`` or
    ``pytorch_model.bin``), a ``.safetensors``/``.pth``/``.bin`` file, a Hugging Face Hub id
    (``hf-hub:org/name`` or ``org/name``), or a timm-backbone tag (``hpff_resnet101.a1h_in1k``:
    timm's repository of those weights, through the same Hub cache). An hpff_zoo model's keys
    (``backbone.``, ``aux.``) are reduced to the backbone's; a plain timm state dict is taken as
    it is.
    """
    path = Path(str(source))
    if path.is_dir():
        candidates = [path / "model.safetensors", path / "pytorch_model.bin"]
        path = next((p for p in candidates if p.exists()), candidates[0])
        if not path.exists():
            raise FileNotFoundError(f"{source}: no model.safetensors or pytorch_model.bin in it")
    elif not path.exists():
        backbone = TIMM_BACKBONES.get(str(source))
        path = _download(backbone.hf_hub_id if backbone else str(source))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state))
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def _download(repo_id: str) -> Path:
    from huggingface_hub import hf_hub_download

    repo_id = repo_id.removeprefix("hf-hub:")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise FileNotFoundError(f"{repo_id!r} is neither a local file or folder nor a Hub id")
    return Path(hf_hub_download(repo_id, "model.safetensors"))


def backbone_overrides(state: dict[str, Tensor]) -> dict[str, object]:
    """The mmseg backbone (``type``, ``depth``) a timm ResNet state dict fits."""
    deep_stem = "conv1.0.weight" in state
    avg_down = any(re.search(r"downsample\.2\.", k) for k in state)
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    blocks = tuple(
        len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5)
    )
    depth = _DEPTHS.get((kind, blocks))
    if depth is None:
        raise ValueError(f"not a timm ResNet mmseg can build: {kind} blocks per stage {blocks}")
    if avg_down and not deep_stem:
        raise ValueError("avg-down without a deep stem has no mmseg ResNet counterpart")
    kind = "ResNetV1d" if avg_down else "ResNetV1c" if deep_stem else "ResNet"
    return {"type": kind, "depth": depth}


def map_timm_resnet(state: dict[str, Tensor], backbone: nn.Module) -> dict[str, Tensor]:
    """timm names → ``backbone``'s names; raises unless the mapping covers both sides exactly."""
    deep = getattr(backbone, "deep_stem", False)
    mapped: dict[str, Tensor] = {}
    for name, tensor in state.items():
        if name.startswith(_IGNORED):
            continue
        target = name
        if deep:
            prefix = next((p for p in _DEEP_STEM if name.startswith(p)), None)
            target = _DEEP_STEM[prefix] + name[len(prefix) :] if prefix else name
        mapped[target] = tensor
    expected = backbone.state_dict()
    unused = sorted(set(mapped) - set(expected))
    missing = sorted(set(expected) - set(mapped))
    wrong = sorted(k for k in set(mapped) & set(expected) if mapped[k].shape != expected[k].shape)
    if unused or missing or wrong:
        raise ValueError(
            f"checkpoint does not fit {type(backbone).__name__}: missing {missing[:5]} "
            f"({len(missing)}), unused {unused[:5]} ({len(unused)}), shape mismatch "
            f"{wrong[:5]} ({len(wrong)}); see hpff_zoo.seg.transfer.backbone_overrides"
        )
    return mapped


def transfer_backbone(backbone: nn.Module, source: str | Path) -> TransferReport:
    """Load ``source`` (see :func:`load_hpff_state_dict`) into ``backbone``, all or nothing."""
    state = load_hpff_state_dict(source)
    mapped = map_timm_resnet(state, backbone)
    backbone.load_state_dict(mapped, strict=True)
    ignored = tuple(sorted(k for k in state if k.startswith(_IGNORED)))
    parameters = sum(p.numel() for p in backbone.parameters())
    return TransferReport(len(mapped), len(backbone.state_dict()), parameters, ignored)


@WEIGHT_INITIALIZERS.register_module(name="HPFFTransfer")
class HPFFTransferInit:
    """mmengine initializer: ``backbone.init_cfg = dict(type="HPFFTransfer", checkpoint=...)``."""

    def __init__(self, checkpoint: str) -> None:
        self.checkpoint = checkpoint
        self.report: TransferReport | None = None

    def __call__(self, module: nn.Module) -> None:
        self.report = transfer_backbone(module, self.checkpoint)
        print_log(
            f"HPFFTransfer: loaded {self.report.loaded}/{self.report.total} backbone tensors "
            f"({self.report.parameters:,} parameters) from {self.checkpoint}; not used: "
            f"classifier {list(self.report.ignored)}",
            logger="current",
        )

    def _get_init_info(self) -> str:
        return f"{self.__class__.__name__}: checkpoint={self.checkpoint}"
