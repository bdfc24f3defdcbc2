"""Accuracy against step time and step memory: which configurations no other one beats.

An accuracy grid (``benchmark accuracy``) and a speed run (``benchmark speed``) are measured
apart, because their costs differ by orders of magnitude and their loads by machine state: the
grid's training times are not interleaved, the speed run's step times are. This module joins the
two by configuration name, so the same names must be given to both (``infopro+hpff:cheap:0.1``).
Step memory comes with the grid: each run measured its own step peak against E2E's on its batch.
A user chooses on all three, so each cost gets its own front.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["ParetoPoint", "join_accuracy_and_speed", "pareto_table"]


@dataclass(frozen=True)
class ParetoPoint:
    """One configuration: test top-1 (mean and std over seeds), step time and step peak / E2E.

    ``on_front``: no other point is at least as accurate and as fast, and better on one;
    ``on_memory_front`` likewise with step memory (False where the grid measured none).
    """

    config: str
    num_modules: int
    top1: float
    top1_std: float | None
    seeds: int
    time_ratio: float
    peak_ratio: float | None = None
    on_front: bool = False
    on_memory_front: bool = False


def join_accuracy_and_speed(
    accuracy_rows: Sequence[dict[str, Any]], speed_results: Sequence[dict[str, Any]]
) -> list[ParetoPoint]:
    """Points for every grid row whose configuration the speed run timed, with the Pareto fronts
    of accuracy against step time and against step memory marked.

    Raises:
        ValueError: the speed run has no ``e2e`` baseline, or the two share no configuration.
    """
    seconds = {r["config"]: r["step_seconds"] for r in speed_results}
    if "e2e" not in seconds:
        raise ValueError("the speed run must time e2e: step times are reported against it")
    points = [
        ParetoPoint(
            row["config"],
            row["num_modules"],
            100.0 - row["error_mean"],
            row["error_std"],
            row["seeds"],
            seconds[row["config"]] / seconds["e2e"],
            row.get("peak_ratio"),
        )
        for row in accuracy_rows
        if row["config"] in seconds
    ]
    if not points:
        raise ValueError(
            f"no configuration is in both: the grid has {[r['config'] for r in accuracy_rows]}, "
            f"the speed run {sorted(seconds)}"
        )
    measured = [p for p in points if p.peak_ratio is not None]
    return [
        replace(
            p,
            on_front=not any(_dominates(q, p, "time_ratio") for q in points),
            on_memory_front=p.peak_ratio is not None
            and not any(_dominates(q, p, "peak_ratio") for q in measured),
        )
        for p in points
    ]


def _dominates(a: ParetoPoint, b: ParetoPoint, cost: str) -> bool:
    a_cost, b_cost = getattr(a, cost), getattr(b, cost)
    at_least = a.top1 >= b.top1 and a_cost <= b_cost
    return at_least and (a.top1 > b.top1 or a_cost < b_cost)


def pareto_table(points: Sequence[ParetoPoint]) -> str:
    """Markdown: one row per point, fastest first, each front's members marked in bold."""
    lines = [
        "| configuration | K | seeds | test top-1 % | step time / E2E | step peak / E2E "
        "| front (time) | front (memory) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in sorted(points, key=lambda p: p.time_ratio):
        top1 = f"{p.top1:.2f}" + (f" ± {p.top1_std:.2f}" if p.top1_std else "")
        peak = "" if p.peak_ratio is None else f"{p.peak_ratio:.2f}"
        marks = ["**yes**" if on else "" for on in (p.on_front, p.on_memory_front)]
        lines.append(
            f"| {p.config} | {p.num_modules} | {p.seeds} | {top1} | {p.time_ratio:.2f} | {peak} "
            f"| {marks[0]} | {marks[1]} |"
        )
    return "\n".join(lines)
