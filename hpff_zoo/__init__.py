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
from .compiled import compile_local
from .local import METHODS, LocalModel, from_timm
from .measure import MemoryMeter, MemoryReport
from .parallel import ModuleParallel
from .partition import Partition, partition_backbone, register_flattener

__version__ = "0.1.0"


def __getattr__(name: str):
    """``Plan`` and ``plan`` on first use: importing the planner here at import time would make
    ``python -m hpff_zoo.planner`` run a module already imported (runpy's RuntimeWarning)."""
    if name in ("Plan", "plan"):
        from . import planner

        return getattr(planner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "compile_local",
    "from_timm",
    "partition_backbone",
    "plan",
    "register_aux",
    "register_flattener",
]
