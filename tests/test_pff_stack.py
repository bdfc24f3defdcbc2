"""PFF patches cut from a pooled map run as one stack: the numbers of one patch at a time."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from hpff_zoo import LocalModel
from hpff_zoo.aux.layers import PatchBatchNorm2d, patch_groups

from .helpers import batch


@pytest.mark.parametrize("momentum", [0.1, None])
def test_patch_batchnorm_on_a_stack_equals_one_call_per_patch(momentum):
    torch.manual_seed(0)
    stacked, alone = PatchBatchNorm2d(5, momentum=momentum), nn.BatchNorm2d(5, momentum=momentum)
    with torch.no_grad():
        stacked.weight.uniform_()
        stacked.bias.uniform_()
    alone.load_state_dict(stacked.state_dict())
    x = torch.randn(4 * 6, 5, 3, 3, dtype=torch.double, requires_grad=True)
    stacked, alone = stacked.double(), alone.double()
    upstream = torch.randn_like(x)
    with patch_groups(stacked, 4):
        (stacked(x) * upstream).sum().backward()
    grad, x.grad = x.grad, None
    (torch.cat([alone(patch) for patch in x.chunk(4)]) * upstream).sum().backward()
    torch.testing.assert_close(grad, x.grad)
    for name, buffer in alone.named_buffers():
        torch.testing.assert_close(stacked.get_buffer(name), buffer)
    for name, param in alone.named_parameters():
        torch.testing.assert_close(stacked.get_parameter(name).grad, param.grad)
    assert stacked.groups == 1  # only inside the block


def _stacks(model: LocalModel, monkeypatch, stack: bool) -> int:
    """One local step with stacking on or off; returns how many stacks ran."""
    calls = []
    original = LocalModel._stackable

    def stackable(aux, patches, pooled):
        calls.append(stack and original(aux, patches, pooled))
        return calls[-1]

    monkeypatch.setattr(LocalModel, "_stackable", staticmethod(stackable))
    x, y = batch(6)
    model.zero_grad()
    model.local_step(x.double(), y)
    return sum(calls)


@pytest.mark.parametrize("method", ["dgl", "infopro"])
def test_stacked_patches_train_backbone_and_auxiliaries_like_one_patch_at_a_time(
    method, monkeypatch
):
    model = timm.create_model("hpff_resnet32", num_modules=6, method=method, hilo=2, pff=2)
    stacked = model.double().train()
    sequential = copy.deepcopy(stacked)
    assert _stacks(stacked, monkeypatch, stack=True) > 0
    _stacks(sequential, monkeypatch, stack=False)
    for (name, got), want in zip(stacked.named_parameters(), sequential.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-7, atol=1e-9, msg=name)
    for (name, got), want in zip(stacked.named_buffers(), sequential.buffers()):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9, msg=name)


def test_patches_at_full_resolution_still_run_one_at_a_time(monkeypatch):
    """Without pooling, PFF's memory saving is the point: the paper auxiliaries never stack."""
    model = timm.create_model("hpff_resnet32", num_modules=6, method="dgl", aux="paper", pff=2)
    assert _stacks(model.double().train(), monkeypatch, stack=True) == 0
