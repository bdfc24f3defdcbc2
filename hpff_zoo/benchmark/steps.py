"""Peak memory and time of one training step, local configurations against E2E.

A *configuration* names a local method and the HPFF plug-ins it uses: ``e2e``, ``infopro``,
``infopro+hilo``, ``infopro+pff``, ``infopro+hpff`` (= HiLo + PFF), likewise for ``dgl``,
``predsim`` and ``man``; ``+ckpt`` turns ``set_grad_checkpointing`` on (``e2e+ckpt``: E2E with
activation checkpointing; ``infopro+hpff+ckpt``: the least-memory local step), ``+blockckpt``
on a local configuration turns it on at granularity ``"block"`` (blocks only). Every
configuration is built from the same model name and measured on the same batch; ratios are
against the ``e2e`` configuration.

Memory is reported in two parts, because they scale differently: the *step peak* (activations
and temporaries, measured by :class:`~hpff_zoo.MemoryMeter`: what local learning reduces) and the
*static* memory (weights, gradients and one SGD momentum buffer of the backbone and the auxiliary
networks, counted exactly: what the auxiliaries add).

Speed is measured by interleaving: each repetition times one step of every configuration in
turn, so background load and clock drift hit all of them alike; the report gives the median and
the min/max over repetitions, beside the FLOPs torch counts for one step.
"""

from __future__ import annotations

import gc
import multiprocessing
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import timm
import torch

from ..aux.arch import AUX_PRESET_NAMES
from ..aux.base import PFF_SCOPES
from ..choices import closest, unknown_name
from ..local import METHODS, LocalModel
from ..measure import (
    MemoryMeter,
    example_batch,
    measure_speed,
    static_bytes,
    step_flops,
    step_peak_bytes,
)

__all__ = [
    "StepMeasurement",
    "build",
    "measure_memory",
    "measure_speed",
    "model_kwargs",
    "steps_table",
]

PLUGINS = ("hilo", "pff", "hpff", "ckpt", "blockckpt")
DEFAULT_CONFIGS = ("e2e", "infopro", "infopro+hilo", "infopro+pff", "infopro+hpff")


def model_kwargs(config: str) -> dict[str, object]:
    """``timm.create_model`` keyword arguments for a configuration name such as ``dgl+hpff``.

    A configuration is ``method[+plug-in...][:option...]``; options set the auxiliaries: an aux
    preset (``paper``, ``cheap``), a PFF scope (``decoder``, ``all``) or an aux budget (a
    number), e.g. ``infopro+hpff:cheap:0.1:decoder``. Unset options keep the model's defaults.
    """
    config, *options = config.split(":")
    method, *plugins = config.split("+")
    if method not in METHODS:
        raise ValueError(f"{unknown_name('method', method, METHODS)} in {config!r}")
    unknown = set(plugins) - set(PLUGINS)
    if unknown:
        raise ValueError(
            f"bad configuration {config!r}: {unknown_name('plug-in', min(unknown), PLUGINS)}"
        )
    if method == "e2e" and set(plugins) - {"ckpt"}:
        raise ValueError(
            f"bad configuration {config!r}: plug-ins are hilo, pff, hpff or blockckpt for local "
            "methods, ckpt (activation checkpointing) for any"
        )
    hilo = "hilo" in plugins or "hpff" in plugins
    pff = "pff" in plugins or "hpff" in plugins
    kwargs: dict[str, object] = dict(method=method, hilo=2 if hilo else False, pff=2 if pff else 1)
    for option in options:
        if option in AUX_PRESET_NAMES:
            kwargs["aux"] = option
        elif option in PFF_SCOPES:
            kwargs["pff_scope"] = option
        else:
            try:
                kwargs["aux_budget"] = float(option)
            except ValueError:
                near = closest(option, (*AUX_PRESET_NAMES, *PFF_SCOPES))
                hint = f"did you mean {' or '.join(map(repr, near))}? " if near else ""
                raise ValueError(
                    f"bad option {option!r} in {config!r}: {hint}an aux preset "
                    f"({', '.join(AUX_PRESET_NAMES)}), a PFF scope ({', '.join(PFF_SCOPES)}) "
                    "or an aux budget (a number)"
                ) from None
    if method == "e2e" and options:
        raise ValueError(f"bad configuration {config!r}: E2E has no auxiliaries to set")
    return kwargs


@dataclass(frozen=True)
class StepMeasurement:
    """One configuration at one K; unmeasured fields stay ``None``."""

    config: str
    num_modules: int
    peak_mib: float | None = None
    static_mib: float | None = None
    rss_mib: float | None = None
    reserved_mib: float | None = None
    step_seconds: float | None = None
    step_seconds_min: float | None = None
    step_seconds_max: float | None = None
    gflops: float | None = None


def build(
    model_name: str,
    config: str,
    num_modules: int | None = None,
    img_size: int | None = None,
    num_classes: int = 10,
    device: str | torch.device = "cpu",
) -> LocalModel:
    """The model of ``config`` (K = ``num_modules`` or the model's paper value)."""
    kwargs = dict(num_classes=num_classes, **model_kwargs(config))
    if num_modules is not None and not config.startswith("e2e"):
        kwargs["num_modules"] = num_modules
    if img_size is not None and "vit" in model_name:
        kwargs["img_size"] = img_size
    model = timm.create_model(model_name, **kwargs).to(device)
    plugins = config.split(":")[0].split("+")[1:]
    if "ckpt" in plugins:  # E2E: the rival users already have; local: least memory
        model.set_grad_checkpointing(True)
    elif "blockckpt" in plugins:
        model.set_grad_checkpointing(True, granularity="block")
    return model


def rss_growth_bytes(
    model_name: str,
    config: str,
    num_modules: int | None,
    img_size: int | None,
    num_classes: int,
    batch_size: int,
    steps: int = 2,
) -> int | None:
    """How far a fresh process's resident memory rises over ``steps`` training steps of
    ``config``, as the operating system counts it (Linux; ``None`` elsewhere).

    A fresh process per configuration, because a heap that another configuration grew before
    would hide the growth; the figure includes what the allocator keeps after tensors are
    freed, which is what a CPU user pays and the live-tensor meter does not see.
    """
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(
            _rss_growth_in_this_process,
            (model_name, config, num_modules, img_size, num_classes, batch_size, steps),
        )


def _rss_growth_in_this_process(
    model_name, config, num_modules, img_size, num_classes, batch_size, steps
) -> int | None:
    torch.set_num_threads(1)
    model = build(model_name, config, num_modules, img_size, num_classes).train()
    x, y = example_batch(model, batch_size, img_size, "cpu")
    gc.collect()
    with MemoryMeter("cpu") as meter:
        for _ in range(steps):
            model.local_step(x, y)
    return meter.report.rss_peak_bytes


def _modules(model: LocalModel) -> int:
    """K as the report shows it: E2E is one module whatever its wrapper's partition."""
    return 1 if model.method == "e2e" else model.num_modules


def measure_memory(
    model: LocalModel, config: str, x, y, rss_bytes: int | None = None
) -> StepMeasurement:
    return StepMeasurement(
        config,
        _modules(model),
        peak_mib=step_peak_bytes(model, x, y) / 2**20,
        static_mib=static_bytes(model) / 2**20,
        rss_mib=None if rss_bytes is None else rss_bytes / 2**20,
    )


def speed_measurements(
    configs: Sequence[str], models: Sequence[LocalModel], x, y, repetitions: int
) -> list[StepMeasurement]:
    flops = [step_flops(model, x, y) / 1e9 for model in models]
    times = measure_speed(models, x, y, repetitions)
    return [
        StepMeasurement(
            c,
            _modules(m),
            step_seconds=statistics.median(t),
            step_seconds_min=min(t),
            step_seconds_max=max(t),
            gflops=f,
        )
        for c, m, t, f in zip(configs, models, times, flops)
    ]


def _ratio(value: float | None, baseline: float | None) -> str:
    return f"{value / baseline:.3f}" if value is not None and baseline else "-"


def steps_table(command: str, results: Sequence[StepMeasurement]) -> str:
    """Markdown table of a ``memory`` or ``speed`` run, with ratios against E2E."""
    base = next((r for r in results if r.config == "e2e"), None)
    if command == "memory":
        rss = any(r.rss_mib is not None for r in results)
        lines = [
            "| configuration | K | step peak MiB | / E2E | static MiB | peak + static / E2E |"
            + (" process RSS growth MiB | / E2E |" if rss else ""),
            "|---|---|---|---|---|---|" + ("---|---|" if rss else ""),
        ]
        for r in results:
            total = r.peak_mib + r.static_mib
            base_total = base.peak_mib + base.static_mib if base else None
            line = (
                f"| {r.config} | {r.num_modules} | {r.peak_mib:.1f} | "
                f"{_ratio(r.peak_mib, base and base.peak_mib)} | {r.static_mib:.1f} | "
                f"{_ratio(total, base_total)} |"
            )
            if rss:
                growth = "-" if r.rss_mib is None else f"{r.rss_mib:.1f}"
                line += f" {growth} | {_ratio(r.rss_mib, base and base.rss_mib)} |"
            lines.append(line)
        return "\n".join(lines)
    if command == "tradeoff":
        lines = [
            "| configuration | K | step peak / E2E | process RSS growth / E2E | step time / E2E "
            "| GFLOP / E2E |",
            "|---|---|---|---|---|---|",
        ]
        for r in results:
            lines.append(
                f"| {r.config} | {r.num_modules} | {_ratio(r.peak_mib, base and base.peak_mib)} "
                f"| {_ratio(r.rss_mib, base and base.rss_mib)} "
                f"| {_ratio(r.step_seconds, base and base.step_seconds)} "
                f"| {_ratio(r.gflops, base and base.gflops)} |"
            )
        return "\n".join(lines)
    lines = [
        "| configuration | K | s / step: median [min, max] | / E2E | GFLOP / step | / E2E |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.config} | {r.num_modules} | {r.step_seconds:.4f} [{r.step_seconds_min:.4f}, "
            f"{r.step_seconds_max:.4f}] | {_ratio(r.step_seconds, base and base.step_seconds)} "
            f"| {r.gflops:.2f} | {_ratio(r.gflops, base and base.gflops)} |"
        )
    return "\n".join(lines)
