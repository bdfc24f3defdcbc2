"""Data-parallel segmentation: 2 gloo processes take the optimizer steps of 1 process.

Each of 2 processes trains the tiny recipe model on its half of a fixed global batch through
``HPFFDistributedDataParallel`` (what the recipes' ``model_wrapper_cfg`` builds); the reference is
one process accumulating the same two halves (``accumulative_counts=2``), as the classification
recipes' 2-process test does: BatchNorm then sees the same per-half statistics in both runs, so
every trained parameter must agree. Dropout is off so that both runs draw no random masks.
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


def _optim_wrapper(model: nn.Module, **kwargs) -> OptimWrapper:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    return OptimWrapper(optimizer, **kwargs)


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
        wrapper = _optim_wrapper(model)
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
    model = _model(name)
    wrapper = _optim_wrapper(model, accumulative_counts=len(halves))
    for _ in range(STEPS):
        for data in halves:
            model.train_step(data, wrapper)
    return _trained(model.state_dict())


def test_two_processes_take_the_optimizer_steps_of_one_accumulating_process():
    ranks = run_stages(_data_parallel, 2, timeout=120)
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
            torch.testing.assert_close(zero[key], value, rtol=1e-4, atol=1e-6, msg=f"{name} {key}")
            torch.testing.assert_close(one[key], zero[key], rtol=0, atol=0, msg=f"{name} {key}")
        # Without averaging, process 0 would have trained on its half only.
        alone = _accumulated(name, _halves()[:1])
        assert any(not torch.allclose(alone[k], expected[k]) for k in expected), name
