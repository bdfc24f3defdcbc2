"""hpff-zoo: train timm vision models without end-to-end backpropagation.

``import hpff_zoo`` registers the ``hpff_*`` models (and the plain CIFAR ResNets) with timm::

    import timm, hpff_zoo
    model = timm.create_model("hpff_resnet32", num_classes=10)
    losses = model.local_step(images, labels)   # streamed local forward + backward
    logits = model(images)                      # plain backbone inference

Any timm classifier can be wrapped with :func:`from_timm`.
"""

from . import models  # noqa: F401  (registers the timm models)
from .aux import AUX_METHODS, AuxNet, AuxSpec, register_aux
from .local import METHODS, LocalModel, from_timm
from .measure import MemoryMeter, MemoryReport
from .parallel import ModuleParallel
from .partition import Partition, partition_backbone, register_flattener
from .planner import Plan, plan

__version__ = "0.1.0"

__all__ = [
    "AUX_METHODS",
    "METHODS",
    "AuxNet",
    "AuxSpec",
    "LocalModel",
    "MemoryMeter",
    "MemoryReport",
    "ModuleParallel",
    "Partition",
    "Plan",
    "from_timm",
    "partition_backbone",
    "plan",
    "register_aux",
    "register_flattener",
]
