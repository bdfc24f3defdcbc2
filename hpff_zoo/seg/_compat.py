"""Two fixes that let mmsegmentation 1.2 run on this project's stack, applied before mmseg loads.

1. **mmcv-lite.** mmcv-lite ships the Python files of ``mmcv.ops`` but not the compiled
   ``mmcv._ext`` they load, and mmseg imports a few ops (``point_sample``, ``sigmoid_focal_loss``,
   ...) at module level, so ``import mmseg.models`` fails although DeepLab-V3 uses no compiled
   op. When ``mmcv._ext`` is missing, :func:`install` registers a stand-in ``mmcv.ops`` module
   in ``sys.modules`` whose every name is a placeholder class: importing it works, and using it
   raises an error that names the op and the fix (install full mmcv). No installed file is
   edited, and with a full mmcv nothing is replaced.
2. **torch ≥ 2.6 checkpoints.** ``torch.load`` defaults to ``weights_only=True``; mmengine's
   checkpoints also hold its message hub's ``HistoryBuffer`` objects and numpy arrays and
   scalars, so ``resume`` fails to load them. :func:`install` allows exactly those classes with
   ``torch.serialization.add_safe_globals``, which keeps the safe loader for everything else;
   the ``getattr`` a HistoryBuffer pickles is served by a stand-in that returns its statistics
   methods and refuses any other attribute (the builtin would allow arbitrary code).
"""

from __future__ import annotations

import importlib.util
import pickle
import sys
import types
import warnings
from typing import Any, NoReturn

import torch

__all__ = ["MissingOpError", "install"]


class MissingOpError(ImportError):
    """An mmcv op that needs the compiled extension of full mmcv was used with mmcv-lite."""


class _MissingOp:
    """Base of the placeholders: importable and subclassable, failing only when used."""

    op_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> NoReturn:
        raise MissingOpError(
            f"mmcv.ops.{cls.op_name} needs the compiled ops of full mmcv, but mmcv-lite is "
            "installed (hpff_zoo.seg stands in for mmcv.ops so that mmseg imports). Install "
            "full mmcv (a source build: pip install mmcv==2.1.0) to use this op."
        )


def _placeholder_module() -> types.ModuleType:
    module = types.ModuleType("mmcv.ops", "hpff_zoo.seg stand-in: mmcv-lite has no compiled ops")
    module.__path__ = []  # a package without submodules: `import mmcv.ops.x` fails as ImportError

    def __getattr__(name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        placeholder = type(name, (_MissingOp,), {"op_name": name})
        setattr(module, name, placeholder)
        return placeholder

    module.__getattr__ = __getattr__
    return module


def _stand_in_for_mmcv_ops() -> None:
    if "mmcv.ops" in sys.modules or importlib.util.find_spec("mmcv") is None:
        return
    if importlib.util.find_spec("mmcv._ext") is not None:
        return  # full mmcv: its real ops load
    import mmcv

    module = _placeholder_module()
    sys.modules["mmcv.ops"] = module
    mmcv.ops = module
    # mmcv.cnn warns that it cannot import its deformable attention from the stand-in: expected.
    warnings.filterwarnings("ignore", message=".*MultiScaleDeformableAttention.*")


def _allow_mmengine_checkpoint_globals() -> None:
    import numpy as np
    from mmengine.logging import HistoryBuffer

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: list[Any] = [HistoryBuffer, np.ndarray, np.dtype]
    allowed += [multiarray.scalar, multiarray._reconstruct]
    allowed += [type(np.dtype(t)) for t in ("f2", "f4", "f8", "i4", "i8", "u1", "bool", "O")]
    # HistoryBuffer pickles its statistics methods as getattr(HistoryBuffer, "mean"): allow
    # exactly those lookups, never the builtin getattr itself.
    allowed.append((_history_buffer_method, "builtins.getattr"))
    torch.serialization.add_safe_globals(allowed)


def _history_buffer_method(owner: Any, name: str) -> Any:
    from mmengine.logging import HistoryBuffer

    methods = {"min", "max", "current", "mean", *HistoryBuffer._statistics_methods}
    if owner is HistoryBuffer and name in methods:
        return getattr(owner, name)
    raise pickle.UnpicklingError(
        f"refusing getattr({owner!r}, {name!r}) while loading a checkpoint: hpff_zoo.seg allows "
        "only mmengine HistoryBuffer's statistics methods"
    )


def install() -> None:
    """Apply both fixes; idempotent. Called by ``import hpff_zoo.seg`` before mmseg loads."""
    _stand_in_for_mmcv_ops()
    _allow_mmengine_checkpoint_globals()
