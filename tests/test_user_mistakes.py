"""A newcomer's mistakes through the Python API and the benchmark command line: each is refused
before any work, in one line that names the closest valid name."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import hpff_zoo
from hpff_zoo.benchmark import cli
from hpff_zoo.choices import unknown_name
from hpff_zoo.training import RunConfig

from .recipe_helpers import QUICK, RECIPES, check, image_folder, one_line_error, run_recipe


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
        (dict(balance="mem"), "did you mean 'memory'"),
        (dict(pff_scope="al"), "did you mean 'all'"),
        (dict(hilo_weights="cascade"), r"hilo_weights must be a pair \(independent, cascade\)"),
        (dict(hilo_weights=(0.5,)), "hilo_weights must be a pair"),
        (dict(num_classes=-1), "num_classes must be a count >= 0"),
        (dict(aux={"widht": 8}), r"unknown aux fields \['widht'\]; did you mean 'width'"),
        (dict(aux_options={"lambda": (1, 1)}), "aux option 'lambda'; did you mean 'lambdas'"),
        (
            dict(method="dgl", aux_options={"beta": 0.9}),
            r"method='dgl' takes no aux_options, got 'beta' \('beta' is an option of predsim\)",
        ),
        (dict(input_size=(3, 0, 32)), r"input_size must be \(C, H, W\), three positive integers"),
        (
            dict(splits=[5, 10]),
            "num_modules=16 .* needs 15 split points, got 2: pass num_modules=3",
        ),
    ],
)
def test_model_options_are_refused_at_creation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model("hpff_resnet32", **kwargs)


@pytest.mark.parametrize("create", [
    lambda **kw: timm.create_model("hpff_resnet32", **kw),
    lambda **kw: hpff_zoo.from_timm("resnet18", **kw),
])  # fmt: skip
def test_a_misspelt_keyword_names_the_closest_option(create):
    """timm passes unknown keywords to the backbone, whose TypeError names its class only."""
    expected = r"^unknown keyword argument 'num_module'; did you mean 'num_modules'"
    with pytest.raises(TypeError, match=expected):
        create(num_module=4)
    with pytest.raises(TypeError, match="'hilo_weight'; did you mean 'hilo_weights'"):
        create(hilo_weight=(0.5, 0.5))
    with pytest.raises(TypeError, match=r"'zzz' \(.*unexpected keyword argument 'zzz'\)"):
        create(zzz=1)  # nothing close: Python's own words stay


def test_from_timm_suggests_close_model_names():
    with pytest.raises(RuntimeError, match="unknown timm model 'resnt18'; did you mean 'resnet18"):
        hpff_zoo.from_timm("resnt18")
    with pytest.raises(TypeError, match=r"^from_timm takes a timm model or its name, not 18 \("):
        hpff_zoo.from_timm(18)


def test_a_misspelt_tag_names_the_closest_tags():
    """timm's own "Invalid pretrained tag (fmnist_e2)" names neither."""
    expected = r"^unknown hpff_resnet32 tag 'fmnist_e2'; did you mean 'fmnist_e2e'.*hub list\)$"
    with pytest.raises(RuntimeError, match=expected):
        timm.create_model("hpff_resnet32.fmnist_e2")


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


@pytest.mark.parametrize(
    "argv,message",
    [
        (["speed", "--num-modules", "x"], "must be a positive integer, got 'x'"),
        (["compile", "--configs", "dlg"], "did you mean 'dgl'"),
        (["compile", "--backend", "inductr"], "did you mean 'inductor'"),
        (["compile", "--model", "hpff_resnt32"], "did you mean 'hpff_resnet32'"),
        (["gpu", "--out", "x", "--configs", "infopr"], "did you mean 'infopro'"),
        (["gpu", "--out", "x", "--settings", "r33"], "unknown setting 'r33'; did you mean 'r32'"),
        (["accuracy", "--jobs", "0"], "must be a positive integer, got 0"),
        (["accuracy", "--model", "hpff_resnt32"], "did you mean 'hpff_resnet32'"),
        (["parallel", "--method", "dlg"], "did you mean 'dgl'"),
        (["parallel", "--stages", "0"], "must be a positive integer, got 0"),
        (["memroy"], "invalid choice: 'memroy'; did you mean 'memory'?"),
    ],
)
def test_every_benchmark_command_refuses_a_bad_flag_in_one_line(argv, message, capsys):
    """No usage screen before the error, no traceback after minutes of work: one line."""
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_accuracy_cells_are_checked_before_any_training(capsys, tmp_path):
    with pytest.raises(SystemExit, match=r"^error: --cells: unknown method 'dlg'; did you mean"):
        cli.main(["accuracy", "--cells", "dlg", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "module,argv,message",
    [
        ("hub", ["lst"], "invalid choice: 'lst'; did you mean 'list'?"),
        ("planner", ["--model", "hpff_resnet32", "--batch-size", "8", "--budget", "1GB",
                     "--no-hillo"], "unrecognized arguments: --no-hillo; did you mean --no-hilo?"),
    ],
)  # fmt: skip
def test_hub_and_planner_flag_mistakes_are_one_line(module, argv, message, capsys):
    main = __import__(f"hpff_zoo.{module}", fromlist=["main"]).main
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_an_unknown_hub_tag_names_the_closest(capsys):
    from hpff_zoo import hub

    assert hub.main(["cards", "--tag", "hpff_resnet32.fmnist_e2", "--out", "unused"]) == 1
    err = capsys.readouterr().err
    assert "unknown tag 'hpff_resnet32.fmnist_e2'; did you mean 'hpff_resnet32.fmnist_e2e'" in err


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


def test_local_step_in_eval_mode_is_refused_before_any_work():
    """A loop that evaluated and forgot ``train()`` would train with frozen BatchNorm statistics
    and no dropout: refused, with no gradient computed; frozen statistics on purpose are the norm
    layers alone in eval(), which trains."""
    model = timm.create_model("hpff_resnet32", num_classes=3, num_modules=2, pff=1, hilo=False)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    expected = r"^LocalModel.local_step on a model in eval\(\) mode: call model.train\(\) first"
    with pytest.raises(RuntimeError, match=expected):
        model.eval().local_step(x, y)
    assert all(p.grad is None for p in model.parameters())
    model.train().backbone.bn1.eval()
    running_mean = model.backbone.bn1.running_mean.clone()
    assert set(model.local_step(x, y)) == {"module1", "head"}
    assert torch.equal(model.backbone.bn1.running_mean, running_mean)


def test_a_tag_without_weights_is_told_the_flag_that_starts_fresh():
    """The library's advice (pretrained=False) is no flag of the recipes: they say their own."""
    from types import SimpleNamespace

    from hpff_zoo.training.build import create_local_model

    config = RunConfig(model="hpff_resnet32.cifar10_infopro_k16_hpff", pretrained=True)
    with pytest.raises(SystemExit, match="has no published weights") as error:
        create_local_model(config, SimpleNamespace(channels=3, num_classes=10))
    assert str(error.value).endswith(", or drop --pretrained to start from fresh weights.")
    assert "pretrained=False" not in str(error.value)


def test_a_fine_tune_is_never_published_as_the_tag_it_started_from(monkeypatch):
    monkeypatch.syspath_prepend(str(RECIPES))
    finetune = __import__("finetune")
    tag = "hpff_resnet32.fmnist_infopro_k16_hpff"
    assert RunConfig(model=tag).published_tag() == tag
    assert RunConfig(model="hpff_resnet32").published_tag() is None
    assert finetune.FinetuneConfig(model=tag, init=tag).published_tag() is None


@pytest.fixture
def mixed_sizes(tmp_path):
    """An image folder of 40-px images (above hpff_resnet32's 32 px) but for one 20x12 test
    image: the first image alone says nothing is upscaled."""
    root = image_folder(tmp_path / "data", 40, per_class=4)
    small = np.random.default_rng(1).integers(0, 256, (12, 20), dtype=np.uint8)
    Image.fromarray(small).save(root / "test" / "b" / "small.png")
    return root


def test_image_folder_size_check_reads_every_image_and_header_flags_the_schedule(
    mixed_sizes, tmp_path
):
    flags = ["--dataset", str(mixed_sizes), "--method", "e2e", "--epochs", "1", "--batch-size",
             "4", *QUICK, "--output-dir", str(tmp_path / "run")]  # fmt: skip
    message = one_line_error(run_recipe("cifar.py", *flags))
    assert "the smallest images are 20x12, smaller than the 32x32 input of hpff_resnet32" in message
    assert "--img-size 32 to upscale them, or --img-size 20" in message
    # An unnamed data set trains with the recipe's paper schedule: the header says it is not
    # chosen for this data (a named one, e.g. mnist5k, keeps its preset line).
    header = check(run_recipe("cifar.py", *flags, "--img-size", "32", "--dry-run"))
    assert "no preset: the recipe's defaults, set for its paper data sets, not for this " in header
    assert "choose --epochs, --batch-size and --lr (or --preset) for it" in header
    # Its 10 warm-up epochs outlast the 1-epoch run: the rate only rises, and the header says so.
    assert (
        "lr 0.8 reached at the last step: the 10 warm-up epochs outlast the 1-epoch run" in header
    )


def test_a_known_dataset_by_its_hub_id_is_not_told_its_schedule_does_not_fit():
    from hpff_zoo.training.header import _no_preset

    assert (
        _no_preset("ILSVRC/imagenet-1k")
        == _no_preset("cifar10")
        == ("no preset: the recipe's defaults")
    )
    assert "not for this data" in _no_preset("org/pets")
