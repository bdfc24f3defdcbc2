"""The ``hpff_*`` timm entry points: the paper's backbones wrapped in :class:`LocalModel`.

Each entry point builds the plain timm backbone and wraps it, through timm's
``build_model_with_cfg`` so that pretrained cfgs, overlays and (once published) weights resolve
the timm way. Defaults follow the paper: K and the local method per backbone, HiLo with cascade
size 2, PFF with a 2×2 grid. Every default is a keyword argument of ``timm.create_model``::

    timm.create_model("hpff_resnet32", num_classes=10, method="dgl", num_modules=8, pff=1)
"""

from __future__ import annotations

from typing import Any

import timm
from timm.models import (
    build_model_with_cfg,
    generate_default_cfgs,
    get_pretrained_cfg,
    register_model,
)

from ..local import LocalModel

__all__ = ["HPFF_MODELS"]

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
    "input_size", "trace_size",
)  # fmt: skip


def _hpff_cfg(base: str) -> dict[str, Any]:
    """The base model's cfg without its weights' location, with head names under ``backbone.``."""
    cfg = get_pretrained_cfg(base).to_dict()
    for key in ("url", "hf_hub_id", "hf_hub_filename", "file", "state_dict", "tag"):
        cfg.pop(key, None)
    for key in ("classifier", "first_conv"):
        if cfg.get(key):
            cfg[key] = f"backbone.{cfg[key]}"
    return cfg


default_cfgs = generate_default_cfgs(
    {f"{name}.untrained": _hpff_cfg(base) for name, (base, _) in HPFF_MODELS.items()}
)


def _wrap(base: str, **kwargs: Any) -> LocalModel:
    local = {k: kwargs.pop(k) for k in LOCAL_KWARGS if k in kwargs}
    return LocalModel(timm.create_model(base, **kwargs), **local)


def _create(name: str, pretrained: bool, **kwargs: Any) -> LocalModel:
    base, defaults = HPFF_MODELS[name]
    for key, value in {**HPFF_DEFAULTS, **defaults}.items():
        kwargs.setdefault(key, value)
    return build_model_with_cfg(lambda **kw: _wrap(base, **kw), name, pretrained, **kwargs)


def _entry_point(name: str):
    def create(pretrained: bool = False, **kwargs: Any) -> LocalModel:
        return _create(name, pretrained, **kwargs)

    base, defaults = HPFF_MODELS[name]
    create.__name__ = create.__qualname__ = name
    create.__doc__ = (
        f"{base} trained with local learning: {defaults['method']}, K={defaults['num_modules']},"
        " HiLo k=2, PFF n=2 by default."
    )
    create.__module__ = __name__
    return register_model(create)


for _name in HPFF_MODELS:
    globals()[_name] = _entry_point(_name)
