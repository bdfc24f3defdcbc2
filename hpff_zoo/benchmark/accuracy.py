"""Test accuracy of local configurations against E2E: the comparison grid, run through the recipes.

Each *cell* of the grid is one training run of ``recipes/cifar.py`` (a separate process, so runs
are isolated, parallel with ``jobs``, and resumable: a cell whose ``run.json`` exists is read,
not retrained; a cell interrupted mid-way resumes from its last checkpoint). A cell is written
``config[@K][#seed]``: ``infopro+hpff@8#1`` is InfoPro with HiLo and PFF, K=8, seed 1; K defaults
to the grid's, the seed to 0. Every cell shares the same data, schedule and preprocessing (the
recipe flags of the grid); only the method, K and seed change.

Results are summarised per configuration and K (mean and sample standard deviation over seeds)
with the share of the gap to E2E that HPFF (or HiLo / PFF alone) closes for its method.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..models import TAGS
from .steps import model_kwargs

__all__ = [
    "DEFAULT_CELLS",
    "PAPER_CIFAR10_RESNET32",
    "Cell",
    "CellResult",
    "GridError",
    "Row",
    "accuracy_table",
    "parse_cells",
    "recorded_results",
    "run_grid",
    "summarize",
]

DEFAULT_CELLS = (
    "e2e#0,e2e#1,infopro#0,infopro#1,infopro+hpff#0,infopro+hpff#1,dgl,dgl+hpff,predsim,"
    "predsim+hpff,infopro+hilo,infopro+pff,man,infopro@8,infopro+hpff@8"
)

# Test error (%) on CIFAR-10 with ResNet-32 from the HPFF paper (GPU, 400 epochs): Table 1
# (K=8, K=16), Table 4 (DGL + HiLo without PFF) and Table 5 (InfoPro + HiLo without PFF).
PAPER_CIFAR10_RESNET32 = {
    ("e2e", 1): 6.37,
    ("predsim", 8): 20.62,
    ("predsim+hpff", 8): 13.73,
    ("dgl", 8): 11.63,
    ("dgl+hpff", 8): 8.08,
    ("infopro", 8): 11.51,
    ("infopro+hpff", 8): 7.79,
    ("predsim", 16): 22.71,
    ("predsim+hpff", 16): 15.74,
    ("dgl", 16): 14.08,
    ("dgl+hilo", 16): 9.44,
    ("dgl+hpff", 16): 8.94,
    ("infopro", 16): 12.93,
    ("infopro+hilo", 16): 9.59,
    ("infopro+hpff", 16): 8.99,
}


class GridError(RuntimeError):
    """One or more cells of the grid failed; the others' results are kept on disk."""


@dataclass(frozen=True, order=True)
class Cell:
    """One training run of the grid."""

    config: str
    num_modules: int
    seed: int = 0

    @classmethod
    def parse(cls, text: str, default_k: int) -> Cell:
        """``"infopro+hpff@8#1"`` → Cell("infopro+hpff", 8, 1); E2E always has K=1."""
        rest, _, seed = text.strip().partition("#")
        config, _, k = rest.partition("@")
        model_kwargs(config)  # a bad configuration name fails here, before anything trains
        try:
            num_modules = 1 if config == "e2e" else int(k or default_k)
            return cls(config, num_modules, int(seed or 0))
        except ValueError:
            raise ValueError(f"bad grid cell {text!r}: write config[@K][#seed]") from None

    @property
    def name(self) -> str:
        k = "" if self.config == "e2e" else f"_k{self.num_modules}"
        return f"{self.config}{k}_s{self.seed}"

    def recipe_flags(self) -> list[str]:
        kwargs = model_kwargs(self.config)
        flags = ["--method", str(kwargs["method"]), "--seed", str(self.seed)]
        if self.config != "e2e":
            flags += ["--num-modules", str(self.num_modules)]
            flags += ["--hilo", str(int(kwargs["hilo"])), "--pff", str(kwargs["pff"])]
        for key in ("aux", "aux_budget", "pff_scope"):
            if key in kwargs:
                flags += [f"--{key.replace('_', '-')}", str(kwargs[key])]
        return flags


def parse_cells(text: str, default_k: int) -> list[Cell]:
    cells = [Cell.parse(item, default_k) for item in text.split(",") if item.strip()]
    duplicates = sorted({c.name for c in cells if cells.count(c) > 1})
    if duplicates:
        raise ValueError(f"grid cells given twice: {', '.join(duplicates)}")
    return cells


@dataclass
class CellResult:
    """What one cell's run recorded (``run.json`` and ``metrics.jsonl`` of its output dir)."""

    cell: Cell
    top1: float
    wall_time_s: float
    peak_memory_bytes: int
    e2e_peak_memory_bytes: int
    command: str
    epochs: list[dict] = field(default_factory=list)  # per epoch: test_top1, train_loss, ...
    steps: list[dict] = field(default_factory=list)  # per logged step: step, loss/head

    @classmethod
    def load(cls, cell: Cell, run_dir: Path) -> CellResult:
        record = json.loads((run_dir / "run.json").read_text())
        epochs, steps = [], []
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            entry = json.loads(line)
            if entry.get("kind") == "epoch":
                epochs.append(entry)
            elif "loss/head" in entry:  # the curve needs only these two; the run keeps the rest
                steps.append({"step": entry["step"], "loss/head": entry["loss/head"]})
        return cls(
            cell,
            record["top1"],
            record["wall_time_s"],
            record["peak_memory_bytes"],
            record["e2e_peak_memory_bytes"],
            record["command"],
            epochs,
            steps,
        )


def recorded_results(record: dict, model: str, dataset: str, preset: str) -> list[CellResult]:
    """The cells an earlier grid's ``accuracy.json`` recorded, to summarise beside this grid's.

    A record keeps each cell's top-1, memory, time and curves, so new seeds can join runs whose
    folders are gone (``--merge``). Only a record of the same protocol is comparable.

    Raises:
        GridError: the record trained another architecture or dataset, or with another preset.
    """
    args = record.get("recipe_args", [])
    theirs = args[args.index("--preset") + 1] if "--preset" in args else "none"
    mine, recorded = (model, dataset, preset), (record["model"], record["dataset"], theirs)
    if mine != recorded:
        raise GridError(
            "the merged record is not this grid's protocol: it trained (model, dataset, preset) "
            f"= {recorded}, this grid {mine}"
        )
    return [CellResult(**{**entry, "cell": Cell(**entry["cell"])}) for entry in record["cells"]]


@dataclass(frozen=True)
class GridSettings:
    """What every cell shares.

    Attributes:
        arch: the hpff_* architecture.
        dataset: the recipes' ``--dataset``.
        recipe: path of ``recipes/cifar.py``.
        recipe_args: further recipe flags (schedule, subset, preset) given to every cell.
        out: the grid folder; cell ``c`` trains in ``out/runs/<c.name>``.
        jobs: cells trained at once; each gets ``threads`` CPU threads.
    """

    arch: str
    dataset: str
    recipe: Path
    recipe_args: tuple[str, ...]
    out: Path
    jobs: int = 1
    threads: int | None = None

    def model_name(self, cell: Cell) -> str:
        """The recipe's ``--model`` for ``cell``.

        The catalogue tag of exactly this setting when there is one (so the run exports as that
        tag); else any tag of the architecture on this dataset, which brings the dataset's
        preprocessing (input size, channels, mean/std) so that every cell sees the same images;
        else the bare architecture.
        """
        kwargs = model_kwargs(cell.config)
        same_data = [
            spec
            for spec in TAGS.values()
            if spec.arch == self.arch and self.dataset in (spec.dataset.key, spec.dataset.short)
        ]
        for spec in same_data:
            setting = dict(method=spec.method, hilo=spec.hilo or False, pff=spec.pff)
            k_matches = spec.num_modules == cell.num_modules or cell.config == "e2e"
            if setting == kwargs and k_matches:
                return spec.name
        return same_data[0].name if same_data else self.arch

    def command(self, cell: Cell) -> list[str]:
        run_dir = self.out / "runs" / cell.name
        command = [sys.executable, str(self.recipe), "--model", self.model_name(cell)]
        command += ["--dataset", self.dataset, *cell.recipe_flags(), *self.recipe_args]
        command += ["--output-dir", str(run_dir)]
        if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
            command.append("--resume")
        return command


def _train_cell(settings: GridSettings, cell: Cell) -> CellResult:
    run_dir = settings.out / "runs" / cell.name
    if (run_dir / "run.json").is_file():
        return CellResult.load(cell, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if settings.threads:
        env["OMP_NUM_THREADS"] = str(settings.threads)
    log = run_dir / "train.log"
    with log.open("a") as stream:
        done = subprocess.run(
            settings.command(cell), stdout=stream, stderr=subprocess.STDOUT, env=env, check=False
        )
    if done.returncode != 0:
        raise GridError(f"cell {cell.name} exited with {done.returncode}; see {log}")
    return CellResult.load(cell, run_dir)


def run_grid(
    settings: GridSettings,
    cells: Sequence[Cell],
    progress: Callable[[Cell, CellResult | Exception], None] | None = None,
) -> list[CellResult]:
    """Train every cell not trained yet (``settings.jobs`` at a time); results in cell order.

    Raises:
        GridError: after every cell has been tried, naming the cells that failed.
    """
    results: dict[Cell, CellResult] = {}
    failures: list[str] = []

    def train(cell: Cell) -> None:
        try:
            results[cell] = _train_cell(settings, cell)
            outcome: CellResult | Exception = results[cell]
        except GridError as error:
            failures.append(str(error))
            outcome = error
        if progress is not None:
            progress(cell, outcome)

    with ThreadPoolExecutor(max_workers=settings.jobs) as pool:
        list(pool.map(train, cells))
    if failures:
        raise GridError("; ".join(failures))
    return [results[cell] for cell in cells]


@dataclass(frozen=True)
class Row:
    """One configuration at one K, over its seeds."""

    config: str
    num_modules: int
    seeds: int
    error_mean: float
    error_std: float | None
    peak_ratio: float
    wall_time_s: float
    closed_gap: float | None = None  # share of the method's gap to E2E this plug-in closes
    closed_gap_std: float | None = None  # its spread over the seeds all three rows share
    paper_error: float | None = None


def _without_plugins(config: str) -> tuple:
    """A configuration's setting with HiLo and PFF off (its PFF scope then means nothing), so
    that ``infopro+hpff:cheap:0.1:all`` compares with ``infopro:cheap:0.1``."""
    kwargs = model_kwargs(config)
    kwargs.pop("pff_scope", None)
    kwargs.update(hilo=False, pff=1)
    return tuple(sorted(kwargs.items()))


def _alone(row: Row) -> bool:
    kwargs = model_kwargs(row.config)
    return row.config != "e2e" and not kwargs["hilo"] and kwargs["pff"] == 1


def summarize(results: Sequence[CellResult], paper: dict | None = None) -> list[Row]:
    """Rows in first-appearance order; the gap HPFF closes is ``(err_m − err) / (err_m − err_e2e)``
    against the same method and auxiliaries at the same K without plug-ins.

    With several seeds the plug-ins' effect is taken per seed, as the error difference of the
    two runs of that seed (a seed moves both runs' initialisation and batch order alike), and
    its mean and sample standard deviation over the seeds both rows trained are divided by the
    gap of the mean errors. The spread is the seed spread of the plug-ins' effect; the gap's own
    uncertainty is not in it.
    """
    groups: dict[tuple[str, int], list[CellResult]] = {}
    for result in results:
        groups.setdefault((result.cell.config, result.cell.num_modules), []).append(result)
    rows = []
    for (config, k), members in groups.items():
        errors = [100.0 - m.top1 for m in members]
        rows.append(
            Row(
                config,
                k,
                len(members),
                statistics.fmean(errors),
                statistics.stdev(errors) if len(errors) > 1 else None,
                statistics.fmean(m.peak_memory_bytes / m.e2e_peak_memory_bytes for m in members),
                statistics.fmean(m.wall_time_s for m in members),
                paper_error=(paper or {}).get((config, k)),
            )
        )
    by_setting = {(_without_plugins(r.config), r.num_modules): r for r in rows if _alone(r)}
    e2e = next((r for r in rows if r.config == "e2e"), None)
    closed = []
    for row in rows:
        k = row.num_modules
        alone = by_setting.get((_without_plugins(row.config), k))
        gap = alone.error_mean - e2e.error_mean if alone and e2e else 0.0
        if row is not alone and alone is not None and gap > 0:
            effects = _paired_differences(groups[alone.config, k], groups[row.config, k])
            if effects:
                row = replace(
                    row,
                    closed_gap=statistics.fmean(effects) / gap,
                    closed_gap_std=statistics.stdev(effects) / gap if len(effects) > 1 else None,
                )
        closed.append(row)
    return closed


def _paired_differences(alone: Sequence[CellResult], plugged: Sequence[CellResult]) -> list[float]:
    """Per seed trained in both rows, the method's error minus its error with the plug-ins."""
    errors = {m.cell.seed: 100.0 - m.top1 for m in alone}
    return [errors[m.cell.seed] - (100.0 - m.top1) for m in plugged if m.cell.seed in errors]


def accuracy_table(rows: Sequence[Row]) -> str:
    """Markdown: test error (mean ± std over seeds), gap closed, memory, time, paper."""
    with_paper = any(r.paper_error is not None for r in rows)
    header = "| configuration | K | seeds | test error % | gap to E2E closed | step peak / E2E | "
    header += "train time |" + (" paper, CIFAR-10 (GPU) |" if with_paper else "")
    lines = [header, "|---" * (8 if with_paper else 7) + "|"]
    for r in rows:
        spread = f" ± {r.error_std:.2f}" if r.error_std is not None else ""
        closed = f"{100 * r.closed_gap:.0f} %" if r.closed_gap is not None else ""
        if r.closed_gap_std is not None:
            closed = f"{100 * r.closed_gap:.0f} ± {100 * r.closed_gap_std:.0f} %"
        line = (
            f"| {r.config} | {r.num_modules} | {r.seeds} | {r.error_mean:.2f}{spread} | "
            f"{closed} | {r.peak_ratio:.3f} | {r.wall_time_s / 60:.1f} min |"
        )
        if with_paper:
            line += f" {r.paper_error:.2f} |" if r.paper_error is not None else " |"
        lines.append(line)
    return "\n".join(lines)
