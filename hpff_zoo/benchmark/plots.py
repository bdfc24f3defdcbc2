"""PNG figures of benchmark results (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .accuracy import CellResult
from .pareto import ParetoPoint
from .steps import StepMeasurement

__all__ = [
    "plot_accuracy_against_time",
    "plot_memory",
    "plot_memory_against_k",
    "plot_memory_against_time",
    "plot_training_curves",
]


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            "plots need matplotlib: pip install 'hpff-zoo[bench]' (or pass --no-plots)"
        ) from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_memory(results: Sequence[StepMeasurement], title: str, path: Path) -> Path:
    """Step peak and peak + static memory of each configuration, as a share of E2E."""
    plt = _pyplot()
    base = next(r for r in results if r.config == "e2e")
    labels = [f"{r.config}\nK={r.num_modules}" for r in results]
    peak = [r.peak_mib / base.peak_mib for r in results]
    total = [(r.peak_mib + r.static_mib) / (base.peak_mib + base.static_mib) for r in results]
    positions = range(len(results))
    figure, axis = plt.subplots(figsize=(1.3 * len(results) + 2, 4))
    axis.bar([p - 0.2 for p in positions], peak, 0.4, label="step peak (activations)")
    axis.bar([p + 0.2 for p in positions], total, 0.4, label="step peak + weights/grads/momentum")
    axis.axhline(1.0, color="grey", linewidth=0.8)
    axis.set_xticks(list(positions), labels, fontsize=8)
    axis.set_ylabel("memory / E2E")
    return _save(figure, axis, title, path)


def plot_memory_against_time(results: Sequence[StepMeasurement], title: str, path: Path) -> Path:
    """Step peak memory / E2E against step time / E2E: where each configuration trades."""
    plt = _pyplot()
    base = next(r for r in results if r.config == "e2e")
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for r in results:
        point = (r.step_seconds / base.step_seconds, r.peak_mib / base.peak_mib)
        axis.scatter(*point, label=f"{r.config} (K={r.num_modules})")
    axis.set_xlabel("step time / E2E")
    axis.set_ylabel("step peak memory / E2E")
    axis.set_ylim(bottom=0)
    return _save(figure, axis, title, path)


def plot_accuracy_against_time(
    points: Sequence[ParetoPoint], title: str, path: Path, cost: str = "time_ratio"
) -> Path:
    """Test top-1 against step time / E2E, or with ``cost="peak_ratio"`` against step peak
    memory / E2E (error bars: std over seeds), that cost's front joined."""
    plt = _pyplot()
    on_front = "on_front" if cost == "time_ratio" else "on_memory_front"
    shown = [p for p in points if getattr(p, cost) is not None]
    figure, axis = plt.subplots(figsize=(7, 4.8))
    for p in shown:
        axis.errorbar(
            getattr(p, cost), p.top1, yerr=p.top1_std or 0,
            fmt="o" if getattr(p, on_front) else "s", capsize=3,
            label=f"{p.config} (K={p.num_modules})",
        )  # fmt: skip
    front = sorted((getattr(p, cost), p.top1) for p in shown if getattr(p, on_front))
    axis.plot(*zip(*front), color="grey", linestyle="--", linewidth=0.8, label="Pareto front")
    axis.set_xlabel("step time / E2E" if cost == "time_ratio" else "step peak memory / E2E")
    axis.set_ylabel("test top-1 %")
    return _save(figure, axis, title, path)


def plot_memory_against_k(results: Sequence[StepMeasurement], title: str, path: Path) -> Path:
    """Step peak / E2E against K for each configuration, with the 1/K floor."""
    plt = _pyplot()
    base = next(r for r in results if r.config == "e2e")
    figure, axis = plt.subplots(figsize=(6, 4))
    for config in dict.fromkeys(r.config for r in results if r.config != "e2e"):
        points = sorted(
            (r.num_modules, r.peak_mib / base.peak_mib) for r in results if r.config == config
        )
        axis.plot(*zip(*points), marker="o", label=config)
    ks = sorted({r.num_modules for r in results})
    axis.plot(ks, [1 / k for k in ks], linestyle="--", color="grey", label="1/K floor")
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("K (gradient-isolated modules)")
    axis.set_ylabel("step peak memory / E2E")
    return _save(figure, axis, title, path)


def plot_training_curves(results: Sequence[CellResult], title: str, path: Path) -> Path:
    """Training loss of the head against steps, and test error against epochs, per cell."""
    plt = _pyplot()
    figure, (loss_axis, error_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = {}
    for result in results:
        cell = result.cell
        label = cell.config if cell.config == "e2e" else f"{cell.config} K={cell.num_modules}"
        colour = colours.setdefault(label, plt.cm.tab20(len(colours) % 20))
        style = dict(color=colour, alpha=0.9 if cell.seed == 0 else 0.5, linewidth=1)
        name = label if cell.seed == 0 else None
        if result.steps:
            steps = [s["step"] for s in result.steps]
            loss_axis.plot(steps, [s["loss/head"] for s in result.steps], label=name, **style)
        epochs = [e["epoch"] for e in result.epochs]
        errors = [100.0 - e["test_top1"] for e in result.epochs]
        error_axis.plot(epochs, errors, marker="o", label=name, **style)
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("head training loss")
    loss_axis.set_yscale("log")
    error_axis.set_xlabel("epoch")
    error_axis.xaxis.get_major_locator().set_params(integer=True)
    error_axis.set_ylabel("test error %")
    return _save(figure, error_axis, title, path)


def _save(figure, legend_axis, title: str, path: Path) -> Path:
    legend_axis.legend(fontsize=8, ncol=2 if len(legend_axis.get_lines()) > 6 else 1)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    figure.clf()
    return path
