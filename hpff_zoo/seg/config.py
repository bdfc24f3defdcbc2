"""Config preparation shared by the launcher and by users driving mmengine's Runner directly.

Each function edits an mmengine ``Config`` in place and fails with a message that says what to
do: a missing dataset names the folder it looked for and the converter to run, a checkpoint
that does not fit the configured backbone names the backbone it fits.
"""

from __future__ import annotations

from pathlib import Path

from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log
from mmseg.registry import DATASETS, MODELS

from .transfer import backbone_overrides, load_hpff_state_dict

__all__ = [
    "TTA_MODES",
    "check_data",
    "use_backbone_checkpoint",
    "use_batch_norm",
    "use_data_root",
    "use_tta",
]

TTA_MODES = ("ss", "flip", "ms", "ms-flip")
_TTA_PIPELINES = {"flip": "tta_pipeline_flip", "ms": "tta_pipeline_ms", "ms-flip": "tta_pipeline"}

_PREPARE = (
    "Prepare Cityscapes as in recipes/segmentation/README.md: unzip leftImg8bit_trainvaltest.zip "
    "and gtFine_trainvaltest.zip into {root}, then run mmseg's converter "
    "(tools/dataset_converters/cityscapes.py {root}) to write the *_labelTrainIds.png maps; or "
    "point the launcher at your copy with --data-root DIR"
)


def check_data(cfg: Config, loader: str) -> None:
    """Raise ``FileNotFoundError`` unless ``cfg[loader]``'s images and label maps are there.

    A dataset type that generates its data (a ``generate_split(dataset_cfg)`` static method, e.g.
    ``FashionMNISTScenesDataset``) generates it first.
    """
    dataset = cfg[loader]["dataset"]
    kind = dataset.get("type")
    prepare = getattr(DATASETS.get(kind), "generate_split", None) if kind else None
    if prepare is not None:
        prepare(dataset)
    root = Path(dataset.get("data_root") or ".")
    prefix = dataset.get("data_prefix", {})
    checks = [
        (root / prefix.get("img_path", ""), dataset.get("img_suffix", "_leftImg8bit.png")),
        (
            root / prefix.get("seg_map_path", ""),
            dataset.get("seg_map_suffix", "_gtFine_labelTrainIds.png"),
        ),
    ]
    for folder, suffix in checks:
        if not folder.is_dir():
            problem = f"{folder} does not exist"
        elif next(folder.rglob(f"*{suffix}"), None) is None:
            problem = f"{folder} holds no *{suffix} file"
        else:
            continue
        raise FileNotFoundError(f"{loader}: {problem}. " + _PREPARE.format(root=root))


def use_data_root(cfg: Config, root: str | Path) -> None:
    """Read every split (train, val, test) from ``root``."""
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if cfg.get(loader) is not None:
            cfg[loader].dataset.data_root = str(root)


def use_backbone_checkpoint(cfg: Config, source: str) -> dict[str, object]:
    """Initialise the backbone from an hpff_zoo/timm ResNet checkpoint (see ``transfer``).

    Sets ``model.backbone.init_cfg`` to the ``HPFFTransfer`` initializer and drops the config's
    ImageNet ``pretrained`` weights. If the checkpoint's stem fits another mmseg ResNet variant
    than the configured one (``hpff_resnet101`` is timm's 7×7-stem ResNet, DeepLab-V3's configs
    use the deep-stem ResNetV1c), the backbone type is switched and a warning logged; a depth
    mismatch is an error. A backbone built from the timm model itself (``takes_timm_state_dict``)
    takes the checkpoint as it is. Returns the backbone settings applied.
    """
    backbone = cfg.model.backbone
    kind = backbone.get("type")
    if kind and getattr(MODELS.get(kind), "takes_timm_state_dict", False):
        # Built from the timm model itself (CifarResNetBackbone): the names match as they are.
        backbone.init_cfg = ConfigDict(type="HPFFTransfer", checkpoint=str(source))
        return {"type": backbone.type}
    overrides = backbone_overrides(load_hpff_state_dict(source))
    if backbone.get("depth") != overrides["depth"]:
        raise ValueError(
            f"{source} is a ResNet-{overrides['depth']}, the config builds a "
            f"ResNet-{backbone.get('depth')}: pick a matching config or set "
            f"--cfg-options model.backbone.depth={overrides['depth']} (and the heads' channels)"
        )
    if backbone.get("type") != overrides["type"]:
        print_log(
            f"--backbone-checkpoint: {source} has the stem of mmseg's {overrides['type']}, not "
            f"{backbone.get('type')}; building model.backbone.type={overrides['type']} instead",
            logger="current",
            level=30,
        )
    backbone.type = overrides["type"]
    backbone.pop("pretrained", None)
    backbone.init_cfg = ConfigDict(type="HPFFTransfer", checkpoint=str(source))
    cfg.model.pretrained = None
    return overrides


def use_batch_norm(cfg: Config) -> int:
    """Replace every ``SyncBN`` of the model by ``BN``; returns how many ``norm_cfg`` changed.

    For data-parallel runs on CPUs (gloo): PyTorch's SyncBatchNorm runs on GPUs only. Each
    process then normalises with its own images' statistics, as the classification recipes do
    without SyncBN, and the recipes' ``SyncBuffersHook`` averages the running statistics.
    """

    def visit(node: object) -> int:
        changed = 0
        if isinstance(node, dict):
            norm = node.get("norm_cfg")
            if isinstance(norm, dict) and norm.get("type") == "SyncBN":
                norm["type"] = "BN"
                changed += 1
            changed += sum(visit(value) for key, value in node.items() if key != "norm_cfg")
        elif isinstance(node, list | tuple):
            changed += sum(visit(value) for value in node)
        return changed

    return visit(cfg.model)


def use_tta(cfg: Config, mode: str) -> None:
    """Test single-scale (``ss``), single-scale + flip (``flip``), multi-scale (``ms``) or
    multi-scale + flip (``ms-flip``).

    Flip, MS and MS+flip wrap the model in the config's ``tta_model`` (mmseg's ``SegTTAModel``,
    which averages the predictions) and test with ``tta_pipeline_flip`` / ``tta_pipeline_ms`` /
    ``tta_pipeline``, as mmseg's ``tools/test.py --tta`` does.
    """
    if mode not in TTA_MODES:
        raise ValueError(f"unknown test mode {mode!r}; choose from {list(TTA_MODES)}")
    if mode == "ss":
        return
    key = _TTA_PIPELINES[mode]
    if key not in cfg or "tta_model" not in cfg:
        raise ValueError(f"--tta {mode} needs {key} and tta_model in the config")
    cfg.test_dataloader.dataset.pipeline = cfg[key]
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model
