"""AugLocal and MLAAN: the official constructions, copies that never share backbone weights,
MLAAN's EMA leap copies, and their memory against E2E."""

from __future__ import annotations

import pytest
import timm
import torch

from hpff_zoo.aux.dgl import DGLAux
from hpff_zoo.measure import step_peak_bytes

from .helpers import batch

# The official AugLocal code's per-module depths (LocalResNet.aux_depth_list) and sampled
# layers (AuxNetwork 'unifSamp') for ResNet-32 with one block per module, d = 3, tau = 0.5.
OFFICIAL_DEPTHS_R32_K16 = [3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2]
OFFICIAL_LAYERS_R32_K16 = {0: (5, 10, 15), 7: (11, 15), 13: (14, 15), 14: (15,)}


def _model(method, **kwargs):
    kwargs = {"num_modules": 16, "hilo": False, "pff": 1, "aux": "paper", **kwargs}
    return timm.create_model("hpff_resnet32", method=method, **kwargs).train()


def test_auglocal_paper_samples_the_official_later_layers():
    model = _model("auglocal")
    auxes = [model.aux["independent"][f"module{j + 1}"] for j in range(15)]
    assert [a.num_copies for a in auxes] == OFFICIAL_DEPTHS_R32_K16
    for j, layers in OFFICIAL_LAYERS_R32_K16.items():
        assert auxes[j].layers.indices == layers, f"module {j + 1}"


@pytest.mark.parametrize("method", ["auglocal", "mlaan"])
def test_copies_are_auxiliary_parameters_never_backbone_ones(method):
    model = _model(method, hilo=2)
    backbone = {p.data_ptr() for p in model.backbone.parameters()}
    assert not backbone & {p.data_ptr() for p in model.aux.parameters()}
    # The default budget leaves the copies alone: they are the method.
    assert timm.create_model("hpff_resnet32", method=method).aux_budget is None


def test_mlaan_leaps_through_stage_transitions_to_the_last_block():
    model = _model("mlaan", hilo=2)
    assert isinstance(model.aux["independent"]["module2"], DGLAux)  # the linear probe
    leap = model.aux["cascade"]["module2"]  # module 2 ends at layer1.1 (atom 2)
    (live,) = leap._source
    first = [a.as_module() for a in model.partition.atoms].index(live)
    # Official ResNet-32 table for this module: layer2.0, layer3.0, layer3.2, layer3.4
    # (atoms 6, 11, 13, 15); the rule here picks layer3.3 for layer3.2.
    assert (first, *leap.followers.indices) == (6, 11, 14, 15)


def test_mlaan_ema_copies_follow_their_live_blocks_and_the_trainable_ones_learn():
    model = _model("mlaan", hilo=2, aux_options={"momentum": 0.9})
    leap = model.aux["cascade"]["module3"]
    (live,) = leap._source
    x, y = batch(4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.local_step(x, y)
    assert all(p.grad is None for p in leap.momentum_block.parameters())
    assert sum(p.grad.abs().sum() for p in leap.bias_block.parameters()) > 0
    assert sum(p.grad.abs().sum() for p in leap.followers.parameters()) > 0
    optimizer.step()
    before = [p.clone() for p in leap.momentum_block.parameters()]
    now = [p.clone() for p in live.parameters()]
    optimizer.zero_grad()
    model.local_step(x, y)
    for ema, old, new in zip(leap.momentum_block.parameters(), before, now):
        torch.testing.assert_close(ema, 0.9 * old + 0.1 * new)


@pytest.mark.slow  # ~40 s each on the shared 2-core machine; the isolation tests are the fast cases
@pytest.mark.parametrize("method", ["auglocal", "mlaan"])
def test_local_step_peak_is_below_e2e_at_resnet32_k16(method):
    x, y = batch(32)
    e2e = step_peak_bytes(timm.create_model("hpff_resnet32", method="e2e"), x, y)
    local = step_peak_bytes(timm.create_model("hpff_resnet32", method=method), x, y)
    print(f"\nResNet-32 K=16 bs32 {method} (defaults) peak / E2E: {local / e2e:.3f}")
    assert local < 0.8 * e2e
