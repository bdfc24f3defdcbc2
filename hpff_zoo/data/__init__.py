"""Image-classification data for training recipes: resolution, local formats, transforms.

``load_image_classification("cifar10")`` (or a local directory, or a Hub id) returns train and
test ``datasets.Dataset`` splits with ``image`` and ``label`` columns; ``resolve_data_config`` /
``create_transforms`` give the model's timm preprocessing; :class:`TransformedDataset` feeds a
``DataLoader`` with per-example seeded augmentation. This package imports ``datasets`` lazily
and is not imported by the core library.
"""

from .formats import (
    DatasetError,
    detect_layout,
    load_local,
    read_cifar,
    read_idx,
    read_idx_arrays,
    read_idx_file,
    smallest_image_size,
)
from .sources import (
    EMBEDDED,
    KNOWN_DATASETS,
    DatasetUnavailableError,
    ImageClassificationData,
    KnownDataset,
    load_image_classification,
)
from .transforms import (
    TransformedDataset,
    create_transforms,
    model_in_chans,
    resolve_data_config,
)

__all__ = [
    "EMBEDDED",
    "KNOWN_DATASETS",
    "DatasetError",
    "DatasetUnavailableError",
    "ImageClassificationData",
    "KnownDataset",
    "TransformedDataset",
    "create_transforms",
    "detect_layout",
    "load_image_classification",
    "load_local",
    "model_in_chans",
    "read_cifar",
    "read_idx",
    "read_idx_arrays",
    "read_idx_file",
    "resolve_data_config",
    "smallest_image_size",
]
