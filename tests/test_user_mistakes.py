"""A newcomer's mistakes through the Python API and the benchmark command line: each is refused
before any work, in one line that names the closest valid name."""

from __future__ import annotations

import pytest
import timm

import hpff_zoo
from hpff_zoo.benchmark import cli
from hpff_zoo.choices import unknown_name


def test_unknown_name_suggests_the_closest_and_lists_few():
    message = unknown_name("method", "dlg", ["dgl", "infopro", "predsim"])
    expected = "unknown method 'dlg'; did you mean 'dgl'? (choose from dgl, infopro, predsim)"
    assert message == expected
    many = [f"model_{i}" for i in range(100)]
    assert "choose from" not in unknown_name("model", "model_5x", many)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(method="dlg"), "did you mean 'dgl'"),
        (dict(method="InfoPro"), "did you mean 'infopro'"),
        (dict(aux="chep"), "did you mean 'cheap'"),
        (dict(num_modules=4, hilo=5), "hilo=5 exceeds num_modules=4"),
        (dict(num_modules=2, hilo=3), "hilo=3 exceeds num_modules=2"),
    ],
)
def test_model_options_are_refused_at_creation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model("hpff_resnet32", **kwargs)


def test_from_timm_suggests_close_model_names():
    with pytest.raises(RuntimeError, match="unknown timm model 'resnt18'; did you mean 'resnet18"):
        hpff_zoo.from_timm("resnt18")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "hpff_resnt32"], "did you mean 'hpff_resnet32'"),
        (["--model", "resnet18"], "wrap other timm models with hpff_zoo.from_timm"),
        (["--configs", "dlg"], "did you mean 'dgl'"),
        (["--configs", "infopro+hpf"], "unknown plug-in 'hpf'; did you mean 'hpff'"),
        (["--configs", "infopro:papr"], "did you mean 'paper'"),
        (["--num-modules", "0"], "must be a positive integer, got 0"),
        (["--batch-size", "-4"], "must be a positive integer, got -4"),
        (["--img-size", "0"], "must be a positive integer"),
        (["--num-classes", "0"], "must be a positive integer"),
        (["--device", "cdua"], "did you mean 'cuda'"),
    ],
)
def test_benchmark_flags_are_refused_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["memory", "--no-rss", *argv])
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error and error.startswith("python -m hpff_zoo.benchmark memory: error:")


def test_benchmark_k_the_model_cannot_take_is_one_line():
    with pytest.raises(SystemExit, match=r"^error: num_modules=100 exceeds the 16 atoms"):
        cli.main(["memory", "--no-rss", "--configs", "infopro", "--num-modules", "100"])


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "hpff_resnt32"], "did you mean 'hpff_resnet32'"),
        (["--batch-size", "-8"], "must be a positive integer, got -8"),
        (["--method", "dlg"], "unknown method 'dlg'; did you mean 'dgl'"),
        (["--img-size", "0"], "must be a positive integer"),
        (["--num-classes", "0"], "must be a positive integer"),
    ],
)
def test_planner_flags_are_refused_in_one_line(argv, message, capsys):
    from hpff_zoo import planner

    args = dict(zip(["--model", "--batch-size", "--budget"], ["hpff_resnet32", "8", "1GB"]))
    args.update(zip(argv[::2], argv[1::2]))
    with pytest.raises(SystemExit) as exit:
        planner.main([item for pair in args.items() for item in pair])
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error and error.startswith("python -m hpff_zoo.planner: error:")


def test_benchmark_memory_says_each_configuration_as_it_starts(capsys):
    """Minutes pass before the table: a line per configuration on stderr says where it is."""
    cli.main(["memory", "--no-rss", "--configs", "e2e,dgl", "--num-modules", "2",
              "--batch-size", "2"])  # fmt: skip
    err = capsys.readouterr().err
    assert "[1/2] memory of e2e\n" in err and "[2/2] memory of dgl (K=2)" in err
