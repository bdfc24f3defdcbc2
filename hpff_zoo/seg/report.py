"""``python -m hpff_zoo.seg.report``: one table from finished segmentation runs' work dirs.

Every figure comes from a file mmengine or this package wrote in the run's work dir, so each is
traceable: the loss and validation curves from ``<timestamp>/vis_data/scalars.json`` (every
training session's, so a run resumed with ``--resume`` reads whole), the step peak from
:class:`~hpff_zoo.seg.StepMemoryHook`'s ``step_memory.json``, the flip test from
``recipes/segmentation.py test --tta flip --work-dir RUN/test_flip``, and the training time as
mmengine measured it: the sum of its per-iteration ``time`` over the logged intervals
(validation and start-up excluded).

    python -m hpff_zoo.seg.report work_dirs/e2e-scratch work_dirs/e2e-transfer --out results/

With ``--schedules``, it instead lines up the ``report.json`` files of the same runs trained to
different schedule lengths (each its own run, with its own poly decay): single-scale mIoU by
schedule and the gain of the last doubling, which is how this folder judges convergence.

    python -m hpff_zoo.seg.report --schedules results/report-4800.json results/report.json
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..choices import OneLineParser

__all__ = ["RunReport", "read_run", "schedule_table", "table"]


@dataclass
class RunReport:
    """What one run's work dir records."""

    name: str
    val_miou: list[tuple[int, float]] = field(default_factory=list)  # (iteration, mIoU)
    loss: list[tuple[int, float]] = field(default_factory=list)  # (iteration, train loss)
    miou_flip: float | None = None
    step_peak_mib: float | None = None
    train_seconds: float = 0.0

    @property
    def miou(self) -> float | None:
        """Single-scale mIoU of the last validation."""
        return self.val_miou[-1][1] if self.val_miou else None


def _latest(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.glob(pattern))
    return found[-1] if found else None


def _scalar_records(work_dir: Path) -> list[dict]:
    """Every training session's scalars in order, each resumed session superseding the steps
    it re-trained (a run stopped between checkpoints resumes from the last one and logs those
    iterations again). Session folders are mmengine's timestamps, so they sort in time."""
    records: list[dict] = []
    for scalars in sorted(work_dir.glob("2*/vis_data/scalars.json")):
        session = [json.loads(line) for line in scalars.read_text().splitlines() if line]
        if session:
            first = min(record["step"] for record in session)
            records = [record for record in records if record["step"] < first] + session
    return records


def read_run(work_dir: Path) -> RunReport:
    """The figures of the run in ``work_dir`` (a run with no scalars yet reads empty)."""
    report = RunReport(work_dir.name)
    previous = 0
    for record in _scalar_records(work_dir):
        if "mIoU" in record:
            report.val_miou.append((record["step"], record["mIoU"]))
        elif "loss" in record:
            report.loss.append((record["step"], round(record["loss"], 4)))
            report.train_seconds += record["time"] * (record["step"] - previous)
            previous = record["step"]
    flip = _latest(work_dir / "test_flip", "2*/2*.json")
    if flip is not None:
        report.miou_flip = json.loads(flip.read_text())["mIoU"]
    memory = work_dir / "step_memory.json"
    if memory.is_file():
        report.step_peak_mib = json.loads(memory.read_text())["peak_mib"]
    return report


def table(reports: list[RunReport]) -> str:
    """A Markdown table: mIoU single-scale and flip, the validation curve, step peak, time."""

    def number(value: float | None, digits: int = 2) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    lines = [
        "| run | mIoU SS | mIoU flip | val mIoU by iteration | step peak MiB | train min |",
        "|---|---|---|---|---|---|",
    ]
    for r in reports:
        curve = ", ".join(f"{m:.1f} @{i}" for i, m in r.val_miou) or "–"
        lines.append(
            f"| {r.name} | {number(r.miou)} | {number(r.miou_flip)} | {curve} "
            f"| {number(r.step_peak_mib, 1)} | {r.train_seconds / 60:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _schedule(records: list[dict]) -> int:
    """A report's schedule length: the iteration of its runs' last validation."""
    return max(record["val_miou"][-1][0] for record in records)


def schedule_table(reports: list[Path]) -> str:
    """A Markdown table of single-scale mIoU by schedule length, one row per run name, from
    ``report.json`` files. The last column is the gain of each run's own longest schedule over
    the one before it, marked with that schedule where it is not the table's longest (a run
    that levelled need not be trained further); blank where the run lacks the one before."""
    by_schedule: dict[int, dict[str, float]] = {}
    for path in reports:
        records = json.loads(path.read_text())
        by_schedule[_schedule(records)] = {r["name"]: r["miou"] for r in records}
    schedules = sorted(by_schedule)
    names = list(dict.fromkeys(name for s in schedules for name in by_schedule[s]))
    header = " | ".join(f"{s:,}" for s in schedules)
    lines = [f"| run | {header} | gain of the last doubling |", "|---" * (len(schedules) + 2) + "|"]
    for name in names:
        values = [by_schedule[s].get(name) for s in schedules]
        cells = " | ".join("–" if v is None else f"{v:.2f}" for v in values)
        trained = [i for i, v in enumerate(values) if v is not None]
        gain = ""
        if len(trained) >= 2 and trained[-2] == trained[-1] - 1:
            last, before = values[trained[-1]], values[trained[-2]]
            gain = f"{last - before:+.2f}"
            if trained[-1] < len(schedules) - 1:
                gain += f" at {schedules[trained[-1]]:,}"
        lines.append(f"| {name} | {cells} | {gain} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[RunReport]:
    parser = OneLineParser(description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("runs", nargs="*", type=Path, help="work dirs of recipes/segmentation.py")
    parser.add_argument("--out", type=Path, help="folder for report.json and report.md")
    parser.add_argument(
        "--schedules",
        nargs="+",
        type=Path,
        metavar="REPORT_JSON",
        help="instead of work dirs: report.json files of one grid at different schedule "
        "lengths; prints mIoU by schedule and the gain of the last doubling",
    )
    args = parser.parse_args(argv)
    if bool(args.runs) == bool(args.schedules):
        parser.error("give either work dirs or --schedules REPORT_JSON ..., not both or neither")
    if args.schedules:
        missing = [str(path) for path in args.schedules if not path.is_file()]
        if missing:
            parser.error(f"not a report.json: {', '.join(missing)}")
        print(schedule_table(args.schedules), end="")
        return []
    missing = [str(run) for run in args.runs if not run.is_dir()]
    if missing:
        parser.error(f"not a work dir: {', '.join(missing)}")
    reports = [read_run(run) for run in args.runs]
    text = table(reports)
    print(text, end="")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.md").write_text(text)
        records = [asdict(r) | {"miou": r.miou} for r in reports]
        (args.out / "report.json").write_text(json.dumps(records, indent=1) + "\n")
    return reports


if __name__ == "__main__":
    main()
