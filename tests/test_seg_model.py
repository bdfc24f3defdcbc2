"""HPFFEncoderDecoder as a model: isolation, equivalence with mmseg, memory, clear errors."""

from __future__ import annotations

import pytest

pytest.importorskip("mmseg", reason='segmentation extra not installed: pip install -e ".[seg]"')

import torch
from mmengine.optim import OptimWrapper
from mmseg.registry import MODELS
from torch import nn

import hpff_zoo.seg  # noqa: F401

from .helpers import expected_module_gradients
from .seg_data import peak_training_bytes, tiny_batch, tiny_config, tiny_model


def _deterministic(model):
    """Double precision, training mode, dropout off: the reference recomputes every forward."""
    model = model.double().train()
    for module in model.modules():
        if isinstance(module, nn.Dropout | nn.Dropout2d):
            module.eval()
    return model


@pytest.mark.parametrize(
    "method, hilo, pff",
    [("infopro", False, 1), ("infopro", 2, 2), ("dgl", 2, 2)],
)
def test_each_module_gets_exactly_its_local_losses(method, hilo, pff):
    model = _deterministic(
        tiny_model("hpff-k4", method=method, hilo=hilo, pff=pff, hilo_weights=(0.5, 0.5))
    )
    local = model.local
    x, y, _ = tiny_batch(4)
    x = x.double()
    model.zero_grad()
    losses = local.local_step(x, y)
    assert set(losses) == {"module1", "module2", "module3", "head"}
    actual = [[p.grad.clone() for p in local.module_parameters(j)] for j in range(4)]
    expected = expected_module_gradients(local, x, y)
    for j, (got, want) in enumerate(zip(actual, expected)):
        assert any(g.abs().sum() > 0 for g in got), f"module {j + 1} got no gradient"
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-9, msg=f"module {j + 1}")


def test_heads_train_only_the_last_module_without_hilo():
    """Perturbing the decode head changes module 4's gradients and no other module's."""
    model = _deterministic(tiny_model("infopro-k4"))
    x, y, _ = tiny_batch(4)

    def gradients():
        model.zero_grad()
        model.local.local_step(x.double(), y)
        return [
            torch.cat([p.grad.flatten() for p in model.local.module_parameters(j)])
            for j in range(4)
        ]

    before = gradients()
    with torch.no_grad():
        for p in model.decode_head.parameters():
            p.add_(torch.randn_like(p))
    after = gradients()
    assert [j + 1 for j in range(4) if not torch.allclose(before[j], after[j])] == [4]


def _stock_twin(model):
    """mmseg's own EncoderDecoder with the same config and weights."""
    cfg = tiny_config("e2e", "unused", "unused", 1).model
    cfg.type = "EncoderDecoder"
    cfg.pop("method")
    stock = MODELS.build(cfg)
    stock.load_state_dict(model.state_dict(), strict=True)
    return stock


def test_e2e_matches_mmseg_encoder_decoder_loss_and_update():
    model = tiny_model("e2e")
    stock = _stock_twin(model)
    assert type(stock).__name__ == "EncoderDecoder"
    x, _, samples = tiny_batch(4)
    logs = []
    for segmentor in (model, stock):
        segmentor.train()
        wrapper = OptimWrapper(torch.optim.SGD(segmentor.parameters(), lr=0.1))
        torch.manual_seed(0)  # same dropout masks
        data = {"inputs": list((x * 50 + 120).to(torch.uint8)), "data_samples": samples}
        logs.append(segmentor.train_step(data, wrapper))
    assert set(logs[0]) == set(logs[1])
    for key in logs[0]:
        torch.testing.assert_close(logs[0][key], logs[1][key], msg=key)
    for (name, p), q in zip(model.named_parameters(), stock.parameters()):
        torch.testing.assert_close(p, q, msg=name)


def test_local_train_step_updates_backbone_heads_and_auxiliaries_once():
    model = tiny_model("hpff-k4").train()
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, _, samples = tiny_batch(4)
    data = {"inputs": list((x * 50 + 120).to(torch.uint8)), "data_samples": samples}
    logs = model.train_step(data, wrapper)
    assert {"decode.loss_ce", "aux.loss_ce", "module1.loss_local", "module3.loss_local"} <= set(
        logs
    )
    parts = sum(v for k, v in logs.items() if "loss" in k and k != "loss")
    torch.testing.assert_close(logs["loss"], parts)
    changed = {
        n.split(".")[0] for n, p in model.named_parameters() if not torch.equal(p, before[n])
    }
    assert changed == {"backbone", "decode_head", "auxiliary_head", "local_aux"}
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())  # zeroed


def test_local_backbone_turns_syncbn_into_batchnorm_before_partitioning():
    """The base config's SyncBN is BN in the backbone, and the atoms run those BN layers."""
    model = tiny_model("hpff-k4")
    assert tiny_config("hpff-k4", "unused", "unused", 1).model.backbone.norm_cfg.type == "SyncBN"
    norms = [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and not any(isinstance(m, nn.SyncBatchNorm) for m in norms)
    called = set()
    for norm in norms:
        norm.register_forward_hook(lambda m, *_: called.add(id(m)))
    x, _, _ = tiny_batch(2)
    with torch.no_grad():
        for j in range(model.local.num_modules):
            x = model.local._run_module(j, x)
    assert called == {id(m) for m in norms}


def test_checkpoint_is_mmseg_state_dict_plus_auxiliaries():
    model = tiny_model("hpff-k4")
    stock_keys = set(_stock_twin(tiny_model("e2e")).state_dict())
    keys = set(model.state_dict())
    assert stock_keys <= keys
    assert {k.split(".")[0] for k in keys - stock_keys} == {"local_aux"}


def test_hpff_k4_trains_with_less_peak_memory_than_e2e():
    x, _, samples = tiny_batch(4)
    data = {"inputs": list((x * 50 + 120).to(torch.uint8)), "data_samples": samples}
    peaks = {name: peak_training_bytes(tiny_model(name), data) for name in ("e2e", "hpff-k4")}
    print(
        f"\nDeepLab-V3 ResNetV1c-18/8, crop 64x128, batch 4, peak training memory: "
        f"E2E {peaks['e2e'] / 2**20:.2f} MiB, InfoPro+HPFF K=4 {peaks['hpff-k4'] / 2**20:.2f} "
        f"MiB ({peaks['hpff-k4'] / peaks['e2e']:.3f})"
    )
    assert peaks["hpff-k4"] < peaks["e2e"]


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(method="backprop"), "unknown method 'backprop'"),
        (dict(method="predsim"), "unknown method 'predsim'"),
        (dict(num_modules=99), "num_modules=99 exceeds"),
        (dict(pff=64), "pff=64 needs feature maps"),
    ],
)
def test_bad_model_config_is_a_clear_error(options, message):
    with pytest.raises(ValueError, match=message):
        tiny_model("hpff-k4", **options)


def test_local_method_without_a_crop_size_is_a_clear_error():
    cfg = tiny_config("hpff-k4", "unused", "unused", 1).model
    cfg.data_preprocessor.size = None
    with pytest.raises(ValueError, match=r"data_preprocessor\.size = crop_size"):
        MODELS.build(cfg)


def test_batch_of_one_and_whole_network_loss_are_clear_errors():
    x, _, samples = tiny_batch(2)
    data = {"inputs": list((x[:1] * 50 + 120).to(torch.uint8)), "data_samples": samples[:1]}
    for name in ("e2e", "hpff-k4"):
        model = tiny_model(name).train()
        wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
        with pytest.raises(ValueError, match="at least 2 images per batch"):
            model.train_step(data, wrapper)
    with pytest.raises(RuntimeError, match="trains through train_step"):
        tiny_model("hpff-k4").loss(x, samples)


def test_non_finite_local_loss_stops_before_the_optimizer_steps():
    """A NaN in module 2's auxiliary: the error names module 2, and no weight changes."""
    model = tiny_model("hpff-k4").train()
    with torch.no_grad():
        next(model.local_aux["independent"]["module2"].parameters()).fill_(float("nan"))
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, _, samples = tiny_batch(4)
    data = {"inputs": list((x * 50 + 120).to(torch.uint8)), "data_samples": samples}
    with pytest.raises(FloatingPointError, match=r"non-finite loss in module2 \(local loss\)"):
        model.train_step(data, wrapper)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, before[name], rtol=0, atol=0, equal_nan=True, msg=name)
        assert p.grad is None or not p.grad.any(), name


def test_pixel_loss_of_an_all_ignored_patch_is_zero_and_patches_average_to_the_whole():
    from hpff_zoo.aux import AuxSpec
    from hpff_zoo.seg.aux import IGNORE_INDEX, PixelClassifier

    classifier = PixelClassifier(AuxSpec(channels=8, size=(8, 16), num_classes=5)).eval()
    feature = torch.randn(2, 8, 8, 16, requires_grad=True)
    labels = torch.randint(0, 5, (2, 32, 64))
    labels[:, 16:] = IGNORE_INDEX  # the bottom half is padding
    empty = classifier(feature[..., 4:, :], labels[..., 16:, :])
    empty.backward()
    assert empty.item() == 0 and torch.isfinite(feature.grad).all()
    halves = [
        classifier(feature[..., r, :], labels[..., r2, :])
        for r, r2 in [(slice(0, 4), slice(0, 16)), (slice(4, 8), slice(16, 32))]
    ]
    whole = classifier(feature, labels)
    torch.testing.assert_close(sum(halves) / 2, whole, rtol=0.05, atol=0)
