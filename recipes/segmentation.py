#!/usr/bin/env python
"""Train or test an hpff_zoo segmentation config with mmengine's Runner (mmseg's tools, trimmed).

Examples::

    # E2E, InfoPro K=4 and InfoPro+HPFF K=4 DeepLab-V3-R101 on Cityscapes (one GPU, batch 8)
    python recipes/segmentation.py train \\
        recipes/segmentation/deeplabv3_r101-d8_cityscapes-512x1024_40k_hpff-k4.py
    # mIoU single-scale, multi-scale, multi-scale + flip
    python recipes/segmentation.py test CONFIG work_dirs/NAME/iter_40000.pth --tta ms-flip
    # Backbone from an hpff_zoo classification export (folder, weights file or Hub id)
    python recipes/segmentation.py train CONFIG --backbone-checkpoint exports/hpff_resnet101
    # A few minutes on CPUs: the real model on generated data (checks an install)
    python recipes/segmentation.py train CONFIG --smoke --work-dir work_dirs/smoke
    # Data-parallel, every method (on CPUs: gloo); the batch size is per process
    torchrun --nproc_per_node 4 recipes/segmentation.py train CONFIG --launcher pytorch \\
        --cfg-options train_dataloader.batch_size=2

Any config value can be overridden with ``--cfg-options key=value ...`` (mmengine syntax), e.g.
``train_cfg.max_iters=80000`` or ``optim_wrapper.optimizer.lr=0.02``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

import hpff_zoo.seg  # noqa: F401  (registers HPFFEncoderDecoder and HPFFTransfer in mmseg)
from hpff_zoo.choices import OneLineParser, no_such_file
from hpff_zoo.seg import PretrainedUnavailableError
from hpff_zoo.seg.config import (
    TTA_MODES,
    check_data,
    use_backbone_checkpoint,
    use_batch_norm,
    use_data_root,
    use_tta,
)
from hpff_zoo.seg.distributed import init_cpu_process_group
from hpff_zoo.seg.smoke import SMOKE_CHECKPOINTS, SMOKE_CROP, SMOKE_ITERS, use_smoke


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [("train", "train a config"), ("test", "evaluate a checkpoint")]:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("config", help="an mmseg config, e.g. recipes/segmentation/*.py")
        if name == "test":
            sub.add_argument("checkpoint", help="the .pth checkpoint written by train")
            sub.add_argument(
                "--tta",
                choices=TTA_MODES,
                default="ss",
                help="single-scale (ss), single-scale + flip (flip), multi-scale (ms) or "
                "multi-scale + flip (ms-flip)",
            )
        else:
            sub.add_argument(
                "--backbone-checkpoint",
                metavar="SOURCE",
                help="initialise the backbone from an hpff_zoo/timm ResNet classification "
                "checkpoint: an export folder, a weights file or a Hub id (every backbone "
                "tensor must be filled)",
            )
            sub.add_argument(
                "--resume", action="store_true", help="resume from the work dir's last checkpoint"
            )
            sub.add_argument(
                "--smoke",
                action="store_true",
                help="CPU smoke run of CONFIG's real model: generated Cityscapes-format data in "
                f"WORK_DIR/smoke_cityscapes, {SMOKE_CROP[0]}x{SMOKE_CROP[1]} crops, batch 2, "
                f"{SMOKE_ITERS} iterations and one validation, random initial weights (or "
                "--backbone-checkpoint), the checkpoint in "
                f"{SMOKE_CHECKPOINTS}/<WORK_DIR's name>; a few minutes on 2 CPU cores",
            )
            sub.add_argument(
                "--amp", action="store_true", help="mixed precision (mmengine AmpOptimWrapper)"
            )
            sub.add_argument(
                "--launcher",
                choices=["none", "pytorch", "slurm", "mpi"],
                default="none",
                help="distributed launcher (under torchrun: pytorch), for every method; the "
                "batch size is per process",
            )
        sub.add_argument(
            "--data-root",
            metavar="DIR",
            help="the dataset folder for every split (Cityscapes: leftImg8bit/, gtFine/) "
            "(default: the config's data_root)",
        )
        sub.add_argument(
            "--work-dir", help="logs and checkpoints (default work_dirs/<config name>)"
        )
        sub.add_argument(
            "--cfg-options",
            nargs="+",
            action=DictAction,
            default={},
            metavar="KEY=VALUE",
            help="override config values, mmengine syntax (a.b=1 c=[1,2])",
        )
    args = parser.parse_args(argv)
    for name in ("config", "checkpoint")[: 1 + (args.command == "test")]:
        if missing := no_such_file(getattr(args, name)):
            parser.error(f"{name}: {missing}")
    if getattr(args, "smoke", False) and args.data_root:
        parser.error("--smoke generates its own data: drop --data-root")
    return args


def build_config(args: argparse.Namespace) -> Config:
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    if args.data_root:
        use_data_root(cfg, args.data_root)
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or f"work_dirs/{Path(args.config).stem}"
    if args.command == "train":
        if args.smoke:
            use_smoke(cfg)
        check_data(cfg, "train_dataloader")
        if cfg.get("val_cfg") is not None:
            check_data(cfg, "val_dataloader")
        if args.backbone_checkpoint:
            use_backbone_checkpoint(cfg, args.backbone_checkpoint)
        if args.amp:
            cfg.optim_wrapper.type = "AmpOptimWrapper"
            cfg.optim_wrapper.loss_scale = "dynamic"
        cfg.resume = args.resume
        cfg.launcher = args.launcher
    else:
        check_data(cfg, "test_dataloader")
        cfg.load_from = args.checkpoint
        use_tta(cfg, args.tta)
    return cfg


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    cfg = build_config(args)
    # On CPUs: gloo, before mmengine's launcher pins a CUDA device; SyncBN needs GPUs.
    if args.command == "train" and init_cpu_process_group(args.launcher):
        use_batch_norm(cfg)
    runner = Runner.from_cfg(cfg)
    if args.command == "test":
        return runner.test()
    try:
        runner.train()
    except PretrainedUnavailableError as error:
        raise SystemExit(f"error: {error}") from None
    return None


if __name__ == "__main__":
    main()
