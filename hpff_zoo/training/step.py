"""One local-learning step under Accelerate, with gradients averaged correctly across processes.

DistributedDataParallel averages gradients with hooks that fire during *one* backward pass that
follows *one* call of the wrapped model's ``forward``. ``LocalModel.local_step`` does neither: it
calls ``backward`` once per auxiliary loss and PFF patch and pushes gradients through every
module with ``torch.autograd`` by itself, and never goes through DDP's ``forward``. Left to DDP,
the gradients of a multi-process run would silently stay per-process. So :func:`local_step` runs
the step with DDP's synchronisation off (``accelerator.no_sync``) and then, on the micro-step
that ends a gradient-accumulation cycle, averages every gradient the step produced (backbone
and auxiliary networks alike) across processes with one all-reduce per dtype: the same
gradients DDP would have produced for a single backward, whatever the number of backward calls.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

__all__ = ["average_buffers", "average_gradients", "local_step", "synced_gradients"]


def _all_reduce_mean(accelerator, tensors: Iterable[Tensor]) -> None:
    """Replace each tensor by its mean over processes, one collective per dtype."""
    groups: dict[torch.dtype, list[Tensor]] = defaultdict(list)
    for tensor in tensors:
        groups[tensor.dtype].append(tensor)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        flat = accelerator.reduce(flat, reduction="mean")
        for tensor, chunk in zip(group, flat.split([t.numel() for t in group])):
            tensor.copy_(chunk.view_as(tensor))


def average_gradients(accelerator, parameters: Iterable[nn.Parameter]) -> None:
    """Average ``.grad`` of ``parameters`` across processes (a no-op on one process).

    Parameters without a gradient are skipped; every process runs the same schedule, so the
    set of parameters with a gradient is the same on all of them.
    """
    if accelerator.num_processes > 1:
        _all_reduce_mean(accelerator, [p.grad for p in parameters if p.grad is not None])


@torch.no_grad()
def average_buffers(accelerator, module: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) across processes.

    Without SyncBatchNorm every process updates its running statistics from its own share of
    the batch; averaging them before evaluating or saving makes every process hold, and every
    checkpoint store, the same model (timm's ``distribute_bn`` does the same).
    """
    if accelerator.num_processes > 1:
        _all_reduce_mean(accelerator, [b for b in module.buffers() if b.is_floating_point()])


@contextlib.contextmanager
def synced_gradients(accelerator, model: nn.Module) -> Iterator[None]:
    """The context of one ``LocalModel.local_step`` on a model prepared by ``accelerator``
    (DDP-wrapped or not): call ``local_step(x, y, backward=accelerator.backward)`` inside it.

    It runs the step under ``accelerator.autocast()`` (``local_step`` is not ``forward``, so
    Accelerate's automatic autocast of ``forward`` does not reach it) and with DDP's own
    synchronisation off, and on leaving averages the gradients across processes when
    ``accelerator.sync_gradients`` says the optimizer steps next. ``accelerator.backward``
    applies loss scaling and gradient-accumulation scaling to every loss. Use it inside
    ``accelerator.accumulate(model)``.
    """
    with accelerator.no_sync(model), accelerator.autocast():
        yield
    if accelerator.sync_gradients:
        average_gradients(accelerator, accelerator.unwrap_model(model).parameters())


def local_step(accelerator, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    """``LocalModel.local_step`` under :func:`synced_gradients`; returns the per-module losses."""
    with synced_gradients(accelerator, model):
        return accelerator.unwrap_model(model).local_step(x, y, backward=accelerator.backward)
