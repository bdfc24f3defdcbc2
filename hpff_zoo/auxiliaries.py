"""Building and budgeting a :class:`~hpff_zoo.LocalModel`'s auxiliary networks.

:class:`AuxiliaryBuilder` is a mixin of :class:`~hpff_zoo.LocalModel`: it builds, for every
module but the last, the independent auxiliary (and with HiLo the cascade one), sized down to
``aux_budget`` of the module's training FLOPs, and counts those FLOPs on fake tensors. It reads
the model's partition, method, PFF grid and HiLo settings; the model contract and the training
schedule live in :mod:`hpff_zoo.local` and :mod:`hpff_zoo.streamed`.

A subclass builds another kind of auxiliary by overriding :meth:`AuxiliaryBuilder._new_aux` (the
segmentation models do).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import Tensor, nn

from .aux import AuxNet, AuxSpec, build_aux
from .aux.base import LossPart
from .measure import training_flops
from .patches import grid_slices

__all__ = ["AuxiliaryBuilder"]


class AuxiliaryBuilder:
    """The auxiliary networks of a :class:`~hpff_zoo.LocalModel` (mixin; see the module doc).

    Attributes it reads from the model: ``partition``, ``backbone``, ``method``, ``pff``,
    ``pff_scope``, ``cascade_size``, ``aux_arch``, ``aux_budget``, ``aux_options``,
    ``num_classes``, ``input_size``, and the caches ``_aux_flops`` / ``_module_flops``; methods:
    ``uses_aux``, ``num_modules``, ``module_parameters``, ``_run_module``, ``_to_map``.
    """

    def _feature_map_size(self, index: int) -> tuple[int, int, int]:
        """(C, H, W) of module ``index``'s output seen as a feature map."""
        shape = self.partition.module_output_shape(index)
        probe = torch.empty(shape, device="meta")
        return tuple(self._to_map(probe).shape[1:])

    def _build_aux(self) -> nn.ModuleDict:
        aux = nn.ModuleDict({"independent": nn.ModuleDict(), "cascade": nn.ModuleDict()})
        if not self.uses_aux:
            return aux
        supervised = self.num_modules - 1
        cfg = getattr(self.backbone, "pretrained_cfg", {}) or {}
        for j in range(supervised):
            _, height, width = self._feature_map_size(j)
            if self.pff > min(height, width):
                raise ValueError(
                    f"pff={self.pff} needs feature maps of at least {self.pff}x{self.pff}; "
                    f"module {j + 1} outputs {height}x{width}"
                )
        if (self.aux_arch.decoder_size or self.pff) < self.pff:
            raise ValueError(
                f"aux decoder_size={self.aux_arch.decoder_size} cannot be cut into pff="
                f"{self.pff} x {self.pff} patches"
            )
        for j in range(supervised):
            channels, height, width = self._feature_map_size(j)
            next_atom = self.partition.module_atoms(j + 1)[0]
            spec = AuxSpec(
                channels=channels,
                size=(height, width),
                num_classes=self.num_classes,
                grid=self.pff,
                image_channels=self.input_size[0],
                mean=tuple(cfg.get("mean", (0.5,) * 3)),
                std=tuple(cfg.get("std", (0.5,) * 3)),
                depth=j / max(1, supervised - 1),
                next_block=next_atom.as_module(),
                partition=self.partition,
                module_index=j,
                tokens=len(self.partition.module_output_shape(j)) == 3,
                options=self.aux_options,
                arch=self.aux_arch,
                pff_scope=self.pff_scope,
                hilo=self.cascade_size > 1,
            )
            independent = spec
            if spec.hilo and self.aux_arch.hilo_independent is not None:
                independent = replace(spec, arch=self.aux_arch.hilo_independent)
            aux["independent"][f"module{j + 1}"] = self._sized_aux(j, independent)
            if self._has_cascade_aux(j):
                aux["cascade"][f"module{j + 1}"] = self._sized_aux(j, replace(spec, cascade=True))
        return aux

    def _new_aux(self, spec: AuxSpec) -> AuxNet:
        """One auxiliary network of this model's method (a subclass may build other kinds)."""
        return build_aux(self.method, spec)

    def _sized_aux(self, index: int, spec: AuxSpec) -> AuxNet:
        """The auxiliary of ``spec``, made cheaper until it fits ``aux_budget`` of the module.

        Walks down :meth:`AuxArch.cheaper` (smaller pooled map and decoder image, then fewer
        layers) until the auxiliary's training FLOPs, counted on fake tensors as the module's
        are, fit; a budget that even the cheapest auxiliary exceeds is an error, not a silent
        overrun.
        """
        aux = self._new_aux(spec)
        if self.aux_budget is None:
            return aux
        if index not in self._module_flops:  # HiLo sizes two auxiliaries per module
            self._module_flops[index] = self.module_training_flops(index)
        module_flops = self._module_flops[index]
        sides = max(spec.size), max(self.input_size[1:]), self.pff
        while (cost := self._cached_aux_flops(aux, spec, index)) > self.aux_budget * module_flops:
            arch = spec.arch.cheaper(*sides)
            if arch is None and module_flops == 0:
                break  # a module that computes nothing (a pooling atom): the cheapest there is
            if arch is None:
                raise ValueError(
                    f"aux_budget={self.aux_budget} is too small for module {index + 1}: its "
                    f"cheapest {self.method} auxiliary costs {cost / module_flops:.3f} of the "
                    "module's training FLOPs"
                )
            spec = replace(spec, arch=arch)
            aux = self._new_aux(spec)
        return aux

    def module_training_flops(self, index: int, batch_size: int = 2) -> int:
        """FLOPs of module ``index``'s forward and backward (weights and input) at this batch."""
        shape = self.input_size if index == 0 else self.partition.module_output_shape(index - 1)[1:]
        params = list(self.module_parameters(index))
        with _eval_mode(self.backbone):  # same FLOPs; no fake update of BatchNorm statistics
            return training_flops(
                lambda u: self._run_module(index, u), (batch_size, *shape), params, like=params[0]
            )

    def _cached_aux_flops(self, aux: AuxNet, spec: AuxSpec, index: int) -> int:
        """:meth:`aux_training_flops`, once per architecture and map: a ResNet stage repeats
        the same module (and so the same auxiliary candidates) many times."""
        key = (repr(aux), spec.arch, self._feature_map_size(index))
        if key not in self._aux_flops:
            self._aux_flops[key] = self.aux_training_flops(aux, index)
        return self._aux_flops[key]

    def aux_training_flops(self, aux: AuxNet, index: int, batch_size: int = 2) -> int:
        """FLOPs of ``aux``'s forward and backward on module ``index``'s output, every patch.

        Patches of equal shape cost the same, so each distinct shape is counted once.
        """
        channels, height, width = self._feature_map_size(index)
        params = list(aux.parameters())
        image_shape = (batch_size, *self.input_size)
        # The auxiliary's own device and dtype (meta when the model is built on meta).
        like = params[0] if params else next(self.backbone.parameters())
        if aux.needs_image:  # the target's size: pooling a one-image batch costs nothing
            target = aux.prepare_image(torch.zeros(1, *self.input_size, device=like.device))
            image_shape = (batch_size, *target.shape[1:])
        shapes: Counter[tuple[LossPart, tuple[int, ...], tuple[int, ...]]] = Counter()
        for part, n in self._aux_passes(aux):
            cells = zip(grid_slices(height, width, n), grid_slices(*image_shape[-2:], n))
            for (rows, cols), (image_rows, image_cols) in cells:
                patch = (batch_size, channels, _span(rows), _span(cols))
                image_patch = (*image_shape[:2], _span(image_rows), _span(image_cols))
                shapes[part, patch, image_patch] += 1
        total = 0
        with _eval_mode(aux):
            for (part, patch, image_patch), count in shapes.items():

                def run(x: Tensor, part=part, image_patch=image_patch) -> Tensor:
                    y = torch.zeros(batch_size, dtype=torch.long, device=x.device)
                    image = None
                    if aux.needs_image:
                        image = torch.zeros(image_patch, device=x.device, dtype=x.dtype)
                    return aux(x, y, image, part)

                total += count * training_flops(run, patch, params, like=like)
        return total

    def _aux_passes(self, aux: AuxNet) -> list[tuple[LossPart, int]]:
        """(losses, PFF grid) of each pass an auxiliary makes over a module's output."""
        n = self.pff
        if n == 1 or self.pff_scope == "all":
            return [("all", n)]
        passes: list[tuple[LossPart, int]] = []
        if aux.global_parts:
            passes.append(("global", 1))
        if aux.dense_parts:
            passes.append(("dense", n))
        return passes

    def _has_cascade_aux(self, index: int) -> bool:
        """A cascade aux closes the window of k modules ending at ``index`` (not the last)."""
        k = self.cascade_size
        return k > 1 and k - 1 <= index < self.num_modules - 1

    def _build_aux_like_backbone(self) -> nn.ModuleDict:
        """:meth:`_build_aux` on the backbone's device and in its floating-point dtype (a model
        created by timm with ``device="meta"`` or cast to bfloat16 stays uniform)."""
        param = next(self.backbone.parameters(), None)
        if param is None:
            return self._build_aux()
        with torch.device(param.device):
            aux = self._build_aux()
        return aux.to(dtype=param.dtype) if param.is_floating_point() else aux


def _span(s: slice) -> int:
    return s.stop - s.start


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Temporarily in eval mode (cost counting must not move BatchNorm statistics)."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
