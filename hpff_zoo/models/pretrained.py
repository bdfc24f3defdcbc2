"""Where an hpff_* model's pretrained weights come from, and how they enter a LocalModel.

timm does the loading (:func:`timm.models.load_pretrained`: Hub download and cache,
``HF_HUB_OFFLINE``, local files, ``hf-hub:`` / ``local-dir:`` names); this module decides which
source timm is pointed at and checks what comes back:

* a registry tag is loaded from its Hub repo if it is published (:data:`tags.HUB_PUBLISHED`),
  and from its shipped folder ``model_cards/<tag>/`` when it is not, or when the Hub cannot be
  reached and the file is not cached; a tag with neither fails with an error naming the tags that
  have weights — never random weights;
* a timm-backbone tag (:data:`tags.TIMM_BACKBONES`) is loaded from timm's own Hub repo; the file
  is fetched (or found in the cache) before the model is built, so that a user offline without a
  cached copy gets one line naming the repository and the knobs at once, not after minutes;
* a source the user names (``hf-hub:``, ``local-dir:``, ``pretrained_cfg_overlay=dict(file=...)``)
  is used as given;
* weights are read from safetensors only: a pickle file (``.bin``, ``.pth``, ...) is refused
  unless the caller passes ``allow_pickle=True``;
* :func:`filter_checkpoint` maps a backbone-only checkpoint (the published format, which also
  loads into the plain timm model) into the LocalModel, fills the auxiliary networks from the
  model's fresh initialisation and checks every other key and shape with a readable error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled
from safetensors import SafetensorError
from torch import Tensor, nn

from . import tags
from .tags import TAGS, TIMM_BACKBONES, WEIGHTS_FILE

__all__ = [
    "SHIPPED_DIR_ENV",
    "NoWeightsError",
    "PretrainedWeightsError",
    "available_tags",
    "filter_checkpoint",
    "load_with_fallback",
    "shipped_dir",
    "shipped_folder",
]

_logger = logging.getLogger(__name__)

SHIPPED_DIR_ENV = "HPFF_ZOO_SHIPPED_DIR"
# The Hub could not serve the file (offline and not cached, no network, no such repo or file).
HUB_ERRORS = (EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled)
_SOURCE_KEYS = ("file", "url", "state_dict")


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be found, read or matched to the model."""


def shipped_dir() -> Path:
    """Folder holding the shipped Hub-ready folders: ``$HPFF_ZOO_SHIPPED_DIR`` or
    ``model_cards/`` at the repository root."""
    override = os.environ.get(SHIPPED_DIR_ENV)
    return Path(override) if override else Path(__file__).resolve().parents[2] / "model_cards"


def shipped_folder(name: str) -> Path | None:
    """``<shipped_dir>/<arch.tag>`` if it holds weights, else None."""
    folder = shipped_dir() / name
    return folder if (folder / WEIGHTS_FILE).is_file() else None


def available_tags() -> list[str]:
    """Tags with weights: published on the Hub, shipped with this checkout, or timm's own
    weights of the backbone (:data:`tags.TIMM_BACKBONES`)."""
    own = [name for name in TAGS if name in tags.HUB_PUBLISHED or shipped_folder(name)]
    return sorted([*own, *TIMM_BACKBONES])


class NoWeightsError(PretrainedWeightsError):
    """A tag with weights nowhere (not published, not shipped): there is nothing to download
    or retry. :meth:`retold` is the same message with the caller's own way to start fresh, so
    that a command line advises its flag rather than ``pretrained=False``."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(self.retold("use pretrained=False for a fresh model"))

    def retold(self, fresh: str) -> str:
        """The message, ending with ``fresh``: how to start without these weights."""
        have = available_tags()
        listed = ", ".join(have) if have else "none yet"
        return (
            f"{self.name} has no published weights (not on the Hub, no shipped folder in "
            f"{shipped_dir()}). Tags with weights: {listed}. Train this tag (its model card in "
            f"model_cards/ gives the command), or {fresh}."
        )


# --- the source -------------------------------------------------------------------------------


def _is_registry_source(cfg: dict[str, Any]) -> bool:
    """True when ``cfg`` is its tag's registry cfg: its own Hub repo, or no weights location
    (a tag registered before its weights were published or shipped), and nothing else."""
    name = f"{cfg.get('architecture')}.{cfg.get('tag')}"
    spec = TAGS.get(name) or TIMM_BACKBONES.get(name)
    return (
        spec is not None
        and not cfg.get("source")
        and not any(cfg.get(key) is not None for key in _SOURCE_KEYS)
        and cfg.get("hf_hub_id") in (None, spec.hf_hub_id)
    )


def _refuse_pickle(location: str) -> PretrainedWeightsError:
    return PretrainedWeightsError(
        f"refusing to load {location}: it is not a .safetensors file, and reading pickle files "
        "can run arbitrary code. Convert it to safetensors, or pass allow_pickle=True if you "
        "trust its origin."
    )


def _safe_source(cfg: dict[str, Any], allow_pickle: bool) -> dict[str, Any]:
    """``cfg`` with its weight source restricted to safetensors (unless pickle is allowed)."""
    if allow_pickle or cfg.get("state_dict") is not None:
        return cfg
    if cfg.get("source") == "local-dir":
        if not (Path(cfg["file"]) / WEIGHTS_FILE).is_file():
            raise _refuse_pickle(f"the folder {cfg['file']} (it has no {WEIGHTS_FILE})")
        return cfg
    for key in ("file", "url"):
        if cfg.get(key) is not None and not str(cfg[key]).endswith(".safetensors"):
            raise _refuse_pickle(str(cfg[key]))
    if cfg.get("hf_hub_id"):
        filename = cfg.get("hf_hub_filename") or WEIGHTS_FILE
        if not filename.endswith(".safetensors"):
            raise _refuse_pickle(f"{filename} from {cfg['hf_hub_id']}")
        return {**cfg, "hf_hub_filename": filename}
    return cfg


def _location(cfg: dict[str, Any]) -> str:
    """The weights file ``cfg`` reads (for a ``local-dir:`` source its ``file`` is the folder)."""
    if cfg.get("source") == "local-dir":
        return str(Path(cfg["file"]) / WEIGHTS_FILE)
    if cfg.get("file"):
        return str(cfg["file"])
    if cfg.get("hf_hub_id"):
        return f"{cfg['hf_hub_id']} on the Hub (cached copy)"
    return str(cfg.get("url") or "the given state dict")


def _build_checked(build: Callable[[dict[str, Any]], nn.Module], cfg: dict[str, Any]):
    """``build(cfg)``, turning an unreadable safetensors file into a clear error."""
    try:
        return build(cfg)
    except SafetensorError as err:
        raise PretrainedWeightsError(
            f"{_location(cfg)} is not a readable safetensors file (truncated or corrupt: {err}); "
            "delete it and download or export it again"
        ) from err


def load_with_fallback(
    build: Callable[[dict[str, Any]], nn.Module], cfg: dict[str, Any], allow_pickle: bool = False
) -> nn.Module:
    """Build a pretrained model through timm from the right source for ``cfg``.

    Args:
        build: builds the model with ``pretrained=True`` and the given pretrained cfg.
        cfg: the resolved pretrained cfg (registry tag, ``hf-hub:``/``local-dir:`` config, or
            one with a user overlay).
        allow_pickle: accept non-safetensors weight files.
    """
    if not _is_registry_source(cfg):
        if not any(cfg.get(key) for key in ("hf_hub_id", *_SOURCE_KEYS)):
            raise NoWeightsError(cfg.get("architecture", "model"))
        return _build_checked(build, _safe_source(cfg, allow_pickle))
    name = f"{cfg['architecture']}.{cfg['tag']}"
    if name in TIMM_BACKBONES:
        _fetch_timm_weights(name)
        return _build_checked(build, _safe_source(cfg, allow_pickle))
    cfg = {**cfg, "hf_hub_id": TAGS[name].hf_hub_id, "hf_hub_filename": WEIGHTS_FILE}
    shipped = shipped_folder(name)
    if name in tags.HUB_PUBLISHED:
        try:
            return _build_checked(build, _safe_source(cfg, allow_pickle))
        except HUB_ERRORS as err:
            if shipped is None:
                raise PretrainedWeightsError(
                    f"could not fetch {name} from the Hub ({cfg['hf_hub_id']}) and no copy ships"
                    f" in {shipped_dir()}: {err}"
                ) from err
            _logger.warning("Hub unreachable for %s (%s); loading %s", name, err, shipped)
    elif shipped is None:
        raise NoWeightsError(name)
    return _build_checked(build, {**cfg, "file": str(shipped / WEIGHTS_FILE)})


def _fetch_timm_weights(name: str) -> None:
    """Download (or find in the Hub cache) the timm weights of ``name``, as timm's own loader
    does next with the same call, so that a missing file fails before the model is built."""
    repo = TIMM_BACKBONES[name].hf_hub_id
    try:
        hf_hub_download(repo, WEIGHTS_FILE)
    except HUB_ERRORS as err:
        offline = "HF_HUB_OFFLINE=1 is set" if constants.HF_HUB_OFFLINE else "no network"
        raise PretrainedWeightsError(
            f"{name} loads timm's weights from the Hub repository {repo} ({WEIGHTS_FILE}), which "
            f"is not in the Hub cache ({constants.HF_HUB_CACHE}) and cannot be downloaded "
            f"({offline}: {type(err).__name__}). Download it once with network access (unset "
            "HF_HUB_OFFLINE), point HF_HUB_CACHE or HF_HOME at a cache that holds it, or pass "
            "pretrained_cfg_overlay=dict(file='<path>/model.safetensors')"
        ) from err


# --- the checkpoint ---------------------------------------------------------------------------


def _names(value: str | tuple[str, ...] | None) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _listing(keys: set[str]) -> str:
    shown = sorted(keys)[:5]
    return ", ".join(shown) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")


def filter_checkpoint(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map a checkpoint into ``model`` (a LocalModel), as timm's ``pretrained_filter_fn``.

    A backbone-only checkpoint (plain timm names) gets the ``backbone.`` prefix; a full LocalModel
    checkpoint is used as is. Auxiliary weights the checkpoint lacks come from the model's own
    fresh initialisation. Every backbone key must be present with the model's shape, except the
    classifier when the model is built for another number of classes (timm then drops it) and the
    input conv when timm adapts it to another channel count.
    """
    own = model.state_dict()
    if not any(key.startswith(("backbone.", "aux.")) for key in state_dict):
        state_dict = {f"backbone.{key}": value for key, value in state_dict.items()}
    cfg = model.pretrained_cfg
    classifier = {f"{n}.{p}" for n in _names(cfg.get("classifier")) for p in ("weight", "bias")}
    first_conv = {f"{n}.weight" for n in _names(cfg.get("first_conv"))}
    new_head = model.num_classes != cfg.get("num_classes")

    backbone_keys = {key for key in own if key.startswith("backbone.")}
    # A new head (other num_classes, 0 included): timm drops the checkpoint's classifier after
    # this filter, so it may be absent from the model or from the checkpoint.
    new_head_keys = classifier if new_head else set()
    missing = backbone_keys - set(state_dict) - new_head_keys
    unexpected = set(state_dict) - set(own) - new_head_keys
    if missing or unexpected:
        raise PretrainedWeightsError(
            f"the checkpoint does not match {cfg.get('architecture')}: "
            + (f"missing {_listing(missing)}; " if missing else "")
            + (f"unexpected {_listing(unexpected)}" if unexpected else "")
        )
    for key, value in state_dict.items():
        if key not in own or value.shape == own[key].shape or key in first_conv:
            continue
        if key in classifier and not new_head:
            raise PretrainedWeightsError(
                f"the checkpoint's classifier {key.rsplit('.', 1)[0]} has {value.shape[0]} "
                f"outputs, but its config says num_classes={cfg.get('num_classes')}. Fix the "
                "config, or pass num_classes=N to train a new head."
            )
        if key not in classifier:
            raise PretrainedWeightsError(
                f"{key} has shape {tuple(value.shape)} in the checkpoint but "
                f"{tuple(own[key].shape)} in the model: the checkpoint was trained with other "
                "model arguments (see its config.json model_args)"
            )
    return {**{k: v for k, v in own.items() if k.startswith("aux.")}, **state_dict}
