"""Auxiliary architectures as data: presets, overrides, the FLOP budget and its record."""

from __future__ import annotations

import pytest
import timm
import torch

from hpff_zoo import METHODS, LocalModel
from hpff_zoo.aux.arch import AUX_PRESET_NAMES, AuxArch, resolve_aux_arch
from hpff_zoo.hub import local_model_args
from hpff_zoo.measure import FlopCounter

from .helpers import batch

LOCAL_METHODS = [m for m in METHODS if m != "e2e"]
# Every hpff_* model's backbone with options that keep it quick to build: few modules, costs
# measured at 64 px. One backbone per model serves every method and preset.
SMALL_MODELS = {
    "hpff_resnet32": {},
    "hpff_resnet110": dict(num_modules=4),
    "hpff_resnet101": dict(num_modules=3, input_size=(3, 64, 64)),
    "hpff_resnet152": dict(num_modules=3, input_size=(3, 64, 64)),
    "hpff_resnext101_32x8d": dict(num_modules=3, input_size=(3, 64, 64)),
    "hpff_vgg13": dict(num_modules=4, input_size=(3, 64, 64)),
    "hpff_vit_base_patch16_224": dict(num_modules=3, input_size=(3, 64, 64)),
}


@pytest.mark.parametrize("model_name", list(SMALL_MODELS))
def test_every_preset_builds_for_every_method_and_model(model_name):
    timm_kwargs = dict(img_size=64, depth=3) if "vit" in model_name else {}
    options = SMALL_MODELS[model_name]
    backbone = timm.create_model(model_name, num_classes=5, method="e2e", **options, **timm_kwargs)
    backbone = backbone.backbone
    for preset in AUX_PRESET_NAMES:
        for method in LOCAL_METHODS:
            model = LocalModel(backbone, method=method, aux=preset, **options)
            assert model.aux_arch == resolve_aux_arch(method, preset)
            assert len(model.aux["independent"]) == model.num_modules - 1


def test_cheap_preset_is_cheaper_than_paper():
    x, y = batch(4)
    flops = {}
    for preset in AUX_PRESET_NAMES:
        model = timm.create_model("hpff_resnet32", aux=preset)
        with FlopCounter() as counter:
            model.local_step(x, y)
        flops[preset] = counter.total
    assert flops["cheap"] < 0.5 * flops["paper"]


def test_paper_preset_is_the_official_2c2f_classifier_and_full_size_decoder():
    model = timm.create_model("hpff_resnet32", aux="paper", hilo=False, pff=1)
    aux = model.aux["independent"]["module8"]  # layer2: 32 channels, 16x16
    convs = [m for m in aux.classifier.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in aux.classifier.modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [
        (32, 64, (2, 2)),
        (64, 64, (1, 1)),
    ]
    assert [(f.in_features, f.out_features) for f in linears] == [(64, 128), (128, 10)]
    assert aux.decoder_size == 64 and aux.decoder.reduce[0].out_channels == 12
    assert aux.prepare_image(batch(2)[0]).shape[-2:] == (32, 32)  # the input's own size


def test_dict_overrides_fields_of_the_methods_paper_architecture():
    arch = resolve_aux_arch("dgl", {"convs": 1, "width": 8})
    assert arch == AuxArch(pool=32, convs=1, width=8, head_pool=2, fcs=1)
    model = timm.create_model("hpff_resnet32", method="dgl", aux={"convs": 1, "width": 8})
    convs = [m for m in model.aux.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.out_channels == 8 for c in convs)


@pytest.mark.parametrize(
    "aux,message",
    [("tiny", "unknown aux preset"), ({"depth": 3}, "unknown aux fields"), ({"pool": 0}, ">= 1")],
)
def test_bad_aux_settings_fail_with_a_message(aux, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model("hpff_resnet32", aux=aux)


@pytest.mark.parametrize("method", ["infopro", "dgl"])
@pytest.mark.parametrize("scope", ["decoder", "all"])
def test_budget_bounds_every_auxiliary_by_its_modules_counted_flops(method, scope):
    """Counted here on real tensors, through the training schedule's own code paths."""
    budget = 0.1
    model = timm.create_model(
        "hpff_resnet32", num_modules=8, method=method, aux_budget=budget, pff_scope=scope
    ).train()
    x, y = batch(4)
    h = x
    for j in range(model.num_modules - 1):
        u = h.detach().requires_grad_()
        with FlopCounter() as module:
            h = model._run_module(j, u)
            torch.autograd.grad(h.sum(), [u, *model.module_parameters(j)])
        for kind in ("independent", "cascade"):
            if f"module{j + 1}" not in model.aux[kind]:
                continue
            aux = model.aux[kind][f"module{j + 1}"]
            image = aux.prepare_image(x) if aux.needs_image else None
            with FlopCounter() as counted:
                model._aux_gradient(aux, h, y, image, lambda loss: loss.backward())
            ratio = counted.total / module.total
            assert 0 < ratio <= budget, (j, kind, ratio)


def test_a_budget_no_auxiliary_fits_is_an_error():
    with pytest.raises(ValueError, match="too small for module"):
        timm.create_model("hpff_resnet32", aux_budget=1e-6)


def test_the_export_records_the_auxiliaries_and_rebuilds_them_exactly():
    model = timm.create_model("hpff_resnet32", num_modules=6, aux="cheap", aux_budget=0.1)
    args = local_model_args(model)
    assert args["aux"]["pool"] == 8 and args["aux_budget"] == 0.1
    assert args["pff_scope"] == model.pff_scope
    rebuilt = timm.create_model("hpff_resnet32", **args)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
