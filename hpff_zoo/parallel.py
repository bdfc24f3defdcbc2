"""Module-parallel training: a LocalModel's modules spread over processes, pipelined.

Gradient isolation means module j+1 never waits for module j's backward, so the K modules can
live on S processes (or devices), each training its contiguous range of modules (with their
auxiliary networks; the last stage also the head) on the detached activations the previous stage
sends, while that stage already works on the next micro-batch::

    hpff_zoo.parallel.init_stages()                 # torchrun / accelerate env, gloo or NCCL
    stage = hpff_zoo.ModuleParallel(model, micro_batches=4)
    optimizer = torch.optim.SGD(stage.parameters(), lr=0.1)
    for x, y in loader:                             # every stage is fed the same batches
        losses = stage.step(x, y)                   # this stage's forward + backward
        optimizer.step(); optimizer.zero_grad()
    stage.synchronize()                             # every process now holds the trained model

Each micro-batch runs :class:`hpff_zoo.streamed.StreamedStep` restricted to the stage's modules.
HiLo cascades that cross a stage boundary are exact: the downstream stage sends the gradient of
its input back, and the upstream stage keeps the graphs of the modules such a cascade reaches
until it arrives, one micro-batch later (it runs micro-batch m+1 meanwhile). Gradients of the
micro-batches are summed with the losses divided by their number, so one step equals a
single-process ``local_step`` on the whole batch with gradient accumulation (BatchNorm sees
micro-batch statistics, as with accumulation). Without HiLo nothing flows back, and a stage only
waits for its input.

Stages are balanced by measured cost: the FLOPs of each module's training step (forward, every
backward, its auxiliaries), counted by torch on one small batch, split by the partitioner's
min-max dynamic programme.

Every process holds the whole model's weights (only its own stage is trained, its optimizer holds
only its own parameters); :meth:`ModuleParallel.synchronize` broadcasts each stage's weights to
all. One pipeline over the whole process group: S stages × D data-parallel replicas is not
supported, nor is MAN (its momentum copy reads the next module's weights, which may live on
another stage).

``python -m hpff_zoo.benchmark parallel`` measures throughput with S processes against one.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import itertools
import os
import queue
import socket
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from .local import LocalModel
from .measure import FlopCounter, example_batch
from .partition import balanced_split
from .streamed import Backward, StreamedStep, default_backward

__all__ = [
    "ModuleParallel",
    "StageError",
    "ThroughputSetting",
    "init_stages",
    "measure_throughput",
    "module_step_flops",
    "run_stages",
    "stage_ranges",
]

DEFAULT_TIMEOUT = 300.0
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_HEADER = 8  # dtype code, ndim, up to 6 sizes


class StageError(RuntimeError):
    """Communication with another stage failed: it crashed, or stayed silent past the timeout."""


def init_stages(backend: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Join the process group described by the launcher's environment (``torchrun``,
    ``accelerate launch``: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).

    ``backend`` defaults to NCCL when CUDA is available, else gloo. ``timeout`` (seconds) bounds
    every wait for another stage, so a stage that dies or hangs stops the others with a
    :class:`StageError` instead of a silent hang.
    """
    if dist.is_initialized():
        return
    missing = [
        v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ
    ]
    if missing:
        raise RuntimeError(
            f"module-parallel training runs one process per stage, but {', '.join(missing)} "
            "not set: launch with `torchrun --nproc_per_node S ...` or `accelerate launch "
            "--num_processes S ...`"
        )
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))


@contextlib.contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """Run a measurement on ``model`` without a trace: buffers, gradients, mode and RNG kept."""
    buffers = {name: buf.clone() for name, buf in model.named_buffers()}
    grads = {p: p.grad for p in model.parameters()}
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        with torch.no_grad():
            for name, buf in model.named_buffers():
                buf.copy_(buffers[name])
        for p, grad in grads.items():
            p.grad = grad
        model.train(was_training)


def module_step_flops(model: LocalModel, batch_size: int = 2) -> list[int]:
    """FLOPs of each module's share of a training step: forward, auxiliaries, every backward.

    Counted by torch while each module runs its part of a streamed step on a random batch at the
    model's ``input_size``; deterministic, so every process computes the same stage split.
    """
    param = next(model.parameters())
    x = torch.randn(batch_size, *model.input_size, device=param.device, dtype=param.dtype)
    y = torch.zeros(batch_size, dtype=torch.long, device=param.device)
    costs, k = [], model.cascade_size
    with _restored(model):
        model.train()
        h = x
        for j in range(model.num_modules):
            step = StreamedStep(model, x, y, default_backward, modules=range(j, j + 1))
            with FlopCounter() as counter:
                out = step.start(h)
                last = j == model.num_modules - 1
                step.finish(None if last else {r: torch.zeros_like(out) for r in range(1, k)})
            costs.append(counter.total)
            h = out.detach()
    return costs


def stage_ranges(
    model: LocalModel, num_stages: int, splits: Sequence[int] | None = None
) -> list[range]:
    """Contiguous module ranges of the ``num_stages`` stages.

    ``splits``: the first module (0-based) of each stage after the first; by default the split
    that minimises the most expensive stage's :func:`module_step_flops`.
    """
    num = model.num_modules
    if not 1 <= num_stages <= num:
        raise ValueError(f"{num_stages} stages need between 1 and {num} (K) modules per stage")
    if splits is None:
        starts = balanced_split(module_step_flops(model), num_stages) if num_stages > 1 else [0]
    else:
        starts = [0, *splits]
        if len(starts) != num_stages or any(b <= a for a, b in itertools.pairwise(starts)):
            raise ValueError(f"{num_stages} stages need {num_stages - 1} increasing splits")
        if starts[-1] >= num:
            raise ValueError(f"split {starts[-1]} is past the last module ({num - 1})")
    ends = [*starts[1:], num]
    return [range(a, b) for a, b in zip(starts, ends)]


class ModuleParallel:
    """This process's pipeline stage of a :class:`~hpff_zoo.LocalModel`.

    Args:
        model: the whole model, identical on every process (same seed or same checkpoint).
        num_stages: S; must equal the process group's size (default: that size).
        micro_batches: M, the micro-batches each step's batch is cut into and pipelined.
        splits: first module of each stage after the first (default: balanced, see
            :func:`stage_ranges`).

    Stage s is the process of rank s. Call :meth:`step` on every process with the same batch.
    """

    def __init__(
        self,
        model: LocalModel,
        num_stages: int | None = None,
        micro_batches: int = 1,
        splits: Sequence[int] | None = None,
    ) -> None:
        if not dist.is_initialized():
            raise RuntimeError("module-parallel training needs a process group: call init_stages()")
        world = dist.get_world_size()
        num_stages = num_stages or world
        if num_stages != world:
            raise ValueError(
                f"{num_stages} stages on {world} processes: module-parallel training runs one "
                "pipeline over all processes (S stages x D data-parallel replicas is not "
                "supported); launch exactly as many processes as stages"
            )
        if micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
        if num_stages > 1 and any(
            getattr(aux, "follows_backbone", False) for aux in model.aux.modules()
        ):
            raise ValueError(
                f"{model.method} cannot be trained module-parallel: its momentum copies follow "
                "later modules' weights, which live on other stages"
            )
        self.model = model
        self.stage = dist.get_rank()
        self.num_stages = num_stages
        self.micro_batches = micro_batches
        self.ranges = stage_ranges(model, num_stages, splits)
        self.modules = self.ranges[self.stage]
        self.device = next(model.parameters()).device
        self._owned = _owned_tensors(model, self.ranges)

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.num_stages - 1

    def describe(self) -> str:
        """``stage 1/2: modules 1-3`` for every stage, one per line."""
        return "\n".join(
            f"stage {s + 1}/{self.num_stages}: modules {r.start + 1}-{r.stop}"
            for s, r in enumerate(self.ranges)
        )

    def parameters(self) -> Iterator[nn.Parameter]:
        """This stage's parameters: its modules' (the head on the last stage) and auxiliaries'."""
        for j in self.modules:
            yield from self.model.module_parameters(j, include_aux=True)

    # --- one step ---------------------------------------------------------------------------

    def step(self, x: Tensor, y: Tensor, backward: Backward | None = None) -> dict[str, float]:
        """This stage's forward and backward of one batch (no optimizer step).

        Every stage must be given the same ``x`` and ``y`` (stage 0 feeds ``x`` to the
        backbone; the others need the labels, and the image for reconstruction losses).
        ``backward`` is called on every loss, divided by the number of micro-batches.

        Returns:
            this stage's losses (``module{j}``, and ``head`` on the last stage), averaged over
            the micro-batches.
        """
        self.model._check_batch(x, y)
        count = self.micro_batches
        if x.shape[0] % count:
            raise ValueError(f"batch of {x.shape[0]} does not split into {count} micro-batches")
        backward = backward or default_backward
        scaled = backward if count == 1 else (lambda loss: backward(loss / count))
        k = self.model.cascade_size
        sends: list[tuple[Any, ...]] = []
        waiting: deque[tuple[StreamedStep, Tensor, Tensor]] = deque()
        totals: dict[str, float] = defaultdict(float)
        for xm, ym in zip(
            x.to(self.device, non_blocking=True).chunk(count),
            y.to(self.device, non_blocking=True).chunk(count),
        ):
            h = xm if self.is_first else self._recv_activation()
            step = StreamedStep(self.model, xm, ym, scaled, modules=self.modules)
            out = step.start(h)
            if not self.is_last:
                sends.append(self._send_activation(out))
            if k > 1 and not self.is_last:
                waiting.append((step, h, out))
                if len(waiting) > 1:  # micro-batch m-1's cascade gradient, while m+1 waits
                    sends += self._finish(*waiting.popleft())
            else:
                step.finish()
                sends += self._send_boundary(step, h)
            for name, value in step.loss_values().items():
                totals[name] += value / count
        while waiting:
            sends += self._finish(*waiting.popleft())
        for works in sends:
            for work in works[0]:
                self._comm("finish sending to", None, work.wait)
        return dict(totals)

    def _finish(self, step: StreamedStep, h: Tensor, out: Tensor) -> list[tuple[Any, ...]]:
        """Receive the next stage's cascade gradient for ``out``, finish, pass ours back."""
        k, peer = self.model.cascade_size, self.stage + 1
        grads = torch.empty((k - 1, *out.shape), dtype=out.dtype, device=self.device)
        self._comm("receive the cascade gradient from", peer, dist.recv, grads, peer)
        step.finish({r: grads[r - 1] for r in range(1, k)})
        return self._send_boundary(step, h)

    def _send_boundary(self, step: StreamedStep, h: Tensor) -> list[tuple[Any, ...]]:
        """The cascade gradients of the stage input ``h``, by reach left, to the previous stage.

        One message per micro-batch whenever HiLo is on (zeros where no window crosses), so the
        previous stage knows what to wait for.
        """
        k = self.model.cascade_size
        if k == 1 or self.is_first:
            return []
        zeros = torch.zeros_like(h)
        grads = torch.stack([step.boundary.get(r, zeros) for r in range(1, k)]).contiguous()
        return [([self._isend(grads, self.stage - 1)], grads)]

    def _send_activation(self, h: Tensor) -> tuple[Any, ...]:
        h = h.detach().contiguous()
        if h.dim() > _HEADER - 2 or h.dtype not in _DTYPES:
            raise ValueError(f"cannot send a {h.dim()}-d {h.dtype} activation between stages")
        header = torch.zeros(_HEADER, dtype=torch.long, device=self.device)
        header[0], header[1] = _DTYPES.index(h.dtype), h.dim()
        header[2 : 2 + h.dim()] = torch.tensor(h.shape)
        works = [self._isend(header, self.stage + 1), self._isend(h, self.stage + 1)]
        return works, header, h

    def _recv_activation(self) -> Tensor:
        header = torch.empty(_HEADER, dtype=torch.long, device=self.device)
        src = self.stage - 1
        self._comm("receive an activation from", src, dist.recv, header, src)
        dtype, ndim = _DTYPES[int(header[0])], int(header[1])
        h = torch.empty(header[2 : 2 + ndim].tolist(), dtype=dtype, device=self.device)
        self._comm("receive an activation from", src, dist.recv, h, src)
        return h

    def _isend(self, tensor: Tensor, peer: int) -> Any:
        return self._comm("send to", peer, dist.isend, tensor, peer)

    def _comm(self, what: str, peer: int | None, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except (RuntimeError, dist.DistError) as error:
            who = "another stage" if peer is None else f"stage {peer}"
            raise StageError(
                f"stage {self.stage} of {self.num_stages} could not {what} {who}: {error}. "
                "That stage probably crashed (see its own error) or exceeded the timeout."
            ) from error

    # --- weights ------------------------------------------------------------------------------

    @torch.no_grad()
    def synchronize(self) -> None:
        """Broadcast every stage's parameters and buffers, so all processes hold the model."""
        for stage, tensors in enumerate(self._owned):
            by_dtype: dict[torch.dtype, list[Tensor]] = defaultdict(list)
            for tensor in tensors:
                by_dtype[tensor.dtype].append(tensor)
            for group in by_dtype.values():
                flat = torch.cat([t.reshape(-1) for t in group])
                self._comm("exchange weights with", stage, dist.broadcast, flat, stage)
                for tensor, chunk in zip(group, flat.split([t.numel() for t in group])):
                    tensor.copy_(chunk.view_as(tensor))


def _owned_tensors(model: LocalModel, ranges: Sequence[range]) -> list[list[Tensor]]:
    """Parameters and buffers each stage trains (what no atom owns goes to the last stage)."""
    owner: dict[int, int] = {}
    for stage, modules in enumerate(ranges):
        for j in modules:
            for p in model.module_parameters(j, include_aux=True):
                owner[id(p)] = stage
            for atom in model.partition.module_atoms(j):
                module = atom.as_module()
                for buf in module.buffers() if module is not None else ():
                    owner[id(buf)] = stage
            for group in model.aux.values():
                if f"module{j + 1}" in group:
                    for buf in group[f"module{j + 1}"].buffers():
                        owner[id(buf)] = stage
    owned: list[list[Tensor]] = [[] for _ in ranges]
    seen: set[int] = set()
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            owned[owner.get(id(tensor), len(ranges) - 1)].append(tensor)
    return owned


# --- launching S local processes (tests, benchmark) ------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stage_main(rank, world, port, timeout, threads, fn, args, results) -> None:
    torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    init_stages("gloo", timeout=timeout)
    try:
        buffer = io.BytesIO()  # bytes, not tensors in shared memory freed when this exits
        torch.save(fn(*args), buffer)
        results.put((rank, buffer.getvalue()))
    finally:
        dist.destroy_process_group()


def run_stages(
    fn: Callable[..., Any],
    num_stages: int,
    args: Sequence[Any] = (),
    timeout: float = 60.0,
    threads: int = 1,
) -> list[Any]:
    """Run ``fn(*args)`` on ``num_stages`` local CPU processes joined in a gloo group.

    Returns each process's result (by rank). Raises ``RuntimeError`` naming the exit codes if
    any process fails or they are not all done within ``3 * timeout`` seconds.
    """
    context = mp.get_context("spawn")
    results_queue = context.Queue()
    port = _free_port()
    processes = [
        context.Process(
            target=_stage_main,
            args=(rank, num_stages, port, timeout, threads, fn, tuple(args), results_queue),
        )
        for rank in range(num_stages)
    ]
    for process in processes:
        process.start()
    deadline = time.monotonic() + 3 * timeout
    results: dict[int, Any] = {}
    # Read results while waiting: a process cannot exit before the queue takes its result.
    while time.monotonic() < deadline and any(p.is_alive() for p in processes):
        with contextlib.suppress(queue.Empty):
            rank, result = results_queue.get(timeout=0.1)
            results[rank] = result
    while len(results) < num_stages:
        try:
            rank, result = results_queue.get(timeout=0.5)
        except queue.Empty:
            break
        results[rank] = result
    codes = [process.exitcode for process in processes]
    for process in processes:
        if process.is_alive():
            process.kill()
        process.join()
    if any(code != 0 for code in codes):
        raise RuntimeError(f"stage processes exited with codes {codes} (None: still running)")
    return [torch.load(io.BytesIO(results[rank]), weights_only=False) for rank in range(num_stages)]


# --- throughput benchmark ----------------------------------------------------------------------


@dataclass(frozen=True)
class ThroughputSetting:
    """What :func:`measure_throughput` times: a model's setting, the stage count and the batch.

    A plain value (not a command line's namespace) so that it pickles to the stage processes and
    a caller other than ``python -m hpff_zoo.benchmark parallel`` can build one."""

    model: str = "hpff_resnet32"
    method: str = "infopro"
    num_modules: int = 4
    hilo: int = 2  # cascade size; 0 or 1: off
    pff: int = 2
    stages: int = 2
    batch_size: int = 256
    micro_batches: int = 4
    steps: int = 4  # timed steps
    warmup: int = 1  # untimed steps first
    timeout: float = 300.0  # seconds a stage waits for another


def _bench_model(setting: ThroughputSetting) -> LocalModel:
    import timm

    import hpff_zoo  # noqa: F401  (registers the models)

    torch.manual_seed(0)
    return timm.create_model(
        setting.model,
        num_classes=10,
        num_modules=setting.num_modules,
        method=setting.method,
        hilo=setting.hilo if setting.hilo > 1 else False,
        pff=setting.pff,
    )


def _bench_seconds(setting: ThroughputSetting, pipelined: bool) -> float:
    """Seconds of ``setting.steps`` training steps (optimizer included) after the warm-up."""
    model = _bench_model(setting)
    x, y = example_batch(model, setting.batch_size, None, "cpu")
    if pipelined:
        stage = ModuleParallel(model, micro_batches=setting.micro_batches)
        step: Callable[[], Any] = lambda: stage.step(x, y)  # noqa: E731
        params = list(stage.parameters())
    else:
        step, params = (lambda: model.local_step(x, y)), list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    start = 0.0
    for i in range(setting.warmup + setting.steps):
        if i == setting.warmup:
            if pipelined:
                dist.barrier()  # all stages start the clock together
            start = time.perf_counter()
        step()
        optimizer.step()
        optimizer.zero_grad()
    if pipelined:
        dist.barrier()  # and stop it when the last stage is done
    return time.perf_counter() - start


def measure_throughput(setting: ThroughputSetting) -> dict[str, float]:
    """Images per second: one process with 1 and S threads, then S stage processes.

    The caller's thread count is restored afterwards."""
    images = setting.batch_size * setting.steps
    results: dict[str, float] = {}
    callers_threads = torch.get_num_threads()
    try:
        for threads in sorted({1, setting.stages}):
            torch.set_num_threads(threads)
            results[f"1 process x {threads} thread(s)"] = images / _bench_seconds(setting, False)
    finally:  # the caller's thread count is its own: a test run after this one relies on it
        torch.set_num_threads(callers_threads)
    seconds = run_stages(_bench_seconds, setting.stages, (setting, True), timeout=setting.timeout)
    results[f"{setting.stages} stages x 1 thread"] = images / max(seconds)
    return results
