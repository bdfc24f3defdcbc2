"""The timm model contract on the plain CIFAR ResNets and on LocalModel, beyond timm's own suite.

timm's ``tests/test_models.py`` (run on our models from ``tests/timm_suite``) checks that each
piece exists and has the right shapes; these check that the pieces compute the right thing:
checkpointed gradients equal plain ones, scripted logits equal eager ones, pass-throughs name
the backbone's own parameters, and the pretrained listing matches what loads.
"""

import warnings

import pytest
import timm
import torch
from timm.models import FeatureInfo
from timm.models._manipulate import group_parameters
from timm.optim import create_optimizer_v2

from hpff_zoo.models import TIMM_BACKBONES, PretrainedWeightsError, available_tags

from .helpers import batch


def _cifar(**kwargs) -> torch.nn.Module:
    return timm.create_model("cifar_resnet32", num_classes=10, **kwargs)


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Output of ``model(x)`` and the bytes autograd saved for its backward."""
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    return out, sum(saved)


def test_cifar_resnet_checkpointing_gives_the_gradients_of_plain_e2e_with_less_memory():
    plain = _cifar().train()
    checkpointed = _cifar().train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.set_grad_checkpointing()
    x, y = batch(4)

    out_plain, bytes_plain = _saved_bytes(plain, x)
    out_ckpt, bytes_ckpt = _saved_bytes(checkpointed, x)
    torch.nn.functional.cross_entropy(out_plain, y).backward()
    torch.nn.functional.cross_entropy(out_ckpt, y).backward()

    torch.testing.assert_close(out_ckpt, out_plain)
    grads = dict(checkpointed.named_parameters())
    for name, param in plain.named_parameters():
        torch.testing.assert_close(grads[name].grad, param.grad, rtol=1e-5, atol=1e-6)
    # Per block: the stages' activations are recomputed, only block inputs stay saved.
    assert bytes_ckpt < bytes_plain / 3


@pytest.mark.parametrize("checkpointing", [False, True])
def test_cifar_resnet_forward_intermediates_follow_feature_info(checkpointing):
    model = _cifar().eval()
    model.set_grad_checkpointing(checkpointing)
    x = torch.randn(2, 3, 32, 32)
    info = FeatureInfo(model.feature_info, range(len(model.feature_info)))
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert [m.shape[1] for m in maps] == info.channels()
        assert [32 // m.shape[-1] for m in maps] == info.reduction()
        torch.testing.assert_close(final, model.forward_features(x))
        torch.testing.assert_close(model.forward_head(final), model(x))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last_two, maps[-2:])
        early, (stem,) = model.forward_intermediates(x, indices=[0], stop_early=True)
        torch.testing.assert_close(early, maps[0])
        torch.testing.assert_close(stem, maps[0])


@pytest.mark.parametrize(
    "name, kwargs", [("cifar_resnet32", {}), ("hpff_resnet32", dict(num_modules=4))]
)
def test_torchscript_gives_the_eager_logits(name, kwargs):
    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(scripted.forward_features(x), model.forward_features(x))


def test_local_model_passes_the_backbone_contract_through():
    model = timm.create_model("hpff_resnet32", num_classes=10, num_modules=4).eval()
    backbone = model.backbone
    assert model.in_chans == 3 and model.head_hidden_size == backbone.head_hidden_size
    for info, own in zip(model.feature_info, backbone.feature_info, strict=True):
        assert info["module"] == f"backbone.{own['module']}"
        model.get_submodule(info["module"])  # names a real module of the wrapper
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, indices=[1, 3])
        torch.testing.assert_close(final, backbone.forward_features(x))
        assert len(maps) == 2

    model.set_grad_checkpointing()
    assert backbone.grad_checkpointing

    # Layer-wise groups: the backbone's own grouping under backbone.; the auxiliaries join its
    # unmatched last group (the head's).
    ours = list(group_parameters(model, model.group_matcher()).values())
    theirs = [
        [f"backbone.{n}" for n in group]
        for group in group_parameters(backbone, backbone.group_matcher()).values()
    ]
    aux = [n for n, _ in model.named_parameters() if n.startswith("aux.")]
    assert len(ours) == len(theirs) > 2 and aux
    assert ours[:-1] == theirs[:-1] and ours[-1] == theirs[-1] + aux


def test_local_vit_keeps_pos_embed_and_cls_token_out_of_weight_decay():
    model = timm.create_model(
        "hpff_vit_base_patch16_224", num_classes=10, num_modules=2, img_size=32, depth=2
    )
    exempt = model.no_weight_decay()
    assert {"backbone.pos_embed", "backbone.cls_token"} <= exempt
    optimizer = create_optimizer_v2(model, "adamw", weight_decay=0.05)
    no_decay = {
        id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]
    }
    params = dict(model.named_parameters())
    assert id(params["backbone.pos_embed"]) in no_decay
    assert id(params["backbone.cls_token"]) in no_decay
    assert id(params["backbone.blocks.0.attn.qkv.weight"]) not in no_decay


def test_training_through_forward_warns_once_and_inference_does_not():
    model = timm.create_model("hpff_resnet32", num_classes=10, num_modules=4)
    x = torch.randn(2, 3, 32, 32)
    with pytest.warns(UserWarning, match="local_step"):
        model.train()(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x)  # once per model
        fresh = timm.create_model("hpff_resnet32", num_classes=10, num_modules=4)
        fresh.eval()(x)
        with torch.no_grad():
            fresh.train()(x)
        e2e = timm.create_model("hpff_resnet32", num_classes=10, method="e2e")
        e2e.train()(x)  # plain backpropagation is what the e2e baseline trains with


def test_a_wrong_channel_count_says_how_to_convert_the_image():
    model = timm.create_model("hpff_resnet32.fmnist_e2e").eval()
    with pytest.raises(ValueError, match=r"image\.convert\('L'\).*in_chans=3"):
        model(torch.randn(1, 3, 28, 28))
    rgb = timm.create_model("hpff_resnet32", num_classes=10, num_modules=4).eval()
    with pytest.raises(ValueError, match=r"image\.convert\('RGB'\)"):
        rgb(torch.randn(1, 1, 32, 32))


def test_reset_classifier_keeps_pooling_device_dtype_mode_and_frozen_state():
    model = timm.create_model("hpff_resnet32", num_classes=10, num_modules=4)
    model.reset_classifier(0)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 64)  # pooling kept
    model.reset_classifier(0, "")
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 64, 8, 8)

    model.to(torch.float64).eval().requires_grad_(False)
    model.reset_classifier(5, "avg")
    aux = list(model.aux.parameters())
    assert aux and all(p.dtype == torch.float64 and not p.requires_grad for p in aux)
    assert not any(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.get_classifier().parameters())  # a head to train

    trainable = timm.create_model("hpff_resnet32", num_classes=10, num_modules=4)
    trainable.reset_classifier(5)
    assert all(p.requires_grad for p in trainable.aux.parameters())


def test_a_local_model_builds_on_the_meta_device():
    model = timm.create_model("hpff_resnet110", device="meta", dtype=torch.float32)
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}
    assert model.num_modules == 55


def test_list_pretrained_is_exactly_the_tags_that_load():
    listed = timm.list_pretrained("hpff*")
    assert listed and sorted(listed) == available_tags()
    # timm's own weights load from a Hub cache (test_timm_backbones.py builds one); these are
    # hpff-zoo's, shipped with this checkout.
    for name in sorted(set(listed) - set(TIMM_BACKBONES)):
        headless = timm.create_model(name, pretrained=True, num_classes=0).eval()
        in_chans, height, width = headless.pretrained_cfg["input_size"]
        with torch.no_grad():
            features = headless(torch.randn(2, in_chans, height, width))
        assert features.shape == (2, headless.head_hidden_size)
    for name in set(timm.list_models("hpff*", include_tags=True)) - set(listed):
        assert timm.models.get_pretrained_cfg(name).hf_hub_id is None
    unlisted = next(
        n for n in timm.list_models("hpff_resnet32*", include_tags=True) if "cifar10" in n
    )
    with pytest.raises(PretrainedWeightsError, match="Tags with weights"):
        timm.create_model(unlisted, pretrained=True)


@pytest.mark.parametrize("in_chans", [None, 1])
def test_timm_validate_on_a_grayscale_image_folder_gives_the_one_channel_logits(tmp_path, in_chans):
    """timm's validate.py steps (model with ``--in-chans`` or its default 3, data config from
    the model, image mode from the config, ImageFolder, eval loader) on a shipped 1-channel tag:
    with or without ``--in-chans 1`` the logits are those of the tag on its grayscale images."""
    from PIL import Image
    from timm.data import create_dataset, create_loader, resolve_data_config

    tag = sorted(set(available_tags()) - set(TIMM_BACKBONES))[0]  # a shipped 1-channel tag
    generator = torch.Generator().manual_seed(0)
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(3):
            pixels = torch.randint(0, 256, (28, 28), generator=generator, dtype=torch.uint8)
            Image.fromarray(pixels.numpy(), mode="L").save(tmp_path / label / f"{i}.png")

    model = timm.create_model(tag, pretrained=True, in_chans=in_chans or 3).eval()
    config = resolve_data_config({"in_chans": in_chans}, model=model)
    mode = "RGB" if config["input_size"][0] == 3 else "L"
    dataset = create_dataset("", root=str(tmp_path), is_training=False, input_img_mode=mode)
    loader = create_loader(
        dataset,
        input_size=config["input_size"],
        batch_size=6,
        interpolation=config["interpolation"],
        mean=config["mean"],
        std=config["std"],
        crop_pct=config["crop_pct"],
        num_workers=0,
        use_prefetcher=False,
    )
    (images, _), *_ = list(loader)

    reference = timm.create_model(tag, pretrained=True).eval()
    gray = images.mean(1, keepdim=True)  # equal channels when read as RGB
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(gray), rtol=1e-4, atol=1e-4)
