"""Measurement, low in the house: FLOPs and peak memory of what the library runs.

Partitioning, auxiliary sizing, the memory planner, module-parallel stage balancing, model cards
and the benchmarks all need the same two numbers, so they all count them here, one way.

FLOPs: :class:`FlopCounter` sums torch's own FLOP formulas (``torch.utils.flop_counter``) over
every operator that runs, backward passes included. :func:`training_flops` counts one forward and
backward of a callable on *fake* tensors (shapes only: no arithmetic, no memory, even for a
ResNet-152 at 224 px); :func:`step_flops` counts one real ``local_step``.

Memory: on CUDA the caching allocator keeps a peak counter. On CPU there is no such counter, so
:class:`MemoryMeter` watches every tensor that an ATen operator allocates (through a
``TorchDispatchMode``) and every storage that dies (through a weak-reference finalizer), keeping a
running total of live bytes and its maximum. Tensors that existed before the meter started
(parameters, the input batch) are not counted: the figure is the extra memory the step needs,
which is what changes between E2E and local training. What the operating system sees can be
more (an allocator keeps freed pages): :func:`peak_rss_bytes` reads the process's high-water mark
for that. :func:`static_bytes` counts what does not depend on the batch (weights, gradients,
optimizer state), exactly.

Time: :func:`measure_speed` interleaves the steps of the models it compares, so background load
hits all of them alike.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

__all__ = [
    "FlopCounter",
    "MemoryMeter",
    "MemoryReport",
    "example_batch",
    "measure_speed",
    "static_bytes",
    "step_flops",
    "step_memory",
    "step_peak_bytes",
    "training_flops",
]


# --- FLOPs --------------------------------------------------------------------------------------


class FlopCounter(TorchDispatchMode):
    """Sums torch's FLOP formulas over every operator run, backward passes included.

    torch's ``FlopCounterMode`` also tracks modules through autograd hooks, which
    ``torch.autograd.grad`` on leaf inputs (HiLo's input-gradient pass) does not support.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def training_flops(
    fn: Callable[[Tensor], Tensor],
    input_shape: Sequence[int],
    parameters: Sequence[nn.Parameter] = (),
    like: Tensor | None = None,
) -> int:
    """FLOPs of one forward of ``fn`` and the backward of its (summed) output, on fake tensors.

    The backward computes the gradient of the input and of ``parameters`` (those of them that
    ``fn`` uses), as a training step does; nothing is accumulated into ``.grad``. ``like`` gives
    the input's dtype and device (default float32 on the CPU). Buffers that training-mode layers
    update in place are not restored: pass a callable whose state does not matter, or restore it.
    """
    dtype = like.dtype if like is not None else torch.float32
    device = like.device if like is not None else torch.device("cpu")
    with FakeTensorMode(allow_non_fake_inputs=True), FlopCounter() as counter:
        x = torch.empty(*input_shape, dtype=dtype, device=device, requires_grad=True)
        out = fn(x)
        wanted = [x, *(p for p in parameters if p.requires_grad)]
        torch.autograd.grad(out.sum(), wanted, allow_unused=True)
    return counter.total


def step_flops(model: nn.Module, x: Tensor, y: Tensor) -> int:
    """FLOPs of one ``model.local_step(x, y)`` (forward, every backward, auxiliaries).

    Hardware-independent, so it tells which part of a time ratio is arithmetic and which is
    overhead (small kernels, Python) on the machine at hand.
    """
    model.train()
    with FlopCounter() as counter:
        model.local_step(x, y)
    return counter.total


# --- memory -------------------------------------------------------------------------------------


_PROC_STATUS = Path("/proc/self/status")
_PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def _proc_status_bytes(field: str) -> int:
    for line in _PROC_STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise KeyError(field)


def _reset_peak_rss() -> int | None:
    """Reset the process's peak-RSS mark (Linux ≥ 4.0); returns the current RSS, or None."""
    try:
        _PROC_CLEAR_REFS.write_text("5")
        return _proc_status_bytes("VmRSS")
    except (OSError, KeyError):
        return None


@dataclass(frozen=True)
class MemoryReport:
    """What a :class:`MemoryMeter` measured.

    Attributes:
        peak_bytes: highest number of bytes held at once by tensors allocated inside the meter.
        end_bytes: bytes still held by such tensors when the meter closed (e.g. ``.grad`` buffers
            created by the first step).
        device: ``"cpu"`` or the CUDA device the figure comes from.
        rss_peak_bytes: on CPU Linux, how far the process's resident memory rose above its level
            at entry, as the operating system counts it (``None`` elsewhere). It includes what
            the allocator keeps after tensors are freed, which is what a CPU user pays.
        reserved_peak_bytes: on CUDA, how far the caching allocator's reserved memory rose
            above its level at entry (what ``nvidia-smi`` sees grow; ``None`` elsewhere).
    """

    peak_bytes: int
    end_bytes: int
    device: str
    rss_peak_bytes: int | None = None
    reserved_peak_bytes: int | None = None

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


_ACTIVE_CUDA_METERS: list[MemoryMeter] = []


class MemoryMeter:
    """Context manager measuring the peak memory of the code it wraps.

    Example::

        with MemoryMeter(device="cpu") as meter:
            model.local_step(x, y)
        print(meter.report.peak_mib)

    On CUDA the allocator's own peak statistics are used (``torch.cuda.max_memory_allocated``
    minus what was allocated on entry, and likewise for reserved memory); on any other device
    the live-tensor tracker above, and on Linux also the process's peak-RSS mark (reset on entry,
    read on exit). CUDA meters nest: entering one resets the device's peak counters, so it
    first hands the peaks seen so far to the meters already open, which would lose them.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.report: MemoryReport | None = None
        self._tracker: _LiveTensorTracker | None = None
        self._start = 0
        self._reserved_start = 0
        self._carried = (0, 0)  # peaks (allocated, reserved) seen before an inner meter reset
        self._rss_start: int | None = None

    def _cuda_peaks(self) -> tuple[int, int]:
        return (
            max(self._carried[0], torch.cuda.max_memory_allocated(self.device)),
            max(self._carried[1], torch.cuda.max_memory_reserved(self.device)),
        )

    def __enter__(self) -> MemoryMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            for outer in _ACTIVE_CUDA_METERS:
                if outer.device == self.device:
                    outer._carried = outer._cuda_peaks()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self._reserved_start = torch.cuda.memory_reserved(self.device)
            _ACTIVE_CUDA_METERS.append(self)
        else:
            self._rss_start = _reset_peak_rss()
            self._tracker = _LiveTensorTracker()
            self._tracker.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            _ACTIVE_CUDA_METERS.remove(self)
            allocated, reserved = self._cuda_peaks()
            for outer in _ACTIVE_CUDA_METERS:  # the counters are shared: keep what we saw
                if outer.device == self.device:
                    outer._carried = (
                        max(outer._carried[0], allocated),
                        max(outer._carried[1], reserved),
                    )
            end = torch.cuda.memory_allocated(self.device) - self._start
            self.report = MemoryReport(
                allocated - self._start,
                end,
                str(self.device),
                reserved_peak_bytes=reserved - self._reserved_start,
            )
        else:
            assert self._tracker is not None
            self._tracker.__exit__(*exc)
            rss = None
            if self._rss_start is not None:
                rss = _proc_status_bytes("VmHWM") - self._rss_start
            self.report = MemoryReport(self._tracker.peak, self._tracker.current, "cpu", rss)
            self._tracker = None


def step_memory(model: nn.Module, x: Tensor, y: Tensor) -> MemoryReport:
    """What one steady-state ``model.local_step(x, y)`` needs beyond what exists before it.

    A first, unmeasured step allocates the ``.grad`` buffers, as any step after the first of a
    training run finds them; the measured step then sees activations and temporaries only.
    """
    model.train()
    model.local_step(x, y)
    with MemoryMeter(x.device) as meter:
        model.local_step(x, y)
    return meter.report


def step_peak_bytes(model: nn.Module, x: Tensor, y: Tensor) -> int:
    """Peak extra bytes of live tensors in one steady-state step (see :func:`step_memory`)."""
    return step_memory(model, x, y).peak_bytes


# --- static memory and step time ---------------------------------------------------------------


def static_bytes(model: nn.Module, optimizer_slots: int = 1) -> int:
    """Weights + gradients + optimizer state of every trainable parameter, plus buffers."""
    params = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return params * (2 + optimizer_slots) + frozen + buffers


def measure_speed(
    models: Sequence[nn.Module],
    x: Tensor,
    y: Tensor,
    repetitions: int = 10,
    time_limit: float | None = None,
) -> list[list[float]]:
    """Seconds per ``local_step`` of each model, interleaved, after one warm-up step each.

    ``time_limit`` (seconds, warm-up included) ends the timing after the round that crosses
    it, so that a long list of models is timed briefly: every model still gets the same number
    of timed steps, at least one.
    """
    started = time.perf_counter()
    for model in models:
        model.train()
        model.local_step(x, y)
    times: list[list[float]] = [[] for _ in models]
    for round_ in range(repetitions):
        if round_ and time_limit is not None and time.perf_counter() - started > time_limit:
            break
        for i, model in enumerate(models):
            _synchronize(x.device)
            start = time.perf_counter()
            model.local_step(x, y)
            _synchronize(x.device)
            times[i].append(time.perf_counter() - start)
    return times


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- inputs ---------------------------------------------------------------------------------------


def example_batch(
    model: nn.Module, batch_size: int, img_size: int | None, device: torch.device | str
) -> tuple[Tensor, Tensor]:
    """A fixed random batch (seed 0) at ``model``'s ``input_size`` (or ``img_size``), labels
    below its ``num_classes``: what the benchmarks and a run's record measure a step on, so
    that both measure the same input."""
    channels, height, width = model.input_size
    if img_size is not None:
        height = width = img_size
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, channels, height, width, generator=generator).to(device)
    y = torch.randint(0, model.num_classes, (batch_size,), generator=generator).to(device)
    return x, y
