"""CIFAR ResNets (He et al. 2016, §4.2) as timm models: ``cifar_resnet32``, ``cifar_resnet110``.

timm has no 32×32-input ResNets, yet they are the paper's main benchmark. These follow timm's
ResNet contract (``forward_features`` / ``forward_head``, ``forward_intermediates``,
``feature_info``, ``reset_classifier``, ``group_matcher``, per-block gradient checkpointing,
``device``/``dtype`` factory arguments, TorchScript) and reuse timm's ``BasicBlock`` and
``make_blocks``: a 3×3 stem with 16 channels and no pooling, then three stages of 6n+2-layer
basic blocks at 16/32/64 channels (strides 1/2/2) with 1×1-conv projection shortcuts, global
average pooling and a linear classifier. Registering the plain models gives trained hpff_*
weights a home that needs no hpff_zoo code beyond this file.

No ``from __future__ import annotations`` here: TorchScript (also of FX-traced copies) needs the
type hints as real objects.
"""

from typing import Any

import torch
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from timm.models.resnet import BasicBlock, make_blocks
from torch import nn

__all__ = ["CifarResNet"]


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 inputs.

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110, ...).
        num_classes: classifier outputs (0 for none).
        in_chans: input channels.
        channels: widths of the three stages.
        global_pool: timm pooling type (``""`` for none: ``forward`` returns the feature map).
        drop_rate: dropout before the classifier.
        device, dtype: where and in which type the parameters are created (timm's factory
            passes them, e.g. ``device="meta"`` to inspect a model without allocating it).
    """

    def __init__(
        self,
        depth: int = 32,
        num_classes: int = 10,
        in_chans: int = 3,
        channels: tuple[int, int, int] = (16, 32, 64),
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        dd = dict(device=device, dtype=dtype)
        blocks_per_stage = (depth - 2) // 6
        self.num_classes = num_classes
        self.in_chans = in_chans  # read by timm's export (save_for_hf) and input resolution
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.conv1 = nn.Conv2d(in_chans, channels[0], 3, padding=1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(channels[0], **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=channels[0], reduction=1, module="act1")]
        stages, stage_info = make_blocks(
            (BasicBlock,) * 3, channels, (blocks_per_stage,) * 3, inplanes=channels[0], **dd
        )
        for name, stage in stages:
            self.add_module(name, stage)
        # make_blocks assumes a stride-4 stem: give feature_info the true reductions (1, 2, 4).
        self.feature_info += [dict(info, reduction=info["reduction"] // 4) for info in stage_info]
        self.num_features = channels[-1]
        self.global_pool, self.fc = create_classifier(
            self.num_features, num_classes, pool_type=global_pool, **dd
        )
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if hasattr(module, "zero_init_last"):
                module.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^conv1|bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each residual block's activations in the backward pass instead of storing
        them: the end-to-end baseline with the lowest activation memory (the stem and the head
        are not checkpointed; they hold one block's worth at most)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifier for ``num_classes`` (0 removes it); ``global_pool=None`` keeps the
        current pooling, ``""`` removes it. The head is created on the model's device and dtype
        and in its train/eval mode."""
        weight = self.conv1.weight
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.num_classes = num_classes
        self.global_pool, self.fc = create_classifier(
            self.num_features, num_classes, pool_type=global_pool,
            device=weight.device, dtype=weight.dtype,
        )  # fmt: skip
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def _stages(self, x: torch.Tensor, last: int = 3) -> list[torch.Tensor]:
        """Outputs of the stem and of stages 1..``last``, per-block checkpointed if enabled."""
        x = self.act1(self.bn1(self.conv1(x)))
        outputs = [x]
        for stage in (self.layer1, self.layer2, self.layer3)[:last]:
            x = checkpoint_seq(stage, x) if self.grad_checkpointing else stage(x)
            outputs.append(x)
        return outputs

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Final features and the feature maps at ``indices`` of (stem, stage 1, 2, 3).

        Args:
            x: input batch.
            indices: last n levels if an int, all if None, else the listed levels.
            norm: accepted for timm's interface; these ResNets have no final norm.
            stop_early: stop after the last requested level (the returned final features are
                then that level's).
            output_fmt: only ``"NCHW"``.
            intermediates_only: return only the intermediates.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        outputs = self._stages(x, max_index if stop_early else 3)
        intermediates = [outputs[i] for i in take]
        if intermediates_only:
            return intermediates
        return outputs[-1], intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        # Stages spelled out (not looped over) so that TorchScript can compile this.
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq([self.layer1, self.layer2, self.layer3], x, flatten=True)
        x = self.layer1(x)
        x = self.layer2(x)
        return self.layer3(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def cifar_cfg(**kwargs: Any) -> dict[str, Any]:
    """Pretrained cfg of a 32×32 model (CIFAR-10 statistics)."""
    return {
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616),
        "first_conv": "conv1",
        "classifier": "fc",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {"cifar_resnet32.untrained": cifar_cfg(), "cifar_resnet110.untrained": cifar_cfg()}
)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    # Four feature levels (stem + three stages), not the five timm assumes for ResNets.
    feature_cfg = dict(out_indices=(0, 1, 2, 3))
    return build_model_with_cfg(CifarResNet, variant, pretrained, feature_cfg=feature_cfg, **kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-32 for 32×32 inputs (0.46 M parameters)."""
    return _create("cifar_resnet32", pretrained, depth=32, **kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-110 for 32×32 inputs (1.7 M parameters)."""
    return _create("cifar_resnet110", pretrained, depth=110, **kwargs)
