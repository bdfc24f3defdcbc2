"""``python -m hpff_zoo.benchmark gpu``: the prepared CUDA check, one command of at most 9 min.

GPU time for this project comes rarely and briefly, so the check is written and tested on CPU
(``--cpu --tiny``) before a device is lent. It runs the ``cuda``-marked tests, then measures the
paper's Table 3 settings with the CUDA allocator through the same ``build``/``measure_speed``
machinery as ``benchmark tradeoff``, and writes JSON, Markdown and the tradeoff plot. A budget
guard skips what would not fit: settings are measured in order, and one that starts after its
share of the budget is spent is recorded as skipped, never run half.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..choices import positive_int, unknown_name
from ..measure import MemoryMeter, example_batch
from .flags import config_list
from .steps import (
    StepMeasurement,
    build,
    measure_memory,
    model_kwargs,
    speed_measurements,
    steps_table,
)

__all__ = [
    "GPU_CONFIGS",
    "PAPER_MEMORY_RATIO",
    "SETTINGS",
    "GpuCheck",
    "Setting",
    "add_parser",
    "run",
]

GPU_CONFIGS = ("e2e", "e2e+ckpt", "infopro", "infopro+hpff", "infopro+hpff:paper", "dgl+hpff")
# Table 3 of the paper, GPU memory of InfoPro* / BP at these settings.
PAPER_MEMORY_RATIO = {"r32": 0.685, "r110": 0.257, "r101": 0.805}


@dataclass(frozen=True)
class Setting:
    """One Table 3 cell: a model at K, batch and resolution (full and ``--tiny``)."""

    name: str
    model: str
    num_modules: int
    batch_size: int
    img_size: int
    tiny_batch_size: int
    tiny_img_size: int


SETTINGS = {
    s.name: s
    for s in (
        Setting("r32", "hpff_resnet32", 16, 1024, 32, 8, 32),
        Setting("r110", "hpff_resnet110", 55, 1024, 32, 4, 32),
        Setting("r101", "hpff_resnet101", 4, 64, 224, 2, 64),
    )
}
_TESTS = Path(__file__).resolve().parents[2] / "tests" / "test_cuda.py"


@dataclass(frozen=True)
class GpuCheck:
    """What :func:`run` measures, one field per flag of ``benchmark gpu`` (see ``--help``)."""

    out: Path
    cpu: bool = False  # check the script on the CPU
    tiny: bool = False  # the settings' tiny batches and resolutions
    settings: Sequence[Setting] = tuple(SETTINGS.values())
    configs: Sequence[str] = GPU_CONFIGS
    repetitions: int = 5
    budget: float = 540.0  # seconds for the whole check
    no_tests: bool = False
    no_plots: bool = False


def _settings(text: str) -> list[Setting]:
    names = text.split(",")
    for name in names:
        if name not in SETTINGS:
            raise argparse.ArgumentTypeError(unknown_name("setting", name, SETTINGS))
    return [SETTINGS[n] for n in names]


def add_parser(commands) -> None:
    """Register the ``gpu`` subcommand on the benchmark CLI's subparsers."""
    help = "the prepared CUDA check: cuda tests, then Table 3 memory and step time on the GPU"
    sub = commands.add_parser("gpu", help=help, description=help)
    sub.add_argument("--out", type=Path, required=True, help="folder for every result written")
    sub.add_argument("--cpu", action="store_true", help="run on the CPU (check the script)")
    sub.add_argument(
        "--tiny", action="store_true", help="tiny batches and resolutions (minutes on a CPU)"
    )
    sub.add_argument(
        "--settings",
        type=_settings,
        default=list(SETTINGS.values()),
        help=f"comma-separated Table 3 settings out of {','.join(SETTINGS)} (default: all)",
    )
    sub.add_argument(
        "--configs",
        default=list(GPU_CONFIGS),
        type=config_list,
        help="comma-separated configurations, as for `tradeoff` (default: "
        f"{','.join(GPU_CONFIGS)})",
    )
    sub.add_argument(
        "--repetitions", type=positive_int, default=5, help="timed interleaved steps (default: 5)"
    )
    sub.add_argument(
        "--budget", type=float, default=540.0, help="seconds for the whole check (default: 540)"
    )
    sub.add_argument("--no-tests", action="store_true", help="skip the cuda-marked tests")
    sub.add_argument("--no-plots", action="store_true", help="write no PNG plots")


def _run_tests(out: Path, timeout: float) -> dict[str, object]:
    """The ``cuda``-marked tests in a child pytest, its JUnit XML kept beside the results."""
    junit = f"--junitxml={out / 'cuda_tests.xml'}"
    command = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-m", "cuda",
               "-p", "no:cacheprovider", str(_TESTS), junit]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"returncode": None, "summary": f"timed out after {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    return {"returncode": done.returncode, "summary": lines[-1] if lines else done.stderr[-300:]}


def _memory(model, config: str, x, y) -> StepMeasurement:
    """``benchmark memory``'s steady-state step peak; on CUDA also the reserved memory the caching
    allocator grows from an emptied cache over the measurement's two steps (an outer meter)."""
    gc.collect()
    if x.device.type != "cuda":
        return measure_memory(model, config, x, y)
    torch.cuda.empty_cache()
    with MemoryMeter(x.device) as outer:
        measured = measure_memory(model, config, x, y)
    return replace(measured, reserved_mib=outer.report.reserved_peak_bytes / 2**20)


def _measure_setting(
    setting: Setting, check: GpuCheck, device: torch.device
) -> list[StepMeasurement]:
    batch = setting.tiny_batch_size if check.tiny else setting.batch_size
    img = setting.tiny_img_size if check.tiny else setting.img_size
    configs = list(check.configs)
    torch.manual_seed(0)
    models = [build(setting.model, c, setting.num_modules, img, 10, device) for c in configs]
    x, y = example_batch(models[0], batch, img, device)
    memory = [_memory(m, c, x, y) for c, m in zip(configs, models)]
    speed = speed_measurements(configs, models, x, y, check.repetitions)
    del models
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return [
        replace(s, peak_mib=m.peak_mib, static_mib=m.static_mib, reserved_mib=m.reserved_mib)
        for m, s in zip(memory, speed)
    ]


def _summary(setting: Setting, results: list[StepMeasurement]) -> str:
    base = next(r for r in results if r.config == "e2e")
    infopro = next((r for r in results if r.config == "infopro"), None)
    ours = f"{infopro.peak_mib / base.peak_mib:.3f}" if infopro else "-"
    reserved = "-"
    if infopro and infopro.reserved_mib is not None and base.reserved_mib:
        reserved = f"{infopro.reserved_mib / base.reserved_mib:.3f}"
    return (
        f"{setting.name}: InfoPro / E2E step peak {ours}, reserved {reserved} "
        f"(paper, GPU, InfoPro* / BP: {PAPER_MEMORY_RATIO[setting.name]})"
    )


def run(check: GpuCheck) -> dict[str, object]:
    """Run the check; returns (and writes as ``gpu_check.json``) everything it measured."""
    started = time.monotonic()
    if not check.cpu and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; pass --cpu (with --tiny) to check on CPU")
    device = torch.device("cpu" if check.cpu else "cuda")
    for config in check.configs:
        model_kwargs(config)  # a bad name fails here, before any work (the CLI checked already)
    check.out.mkdir(parents=True, exist_ok=True)
    record: dict[str, object] = {"device": str(device), "tiny": check.tiny, "settings": {}}
    if not check.no_tests:
        record["tests"] = _run_tests(check.out, timeout=min(120.0, check.budget / 4))
        print(f"cuda tests: {record['tests']['summary']}", flush=True)
    plot = not check.no_plots
    tables, lines = [], []
    for i, setting in enumerate(check.settings):
        spent = time.monotonic() - started
        share = (check.budget - spent) / (len(check.settings) - i)
        if spent >= check.budget or share < 10:
            record["settings"][setting.name] = {"skipped": f"budget spent ({spent:.0f} s)"}
            lines.append(f"{setting.name}: skipped, budget spent")
            continue
        results = _measure_setting(setting, check, device)
        record["settings"][setting.name] = {
            **asdict(setting),
            "seconds": time.monotonic() - started - spent,
            "paper_memory_ratio": PAPER_MEMORY_RATIO[setting.name],
            "results": [asdict(r) for r in results],
        }
        table = steps_table("tradeoff", results)
        tables.append(f"## {setting.name}: {setting.model} K={setting.num_modules}\n\n{table}")
        lines.append(_summary(setting, results))
        if plot:
            from .plots import plot_memory_against_time

            title = f"{setting.model} K={setting.num_modules}, {device}"
            plot_memory_against_time(results, title, check.out / f"tradeoff_{setting.name}.png")
    record["seconds"] = time.monotonic() - started
    (check.out / "gpu_check.json").write_text(json.dumps(record, indent=2))
    (check.out / "gpu_check.md").write_text("\n\n".join(tables) + "\n")
    print("\n".join(lines) + f"\ntotal {record['seconds']:.0f} s; results in {check.out}")
    return record
