"""``python -m hpff_zoo.benchmark COMMAND``: run (or join), print, and write results.

Commands: memory, speed, tradeoff, parallel, accuracy, pareto, gpu, compile."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import TypeVar

import torch

from ..choices import OneLineParser, hpff_model, one_of, positive_int
from ..local import METHODS
from ..measure import example_batch
from . import gpu, torch_compile
from .accuracy import (
    DEFAULT_CELLS,
    PAPER_CIFAR10_RESNET32,
    Cell,
    CellResult,
    GridError,
    GridSettings,
    Row,
    accuracy_table,
    parse_cells,
    recorded_results,
    run_grid,
    summarize,
)
from .flags import config_list, device, int_list
from .pareto import join_accuracy_and_speed, pareto_table
from .steps import (
    DEFAULT_CONFIGS,
    StepMeasurement,
    build,
    measure_memory,
    rss_growth_bytes,
    speed_measurements,
    steps_table,
)

__all__ = ["main"]

Config = TypeVar("Config")
DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "cifar.py"


_method = one_of("method", METHODS)


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m hpff_zoo.benchmark",
        description="Measure peak training memory, step time and test accuracy of local "
        "learning configurations against E2E. Configurations: e2e, or a method (dgl, infopro, "
        "predsim, man) with optional plug-ins +hilo, +pff or +hpff (= HiLo + PFF), any with "
        "+ckpt (set_grad_checkpointing: activation checkpointing, least-memory local step), "
        "a local one with +blockckpt (checkpointing at granularity 'block': faster), "
        "and auxiliary options :paper or :cheap (preset), "
        ":decoder or :all (PFF scope), :0.1 (aux budget), e.g. infopro+hpff:cheap:0.1.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help in (
        ("memory", "peak step memory (MemoryMeter) and static memory of each configuration"),
        ("speed", "interleaved step time and FLOPs of each configuration"),
        ("tradeoff", "both: peak step memory against step time, one point per configuration"),
    ):
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument(
            "--model", default="hpff_resnet32", type=hpff_model, help="an hpff_* model name"
        )
        sub.add_argument(
            "--configs",
            default=",".join(DEFAULT_CONFIGS),
            type=config_list,
            help="comma-separated configurations, e.g. e2e,e2e+ckpt,dgl,infopro+hpff+ckpt "
            "(default: %(default)s)",
        )
        sub.add_argument(
            "--num-modules",
            type=int_list,
            help="K, or a comma-separated list of K for a memory-vs-K sweep (default: the "
            "model's paper value)",
        )
        sub.add_argument("--batch-size", type=positive_int, default=128, help="batch size")
        sub.add_argument(
            "--img-size", type=positive_int, help="input resolution (default: the model's)"
        )
        sub.add_argument("--num-classes", type=positive_int, default=10, help="classifier outputs")
        sub.add_argument(
            "--repetitions",
            type=positive_int,
            default=10,
            help="timed steps per configuration (speed)",
        )
        if name in ("memory", "tradeoff"):
            sub.add_argument(
                "--rss",
                action=argparse.BooleanOptionalAction,
                default=True,
                help="also measure each configuration's process RSS growth over 2 steps in a "
                "fresh process (CPU on Linux; default: on)",
            )
        sub.add_argument(
            "--device",
            default="cuda" if torch.cuda.is_available() else "cpu",
            type=device,
            help="where to measure (default: %(default)s)",
        )
        _output_flags(sub)

    parallel = commands.add_parser(
        "parallel",
        help="images/s of S pipelined stage processes against one process (gloo, CPU)",
        description="Throughput of module-parallel training (hpff_zoo.ModuleParallel): one "
        "process with 1 and S threads, then S stage processes with 1 thread each, same model "
        "and batch.",
    )
    parallel.add_argument("--model", default="hpff_resnet32", type=hpff_model, help="hpff_* model")
    parallel.add_argument("--method", default="infopro", type=_method, help="local method")
    parallel.add_argument("--num-modules", type=positive_int, default=4, help="K (default: 4)")
    parallel.add_argument("--hilo", type=int, default=2, help="cascade size, 0: off (default: 2)")
    parallel.add_argument("--pff", type=positive_int, default=2, help="PFF grid (default: 2)")
    parallel.add_argument("--stages", type=positive_int, default=2, help="S processes (default: 2)")
    parallel.add_argument(
        "--batch-size", type=positive_int, default=256, help="batch (default: 256)"
    )
    parallel.add_argument("--micro-batches", type=positive_int, default=4, help="M (default: 4)")
    parallel.add_argument("--steps", type=positive_int, default=4, help="timed steps (default: 4)")
    parallel.add_argument("--warmup", type=int, default=1, help="untimed steps (default: 1)")
    parallel.add_argument("--timeout", type=float, default=300.0, help="seconds (default: 300)")

    accuracy = commands.add_parser(
        "accuracy",
        help="train the comparison grid through recipes/cifar.py and tabulate test error",
        description="Train one recipe run per grid cell (config[@K][#seed]) and tabulate "
        "test error (mean ± std over seeds), the share of the gap to E2E each plug-in closes, "
        "peak step memory and training time. Finished cells are read, not retrained. Flags "
        "after a lone -- go to every recipe run (e.g. -- --epochs 1).",
    )
    accuracy.add_argument(
        "--model", default="hpff_resnet32", type=hpff_model, help="an hpff_* architecture"
    )
    accuracy.add_argument("--dataset", default="fashion_mnist", help="the recipes' --dataset")
    accuracy.add_argument(
        "--num-modules",
        type=positive_int,
        default=16,
        help="K of cells that give none (default: 16)",
    )
    accuracy.add_argument(
        "--cells",
        default=DEFAULT_CELLS,
        help="comma-separated config[@K][#seed] (default: %(default)s)",
    )
    accuracy.add_argument(
        "--preset",
        default="fmnist-cpu",
        help="recipe preset fixing the shared schedule (default: %(default)s: 10,000 training "
        "images, 2 epochs, batch 128); 'none' for the recipe's own defaults",
    )
    accuracy.add_argument("--jobs", type=positive_int, default=1, help="cells trained at once")
    accuracy.add_argument(
        "--threads", type=positive_int, help="CPU threads per cell (default: CPU cores / jobs)"
    )
    accuracy.add_argument(
        "--recipe", type=Path, default=DEFAULT_RECIPE, help="recipes/cifar.py of a checkout"
    )
    accuracy.add_argument(
        "--merge",
        type=Path,
        metavar="ACCURACY_JSON",
        help="also summarise the cells an earlier grid of the same model, dataset and preset "
        "recorded (its accuracy.json), e.g. seed 0 beside this grid's seed 1; a cell this grid "
        "trains replaces the recorded one",
    )
    _output_flags(accuracy)

    pareto = commands.add_parser(
        "pareto",
        help="test accuracy against step time and memory, from an accuracy grid and a speed run",
        description="Join an accuracy grid's accuracy.json with a speed run's JSON by "
        "configuration name (give both the same names) and mark the Pareto fronts: the "
        "configurations no other one beats on both accuracy and step time (pareto.png), and "
        "on both accuracy and the step peak memory each run measured (pareto_memory.png).",
    )
    pareto.add_argument("accuracy", type=Path, help="accuracy.json of `benchmark accuracy`")
    pareto.add_argument("speed", type=Path, help="the JSON `benchmark speed` wrote")
    _output_flags(pareto)
    gpu.add_parser(commands)
    torch_compile.add_parser(commands)
    return parser


def _output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="folder for the JSON, Markdown and PNG results")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")


def _environment() -> dict[str, str]:
    return {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "torch": torch.__version__,
    }


# --- memory and speed ---------------------------------------------------------------------------


def _steps(args: argparse.Namespace) -> list[StepMeasurement]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    ks = args.num_modules or [None]
    pairs = [(c, k) for c in args.configs for k in (ks if c != "e2e" else [None])]
    try:
        models = [
            build(args.model, c, k, args.img_size, args.num_classes, device) for c, k in pairs
        ]
    except ValueError as error:  # a K the model cannot be split into, a HiLo longer than K
        raise SystemExit(f"error: {error}") from None
    x, y = example_batch(models[0], args.batch_size, args.img_size, device)
    configs = [c for c, _ in pairs]
    if args.command == "speed":
        _progress(f"timing {len(models)} configurations, {args.repetitions} interleaved steps each")
        return speed_measurements(configs, models, x, y, args.repetitions)
    rss_on = device.type == "cpu" and args.rss
    memory = []
    for i, ((config, k), model) in enumerate(zip(pairs, models), 1):
        then = ": step peak, then RSS growth in a fresh process" if rss_on else ""
        k_text = "" if config.startswith("e2e") else f" (K={model.num_modules})"
        _progress(f"[{i}/{len(pairs)}] memory of {config}{k_text}{then}")
        rss = (
            rss_growth_bytes(
                args.model, config, k, args.img_size, args.num_classes, args.batch_size
            )
            if rss_on
            else None
        )
        memory.append(measure_memory(model, config, x, y, rss))
    if args.command == "memory":
        return memory
    _progress(f"timing {len(models)} configurations, {args.repetitions} interleaved steps each")
    speed = speed_measurements(configs, models, x, y, args.repetitions)
    return [
        replace(s, peak_mib=m.peak_mib, static_mib=m.static_mib, rss_mib=m.rss_mib)
        for m, s in zip(memory, speed)
    ]


def _progress(line: str) -> None:
    """A line on stderr while a measurement runs (minutes each): the table comes on stdout."""
    print(line, file=sys.stderr, flush=True)


def _write_steps(args: argparse.Namespace, results: list[StepMeasurement], table: str) -> None:
    stem = f"{args.command}_{args.model}_bs{args.batch_size}"
    record = {
        "command": args.command,
        "model": args.model,
        "batch_size": args.batch_size,
        "img_size": args.img_size,
        "device": args.device,
        **_environment(),
        "results": [asdict(r) for r in results],
    }
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=2))
    (args.out / f"{stem}.md").write_text(table + "\n")
    if args.no_plots or args.command == "speed" or not any(r.config == "e2e" for r in results):
        return
    from .plots import plot_memory, plot_memory_against_k, plot_memory_against_time

    title = f"{args.model}, batch {args.batch_size}, {args.device}"
    if args.command == "tradeoff":
        plot_memory_against_time(results, title, args.out / f"{stem}.png")
        return
    plot_memory(results, title, args.out / f"{stem}.png")
    if len({r.num_modules for r in results if r.config != "e2e"}) > 1:
        plot_memory_against_k(results, title, args.out / f"{stem}_vs_k.png")


# --- module-parallel throughput ------------------------------------------------------------------


def _parallel(args: argparse.Namespace) -> dict[str, float]:
    from ..parallel import ThroughputSetting, measure_throughput

    fields = ThroughputSetting.__dataclass_fields__
    try:
        results = measure_throughput(ThroughputSetting(**{k: getattr(args, k) for k in fields}))
    except ValueError as error:  # a K the model cannot be split into, a HiLo longer than K
        raise SystemExit(f"error: {error}") from None
    print(
        f"{args.model} {args.method} K={args.num_modules} HiLo={args.hilo} PFF={args.pff}, "
        f"batch {args.batch_size} in {args.micro_batches} micro-batches, {args.steps} steps"
    )
    baseline = results["1 process x 1 thread(s)"]
    for name, rate in results.items():
        print(f"  {name:<26} {rate:8.1f} img/s  ({rate / baseline:.2f}x)")
    return results


# --- accuracy -----------------------------------------------------------------------------------


def _accuracy(args: argparse.Namespace, recipe_args: Sequence[str]) -> list[Row]:
    if not args.recipe.is_file():
        raise SystemExit(
            f"no recipe at {args.recipe}: the accuracy grid trains through recipes/cifar.py of a "
            "source checkout; pass --recipe PATH"
        )
    try:
        cells = parse_cells(args.cells, args.num_modules)
    except ValueError as error:  # a misspelt configuration, a cell given twice
        raise SystemExit(f"error: --cells: {error}") from None
    recorded: list[CellResult] = []
    if args.merge is not None:
        try:
            record = json.loads(args.merge.read_text())
            recorded = recorded_results(record, args.model, args.dataset, args.preset)
        except (OSError, ValueError, KeyError, TypeError, GridError) as error:
            raise SystemExit(f"error: --merge {args.merge}: {error}") from None
    out = args.out or Path("results/accuracy")
    preset = [] if args.preset == "none" else ["--preset", args.preset]
    settings = GridSettings(
        args.model,
        args.dataset,
        Path(os.path.relpath(args.recipe)),  # recorded in each run's command line
        (*preset, *recipe_args),
        out,
        args.jobs,
        args.threads or max(1, (os.cpu_count() or 1) // args.jobs),
    )
    done: list[Cell] = []

    def report(cell: Cell, outcome: CellResult | Exception) -> None:
        done.append(cell)
        if isinstance(outcome, Exception):
            status = f"FAILED: {outcome}"
        else:
            status = f"top-1 {outcome.top1:.2f} % in {outcome.wall_time_s / 60:.1f} min"
        print(f"[{len(done)}/{len(cells)}] {cell.name}: {status}", flush=True)

    print(f"training {len(cells)} cells into {out / 'runs'} ({args.jobs} at a time)", flush=True)
    try:
        results = run_grid(settings, cells, report)
    except GridError as error:
        raise SystemExit(f"error: {error}; rerun the same command to retry them") from None
    results = [r for r in recorded if r.cell not in cells] + results
    paper = PAPER_CIFAR10_RESNET32 if args.model == "hpff_resnet32" else None
    rows = summarize(results, paper)
    table = accuracy_table(rows)
    print(table)
    record = {
        "command": "accuracy",
        "model": args.model,
        "dataset": args.dataset,
        "recipe_args": list(settings.recipe_args),
        "jobs": args.jobs,
        "threads": settings.threads,
        **_environment(),
        "rows": [asdict(r) for r in rows],
        "cells": [asdict(r) for r in results],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps(record, indent=2))
    (out / "accuracy.md").write_text(table + "\n")
    if not args.no_plots:
        from .plots import plot_training_curves

        title = f"{args.model} on {args.dataset}"
        plot_training_curves(results, title, out / "accuracy_curves.png")
    return rows


def _pareto(args: argparse.Namespace) -> str:
    def results(path: Path, key: str) -> list[dict]:
        try:
            return json.loads(path.read_text())[key]
        except (OSError, json.JSONDecodeError, KeyError) as error:
            raise SystemExit(
                f"error: {path} is not a benchmark result with {key!r}: {error}"
            ) from None

    try:
        points = join_accuracy_and_speed(
            results(args.accuracy, "rows"), results(args.speed, "results")
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    table = pareto_table(points)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "pareto.md").write_text(table + "\n")
        if not args.no_plots:
            from .plots import plot_accuracy_against_time

            name = args.accuracy.parent.name
            title = f"{name}: top-1 against step time"
            plot_accuracy_against_time(points, title, args.out / "pareto.png")
            if any(p.peak_ratio is not None for p in points):
                title = f"{name}: top-1 against step memory"
                path = args.out / "pareto_memory.png"
                plot_accuracy_against_time(points, title, path, cost="peak_ratio")
    return table


def _typed(config_class: type[Config], args: argparse.Namespace) -> Config:
    """The subcommand's typed configuration from the parsed flags (one field per flag)."""
    return config_class(**{f.name: getattr(args, f.name) for f in fields(config_class)})


def main(argv: Sequence[str] | None = None):
    """Run one subcommand; returns its measurements (memory, speed) or summary rows (accuracy)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, recipe_args = argv[:split], argv[split + 1 :]
    args = _parser().parse_args(argv)
    if args.command == "accuracy":
        return _accuracy(args, recipe_args)
    if recipe_args:
        raise SystemExit(f"{args.command} takes no recipe flags after --")
    if args.command == "parallel":
        return _parallel(args)
    if args.command == "pareto":
        return _pareto(args)
    if args.command == "gpu":
        return gpu.run(_typed(gpu.GpuCheck, args))
    if args.command == "compile":
        return torch_compile.run(_typed(torch_compile.CompileCheck, args))
    results = _steps(args)
    table = steps_table(args.command, results)
    print(f"{args.model}, batch {args.batch_size}, {args.device}\n\n{table}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        _write_steps(args, results, table)
    return results
