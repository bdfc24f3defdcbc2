"""``python -m hpff_zoo.benchmark compile``: does ``torch.compile`` speed a local step up?

For each configuration it builds the eager model and a copy compiled with
:func:`hpff_zoo.compile_local`, runs both on one batch and reports the compiled model's first
steps (where it compiles) against the eager step, the largest difference of gradients and of
losses between the two, and the steady step time of every model interleaved (each repetition
times one step of each in turn, as ``benchmark speed`` does), as medians and ratios against the
first configuration's eager step. One intra-op thread on CPU, as the other CPU figures here.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..choices import hpff_model, positive_int
from ..compiled import compile_local
from ..measure import example_batch, measure_speed
from . import flags
from .steps import build

__all__ = ["CompileCheck", "CompileRow", "add_parser", "run"]


@dataclass
class CompileRow:
    """One configuration, eager against compiled."""

    config: str
    eager_step_s: float  # one eager step after the first
    first_compiled_steps_s: list[float]  # the first step compiles (and so may the next ones)
    max_grad_difference: float  # max |compiled - eager| / max |eager| over the first gradients
    max_loss_difference: float
    eager_median_s: float = 0.0
    compiled_median_s: float = 0.0


@dataclass(frozen=True)
class CompileCheck:
    """What :func:`run` compares, one field per flag of ``benchmark compile`` (see ``--help``)."""

    model: str = "hpff_resnet32"
    num_modules: int = 16
    batch_size: int = 128
    configs: Sequence[str] = ("e2e", "infopro", "infopro+hpff")
    backend: str = "inductor"
    device: str = "cpu"
    warmup: int = 3  # compiled steps before timing
    repetitions: int = 10  # timed interleaved steps
    out: Path | None = None  # folder for compile.json and compile.md


def add_parser(commands) -> None:
    """Register the ``compile`` subcommand on the benchmark CLI's subparsers."""
    help = "torch.compile against eager: compile time, equal numbers, steady step time"
    sub = commands.add_parser("compile", help=help, description=__doc__.splitlines()[0])
    sub.add_argument("--model", default="hpff_resnet32", type=hpff_model, help="an hpff_* model")
    sub.add_argument("--num-modules", type=positive_int, default=16, help="K (default: 16)")
    sub.add_argument("--batch-size", type=positive_int, default=128, help="images per step")
    defaults = CompileCheck.configs
    sub.add_argument(
        "--configs",
        default=list(defaults),
        type=flags.config_list,
        help=f"comma-separated configurations, as for `speed` (default: {','.join(defaults)})",
    )
    sub.add_argument(
        "--backend", default="inductor", type=flags.backend, help="torch.compile backend"
    )
    sub.add_argument("--device", default="cpu", type=flags.device, help="cpu or cuda")
    sub.add_argument("--warmup", type=int, default=3, help="compiled steps before timing")
    sub.add_argument("--repetitions", type=positive_int, default=10, help="timed interleaved steps")
    sub.add_argument("--out", type=Path, help="folder for compile.json and compile.md")


def _timed_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.perf_counter()
    model.local_step(x, y)
    return time.perf_counter() - start


def largest_grad_difference(eager: nn.Module, compiled: nn.Module) -> float:
    """Largest |compiled − eager| over the gradients, relative to each gradient's largest entry."""
    reference = {n: p.grad for n, p in eager.named_parameters()}
    worst = 0.0
    for name, param in compiled.named_parameters():
        if (param.grad is None) != (reference[name] is None):
            raise AssertionError(f"{name}: a gradient in one model only")
        if param.grad is not None:
            scale = reference[name].abs().max().item() or 1.0
            worst = max(worst, (param.grad - reference[name]).abs().max().item() / scale)
    return worst


def _compare(config: str, eager: nn.Module, compiled: nn.Module, x, y, warmup: int) -> CompileRow:
    eager.local_step(x, y)
    first = [_timed_step(compiled, x, y)]
    grad_difference = largest_grad_difference(eager, compiled)  # before gradients accumulate
    first += [_timed_step(compiled, x, y) for _ in range(warmup)]
    eager_step = _timed_step(eager, x, y)
    losses = zip(eager.local_step(x, y).values(), compiled.local_step(x, y).values())
    loss_difference = max(abs(a - b) for a, b in losses)
    return CompileRow(config, eager_step, first, grad_difference, loss_difference)


def table(rows: list[CompileRow]) -> str:
    """The Markdown table of ``rows`` (ratios against the first row's eager median)."""
    base = rows[0].eager_median_s
    lines = [
        "| configuration | first compiled steps s (eager step s) | max grad diff / max grad "
        "| max loss diff | steady s/step | / first eager | compiled / eager |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        first = ", ".join(f"{t:.1f}" for t in r.first_compiled_steps_s)
        eager, compiled = r.eager_median_s, r.compiled_median_s
        lines.append(
            f"| {r.config} | {first} ({r.eager_step_s:.2f}) | {r.max_grad_difference:.1e} "
            f"| {r.max_loss_difference:.1e} | {eager:.3f} → {compiled:.3f} "
            f"| {eager / base:.2f} → {compiled / base:.2f} | {compiled / eager:.3f} |"
        )
    return "\n".join(lines)


def run(check: CompileCheck) -> list[CompileRow]:
    """Build, compile, compare and time every configuration; print (and write) the table."""
    device = torch.device(check.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    rows, models = [], []
    for config in check.configs:
        torch.manual_seed(0)
        eager = build(check.model, config, check.num_modules, device=device).train()
        compiled = compile_local(copy.deepcopy(eager), check.backend)
        x, y = example_batch(eager, check.batch_size, None, device)
        rows.append(_compare(config, eager, compiled, x, y, check.warmup))
        models += [eager, compiled]
        print(f"{config}: built, compiled and compared", flush=True)
    times = measure_speed(models, x, y, check.repetitions)
    for i, row in enumerate(rows):
        row.eager_median_s = statistics.median(times[2 * i])
        row.compiled_median_s = statistics.median(times[2 * i + 1])
    text = (
        f"{check.model} K={check.num_modules} batch {check.batch_size}, {check.device}, backend "
        f"{check.backend}, {check.repetitions} interleaved repetitions\n\n{table(rows)}"
    )
    print(f"\n{text}")
    if check.out is not None:
        check.out.mkdir(parents=True, exist_ok=True)
        (check.out / "compile.md").write_text(text + "\n")
        settings = asdict(check) | {"configs": ",".join(check.configs), "out": str(check.out)}
        records = dict(args=settings, rows=[asdict(r) for r in rows])
        (check.out / "compile.json").write_text(json.dumps(records, indent=2) + "\n")
    return rows
