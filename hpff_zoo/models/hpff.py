"""The ``hpff_*`` timm entry points: the paper's backbones wrapped in :class:`LocalModel`.

Each entry point builds the plain timm backbone and wraps it, through timm's
``build_model_with_cfg``, so pretrained cfgs, overlays, ``features_only`` and pretrained weights
resolve the timm way. Defaults follow the paper: K and the local method per backbone, HiLo with
cascade size 2, PFF with a 2×2 grid; a pretrained tag (see :mod:`hpff_zoo.models.tags`) brings
the setting it was trained with instead. Every default is a keyword argument::

    timm.create_model("hpff_resnet32", num_classes=10, method="dgl", num_modules=8, pff=1)
    timm.create_model("hpff_resnet32.fmnist_infopro_k16_hpff", pretrained=True, num_classes=5)
    timm.create_model("hpff_resnet101", features_only=True)  # the plain backbone's feature maps

The tag's preprocessing (input size, mean/std, which the InfoPro decoders also use) becomes the
backbone's own ``pretrained_cfg``, so ``model.backbone`` exports as a self-describing timm model.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import timm
from timm.models import DefaultCfg, PretrainedCfg, build_model_with_cfg, register_model
from timm.models._builder import resolve_pretrained_cfg

from ..choices import unknown_name
from ..local import LocalModel, create_backbone, with_default_aux
from .pretrained import available_tags, filter_checkpoint, load_with_fallback
from .tags import TAGS, TIMM_BACKBONES

__all__ = ["HPFF_MODELS", "LOCAL_KWARGS", "backbone_cfg", "with_channels"]

# hpff name -> (plain timm model, paper defaults)
HPFF_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "hpff_resnet32": ("cifar_resnet32", dict(num_modules=16, method="infopro")),
    "hpff_resnet110": ("cifar_resnet110", dict(num_modules=55, method="infopro")),
    "hpff_resnet101": ("resnet101", dict(num_modules=4, method="infopro")),
    "hpff_resnet152": ("resnet152", dict(num_modules=4, method="infopro")),
    "hpff_resnext101_32x8d": ("resnext101_32x8d", dict(num_modules=4, method="infopro")),
    "hpff_vgg13": ("vgg13", dict(num_modules=10, method="dgl")),
    "hpff_vit_base_patch16_224": ("vit_base_patch16_224", dict(num_modules=12, method="dgl")),
}
HPFF_DEFAULTS = dict(hilo=2, pff=2)
LOCAL_KWARGS = (
    "num_modules", "method", "hilo", "pff", "splits", "balance", "hilo_weights", "aux_options",
    "input_size", "trace_size", "aux", "aux_budget", "pff_scope",
)  # fmt: skip
AUX_PINS = ("aux", "aux_budget", "pff_scope")
FEATURE_KWARGS = ("out_indices", "feature_cls")
_SOURCE_FIELDS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "tag")


def _registry_cfgs() -> dict[str, DefaultCfg]:
    """timm's per-architecture cfgs of every tag: timm-backbone tags first, then the catalogue.

    The first tag is the architecture's default: for an ImageNet model its timm-backbone tag, so
    that ``timm.create_model("hpff_resnet101", pretrained=True)`` loads timm's weights; for a
    CIFAR model the paper's main setting. A catalogue tag gets a weights location only where
    weights exist (at import: published, or shipped in model_cards/), so that
    ``timm.list_pretrained("hpff*")`` lists exactly the tags that load. Built directly rather
    than with ``generate_default_cfgs``, which would make the first tag *with weights* the
    default: ``timm.create_model("hpff_resnet32")`` would turn into a 1-channel Fashion-MNIST
    model instead of the paper's CIFAR-10 setting.
    """
    have = set(available_tags())
    cfgs = [(b.arch, b.tag, b.pretrained_cfg(), True) for b in TIMM_BACKBONES.values()]
    cfgs += [(s.arch, s.tag, s.pretrained_cfg(n in have), n in have) for n, s in TAGS.items()]
    out: dict[str, DefaultCfg] = {}
    for arch, tag, cfg, has_weights in cfgs:
        entry = out.setdefault(arch, DefaultCfg())
        entry.tags.append(tag)
        entry.cfgs[tag] = PretrainedCfg(**cfg)
        entry.is_pretrained |= has_weights
    return out


default_cfgs = _registry_cfgs()


def backbone_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """An hpff_* pretrained cfg as its backbone's: no weights source, head names unprefixed."""
    out = {k: v for k, v in cfg.items() if k not in (*_SOURCE_FIELDS, "architecture")}
    for key in ("classifier", "first_conv"):
        if isinstance(cfg.get(key), str):
            out[key] = cfg[key].removeprefix("backbone.")
    return out


def with_channels(cfg: dict[str, Any], in_chans: int) -> dict[str, Any]:
    """``cfg`` describing ``in_chans``-channel input (``input_size``, ``mean``, ``std``).

    A tag created with another channel count than it was trained with (timm adapts the first
    convolution's weights) takes other images; its data config must say so, or timm's scripts
    would feed it the tag's channel count: ``validate.py`` builds every model with
    ``in_chans=3`` unless told otherwise and reads images in the mode of the config. One channel
    gets the average statistics; more channels repeat them, as timm repeats the weights.
    """
    channels, *size = cfg["input_size"]
    if channels == in_chans:
        return cfg
    out = dict(cfg, input_size=(in_chans, *size))
    for key in ("mean", "std"):
        values = tuple(cfg[key])
        if in_chans == 1:
            out[key] = (sum(values) / len(values),)
        else:
            out[key] = tuple(values[i % len(values)] for i in range(in_chans))
    return out


def _wrap(base: str, cfg: dict[str, Any], **kwargs: Any) -> LocalModel:
    local = {k: kwargs.pop(k) for k in LOCAL_KWARGS if k in kwargs}
    if "in_chans" in kwargs:
        cfg = with_channels(cfg, kwargs["in_chans"])
    return LocalModel(create_backbone(base, LOCAL_KWARGS, pretrained_cfg=cfg, **kwargs), **local)


def _build(name: str, cfg: dict[str, Any], pretrained: bool, **kwargs: Any) -> LocalModel:
    base, _ = HPFF_MODELS[name]
    return build_model_with_cfg(
        partial(_wrap, base, backbone_cfg(cfg)),
        name,
        pretrained,
        pretrained_cfg=cfg,
        pretrained_filter_fn=filter_checkpoint,
        **kwargs,
    )


def _features(base: str, cfg: dict[str, Any], state_dict, options: dict, kwargs: dict):
    """The plain backbone as a timm feature extractor (with ``state_dict`` loaded, if given)."""
    plain = {k: v for k, v in kwargs.items() if k not in (*LOCAL_KWARGS, "pretrained_model_args")}
    source = backbone_cfg(cfg) | ({} if state_dict is None else {"state_dict": state_dict})
    return timm.create_model(
        base,
        pretrained=state_dict is not None,
        pretrained_cfg=source,
        features_only=True,
        **options,
        **plain,
    )


def _create(
    name: str,
    pretrained: bool,
    pretrained_cfg: Any = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    **kwargs: Any,
):
    _check_tag(name, pretrained_cfg)
    cfg = resolve_pretrained_cfg(name, pretrained_cfg, pretrained_cfg_overlay).to_dict()
    spec = TAGS.get(f"{name}.{cfg.get('tag')}") or TIMM_BACKBONES.get(f"{name}.{cfg.get('tag')}")
    base, defaults = HPFF_MODELS[name]
    settings = {**HPFF_DEFAULTS, **defaults, **(_tag_settings(spec, kwargs) if spec else {})}
    for key, value in settings.items():
        kwargs.setdefault(key, value)
    kwargs.update(with_default_aux(kwargs))
    recorded = kwargs.get("pretrained_model_args") or {}
    if kwargs["num_modules"] != recorded.get("num_modules") and kwargs.get("splits") == (
        recorded.get("splits")
    ):
        kwargs.pop("splits", None)  # a checkpoint's recorded split belongs to its recorded K
    allow_pickle = kwargs.pop("allow_pickle", False)
    features = None
    if kwargs.pop("features_only", False):
        features = {k: kwargs.pop(k) for k in FEATURE_KWARGS if k in kwargs}
    if not pretrained:
        if features is not None:
            return _features(base, cfg, None, features, kwargs)
        return _describe_input(_build(name, cfg, False, **kwargs))
    model = load_with_fallback(lambda c: _build(name, c, True, **kwargs), cfg, allow_pickle)
    if features is not None:
        return _features(base, model.pretrained_cfg, model.backbone.state_dict(), features, kwargs)
    return _describe_input(model)


def _check_tag(name: str, pretrained_cfg: Any) -> None:
    """A misspelt tag (``hpff_resnet32.fmnist_e2``), refused with the closest tags: timm's own
    "Invalid pretrained tag" names neither those nor where the tags are listed.

    The same type as timm's error (``RuntimeError``), so code that catches it still does."""
    tags = default_cfgs[name].tags
    if isinstance(pretrained_cfg, str) and pretrained_cfg not in tags:
        message = unknown_name(f"{name} tag", pretrained_cfg, tags)
        raise RuntimeError(f"{message} (python -m hpff_zoo.hub list)")


def _tag_settings(spec, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The tag's training settings that this build inherits.

    A tag's pinned auxiliaries (architecture, budget, scope) belong to its own method and preset:
    a build that names its own ``aux`` or another ``method`` gets none of them, so that e.g.
    ``aux="paper"`` on a tag pinned at a 10 % budget is the official architecture, not a shrunk
    one. The rest (K, HiLo, PFF, method) stay defaults that any keyword argument overrides.
    """
    settings = spec.model_kwargs()
    if "aux" in kwargs or kwargs.get("method", settings.get("method")) != settings.get("method"):
        for key in AUX_PINS:
            settings.pop(key, None)
    return settings


def _describe_input(model: LocalModel) -> LocalModel:
    """Give the model's cfg its real channel count (see :func:`with_channels`); only after the
    weights are loaded, since timm reads the checkpoint's channel count from the same cfg."""
    model.pretrained_cfg = model.default_cfg = with_channels(model.pretrained_cfg, model.in_chans)
    return model


def _entry_point(name: str):
    def create(pretrained: bool = False, **kwargs: Any) -> LocalModel:
        return _create(name, pretrained, **kwargs)

    base, defaults = HPFF_MODELS[name]
    create.__name__ = create.__qualname__ = name
    create.__doc__ = (
        f"{base} trained with local learning: {defaults['method']}, K={defaults['num_modules']},"
        " HiLo k=2, PFF n=2 by default (a pretrained tag brings its own setting)."
    )
    create.__module__ = __name__
    return register_model(create)


for _name in HPFF_MODELS:
    globals()[_name] = _entry_point(_name)
