"""The benchmark CLI on tiny configurations, so it cannot rot, and the grid's bookkeeping."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict

import pytest

from hpff_zoo import benchmark
from hpff_zoo.benchmark.accuracy import (
    Cell,
    CellResult,
    GridError,
    accuracy_table,
    parse_cells,
    recorded_results,
    summarize,
)


def test_memory_and_speed_commands_write_results(tmp_path):
    common = ["--model", "hpff_resnet32", "--num-modules", "4", "--batch-size", "4"]
    configs = ["--configs", "e2e,dgl:paper,dgl+hpff:paper", "--out", str(tmp_path)]
    memory = benchmark.main(["memory", *common, *configs])
    speed = benchmark.main(["speed", *common, *configs, "--repetitions", "2"])
    assert [r.config for r in memory] == ["e2e", "dgl:paper", "dgl+hpff:paper"]
    assert all(r.peak_mib > 0 and r.static_mib > 0 for r in memory)
    # Auxiliary networks add weights, gradients and momentum to the static memory (HiLo's cascade
    # auxiliaries more; the default cheap preset's independent ones under HiLo are linear probes).
    assert memory[2].static_mib > memory[1].static_mib > memory[0].static_mib
    assert all(r.step_seconds_min <= r.step_seconds <= r.step_seconds_max for r in speed)
    # HiLo adds a cascade auxiliary and an input-gradient pass: more arithmetic than plain DGL.
    assert speed[2].gflops > speed[1].gflops > 0
    record = json.loads((tmp_path / "speed_hpff_resnet32_bs4.json").read_text())
    assert record["results"][0]["config"] == "e2e"
    assert "| dgl+hpff:paper | 4 |" in (tmp_path / "memory_hpff_resnet32_bs4.md").read_text()
    assert (tmp_path / "memory_hpff_resnet32_bs4.png").stat().st_size > 0


def test_memory_against_k_sweep_falls_and_is_plotted(tmp_path):
    results = benchmark.main(["memory", "--model", "hpff_resnet32", "--configs", "e2e,dgl",
                              "--num-modules", "2,4,8", "--batch-size", "8",
                              "--out", str(tmp_path)])  # fmt: skip
    peaks = {r.num_modules: r.peak_mib for r in results if r.config == "dgl"}
    assert list(peaks) == [2, 4, 8] and peaks[8] < peaks[4] < peaks[2]
    assert (tmp_path / "memory_hpff_resnet32_bs8_vs_k.png").stat().st_size > 0


def test_accuracy_grid_trains_summarises_and_resumes(tmp_path):
    argv = ["accuracy", "--dataset", "mnist5k", "--num-modules", "2",
            "--cells", "e2e#0,e2e#1,dgl+hpff", "--jobs", "2", "--preset", "none",
            "--out", str(tmp_path), "--", "--epochs", "1", "--max-train-samples", "32",
            "--max-eval-samples", "32", "--batch-size", "16", "--workers", "0", "--log-every", "1",
            "--report-to", "none", "--checkpoint-every-epochs", "0"]  # fmt: skip
    rows = benchmark.main(argv)
    assert [(r.config, r.num_modules, r.seeds) for r in rows] == [("e2e", 1, 2), ("dgl+hpff", 2, 1)]
    assert rows[0].error_std is not None and rows[0].peak_ratio == 1.0
    assert rows[1].peak_ratio > 0  # measured by the run, against E2E on its batch
    record = json.loads((tmp_path / "accuracy.json").read_text())
    assert {c["cell"]["config"] for c in record["cells"]} == {"e2e", "dgl+hpff"}
    # The head-loss curve only: a 16-epoch grid's per-module losses would make this file MBs.
    curves = [step for cell in record["cells"] for step in cell["steps"]]
    assert curves and all(set(step) == {"step", "loss/head"} for step in curves)
    assert "| dgl+hpff | 2 | 1 |" in (tmp_path / "accuracy.md").read_text()
    assert (tmp_path / "accuracy_curves.png").stat().st_size > 0

    log = tmp_path / "runs" / "e2e_s0" / "train.log"
    size = log.stat().st_size
    assert benchmark.main(argv) == rows  # finished cells are read back, not retrained
    assert log.stat().st_size == size


def _grid_record(preset: str, cells: list[CellResult]) -> dict:
    return {"model": "hpff_resnet32", "dataset": "fashion_mnist",
            "recipe_args": ["--preset", preset], "cells": [asdict(c) for c in cells]}  # fmt: skip


def test_a_recorded_grid_joins_new_seeds_of_the_same_protocol(tmp_path):
    seed0 = [CellResult(Cell("e2e", 1, 0), 93.0, 60.0, 100, 100, "cmd", [{"test_top1": 93.0}]),
             CellResult(Cell("infopro", 16, 0), 91.0, 90.0, 20, 100, "cmd")]  # fmt: skip
    record = _grid_record("fmnist-full", seed0)
    recorded = recorded_results(record, "hpff_resnet32", "fashion_mnist", "fmnist-full")
    assert recorded == seed0  # every field survives the JSON record, curves included
    seed1 = CellResult(Cell("infopro", 16, 1), 92.0, 95.0, 20, 100, "cmd")
    rows = summarize([*recorded, seed1])
    infopro = next(r for r in rows if r.config == "infopro")
    assert infopro.seeds == 2 and infopro.error_mean == pytest.approx(8.5)
    with pytest.raises(GridError, match="fmnist-cpu"):
        recorded_results(record, "hpff_resnet32", "fashion_mnist", "fmnist-cpu")
    # The CLI refuses another protocol's record in one line, before training anything.
    (tmp_path / "old.json").write_text(json.dumps(record))
    argv = ["accuracy", "--cells", "e2e", "--out", str(tmp_path / "grid"),
            "--merge", str(tmp_path / "old.json")]  # fmt: skip
    with pytest.raises(SystemExit, match="not this grid's protocol"):
        benchmark.main(argv)
    assert not (tmp_path / "grid").exists()


def test_parallel_command_times_stages_against_one_process():
    argv = ["parallel", "--num-modules", "2", "--hilo", "0", "--batch-size", "8",
            "--micro-batches", "2", "--steps", "1", "--timeout", "60"]  # fmt: skip
    results = benchmark.main(argv)
    assert list(results) == ["1 process x 1 thread(s)", "1 process x 2 thread(s)",
                             "2 stages x 1 thread"]  # fmt: skip
    assert all(rate > 0 for rate in results.values())


def _result(config: str, k: int, seed: int, top1: float) -> CellResult:
    return CellResult(Cell(config, k, seed), top1, 60.0, 50, 100, "python recipes/cifar.py")


def test_summary_states_the_gap_each_plug_in_closes():
    results = [_result("e2e", 1, 0, 90.0), _result("e2e", 1, 1, 92.0),
               _result("dgl", 16, 0, 81.0), _result("dgl+hpff", 16, 0, 87.0),
               _result("dgl+hpff", 8, 0, 88.0)]  # fmt: skip
    rows = {(r.config, r.num_modules): r for r in summarize(results)}
    assert rows["e2e", 1].error_mean == pytest.approx(9.0)
    assert rows["e2e", 1].error_std == pytest.approx(2**0.5)
    # DGL 19 % error, E2E 9 %: HPFF's 13 % closes 6 of the 10 points.
    assert rows["dgl+hpff", 16].closed_gap == pytest.approx(0.6)
    assert rows["dgl", 16].closed_gap is None
    assert rows["dgl+hpff", 8].closed_gap is None  # no plain DGL at K=8 to compare with


def test_gap_closed_over_seeds_pairs_the_runs_of_each_seed():
    # E2E 10 % error; InfoPro 20 / 22 %; with HPFF 16 / 21 %: the effect is 4 and 1 points,
    # the mean gap 11 points, so 2.5 / 11 closed, spread stdev(4, 1) / 11.
    results = [_result("e2e", 1, 0, 90.0), _result("infopro", 16, 0, 80.0),
               _result("infopro", 16, 1, 78.0), _result("infopro+hpff", 16, 0, 84.0),
               _result("infopro+hpff", 16, 1, 79.0)]  # fmt: skip
    row = {r.config: r for r in summarize(results)}["infopro+hpff"]
    assert row.closed_gap == pytest.approx(2.5 / 11)
    assert row.closed_gap_std == pytest.approx(statistics.stdev([4.0, 1.0]) / 11)
    assert "23 ± 19 %" in accuracy_table([row])


def test_plug_ins_are_compared_with_the_same_auxiliaries_without_them():
    results = [_result("e2e", 1, 0, 90.0), _result("infopro:cheap:0.1", 16, 0, 80.0),
               _result("infopro:paper", 16, 0, 70.0),
               _result("infopro+hpff:cheap:0.1:all", 16, 0, 85.0),
               _result("infopro+hpff:paper:decoder", 16, 0, 80.0)]  # fmt: skip
    rows = {r.config: r for r in summarize(results)}
    assert rows["infopro+hpff:cheap:0.1:all"].closed_gap == pytest.approx(0.5)
    assert rows["infopro+hpff:paper:decoder"].closed_gap == pytest.approx(0.5)
    assert rows["infopro:paper"].closed_gap is None


def test_grid_cells_parse_and_reject_nonsense():
    cells = parse_cells("e2e#1, infopro+hpff@8, man", default_k=16)
    assert cells == [Cell("e2e", 1, 1), Cell("infopro+hpff", 8, 0), Cell("man", 16, 0)]
    assert [c.name for c in cells] == ["e2e_s1", "infopro+hpff_k8_s0", "man_k16_s0"]
    with pytest.raises(ValueError, match="given twice"):
        parse_cells("dgl,dgl@16#0", default_k=16)
    with pytest.raises(ValueError, match=r"config\[@K\]\[#seed\]"):
        parse_cells("dgl@four", default_k=16)


@pytest.mark.parametrize("config", ["sgd", "dgl+lora", "e2e+hilo"])
def test_bad_configuration_names_are_rejected(config):
    with pytest.raises(ValueError, match=r"configuration|unknown method"):
        benchmark.model_kwargs(config)


def test_pareto_joins_accuracy_and_speed_and_marks_the_front(tmp_path):
    def row(config, error, peak, k=16):
        return dict(config=config, num_modules=k, seeds=1, error_mean=error, error_std=None,
                    peak_ratio=peak)  # fmt: skip

    rows = [row("e2e", 28.0, 1.0, 1), row("dgl", 35.0, 0.2), row("dgl+hpff", 27.0, 0.4),
            row("infopro", 40.0, 0.3), row("man", 30.0, 0.5)]  # fmt: skip
    seconds = {"e2e": 1.0, "dgl": 0.9, "dgl+hpff": 1.5, "infopro": 1.2}  # man was not timed
    (tmp_path / "accuracy.json").write_text(json.dumps({"rows": rows}))
    speed = [dict(config=c, step_seconds=s) for c, s in seconds.items()]
    (tmp_path / "speed.json").write_text(json.dumps({"results": speed}))
    table = benchmark.main(["pareto", str(tmp_path / "accuracy.json"),
                            str(tmp_path / "speed.json"), "--out", str(tmp_path)])  # fmt: skip
    cells = [line.split(" | ") for line in table.splitlines()[2:]]
    front = {c[0][2:] for c in cells if c[6] == "**yes**"}
    memory_front = {c[0][2:] for c in cells if c[7] == "**yes** |"}
    # infopro is slower and worse than e2e; dgl (fastest), e2e and dgl+hpff (best) are not beaten.
    assert front == {"dgl", "e2e", "dgl+hpff"} and "man" not in table
    # On memory, dgl+hpff (0.4) beats e2e (1.0) and dgl (0.2) beats infopro (0.3) on both axes.
    assert memory_front == {"dgl", "dgl+hpff"}
    assert (tmp_path / "pareto.png").stat().st_size > 0
    assert (tmp_path / "pareto_memory.png").stat().st_size > 0
    (tmp_path / "speed.json").write_text(json.dumps({"results": speed[1:]}))
    with pytest.raises(SystemExit, match="must time e2e"):
        benchmark.main(["pareto", str(tmp_path / "accuracy.json"), str(tmp_path / "speed.json")])


def test_ckpt_plug_in_turns_on_the_checkpointed_local_step():
    assert benchmark.model_kwargs("infopro+hpff+ckpt") == benchmark.model_kwargs("infopro+hpff")
    from hpff_zoo.benchmark.steps import build

    model = build("hpff_resnet32", "infopro+hpff+ckpt", num_modules=4)
    assert model.grad_checkpointing and model.backbone.grad_checkpointing
    assert model.checkpoint_granularity == "module"
    model = build("hpff_resnet32", "infopro+hpff+blockckpt", num_modules=4)
    assert model.grad_checkpointing and model.checkpoint_granularity == "block"
    with pytest.raises(ValueError, match="blockckpt for local"):
        build("hpff_resnet32", "e2e+blockckpt")
