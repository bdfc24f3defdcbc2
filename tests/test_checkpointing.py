"""set_grad_checkpointing(True): a local step that recomputes instead of retaining.

The checkpointed step must be the plain step exactly (every gradient, every buffer, including
BatchNorm running statistics and ``num_batches_tracked``, every loss) and must need less memory:
with HiLo, at most one module graph alive at a time, measured.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

import hpff_zoo
from hpff_zoo import MemoryMeter

from .helpers import batch

PLUGINS = {"plain": (False, 1), "hilo": (2, 1), "pff": (False, 2), "hpff": (2, 2)}


def _twins(model: nn.Module, granularity: str = "module") -> tuple[nn.Module, nn.Module]:
    """``model`` and a copy of it with checkpointing on, both float64 in training mode."""
    plain = model.double().train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True, granularity=granularity)
    return plain, checkpointed


def _step(model, x, y, step=None) -> dict[str, float]:
    torch.manual_seed(1)  # the same dropout / stochastic-depth draws in both twins
    model.zero_grad(set_to_none=True)
    return (step or model.local_step)(x, y)


def _assert_same_step(plain, checkpointed, x, y, local=None):
    """Two steps of each twin (running statistics must move once per step, not more)."""
    for _ in range(2):
        want = _step(plain, x, y, local and local(plain))
        got = _step(checkpointed, x, y, local and local(checkpointed))
        assert got.keys() == want.keys()
        for name in want:
            assert got[name] == pytest.approx(want[name], rel=1e-12), name
    grads = {n: p.grad for n, p in checkpointed.named_parameters()}
    for name, p in plain.named_parameters():
        if p.grad is None:
            assert grads[name] is None, name
        else:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-10, atol=1e-12, msg=name)
    buffers = dict(checkpointed.named_buffers())
    assert any("num_batches_tracked" in n for n in buffers)
    for name, buffer in plain.named_buffers():
        torch.testing.assert_close(buffers[name], buffer, rtol=1e-10, atol=1e-12, msg=name)


def _resnet(method: str, plugins: str, **kwargs) -> nn.Module:
    hilo, pff = PLUGINS[plugins]
    # K=5 over ResNet-32's 16 atoms: modules of several atoms, checkpointed inside.
    return timm.create_model(
        "hpff_resnet32", num_modules=5, method=method, hilo=hilo, pff=pff, **kwargs
    )


def _matrix():
    """Every method with every plug-in set; the default suite keeps HPFF for each method and
    every plug-in set for InfoPro, the rest runs with ``-m slow``."""
    for method in ("dgl", "infopro", "predsim", "man"):
        for plugins in PLUGINS:
            fast = method == "infopro" or plugins == "hpff"
            yield pytest.param(method, plugins, marks=() if fast else pytest.mark.slow)


@pytest.mark.parametrize("method, plugins", list(_matrix()))
def test_checkpointed_local_step_is_the_plain_step(method, plugins):
    x, y = batch(4, resolution=16)
    _assert_same_step(*_twins(_resnet(method, plugins)), x.double(), y)


@pytest.mark.parametrize("num_modules", [5, 16])
def test_block_granularity_is_the_plain_step(num_modules):
    """Blocks only: K=5 modules keep their checkpointed graphs, K=16's one-block modules
    re-run (both paths of the granularity)."""
    x, y = batch(4, resolution=16)
    model = timm.create_model("hpff_resnet32", num_modules=num_modules, method="infopro")
    _assert_same_step(*_twins(model, granularity="block"), x.double(), y)


def test_checkpointed_e2e_step_counts_each_batch_once_in_running_statistics():
    """timm's own checkpointing recomputes in the backward; the statistics must not see it."""
    x, y = batch(4, resolution=16)
    _assert_same_step(*_twins(_resnet("e2e", "plain")), x.double(), y)


def test_longer_cascades_recompute_every_module_they_cross():
    x, y = batch(4, resolution=16)
    model = timm.create_model("hpff_resnet32", num_modules=5, method="infopro", hilo=3, pff=2)
    _assert_same_step(*_twins(model), x.double(), y)


def test_re_runs_draw_the_random_numbers_of_the_first_run():
    """Stochastic depth in a timm ResNet: a re-run with other masks would change gradients."""
    x, y = batch(4, resolution=32)
    backbone = timm.create_model("resnet18", num_classes=10, drop_path_rate=0.5)
    from hpff_zoo import from_timm

    model = from_timm(backbone, num_modules=3, method="dgl", hilo=2, pff=1)
    plain, checkpointed = _twins(model)
    _assert_same_step(plain, checkpointed, x.double(), y)
    torch.manual_seed(2)  # another draw: the gradients differ, so the masks do matter
    plain.zero_grad()
    plain.local_step(x.double(), y)
    grads = dict(checkpointed.named_parameters())
    assert any(not torch.allclose(p.grad, grads[n].grad) for n, p in plain.named_parameters())


def test_switch_off_restores_the_retaining_step():
    model = _resnet("infopro", "hpff")
    model.set_grad_checkpointing(True)
    model.set_grad_checkpointing(False)
    assert not model.grad_checkpointing
    assert not model.backbone.grad_checkpointing


def _graph_peak(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    model.train()
    model.local_step(x, y)  # allocates the .grad buffers
    with MemoryMeter() as meter:
        model.local_step(x, y)
    return meter.report.peak_bytes


def test_with_hilo_at_most_one_module_graph_is_alive():
    """Measured: HiLo's retained graph costs the plain step a module's activations; with
    checkpointing the HiLo step needs no more than the independent step that retains nothing
    beyond one module (plus HiLo's hand-offs: one stored input and gradient per module)."""
    x, y = batch(16, resolution=32)
    kwargs = dict(num_modules=4, method="infopro", pff=1, aux="cheap")
    hilo = timm.create_model("hpff_resnet32", hilo=2, **kwargs)
    alone = timm.create_model("hpff_resnet32", hilo=False, **kwargs)
    alone.load_state_dict(hilo.state_dict(), strict=False)
    retaining, independent = _graph_peak(hilo, x, y), _graph_peak(alone, x, y)
    hilo.set_grad_checkpointing(True)
    alone.set_grad_checkpointing(True)
    recomputing, independent_checkpointed = _graph_peak(hilo, x, y), _graph_peak(alone, x, y)
    hand_offs = 2 * 16 * 16 * 32 * 32 * 4  # a stored input and a pending gradient, largest map
    assert recomputing < retaining
    assert recomputing <= independent + hand_offs
    assert independent_checkpointed < independent  # atoms checkpointed inside the module
    hilo.set_grad_checkpointing(True, granularity="block")
    blocks = _graph_peak(hilo, x, y)  # two modules' block inputs at most, no whole graph
    assert recomputing <= blocks < retaining
    assert blocks <= independent + hand_offs


def test_checkpointed_segmentation_local_step_is_the_plain_step():
    """The segmentor's local step (dense auxiliaries, decode heads on recorded stage outputs),
    with the heads' dropout on: the re-runs must not shift its random draws."""
    pytest.importorskip("mmseg", reason="segmentation extra not installed")
    import hpff_zoo.seg  # noqa: F401

    from .seg_data import tiny_batch, tiny_model

    plain = tiny_model("hpff-k4", method="infopro", hilo=2, pff=2).double().train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.local.set_grad_checkpointing(True)
    x, y, _ = tiny_batch(2)
    _assert_same_step(plain, checkpointed, x.double(), y, local=lambda m: m.local.local_step)


def test_a_checkpointed_backbone_partitions_and_records_plain_e2e_as_its_baseline():
    """A run whose planner chose checkpointing ended in a traceback: its record's E2E twin
    re-partitioned the checkpointed backbone, whose blocks timm's checkpoint_seq runs instead of
    its children. Flattening traces the plain forward; the baseline is plain E2E."""
    from hpff_zoo.training.record import peak_memory_against_e2e

    x, y = batch(8)
    plain = timm.create_model("hpff_resnet32", num_modules=4, method="dgl", hilo=False, pff=1)
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    (_, e2e), (local, e2e_again) = (peak_memory_against_e2e(m, x, y) for m in (plain, checkpointed))
    assert e2e_again == e2e and local < e2e
    assert checkpointed.backbone.grad_checkpointing  # restored after the trace
    backbone = timm.create_model("cifar_resnet32", num_classes=10)
    backbone.set_grad_checkpointing(True)
    wrapped = hpff_zoo.from_timm(backbone, num_modules=4, method="dgl", hilo=False, pff=1)
    assert wrapped.num_modules == 4 and backbone.grad_checkpointing
