"""hpff_zoo.training's run configuration and set-up, used from Python as a recipe uses them."""

from __future__ import annotations

import dataclasses

import pytest

from hpff_zoo.training import (
    CommandLine,
    RunConfig,
    RunError,
    build_checked,
    configure_threads,
    create_local_model,
    describe_run,
    load_data,
    make_accelerator,
    make_loaders,
)
from hpff_zoo.training.header import format_duration

from .recipe_helpers import RECIPES

DEFAULTS = dict(dataset="mnist5k", model="hpff_resnet32", epochs=2, batch_size=16, lr=0.1)


def test_every_setting_is_one_flag_and_parsing_gives_the_dataclass(tmp_path):
    cli = CommandLine(RunConfig, "", DEFAULTS, RECIPES / "presets")
    flags = {a.dest for a in cli.parser._actions} - {"help"}
    assert flags == {f.name for f in dataclasses.fields(RunConfig)}
    config = cli.parse(["--output-dir", str(tmp_path), "--num-modules", "2", "--no-nesterov"])
    built = RunConfig(**DEFAULTS, output_dir=str(tmp_path), num_modules=2, nesterov=False)
    assert type(config) is RunConfig and config == built


def test_a_preset_replaces_the_recipe_defaults_and_the_command_line_wins(tmp_path):
    (tmp_path / "short.yaml").write_text("epochs: 5\nbatch-size: 32\n")
    cli = CommandLine(RunConfig, "", DEFAULTS, tmp_path, preset_from="{dataset}")
    config = cli.parse(["--preset", "short", "--epochs", "7", "--output-dir", str(tmp_path)])
    assert (config.epochs, config.batch_size, config.preset) == (7, 32, "short")
    assert cli.parse(["--output-dir", str(tmp_path)]).preset is None  # no mnist5k.yaml here


def test_a_flag_mistake_is_one_line_with_status_2(tmp_path, capsys):
    cli = CommandLine(RunConfig, "", DEFAULTS, RECIPES / "presets")
    with pytest.raises(SystemExit) as exit_info:
        cli.parse(["--model", "hpff_resnt32", "--output-dir", str(tmp_path)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1
    assert "did you mean hpff_resnet32" in error


def test_a_run_error_is_the_one_line_a_script_exits_with():
    error = RunError("no such checkpoint directory")
    assert isinstance(error, SystemExit) and error.code == "error: no such checkpoint directory"


def test_durations_read_as_a_person_says_them():
    assert [format_duration(s) for s in (12, 200, 7500, 17 * 86400 + 3 * 3600)] == [
        "12 s", "3 min 20 s", "2 h 05 min", "17 d 3 h"
    ]  # fmt: skip


def test_the_set_up_from_python_without_a_command_line(tmp_path):
    """What a user's own loop would call: data, model, loaders, the header; nothing written."""
    config = RunConfig(**DEFAULTS, output_dir=str(tmp_path / "run"), max_train_samples=32,
                       max_eval_samples=16, workers=0, report_to="none", grad_accum=2,
                       img_size=28)  # fmt: skip
    accelerator = make_accelerator(config)
    assert (config.mixed_precision, config.grad_accum) == ("no", 2)
    data = load_data(config, accelerator)
    net = build_checked(config, create_local_model, data)
    loaders = make_loaders(config, accelerator.num_processes, data, net)
    assert (len(loaders.train), loaders.train.batch_size) == (4, 8)  # micro-batch 16 / 2
    header = describe_run(config, accelerator, data, net, loaders.data_config["input_size"],
                          2, configure_threads(1))  # fmt: skip
    assert "schedule  2 epochs x 2 steps of batch 16 (x2 accumulation)" in header
    assert not (tmp_path / "run").exists()
    with pytest.raises(RunError, match="exceeds the 16 atoms"):
        build_checked(dataclasses.replace(config, num_modules=99), create_local_model, data)
