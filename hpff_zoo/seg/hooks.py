"""``StepMemoryHook``: the peak memory of one training iteration, measured inside the runner.

mmengine logs memory on CUDA only. This hook wraps one steady iteration (not the first, which
also allocates the gradient buffers and the optimizer state) in :class:`hpff_zoo.MemoryMeter`
(CUDA's peak counters, or on CPU the live-tensor tracker: bytes the step allocates beyond what
existed before it, i.e. activations and temporaries), logs it and writes
``WORK_DIR/step_memory.json``, so E2E and local runs of the same config compare on one figure.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ..measure import MemoryMeter

__all__ = ["StepMemoryHook"]


@HOOKS.register_module()
class StepMemoryHook(Hook):
    """Measure training iteration ``iteration`` (0-based; default 2) with ``MemoryMeter``."""

    priority = "VERY_LOW"

    def __init__(self, iteration: int = 2) -> None:
        if iteration < 1:
            raise ValueError("iteration must be >= 1: the first one also allocates gradients")
        self.iteration = iteration
        self._meter: MemoryMeter | None = None

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if runner.iter == self.iteration:
            device = next(runner.model.parameters()).device
            self._meter = MemoryMeter(device)
            self._meter.__enter__()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self._meter is None:
            return
        self._meter.__exit__(None, None, None)
        report, self._meter = self._meter.report, None
        record = {
            "iteration": self.iteration,
            "device": report.device,
            "peak_mib": round(report.peak_mib, 2),
            "batch_size": len(data_batch["inputs"]) if data_batch else None,
        }
        runner.logger.info(f"StepMemoryHook: {record}")
        Path(runner.work_dir, "step_memory.json").write_text(json.dumps(record) + "\n")
