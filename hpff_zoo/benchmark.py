"""Measure what local learning buys: peak training memory and step time against E2E.

Usage::

    python -m hpff_zoo.benchmark memory --model hpff_resnet32 --batch-size 128 --out results/
    python -m hpff_zoo.benchmark speed --model hpff_resnet101 --batch-size 8 --img-size 224

A *configuration* names a local method and the HPFF plug-ins it uses: ``e2e``, ``infopro``,
``infopro+hilo``, ``infopro+pff``, ``infopro+hpff`` (= HiLo + PFF), likewise for ``dgl`` and
``predsim``. Every configuration is built from the same model name and K, and measured on the
same batch; ratios are against the ``e2e`` configuration.

Speed is measured by interleaving: each repetition times one step of every configuration in
turn, so background load and clock drift hit all of them alike; the report gives the median and
the min/max over repetitions.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from .local import METHODS, LocalModel
from .memory import step_peak_bytes

__all__ = ["main", "measure_flops", "measure_speed", "model_kwargs"]

DEFAULT_CONFIGS = ("e2e", "infopro", "infopro+hilo", "infopro+pff", "infopro+hpff")


def model_kwargs(config: str) -> dict[str, object]:
    """``timm.create_model`` keyword arguments for a configuration name such as ``dgl+hpff``."""
    method, *plugins = config.split("+")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} in {config!r}; choose from {list(METHODS)}")
    unknown = set(plugins) - {"hilo", "pff", "hpff"}
    if unknown or (method == "e2e" and plugins):
        raise ValueError(f"bad configuration {config!r}: plug-ins are hilo, pff or hpff")
    hilo = "hilo" in plugins or "hpff" in plugins
    pff = "pff" in plugins or "hpff" in plugins
    return dict(method=method, hilo=2 if hilo else False, pff=2 if pff else 1)


@dataclass(frozen=True)
class Measurement:
    config: str
    peak_mib: float | None = None
    step_seconds: float | None = None
    step_seconds_min: float | None = None
    step_seconds_max: float | None = None
    gflops: float | None = None


def _batch(model: LocalModel, args: argparse.Namespace, device: torch.device):
    channels, height, width = model.input_size
    if args.img_size is not None:
        height = width = args.img_size
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, channels, height, width, generator=generator).to(device)
    y = torch.randint(0, model.num_classes, (args.batch_size,), generator=generator).to(device)
    return x, y


class _FlopCounter(TorchDispatchMode):
    """Sums torch's FLOP formulas over every operator run, backward passes included.

    torch's FlopCounterMode also tracks modules through autograd hooks, which
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


def measure_flops(model: LocalModel, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one ``local_step`` (forward, every backward, auxiliaries), counted by torch.

    Hardware-independent, so it tells which part of a time ratio is arithmetic and which is
    overhead (small kernels, Python) on the machine at hand.
    """
    model.train()
    with _FlopCounter() as counter:
        model.local_step(x, y)
    return counter.total


def measure_speed(
    models: Sequence[LocalModel], x: torch.Tensor, y: torch.Tensor, repetitions: int = 10
) -> list[list[float]]:
    """Seconds per ``local_step`` of each model, interleaved, after one warm-up step each."""
    for model in models:
        model.train()
        model.local_step(x, y)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(repetitions):
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


def _build(args: argparse.Namespace, config: str, device: torch.device) -> LocalModel:
    kwargs = dict(num_classes=args.num_classes, **model_kwargs(config))
    if args.num_modules is not None:
        kwargs["num_modules"] = args.num_modules
    if args.img_size is not None and "vit" in args.model:
        kwargs["img_size"] = args.img_size
    return timm.create_model(args.model, **kwargs).to(device)


def run(args: argparse.Namespace) -> list[Measurement]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    models = [_build(args, config, device) for config in args.configs]
    x, y = _batch(models[0], args, device)
    if args.command == "memory":
        return [
            Measurement(config, peak_mib=step_peak_bytes(model, x, y) / 2**20)
            for config, model in zip(args.configs, models)
        ]
    flops = [measure_flops(model, x, y) / 1e9 for model in models]
    times = measure_speed(models, x, y, args.repetitions)
    return [
        Measurement(config, None, statistics.median(t), min(t), max(t), f)
        for config, t, f in zip(args.configs, times, flops)
    ]


def markdown_table(args: argparse.Namespace, results: Sequence[Measurement]) -> str:
    baseline = next((r for r in results if r.config == "e2e"), None)

    def ratio(value: float, field: str) -> str:
        return f"{value / getattr(baseline, field):.3f}" if baseline else "-"

    lines = [f"{args.model}, K={results_k(args)}, batch {args.batch_size}, {args.device}", ""]
    if args.command == "memory":
        lines += ["| configuration | peak MiB | / E2E |", "|---|---|---|"]
        lines += [
            f"| {r.config} | {r.peak_mib:.1f} | {ratio(r.peak_mib, 'peak_mib')} |" for r in results
        ]
        return "\n".join(lines)
    lines += [
        "| configuration | s / step: median [min, max] | / E2E | GFLOP / step | / E2E |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.config} | {r.step_seconds:.4f} [{r.step_seconds_min:.4f}, "
            f"{r.step_seconds_max:.4f}] | {ratio(r.step_seconds, 'step_seconds')} "
            f"| {r.gflops:.2f} | {ratio(r.gflops, 'gflops')} |"
        )
    return "\n".join(lines)


def results_k(args: argparse.Namespace) -> str:
    return str(args.num_modules) if args.num_modules is not None else "default"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hpff_zoo.benchmark", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("command", choices=["memory", "speed"], help="what to measure")
    parser.add_argument("--model", default="hpff_resnet32", help="an hpff_* model name")
    parser.add_argument(
        "--configs",
        default=",".join(DEFAULT_CONFIGS),
        type=lambda s: s.split(","),
        help="comma-separated configurations, e.g. e2e,dgl,dgl+hpff (default: %(default)s)",
    )
    parser.add_argument("--num-modules", type=int, help="K (default: the model's paper value)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size")
    parser.add_argument("--img-size", type=int, help="input resolution (default: the model's)")
    parser.add_argument("--num-classes", type=int, default=10, help="classifier outputs")
    parser.add_argument("--repetitions", type=int, default=10, help="timed steps per config")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="folder for results.json and results.md")
    args = parser.parse_args(argv)
    for config in args.configs:
        model_kwargs(config)  # fail on a bad name before building anything
    return args


def main(argv: Sequence[str] | None = None) -> list[Measurement]:
    args = parse_args(argv)
    results = run(args)
    table = markdown_table(args, results)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"{args.command}_{args.model}_bs{args.batch_size}"
        record = {
            "command": args.command,
            "model": args.model,
            "num_modules": args.num_modules,
            "batch_size": args.batch_size,
            "img_size": args.img_size,
            "device": args.device,
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "results": [asdict(r) for r in results],
        }
        (args.out / f"{stem}.json").write_text(json.dumps(record, indent=2))
        (args.out / f"{stem}.md").write_text(table + "\n")
    return results


if __name__ == "__main__":
    main()
