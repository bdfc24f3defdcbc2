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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import Tensor, nn

from .base import AuxNet, AuxSpec, LossPart, register_aux
from .infopro import InfoProAux

DEFAULT_MOMENTUM = 0.995


@register_aux("man", default_budget=False, options=("momentum",))
class MANAux(AuxNet):
    """MAN's look-ahead auxiliary.

    Its whole loss counts as dense: both branches run on the look-ahead blocks' output, so
    running the blocks once per PFF patch (and never on the whole map) keeps their memory at a
    patch's whatever the PFF scope.
    """

    needs_image = True
    follows_backbone = True
    global_parts = False
    dense_parts = True

    def __init__(self, spec: AuxSpec) -> None:
        super().__init__()
        block = self.look_ahead_block(spec)
        self.momentum = float(spec.options.get("momentum", DEFAULT_MOMENTUM))
        self.tokens = spec.tokens
        self._source = (block,)  # a tuple: not registered, not in the state dict
        self.reduce = self.make_reduce(spec)
        self.momentum_block = copy.deepcopy(block).requires_grad_(False)
        self.bias_block = copy.deepcopy(block).requires_grad_(True)
        self.followers = self.make_followers(spec)
        channels, height, width = self._output_shape(spec)
        self.head = self.make_head(replace(spec, channels=channels, size=(height, width)))
        self.needs_image = self.head.needs_image

    def look_ahead_block(self, spec: AuxSpec) -> nn.Module:
        """The live backbone block the two copies are made of: the next module's first."""
        if spec.next_block is None:
            raise ValueError(
                "MAN needs the next module's first block as a module; this backbone's next atom "
                "is a function (e.g. a ViT embedding) or there is no next module"
            )
        return spec.next_block

    def make_reduce(self, spec: AuxSpec) -> nn.Module:
        """What runs before the look-ahead pair (MAN: nothing; its head pools itself)."""
        return nn.Identity()

    def make_followers(self, spec: AuxSpec) -> nn.Module:
        """What runs between the look-ahead pair and the head (MAN: nothing)."""
        return nn.Identity()

    def make_head(self, spec: AuxSpec) -> AuxNet:
        """The loss on the look-ahead output (``spec`` sized for it): InfoPro's decoder and
        classifier, seeing whatever patch the look-ahead blocks saw."""
        return InfoProAux(replace(spec, pff_scope="all", next_block=None))

    def _output_shape(self, spec: AuxSpec) -> tuple[int, int, int]:
        probe = torch.zeros(1, spec.channels, *spec.size, device=_device(self.bias_block))
        with torch.no_grad(), _eval_mode(self):
            out = self._look_ahead(probe)
        return tuple(out.shape[1:])

    def _look_ahead(self, feature: Tensor) -> Tensor:
        feature = self.reduce(feature)
        z = through(self.bias_block, feature, self.tokens)
        z = z + through(self.momentum_block, feature, self.tokens)
        return self.followers(z)

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
        return self.head(self._look_ahead(feature), target, image)

    @torch.no_grad()
    def before_step(self) -> None:
        """One EMA step of the momentum copy towards the next block's current parameters.

        With gradient accumulation the parameters do not move between micro-steps, so each
        micro-step repeats the same pull: the effective momentum per optimizer step is m^n.
        """
        (source,) = self._source
        for ema, live in zip(self.momentum_block.parameters(), source.parameters()):
            ema.mul_(self.momentum).add_(live.detach(), alpha=1.0 - self.momentum)


def through(block: nn.Module, feature: Tensor, tokens: bool) -> Tensor:
    """A backbone block applied to a ``(B, C, h, w)`` map, as a token sequence if it takes one.

    Auxiliaries see token outputs as grids (prefix tokens dropped); a copied transformer block
    then runs on the patch tokens alone, and its output is gridded again.
    """
    if not tokens:
        return block(feature)
    b, _, h, w = feature.shape
    out = block(feature.flatten(2).transpose(1, 2))
    return out.transpose(1, 2).reshape(b, out.shape[-1], h, w)


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Temporarily in eval mode: a shape probe must not move BatchNorm statistics."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
