"""What a checkpointed local step needs to recompute a module exactly as it first ran.

``model.set_grad_checkpointing(True)`` makes :meth:`~hpff_zoo.LocalModel.local_step` trade
compute for memory twice (the schedule is :mod:`hpff_zoo.streamed`'s): a module's atoms run under
``torch.utils.checkpoint`` (non-reentrant), and with HiLo a module waiting for its cascade
gradient keeps only its detached input and is re-run when that gradient arrives. A recomputation
must give the very tensors of the first run and leave no trace, which neither torch's checkpoint
nor timm's ``checkpoint_seq`` guarantees on its own:

- *running statistics*: a training-mode BatchNorm updates its running mean, variance and
  ``num_batches_tracked`` on every forward, so a recomputed forward would count the batch twice.
  :func:`frozen_running_stats` runs recomputations with momentum 0 (the update then leaves the
  running statistics bit for bit as they were: ``1 · running + 0 · batch``) and puts
  ``num_batches_tracked`` back afterwards. (Turning ``track_running_stats`` off instead would
  make the recomputed batch norm save fewer tensors than the first run, which torch's
  checkpoint rightly refuses as a different computation.) The schedule runs every backward pass
  of a checkpointed step inside it, so whatever recomputes there (torch's checkpoint, timm's
  own, nested ones) is covered at once;
- *random numbers*: dropout and stochastic depth must draw the same masks again.
  :class:`RngSnapshot` records the generators before a module's first run and replays them for
  the re-run, as torch's checkpoint does for its own recomputations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.utils.checkpoint import checkpoint, get_device_states, set_device_states

__all__ = ["RngSnapshot", "checkpointed", "frozen_running_stats", "running_stat_norms"]


def running_stat_norms(module: nn.Module) -> list[nn.Module]:
    """The norm layers of ``module`` that track running statistics (BatchNorm, SyncBatchNorm,
    timm's BatchNormAct2d, tracking InstanceNorm): what a recomputed forward would update."""
    return [m for m in module.modules() if isinstance(m, _NormBase) and m.track_running_stats]


@contextlib.contextmanager
def frozen_running_stats(norms: Sequence[nn.Module]) -> Iterator[None]:
    """Forwards inside leave the running statistics of ``norms`` as they were on entry.

    Outputs are unchanged: a training-mode norm normalises with the batch's statistics whatever
    its momentum, an eval-mode one reads its running statistics and updates nothing.
    """
    saved = [(norm, norm.momentum, norm.num_batches_tracked) for norm in norms]
    counts = [count.clone() if count is not None else None for _, _, count in saved]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for (norm, momentum, count), before in zip(saved, counts):
            norm.momentum = momentum
            if count is not None:
                count.copy_(before)


def checkpointed(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``fn(x)`` keeping only ``x`` for backward; ``fn`` is re-run when the gradient passes.

    Non-reentrant (``use_reentrant=False``): it supports ``torch.autograd.grad`` with explicit
    inputs and inputs that need no gradient (the first module's batch), which the streamed
    schedule relies on. The recomputation must run inside :func:`frozen_running_stats`.
    """
    return checkpoint(fn, x, use_reentrant=False)


class RngSnapshot:
    """The random generators' state (CPU and the devices of ``tensors``) at creation.

    :meth:`replay` runs its block from that state and puts the generators back where they were
    afterwards, so a re-run draws the masks of the first run and the step's later draws are
    those of a step that never re-ran anything.
    """

    def __init__(self, *tensors: Tensor) -> None:
        self.cpu_state = torch.get_rng_state()
        self.devices, self.device_states = get_device_states(*tensors)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu_state)
            set_device_states(self.devices, self.device_states)
            yield
