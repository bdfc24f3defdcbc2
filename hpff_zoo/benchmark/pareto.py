"""Accuracy against step time: which configurations no other one beats on both.

An accuracy grid (``benchmark accuracy``) and a speed run (``benchmark speed``) are measured
apart, because their costs differ by orders of magnitude and their loads by machine state: the
grid's training times are not interleaved, the speed run's step times are. This module joins the
two by configuration name, so the same names must be given to both (``infopro+hpff:cheap:0.1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["ParetoPoint", "join_accuracy_and_speed", "pareto_table"]


@dataclass(frozen=True)
class ParetoPoint:
    """One configuration: test top-1 (mean and std over seeds) and step time / E2E."""

    config: str
    num_modules: int
    top1: float
    top1_std: float | None
    seeds: int
    time_ratio: float
    on_front: bool = False


def join_accuracy_and_speed(
    accuracy_rows: Sequence[dict[str, Any]], speed_results: Sequence[dict[str, Any]]
) -> list[ParetoPoint]:
    """Points for every grid row whose configuration the speed run timed, with the Pareto front
    (no other point at least as accurate and at least as fast, and better on one) marked.

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
        )
        for row in accuracy_rows
        if row["config"] in seconds
    ]
    if not points:
        raise ValueError(
            f"no configuration is in both: the grid has {[r['config'] for r in accuracy_rows]}, "
            f"the speed run {sorted(seconds)}"
        )
    return [replace(p, on_front=not any(_dominates(q, p) for q in points)) for p in points]


def _dominates(a: ParetoPoint, b: ParetoPoint) -> bool:
    at_least = a.top1 >= b.top1 and a.time_ratio <= b.time_ratio
    return at_least and (a.top1 > b.top1 or a.time_ratio < b.time_ratio)


def pareto_table(points: Sequence[ParetoPoint]) -> str:
    """Markdown: one row per point, fastest first, front members in bold."""
    lines = [
        "| configuration | K | seeds | test top-1 % | step time / E2E | Pareto front |",
        "|---|---|---|---|---|---|",
    ]
    for p in sorted(points, key=lambda p: p.time_ratio):
        top1 = f"{p.top1:.2f}" + (f" ± {p.top1_std:.2f}" if p.top1_std else "")
        mark = "**yes**" if p.on_front else ""
        lines.append(
            f"| {p.config} | {p.num_modules} | {p.seeds} | {top1} | {p.time_ratio:.2f} | {mark} |"
        )
    return "\n".join(lines)
