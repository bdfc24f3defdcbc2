"""Peak-memory meter for one training step, on CPU and on CUDA.

Local learning exists to lower the activation memory of training, so the library needs a meter
that measures it rather than assumes it. On CUDA the caching allocator already keeps a peak
counter. On CPU there is no such counter, so :class:`MemoryMeter` watches every tensor that an
ATen operator allocates (through a ``TorchDispatchMode``) and every storage that dies (through a
weak-reference finalizer), keeping a running total of live bytes and its maximum. Tensors that
existed before the meter started (parameters, the input batch) are not counted: the figure is the
extra memory the step needs, which is what changes between E2E and local training.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["MemoryMeter", "MemoryReport", "step_peak_bytes"]


@dataclass(frozen=True)
class MemoryReport:
    """What a :class:`MemoryMeter` measured.

    Attributes:
        peak_bytes: highest number of bytes held at once by tensors allocated inside the meter.
        end_bytes: bytes still held by such tensors when the meter closed (e.g. ``.grad`` buffers
            created by the first step).
        device: ``"cpu"`` or the CUDA device the figure comes from.
    """

    peak_bytes: int
    end_bytes: int
    device: str

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20


class _LiveTensorTracker(TorchDispatchMode):
    """Counts bytes of storages created by operators while active, minus those freed since."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _forget(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs, _ = tree_flatten((args, kwargs))
        input_storages = {
            t.untyped_storage()._cdata
            for t in inputs
            if isinstance(t, torch.Tensor) and t.device.type != "meta"
        }
        outputs, _ = tree_flatten(out)
        for tensor in outputs:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata
            # Views and in-place results share an input's storage: no new memory.
            if key in input_storages or key in self.live:
                continue
            nbytes = storage.nbytes()
            self.live[key] = nbytes
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._forget, key)
        return out


class MemoryMeter:
    """Context manager measuring the peak memory of the code it wraps.

    Example::

        with MemoryMeter(device="cpu") as meter:
            model.local_step(x, y)
        print(meter.report.peak_mib)

    On CUDA the allocator's own peak statistics are used (``torch.cuda.max_memory_allocated``
    minus what was allocated on entry); on any other device the live-tensor tracker above.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.report: MemoryReport | None = None
        self._tracker: _LiveTensorTracker | None = None
        self._start = 0

    def __enter__(self) -> MemoryMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._tracker = _LiveTensorTracker()
            self._tracker.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self._start
            end = torch.cuda.memory_allocated(self.device) - self._start
            self.report = MemoryReport(peak, end, str(self.device))
        else:
            assert self._tracker is not None
            self._tracker.__exit__(*exc)
            self.report = MemoryReport(self._tracker.peak, self._tracker.current, "cpu")
            self._tracker = None


def step_peak_bytes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Peak extra bytes of one steady-state ``model.local_step(x, y)``.

    A first, unmeasured step allocates the ``.grad`` buffers, as any step after the first of a
    training run finds them; the measured step then sees activations and temporaries only.
    """
    model.train()
    model.local_step(x, y)
    with MemoryMeter(x.device) as meter:
        model.local_step(x, y)
    return meter.report.peak_bytes
