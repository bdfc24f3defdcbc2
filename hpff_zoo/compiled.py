"""``torch.compile`` for a :class:`~hpff_zoo.LocalModel`'s training step, in place.

The streamed step (:mod:`hpff_zoo.streamed`) is Python that calls the backbone's blocks one
module at a time, detaches between modules and calls autograd by hand; that control flow is no
graph :func:`torch.compile` could capture whole. What it can capture are the pieces the step
calls: each atom's layers (a block, a stem) and each auxiliary network (its layers and its
loss). :func:`compile_local` compiles exactly those with :meth:`torch.nn.Module.compile`, which
compiles a module in place: parameter names, ``state_dict`` and the hub export stay those of the
eager model, and the schedule, its detaching and its gradients are untouched. An E2E model has
no local step to stream, so its whole backbone is compiled as one graph instead.

Shapes are static by default (``dynamic=False``): the blocks of a backbone share one forward
(every ``BasicBlock``), as do the auxiliaries of a method, at different shapes, and torch's
automatic dynamic shapes then make inductor fail on them (torch 2.14.1, InfoPro at K=16:
"cannot determine truth value of Relational"); static shapes compile one graph per shape.
Whether compiling pays depends on the machine; ``python -m hpff_zoo.benchmark compile``
measures it (the figures on this CPU are in ``recipes/results/speed/``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .choices import unknown_name
from .local import LocalModel

__all__ = ["check_backend", "compile_local", "compiled_modules"]


def check_backend(backend: str) -> str:
    """``backend`` if this torch has it, else a ``ValueError`` naming the closest ones; debug
    backends count (``aot_eager`` traces without a C++ compiler)."""
    known = torch.compiler.list_backends(exclude_tags=())
    if backend not in known:
        raise ValueError(unknown_name("torch.compile backend", backend, known))
    return backend


def compiled_modules(model: LocalModel) -> list[nn.Module]:
    """The modules :func:`compile_local` compiles: every atom's layers and every auxiliary
    network, or for E2E the whole backbone. Function atoms (a ViT's embedding) stay eager."""
    if not model.uses_aux:
        return [model.backbone]
    parts: list[nn.Module] = []
    for index in range(model.num_modules):
        for atom in model.partition.module_atoms(index):
            fn = atom.fn
            parts += [p for p in getattr(fn, "parts", (fn,)) if isinstance(p, nn.Module)]
    for group in model.aux.values():
        parts += list(group.values())
    return parts


def compile_local(
    model: LocalModel,
    backend: str = "inductor",
    *,
    mode: str | None = None,
    dynamic: bool | None = False,
    options: dict[str, Any] | None = None,
) -> LocalModel:
    """Compile ``model``'s blocks and auxiliary networks in place; returns ``model``.

    Args:
        model: an hpff_* or :func:`~hpff_zoo.from_timm` model.
        backend, mode, dynamic, options: passed to :func:`torch.compile` (``backend="aot_eager"``
            traces without generating code: no C++ compiler needed; ``dynamic=None`` is torch's
            automatic dynamic shapes, see above).

    Compilation happens lazily, in the first steps (one graph per block shape and per auxiliary
    network, for the forward and the backward).
    """
    check_backend(backend)
    if model.uses_aux and model.cascade_size > 1:
        # HiLo runs a module's backward twice (the cascade's input gradient with retain_graph,
        # then its parameters' gradient); a compiled backward that donates its saved buffers
        # refuses the second run. Process-wide: AOTAutograd reads it when the graph compiles.
        torch._functorch.config.donated_buffer = False
    for module in compiled_modules(model):
        module.compile(backend=backend, mode=mode, dynamic=dynamic, options=options)
    return model
