"""MAN: the momentum copy follows the next block by the EMA rule and never gets a gradient."""

from __future__ import annotations

import pytest
import timm
import torch

from .helpers import batch


def _man_model(**kwargs):
    return timm.create_model(
        "hpff_resnet32", num_modules=4, method="man", hilo=False, pff=1, **kwargs
    ).train()


def test_momentum_copy_follows_the_ema_rule_and_bias_copy_learns():
    model = _man_model(aux_options={"momentum": 0.9})
    aux = model.aux["independent"]["module1"]
    next_block = model.partition.module_atoms(1)[0].as_module()
    x, y = batch(4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    model.local_step(x, y)
    assert all(p.grad is None for p in aux.momentum_block.parameters())
    bias_grads = [p.grad for p in aux.bias_block.parameters()]
    assert all(g is not None for g in bias_grads)
    assert sum(g.abs().sum() for g in bias_grads) > 0
    optimizer.step()  # moves the next block (and the bias copy), not the momentum copy

    ema_before = [p.clone() for p in aux.momentum_block.parameters()]
    live = [p.clone() for p in next_block.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(ema_before, live))
    optimizer.zero_grad()
    model.local_step(x, y)
    for ema, old, new in zip(aux.momentum_block.parameters(), ema_before, live):
        torch.testing.assert_close(ema, 0.9 * old + 0.1 * new)


def test_momentum_copies_are_auxiliary_state_not_backbone_parameters():
    model = _man_model()
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("aux.independent.module1.momentum_block.") for n in names)
    backbone = {id(p) for p in model.backbone.parameters()}
    aux_ids = {id(p) for p in model.aux.parameters()}
    assert not backbone & aux_ids


def test_man_without_a_module_next_block_is_a_clear_error():
    # ViT's first atom (the embedding) is a function, so a module ending before it has none...
    # ...but every other ViT module's next atom is a transformer block, which MAN can copy.
    model = timm.create_model(
        "hpff_vit_base_patch16_224", img_size=32, depth=3, num_modules=3, method="man"
    )
    x, y = batch(2)
    assert set(model.local_step(x, y)) == {"module1", "module2", "head"}
    from hpff_zoo.aux import AuxSpec, build_aux

    with pytest.raises(ValueError, match="next module's first block"):
        build_aux("man", AuxSpec(channels=8, size=(4, 4), num_classes=3))
