"""Data-parallel segmentation: 2 gloo processes take the optimizer steps of 1 process.

Each of 2 processes trains the tiny recipe model on its half of a fixed global batch through
``HPFFDistributedDataParallel`` (what the recipes' ``model_wrapper_cfg`` builds); the reference is
one process accumulating the same two halves (``accumulative_counts=2``), as the classification
recipes' 2-process test does: BatchNorm then sees the same per-half statistics in both runs, so
every trained parameter must agree, bit for bit. Dropout is off so that both runs draw no random
masks, and every process runs one intra-op thread (the thread count sets oneDNN's reduction
order: a 2-thread reference ended 1e-2 away from the 1-thread processes in E2E's case).

Bit-exact needs the reference to add gradients in the all-reduce's order. A streamed local step
calls backward several times per parameter (HiLo's cascade, PFF's patches), so accumulating the
second half into ``.grad`` adds its contributions one by one to the first half's sum,
``((a + b) + c) + d``, where the all-reduce adds the two processes' sums, ``(a + b) + (c + d)``.
Float32 addition is not associative, and 3 momentum steps through BatchNorm on 2-image batches
grow that last-bit difference: measured, 108 of hpff-k4's 129 tensors differed, by up to 1.0e-6
(E2E and InfoPro, one backward per parameter and iteration, were already equal). Scaling by the
accumulation factor 1/2 is exact, so :class:`_HalvesSummedOnce` reproduces the all-reduce's sum.
The same processes also build the recipe as configured (SyncBN): it must keep SyncBN and split
the backbone exactly as the single-process BN model does.
"""

from __future__ import annotations

import pytest

pytest.importorskip("mmseg", reason='segmentation extra not installed: pip install -e ".[seg]"')

import torch
import torch.distributed as dist
from mmengine.optim import OptimWrapper
from mmseg.registry import MODELS
from torch import nn

import hpff_zoo.seg  # noqa: F401
from hpff_zoo.parallel import run_stages
from hpff_zoo.seg import HPFFDistributedDataParallel

from .seg_data import tiny_batch, tiny_config

METHODS = ("e2e", "infopro-k4", "hpff-k4")
STEPS = 3


def _model(name: str) -> nn.Module:
    """The tiny recipe with BN for SyncBN (gloo on CPU has no SyncBN) and dropout off."""
    cfg = tiny_config(name, "unused", "unused", 1).model
    for part in ("backbone", "decode_head", "auxiliary_head"):
        cfg[part].norm_cfg = dict(type="BN", requires_grad=True)
    torch.manual_seed(0)
    model = MODELS.build(cfg).train()
    for module in model.modules():
        if isinstance(module, nn.Dropout | nn.Dropout2d):
            module.p = 0.0
    return model


def _halves() -> list[dict]:
    x, _, samples = tiny_batch(4)
    images = list((x * 50 + 120).to(torch.uint8))
    return [{"inputs": images[i : i + 2], "data_samples": samples[i : i + 2]} for i in (0, 2)]


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)


class _HalvesSummedOnce(OptimWrapper):
    """mmengine's gradient accumulation, adding each half's whole gradient to the other's once.

    Call :meth:`set_aside` before each half's ``train_step``: the gradient so far is put aside,
    the half accumulates its own from zero, and :meth:`step` adds the two sums, as the
    all-reduce of two processes does.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, **kwargs) -> None:
        super().__init__(optimizer, **kwargs)
        self._params = [p for group in optimizer.param_groups for p in group["params"]]
        self._aside: list[torch.Tensor | None] = [None] * len(self._params)

    def set_aside(self) -> None:
        assert all(a is None for a in self._aside), "two halves per optimizer step, no more"
        self._aside = [p.grad for p in self._params]
        for p in self._params:
            p.grad = None

    def step(self, **kwargs) -> None:
        for p, aside in zip(self._params, self._aside):
            if aside is not None:
                p.grad = aside if p.grad is None else aside + p.grad
        self._aside = [None] * len(self._params)
        super().step(**kwargs)


def _trained(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var",
                                                              "num_batches_tracked"))}  # fmt: skip


def _data_parallel() -> dict[str, tuple[dict, int]]:
    """One process of the 2-process run: each method's weights and all-reduce calls per step."""
    rank = dist.get_rank()
    data = _halves()[rank]
    calls = []
    all_reduce = dist.all_reduce

    def counting(*args, **kwargs):
        calls.append(1)
        return all_reduce(*args, **kwargs)

    syncbn = MODELS.build(tiny_config("hpff-k4", "unused", "unused", 1).model)
    results = {"syncbn": (_norm_types(syncbn), syncbn.local.partition.starts)}
    for name in METHODS:
        model = HPFFDistributedDataParallel(module=_model(name), broadcast_buffers=False)
        wrapper = OptimWrapper(_sgd(model))
        calls.clear()
        dist.all_reduce = counting
        try:
            for _ in range(STEPS):
                model.train_step(data, wrapper)
        finally:
            dist.all_reduce = all_reduce
        results[name] = (_trained(model.module.state_dict()), len(calls) / STEPS)
    return results


def _norm_types(model: nn.Module) -> set[str]:
    return {
        "SyncBN" if isinstance(m, nn.SyncBatchNorm) else "BN"
        for m in model.backbone.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }


def _accumulated(name: str, halves: list[dict]) -> dict[str, torch.Tensor]:
    """One process accumulating ``halves`` per optimizer step, on one thread like the others."""
    assert torch.get_num_threads() == 1
    model = _model(name)
    wrapper = _HalvesSummedOnce(_sgd(model), accumulative_counts=len(halves))
    for _ in range(STEPS):
        for data in halves:
            wrapper.set_aside()
            model.train_step(data, wrapper)
    return _trained(model.state_dict())


def test_two_processes_take_the_optimizer_steps_of_one_accumulating_process():
    ranks = run_stages(_data_parallel, 2, timeout=120, threads=1)
    # A multi-process build keeps the config's SyncBN and partitions exactly as BN does.
    single = MODELS.build(tiny_config("hpff-k4", "unused", "unused", 1).model)
    for rank in ranks:
        assert rank["syncbn"] == ({"SyncBN"}, single.local.partition.starts)
    assert _norm_types(single) == {"BN"}
    for name in METHODS:
        expected = _accumulated(name, _halves())
        (zero, calls), (one, _) = ranks[0][name], ranks[1][name]
        if name != "e2e":  # DDP's reducer averages E2E inside its backward, not via all_reduce
            assert calls == 1, f"{name}: {calls} all-reduce calls per step, expected 1"
        assert any(k.startswith("local_aux.") for k in expected) == (name != "e2e")
        for key, value in expected.items():
            assert torch.equal(zero[key], value), f"{name} {key}: process 0 and the reference"
            assert torch.equal(one[key], zero[key]), f"{name} {key}: the two processes"
        # Without averaging, process 0 would have trained on its half only.
        alone = _accumulated(name, _halves()[:1])
        assert any(not torch.allclose(alone[k], expected[k]) for k in expected), name
