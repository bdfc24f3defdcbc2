"""Gradient isolation: what local_step leaves in each module equals its own local losses alone."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

from .helpers import batch, expected_module_gradients


def _small_model(method, hilo, pff, **kwargs):
    model = timm.create_model(
        "hpff_resnet32", num_modules=6, method=method, hilo=hilo, pff=pff, **kwargs
    )
    return model.double().train()


def _assert_step_matches_reference(model):
    x, y = batch(6)
    x = x.double()
    model.zero_grad()
    model.local_step(x, y)
    actual = [[p.grad.clone() for p in model.module_parameters(j)] for j in range(6)]
    expected = expected_module_gradients(model, x, y)
    for j, (got, want) in enumerate(zip(actual, expected)):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-9, msg=f"module {j + 1}")


@pytest.mark.parametrize("method", ["dgl", "infopro", "predsim", "man", "auglocal", "mlaan"])
@pytest.mark.parametrize("pff", [1, 2])
def test_without_hilo_each_module_gets_only_its_own_local_loss(method, pff):
    _assert_step_matches_reference(_small_model(method, hilo=False, pff=pff))


@pytest.mark.parametrize(
    "method,hilo",
    [("dgl", 2), ("dgl", 3), ("infopro", 2), ("man", 2), ("auglocal", 2), ("mlaan", 2)],
)
def test_hilo_cascade_reaches_exactly_its_window(method, hilo):
    # Equal weights so the cascade's contribution is as visible as the independent one's.
    model = _small_model(method, hilo=hilo, pff=2, hilo_weights=(0.5, 0.5))
    _assert_step_matches_reference(model)


@pytest.mark.parametrize("method", ["dgl", "infopro", "predsim", "man", "auglocal", "mlaan"])
@pytest.mark.parametrize("aux", ["paper", "cheap"])
@pytest.mark.parametrize("scope", ["decoder", "all"])
def test_aux_presets_and_pff_scopes_keep_the_reference_gradients(method, aux, scope):
    """Pooling the map once, contiguous patches and the decoder-only scope change no gradient:
    the step equals the one-graph reference that patches the full-resolution map."""
    model = _small_model(method, hilo=2, pff=2, aux=aux, pff_scope=scope, hilo_weights=(0.5, 0.5))
    _assert_step_matches_reference(model)


def test_budget_sized_auxiliaries_keep_the_reference_gradients():
    model = _small_model("infopro", hilo=2, pff=2, aux_budget=0.05, hilo_weights=(0.5, 0.5))
    _assert_step_matches_reference(model)


def test_hilo_cascade_changes_earlier_modules_only_within_the_window():
    """Perturb one cascade auxiliary: only the k modules of its window see different gradients."""
    x, y = batch(6)
    model = _small_model("dgl", hilo=2, pff=1, hilo_weights=(0.5, 0.5))

    def gradients():
        model.zero_grad()
        model.local_step(x.double(), y)
        return [torch.cat([p.grad.flatten() for p in model.module_parameters(j)]) for j in range(6)]

    before = gradients()
    with torch.no_grad():
        for p in model.aux["cascade"]["module4"].parameters():
            p.add_(torch.randn_like(p))
    after = gradients()
    changed = [j + 1 for j in range(6) if not torch.allclose(before[j], after[j])]
    assert changed == [3, 4]


def test_auxiliaries_train_on_their_own_unweighted_loss():
    """The HiLo weights scale what enters the backbone, not the auxiliary's own gradient."""
    x, y = batch(6)
    template = _small_model("dgl", hilo=2, pff=1)
    grads = {}
    for weights in [(0.001, 0.999), (1.0, 1.0)]:
        model = copy.deepcopy(template)
        model.hilo_weights = weights
        model.local_step(x.double(), y)
        grads[weights] = [p.grad.clone() for p in model.aux["independent"]["module2"].parameters()]
    for a, b in zip(*grads.values()):
        torch.testing.assert_close(a, b)


def test_e2e_is_plain_backpropagation():
    x, y = batch(6)
    model = timm.create_model("hpff_resnet32", method="e2e").double()
    model.local_step(x.double(), y)
    plain = timm.create_model("cifar_resnet32").double()
    plain.load_state_dict(model.backbone.state_dict())
    torch.nn.functional.cross_entropy(plain(x.double()), y).backward()
    for (name, p), q in zip(model.backbone.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
