"""Data-parallel training of local methods under mmengine's distributed launchers.

DistributedDataParallel averages gradients with hooks armed by *its own* ``forward`` and fired by
*one* backward pass. A local method's step does neither: :class:`~hpff_zoo.seg.HPFFEncoderDecoder`
streams it module by module, with one backward per PFF patch loss and per module, and never calls
the wrapper's ``forward``. Left to DDP, each process would silently keep its own gradients. So,
as the classification recipes do (:mod:`hpff_zoo.training.step`):

- :class:`HPFFDistributedDataParallel` (the recipes' ``model_wrapper_cfg``) runs a local step
  under ``no_sync`` and leaves E2E to DDP's own bucketed all-reduce;
- the segmentor, on the iteration that ends a gradient-accumulation cycle, calls
  :func:`average_gradients` once: one all-reduce per dtype over every gradient the step left
  (backbone, heads, auxiliaries), whatever the number of backward calls. A flag riding in the
  same all-reduce tells every process whether any of them saw a non-finite loss, so all of them
  stop together instead of the healthy ones waiting forever in the next collective.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from mmengine.model import MMDistributedDataParallel
from mmengine.optim import OptimWrapper
from mmengine.registry import MODEL_WRAPPERS
from torch import Tensor, nn

__all__ = ["HPFFDistributedDataParallel", "average_gradients", "init_cpu_process_group"]


@torch.no_grad()
def average_gradients(parameters: Iterable[nn.Parameter], flag: bool = False) -> bool:
    """Average ``.grad`` of ``parameters`` over the process group; True if any process flagged.

    Parameters without a gradient are skipped: every process runs the same schedule, so the set
    is the same everywhere. On one process (or without an initialised group) nothing is
    communicated and ``flag`` is returned as is.
    """
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    groups: dict[torch.dtype, list[Tensor]] = defaultdict(list)
    for p in parameters:
        if p.grad is not None:
            groups[p.grad.dtype].append(p.grad)
    if not groups:
        raise RuntimeError("average_gradients: no parameter has a gradient")
    first = next(iter(groups.values()))[0]
    marker = torch.tensor([float(flag)], dtype=first.dtype, device=first.device)
    groups[first.dtype].append(marker)
    world = dist.get_world_size()
    for tensors in groups.values():
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= world
        for tensor, chunk in zip(tensors, flat.split([t.numel() for t in tensors])):
            tensor.copy_(chunk.view_as(tensor))
    return bool(marker.item() > 0)


@MODEL_WRAPPERS.register_module()
class HPFFDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's DDP wrapper, for E2E and local methods alike, on GPUs or CPUs (gloo).

    E2E trains exactly as under ``MMDistributedDataParallel``. A local method's
    ``train_step`` runs under ``no_sync`` (no per-backward all-reduce) and averages the
    gradients itself once per optimizer step. A module on the CPU is wrapped without the
    ``device_ids`` mmengine's runner always passes (DDP accepts them only for GPU modules).
    """

    def __init__(self, module: nn.Module, **kwargs: Any) -> None:
        if next(module.parameters()).device.type == "cpu":
            kwargs.pop("device_ids", None)
            kwargs.pop("output_device", None)
        super().__init__(module=module, **kwargs)

    def train_step(self, data: Any, optim_wrapper: OptimWrapper) -> dict[str, Tensor]:
        if getattr(self.module, "local", None) is None:
            return super().train_step(data, optim_wrapper)
        with self.no_sync():
            return self.module.train_step(data, optim_wrapper)


def init_cpu_process_group(launcher: str) -> bool:
    """Join torchrun's process group over gloo when there is no GPU; True if it did.

    mmengine's ``pytorch`` launcher pins a CUDA device before it initialises the group, which
    fails on a machine without one. Initialised here first, the runner keeps this group.
    """
    if launcher != "pytorch" or torch.cuda.is_available() or dist.is_initialized():
        return False
    dist.init_process_group("gloo")
    return True
