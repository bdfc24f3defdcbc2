"""Bad input fails early with a message that says what to change."""

from __future__ import annotations

import pytest
import timm

import hpff_zoo

from .helpers import batch


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(method="backprop"), "unknown method 'backprop'"),
        (dict(num_modules=0), "positive integer"),
        (dict(num_modules=40), "exceeds the 16 atoms"),
        (dict(pff=0), "pff must be a grid size"),
        (dict(pff=1.5), "pff must be a grid size"),
        (dict(pff=16, num_modules=16), "pff=16 needs feature maps of at least 16x16"),
        (dict(hilo=1), "hilo must be False or a cascade size"),
        (dict(balance="speed", num_modules=4), "balance must be"),
    ],
)
def test_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model("hpff_resnet32", **kwargs)


def test_unknown_model_name():
    with pytest.raises(RuntimeError, match="unknown timm model"):
        hpff_zoo.from_timm("resnet_does_not_exist")


def test_wrong_input_shapes():
    model = timm.create_model("hpff_resnet32", num_modules=4)
    x, y = batch(2)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.local_step(x[:, :1], y)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.local_step(x[0], y)
    with pytest.raises(ValueError, match="labels"):
        model.local_step(x, y.float())
    with pytest.raises(ValueError, match="labels"):
        model.local_step(x, y[:1])


def test_fixed_size_model_rejects_other_sizes():
    model = timm.create_model("hpff_vit_base_patch16_224", img_size=32, depth=2, num_modules=2)
    x, y = batch(2, resolution=48)
    with pytest.raises(ValueError, match=r"takes \(32, 32\) inputs"):
        model.local_step(x, y)


def test_from_timm_rejects_timm_kwargs_with_an_instance():
    with pytest.raises(TypeError, match="num_classes"):
        hpff_zoo.from_timm(timm.create_model("cifar_resnet32"), num_classes=3)
