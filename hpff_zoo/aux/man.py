"""MAN auxiliary network (Su et al., "Momentum Auxiliary Network for Supervised Local Learning",
ECCV 2024).

Local modules learn in isolation; MAN lets module i look ahead at what module i+1 will do with its
output. The auxiliary input passes through two copies of the *first block of the next module*:
a momentum copy, an exponential moving average of that block's parameters that never receives a
gradient, and a trainable copy (MAN's "learnable bias", initialised from the same block) that
absorbs the discrepancy between the EMA weights and module i's features. Their outputs are added
and fed to InfoPro's decoder and classifier.

EMA update: ``θ_ema ← m · θ_ema + (1 − m) · θ_next`` after every optimizer step, with m = 0.995
(the MAN README's setting; its code defaults to 0.999). ``LocalModel.local_step`` applies it at the
start of each step, i.e. right after the previous step's optimizer update. Buffers (BatchNorm
running statistics) are not averaged, as in the official code: the copies only run in training
mode, where BatchNorm normalises with batch statistics, so their running statistics never enter a
loss.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import Tensor, nn

from .base import AuxNet, AuxSpec, LossPart, register_aux
from .infopro import InfoProAux

DEFAULT_MOMENTUM = 0.995


@register_aux("man")
class MANAux(AuxNet):
    """MAN's look-ahead auxiliary.

    Its whole loss counts as dense: both branches run on the look-ahead blocks' output, so
    running the blocks once per PFF patch (and never on the whole map) keeps their memory at a
    patch's whatever the PFF scope.
    """

    needs_image = True
    global_parts = False
    dense_parts = True

    def __init__(self, spec: AuxSpec) -> None:
        super().__init__()
        if spec.next_block is None:
            raise ValueError(
                "MAN needs the next module's first block as a module; this backbone's next atom "
                "is a function (e.g. a ViT embedding) or there is no next module"
            )
        self.momentum = float(spec.options.get("momentum", DEFAULT_MOMENTUM))
        self.tokens = spec.tokens
        self._source = (spec.next_block,)  # a tuple: not registered, not in the state dict
        self.momentum_block = copy.deepcopy(spec.next_block).requires_grad_(False)
        self.bias_block = copy.deepcopy(spec.next_block).requires_grad_(True)
        channels, height, width = self._output_shape(spec)
        self.head = InfoProAux(
            replace(
                spec,
                channels=channels,
                size=(height, width),
                pff_scope="all",  # the head sees whatever the look-ahead blocks saw
                next_block=None,
            )
        )

    def _output_shape(self, spec: AuxSpec) -> tuple[int, int, int]:
        probe = torch.zeros(1, spec.channels, *spec.size, device=_device(self.bias_block))
        with torch.no_grad():
            self.bias_block.eval()
            out = self._through(self.bias_block, probe)
            self.bias_block.train()
        return tuple(out.shape[1:])

    def _through(self, block: nn.Module, feature: Tensor) -> Tensor:
        if not self.tokens:
            return block(feature)
        b, _, h, w = feature.shape
        out = block(feature.flatten(2).transpose(1, 2))
        return out.transpose(1, 2).reshape(b, out.shape[-1], h, w)

    @property
    def image_key(self) -> int:
        return self.head.image_key

    def prepare_image(self, x: Tensor) -> Tensor:
        return self.head.prepare_image(x)

    def forward(
        self,
        feature: Tensor,
        target: Tensor,
        image: Tensor | None = None,
        part: LossPart = "all",
    ) -> Tensor:
        z = self._through(self.bias_block, feature) + self._through(self.momentum_block, feature)
        return self.head(z, target, image)

    @torch.no_grad()
    def before_step(self) -> None:
        """One EMA step of the momentum copy towards the next block's current parameters.

        With gradient accumulation the parameters do not move between micro-steps, so each
        micro-step repeats the same pull: the effective momentum per optimizer step is m^n.
        """
        (source,) = self._source
        for ema, live in zip(self.momentum_block.parameters(), source.parameters()):
            ema.mul_(self.momentum).add_(live.detach(), alpha=1.0 - self.momentum)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
