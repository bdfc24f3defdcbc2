# DeepLab-V3, ResNet-101-D8 (ResNetV1c), Cityscapes 512x1024, 40K iterations, batch 8: the
# HPFF paper's segmentation setting (supplement, Table 4), trained end to end. The InfoPro and
# InfoPro+HPFF configs inherit everything here and change only the model's local-learning
# options. Launch with recipes/segmentation.py (see recipes/segmentation/README.md).
_base_ = "mmseg::deeplabv3/deeplabv3_r101-d8_4xb2-40k_cityscapes-512x1024.py"

custom_imports = dict(imports=["hpff_zoo.seg"], allow_failed_imports=False)

# method="e2e" is mmseg's EncoderDecoder exactly (same modules, losses and state dict).
# SyncBN in the base config becomes BN automatically in single-process runs (mmengine's runner,
# and HPFFEncoderDecoder itself for local methods) and stays SyncBN in multi-GPU runs.
model = dict(type="HPFFEncoderDecoder", method="e2e")

# The paper's batch of 8 on one GPU. The batch size is per process: under a distributed launcher
# with 4 GPUs, --cfg-options train_dataloader.batch_size=2 keeps the global batch of 8.
train_dataloader = dict(batch_size=8, num_workers=4)

# Data-parallel runs (--launcher pytorch): the local methods' streamed step runs under no_sync and
# averages its gradients once per optimizer step (E2E is plain DDP); on CPUs it runs over gloo.
# Without SyncBN (CPU runs), each process's BatchNorm statistics are averaged before validation
# and at the end of training.
model_wrapper_cfg = dict(type="HPFFDistributedDataParallel")
custom_hooks = [dict(type="SyncBuffersHook")]

# Test-time augmentation (launcher: test --tta ss|ms|ms-flip). MS+flip is mmseg's own
# tta_pipeline from the base config; MS alone keeps only the unflipped branch.
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline_ms = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(
        type="TestTimeAug",
        transforms=[
            [dict(type="Resize", scale_factor=r, keep_ratio=True) for r in img_ratios],
            [dict(type="RandomFlip", prob=0.0, direction="horizontal")],
            [dict(type="LoadAnnotations")],
            [dict(type="PackSegInputs")],
        ],
    ),
]
