"""The recipes and CLIs as a new user meets them (issue 15), one test per point that can fail.

Commands run in subprocesses, as typed, on the embedded MNIST digits; most stop after the run
header (``--dry-run``) or at the first user mistake, so the whole file stays short.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hpff_zoo.data import EMBEDDED, KNOWN_DATASETS
from hpff_zoo.training import choose_threads

from .recipe_helpers import (
    QUICK,
    RECIPES,
    ROOT,
    check,
    image_folder,
    one_line_error,
    recipe_env,
    run_module,
    run_recipe,
)

TINY = ["--max-train-samples", "32", "--max-eval-samples", "32", "--batch-size", "16"]
TAG = "hpff_resnet32.fmnist_e2e"  # shipped in model_cards/


def dry_run(script: str, *args: str, **kwargs) -> str:
    return check(run_recipe(script, "--dry-run", *TINY, *args, **kwargs))


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory):
    """One finished E2E run on the embedded digits, started with --resume in an empty folder."""
    output = tmp_path_factory.mktemp("e2e") / "run"
    flags = ["--method", "e2e", "--epochs", "1", *TINY, *QUICK, "--checkpoint-every-epochs", "1"]
    result = run_recipe("cifar.py", *flags, "--resume", "--output-dir", str(output))
    return output, check(result)


# 1: threads -------------------------------------------------------------------------------------


def test_threads_are_the_process_share_of_the_free_cores():
    assert choose_threads(env={}, cores=2, load=1.9).threads == 1  # a busy 2-core machine
    assert choose_threads(env={}, cores=8, load=0.2).threads == 8
    assert choose_threads(env={"LOCAL_WORLD_SIZE": "2"}, cores=8, load=2.0).threads == 3
    assert choose_threads(env={"OMP_NUM_THREADS": "3"}, cores=8, load=0.0).threads == 3
    assert choose_threads(5, env={"OMP_NUM_THREADS": "3"}).threads == 5


def test_run_header_states_threads_schedule_and_estimate_and_dry_run_writes_nothing(tmp_path):
    env = recipe_env()
    del env["OMP_NUM_THREADS"]
    output = tmp_path / "run"
    stdout = check(run_recipe("cifar.py", "--dry-run", "--output-dir", str(output), env=env))
    threads = re.search(r"(\d+) CPU thread\(s\) per process \((\d+) cores, [\d.]+ busy", stdout)
    assert threads and 1 <= int(threads[1]) <= int(threads[2]), stdout
    # The embedded default's preset: 4,000 training digits, batch 16 -> 250 steps per epoch.
    assert "schedule  3 epochs x 250 steps of batch 16" in stdout and "preset mnist5k" in stdout
    assert re.search(r"estimate  about \d+ (min|s|h)", stdout), stdout
    assert not output.exists()


# 2 and 9: presets and --help --------------------------------------------------------------------


def test_every_known_dataset_has_a_preset_and_help_lists_its_defaults_on_one_line():
    small = {EMBEDDED, *KNOWN_DATASETS} - {"imagenet-1k"}  # imagenet-1k: recipes/imagenet.py
    assert all((RECIPES / "presets" / f"{name}.yaml").is_file() for name in small)
    fashion = check(run_recipe("cifar.py", "--dataset", "fashion_mnist", "--help"))
    assert re.search(r"\n  --epochs EPOCHS +training epochs \(default: 10\)\n", fashion)
    assert re.search(
        r"\n  --batch-size BATCH_SIZE +global batch size .*\n.*\(default: 128\)", fashion
    )
    cifar = check(run_recipe("cifar.py", "--dataset", "cifar10", "--help"))
    assert re.search(r"\n  --epochs EPOCHS +training epochs \(default: 400\)\n", cifar)
    # Options start at column 2 (not 32), and their help follows on the same line when it fits.
    for flag in ("--dataset DATASET", "--lr LR", "--epochs EPOCHS", "--resume [RESUME]"):
        assert re.search(rf"\n  {re.escape(flag)} +\w", fashion), flag


@pytest.mark.parametrize("preset", ["fmnist-full", "fmnist-cpu"])
def test_a_fashion_mnist_preset_alone_trains_on_fashion_mnist(preset):
    """Not on the recipe's default digits: the preset names its dataset, --dataset overrides it."""
    help_text = " ".join(check(run_recipe("cifar.py", "--preset", preset, "--help")).split())
    assert re.search(r" --dataset DATASET .*?\(default: (\w+)\)", help_text)[1] == "fashion_mnist"
    assert dry_run("cifar.py", "--preset", preset, "--dataset", "mnist5k").startswith(
        "data   mnist5k"
    )


# 3 and 5: the run folder exports and says what it is --------------------------------------------


def test_hub_export_takes_a_users_own_run(e2e_run, tmp_path):
    from hpff_zoo.hub import load_model

    output, _ = e2e_run
    check(run_module("hpff_zoo.hub", "export", str(output), str(tmp_path / "out")))
    assert "end-to-end" in (tmp_path / "out" / "README.md").read_text()
    assert load_model(tmp_path / "out").method == "e2e"


def test_config_json_describes_the_run_that_wrote_it(e2e_run):
    config = json.loads((e2e_run[0] / "config.json").read_text())
    description = config["pretrained_cfg"]["description"]
    assert "mnist5k" in description and "end-to-end" in description, description
    assert "CIFAR-10" not in description and "K=16" not in description
    assert config["model_args"]["method"] == "e2e" and config["pretrained_cfg"]["tag"] is None


# 4: fine-tuning from every kind of --init -------------------------------------------------------


def test_finetune_starts_from_a_tag_with_its_weights(tmp_path):
    output = tmp_path / "ft"
    check(run_recipe("finetune.py", "--init", TAG, "--epochs", "1", "--lr", "1e-6", *TINY,
                     *QUICK, "--output-dir", str(output)))  # fmt: skip
    tuned = load_file(output / "model.safetensors")["conv1.weight"]
    shipped = load_file(ROOT / "model_cards" / TAG / "model.safetensors")["conv1.weight"]
    torch.testing.assert_close(tuned, shipped, atol=1e-4, rtol=0)


def _fake_hub_cache(tmp_path, repo: str) -> dict[str, str]:
    """An offline Hub cache holding ``repo`` (the shipped E2E folder), as a download leaves it."""
    cache = tmp_path / "hub"
    revision = "0" * 40
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / revision
    shutil.copytree(ROOT / "model_cards" / TAG, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(revision)
    return recipe_env(HF_HUB_CACHE=str(cache))


@pytest.mark.parametrize("kind", ["card folder", "run folder", "hf-hub id"])
def test_finetune_init_takes_folders_and_hub_ids(kind, e2e_run, tmp_path):
    env, init = None, {"card folder": f"model_cards/{TAG}", "run folder": str(e2e_run[0])}.get(kind)
    if kind == "hf-hub id":
        env, init = _fake_hub_cache(tmp_path, "someone/fmnist"), "hf-hub:someone/fmnist"
    stdout = dry_run("finetune.py", "--init", init, "--output-dir", str(tmp_path / "o"), env=env)
    assert f"model  {init}: end-to-end backpropagation, input (1, 28, 28)" in stdout


def test_finetune_help_lists_the_flags_it_takes_with_one_default_each(capsys, monkeypatch):
    """No --model (finetune.py refuses it), and a recipe's default replaces the help's own."""
    monkeypatch.syspath_prepend(str(RECIPES))
    with pytest.raises(SystemExit) as exit_info:
        __import__("finetune").main(["--help"])
    help_text = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--init INIT" in help_text
    assert "--model MODEL" not in help_text, help_text
    num_modules = re.search(r"\n  --num-modules NUM_MODULES +(.*?)\n  --", help_text, re.S)[1]
    assert " ".join(num_modules.split()) == "K gradient-isolated modules (default: 4)"


def test_finetune_from_a_tag_without_weights_gives_advice_that_works(tmp_path, monkeypatch):
    """--no-pretrained does not help a tag (a tag is its weights): its architecture is named.
    Nothing is published to download, and the library's pretrained=False is no flag."""
    monkeypatch.syspath_prepend(str(RECIPES))
    finetune = __import__("finetune")
    unpublished = "hpff_resnet32.cifar10_infopro_k16_hpff"
    with pytest.raises(SystemExit) as exit_info:
        finetune.main(["--init", unpublished, "--no-pretrained", *TINY,
                       "--output-dir", str(tmp_path / "o")])  # fmt: skip
    error = str(exit_info.value)
    advice = re.search(r"from fresh weights: --init (\S+) --no-pretrained\.$", error)
    assert advice and "or use --no-pretrained" not in error, error
    assert "download" not in error and "pretrained=False" not in error, error
    # The advised --init loads (the backbone finetune.py would train), with fresh weights.
    advised = argparse.Namespace(init=advice[1], pretrained=False, in_chans="auto")
    assert finetune.load_backbone(advised, num_classes=10).num_classes == 10


# 6: resume --------------------------------------------------------------------------------------


def test_resume_in_an_empty_folder_says_it_starts_a_new_run(e2e_run):
    assert "--resume: no checkpoint in" in e2e_run[1] and "starting a new run" in e2e_run[1]


def test_truncated_checkpoint_names_the_file(e2e_run, tmp_path):
    output = tmp_path / "run"
    shutil.copytree(e2e_run[0], output)
    (weights,) = output.glob("checkpoints/checkpoint-*/model.safetensors")
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = run_recipe("cifar.py", "--method", "e2e", "--epochs", "1", *TINY, *QUICK,
                        "--output-dir", str(output), "--resume")  # fmt: skip
    assert f"cannot resume from {weights}" in one_line_error(result)


# 7: --memory-budget -----------------------------------------------------------------------------


def test_budget_below_the_weights_stops_at_once_in_the_users_unit(tmp_path):
    output = tmp_path / "run"
    result = run_recipe("cifar.py", "--memory-budget", "1KB", *TINY, "--output-dir", str(output))
    message = one_line_error(result)
    assert "above the budget of 1 KB" in message and "GiB" not in message, message
    assert not output.exists()


def test_budget_that_fits_e2e_says_so_and_min_modules_keeps_local_learning(tmp_path):
    out = ["--output-dir", str(tmp_path / "run"), "--hilo", "0"]
    stdout = dry_run("cifar.py", "--memory-budget", "4GB", *out)
    assert "NOTE: --memory-budget 4GB fits end-to-end training" in stdout
    assert "--min-modules 2" in stdout and "end-to-end backpropagation" in stdout
    stdout = dry_run("cifar.py", "--memory-budget", "4GB", "--min-modules", "2", "--threads", "1",
                     *out)  # fmt: skip
    assert "NOTE" not in stdout and re.search(r"infopro, K=\d+", stdout), stdout
    assert "1 CPU thread(s) per process (--threads)" in stdout


# 8: Accelerate's settings -----------------------------------------------------------------------


def test_accelerate_launch_settings_apply_unless_the_flag_is_given(tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
                "--num_machines", "1", "--mixed_precision", "bf16"]  # fmt: skip
    stdout = dry_run("cifar.py", "--output-dir", str(tmp_path), launcher=launcher)
    assert "mixed precision bf16, NCHW layout\n" in stdout
    # What `accelerate launch --mixed_precision bf16` passes on, overridden by the script's flag.
    env = recipe_env(ACCELERATE_MIXED_PRECISION="bf16")
    stdout = dry_run("cifar.py", "--mixed-precision", "no", "--output-dir", str(tmp_path), env=env)
    assert "mixed precision no, NCHW layout\n" in stdout


# 10: one-line errors before any work ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "hpff_resnt32"], "unknown model; did you mean hpff_resnet32"),
        (["--model", "hpff_resnet32.fmnist_k16"], "no such tag; did you mean"),
        (["--num-modules", "2", "--hilo", "3"], "--hilo 3 exceeds --num-modules 2"),
        # The default --hilo 2 is not blamed: K=1 is what leaves no room for a cascade.
        (["--num-modules", "1"], "--num-modules 1: HiLo needs K >= 2 modules; add --hilo 0"),
        (["--lr", "0"], "argument --lr: must be greater than 0"),
        (["--lr", "-0.1"], "argument --lr: must be greater than 0"),
        (["--batch-size", "0"], "argument --batch-size: must be at least 1"),
        (["--epochs", "0"], "argument --epochs: must be at least 1"),
        (["--dataset", "imagenet-1k"], "imagenet-1k trains with recipes/imagenet.py"),
    ],
)
def test_flag_mistakes_are_one_line(args, expected, tmp_path, capsys, monkeypatch):
    """Refused while parsing (the same main() the command runs, called in-process for speed)."""
    monkeypatch.syspath_prepend(str(RECIPES))
    cifar = __import__("cifar")
    output = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        cifar.main([*args, "--output-dir", str(output)])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in error and expected in error, error
    assert "--hilo" in args or "--hilo 2" not in error, error  # not the default the user never gave
    assert not output.exists()


@pytest.mark.parametrize(
    ("init", "expected"),
    [
        ("model_cards/hpff_resnet32.fmnist_e2", "no such folder; did you mean "
         "model_cards/hpff_resnet32.fmnist_e2e"),
        ("./no/such/run", "--init ./no/such/run: no such folder"),
        ("hpff_resnet32.fmnist_e2", "no such tag; did you mean hpff_resnet32.fmnist_e2e"),
    ],
)  # fmt: skip
def test_finetune_init_mistakes_are_one_line(init, expected, tmp_path, capsys, monkeypatch):
    """A misspelt folder is not looked up on the Hub as an org/name id (which says nothing of
    folders), a misspelt tag names the closest tags."""
    monkeypatch.syspath_prepend(str(RECIPES))
    monkeypatch.chdir(ROOT)
    finetune = __import__("finetune")
    with pytest.raises(SystemExit) as exit_info:
        finetune.main(["--init", init, "--output-dir", str(tmp_path / "run")])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in error and expected in error, error


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--dataset", "fashoin_mnist"], "'fashoin_mnist'; did you mean fashion_mnist"),
        (["--num-modules", "99"], "num_modules=99 exceeds the 16 atoms"),
        (["--pff", "64"], "pff=64 needs feature maps of at least 64x64"),
    ],
)
def test_user_mistakes_are_one_line_before_any_work(args, expected, tmp_path):
    output = tmp_path / "run"
    result = run_recipe("cifar.py", *TINY, *args, "--output-dir", str(output), timeout=120)
    assert expected in one_line_error(result)
    assert not output.exists()


def test_output_dir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    result = run_recipe("cifar.py", "--output-dir", str(tmp_path / "file"))
    assert "is a file, not a directory" in one_line_error(result)


@pytest.fixture
def two_classes(tmp_path):
    """An image folder of two classes of 16x16 images, half the 32-px input of hpff_resnet32."""
    return image_folder(tmp_path / "data", 16)


def test_small_images_are_not_upscaled_silently_and_two_classes_have_no_top5(two_classes, tmp_path):
    flags = ["--dataset", str(two_classes), "--method", "e2e", "--epochs", "1", "--batch-size",
             "8", *QUICK, "--output-dir", str(tmp_path / "run")]  # fmt: skip
    message = one_line_error(run_recipe("cifar.py", *flags))
    assert "the images are 16x16, smaller than the 32x32 input of hpff_resnet32" in message
    assert "--img-size 32 to upscale them, or --img-size 16" in message
    stdout = check(run_recipe("cifar.py", *flags, "--img-size", "16"))
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "top-5 -" in stdout and record["top5"] is None
    # The quick-check slice is the whole test split when it has fewer than 2,000 images.
    assert record["quick_eval_images"] == record["num_eval"] < 2_000


# 12: no import cycle ----------------------------------------------------------------------------


def _imported_modules(path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}  # fmt: skip
    return names | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}


def test_the_two_loops_do_not_import_each_other():
    assert "loop" not in _imported_modules(RECIPES / "module_parallel.py")
    assert "module_parallel" in _imported_modules(RECIPES / "loop.py")


def test_recipes_are_one_screen_each_over_the_library():
    """Issue 27: the machinery is in hpff_zoo.training; what benchmark and recipes share sits
    below both, so no recipe reaches into hpff_zoo.benchmark."""
    scripts = sorted(RECIPES.rglob("*.py"))
    lines = {path.name: len(path.read_text().splitlines()) for path in scripts}
    assert max(lines.values()) <= 250 and sum(lines.values()) <= 900, lines
    for path in scripts:
        assert not any(m and m.startswith("hpff_zoo.benchmark") for m in _imported_modules(path))


def test_the_library_takes_no_argparse_namespace_outside_its_command_lines():
    """Library functions receive typed values (RunConfig, ThroughputSetting, GpuCheck,
    CompileCheck, ...); only the benchmark command line's own module reads a parsed namespace
    (the other command lines read theirs inside ``main``, by name only)."""
    entry_points = {"benchmark/cli.py"}
    for path in (ROOT / "hpff_zoo").rglob("*.py"):
        if str(path.relative_to(ROOT / "hpff_zoo")) not in entry_points:
            assert "Namespace" not in path.read_text(), path


LAYERS = {  # docs/internals.md, "Where the code lives": a module imports only its layer or below
    **dict.fromkeys(("training", "benchmark", "hub", "planner", "seg"), 0),
    "cards": 1,
    "models": 2,
    **dict.fromkeys(("local", "auxiliaries", "streamed", "parallel", "compiled"), 3),
    **dict.fromkeys(("partition", "checkpointing", "aux", "patches", "data"), 4),
    **dict.fromkeys(("measure", "choices", "cpu_heap"), 5),
}


def test_the_library_imports_only_downwards():
    package = ROOT / "hpff_zoo"
    upwards = []
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        if parts[0] == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == len(parts):  # hpff_zoo.<x>
                targets = [node.module] if node.module else [a.name for a in node.names]
                for target in (t for t in targets if not t.startswith("__")):  # __version__
                    if LAYERS[target.split(".")[0]] < LAYERS[parts[0]]:
                        upwards.append(f"{'/'.join(parts)} -> {target}")
    assert not upwards, upwards


# 13: smaller things -----------------------------------------------------------------------------


def test_hub_list_columns_line_up():
    rows = check(run_module("hpff_zoo.hub", "list")).splitlines()
    starts = {re.search(r"  (shipped:|hub:|no weights yet|weights)", row).start() for row in rows}
    assert len(starts) == 1, rows


def test_planner_cli_errors_are_one_line_without_runpys_warning():
    result = run_module("hpff_zoo.planner", "--model", "hpff_resnet32", "--batch-size", "8",
                        "--budget", "1KB")  # fmt: skip
    assert "above the budget of 1 KB" in one_line_error(result)  # a RuntimeWarning: 2 lines


def test_work_and_result_folders_are_ignored_but_recipe_results_are_not():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "work_dirs/x", "results/x",
                              "recipes/results/accuracy/x"], cwd=ROOT, capture_output=True,
                             text=True)  # fmt: skip
    assert ignored.stdout.split() == ["work_dirs/x", "results/x"]


# 11: module-parallel runs -----------------------------------------------------------------------


@pytest.mark.slow
def test_module_parallel_run_records_logs_checkpoints_and_resumes(tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]  # fmt: skip
    flags = ["--module-parallel", "2", "--max-train-samples", "64", "--max-eval-samples", "32",
             "--batch-size", "16", "--workers", "0", "--report-to", "tensorboard",
             "--output-dir", str(tmp_path)]  # fmt: skip
    first = check(run_recipe("cifar.py", *flags, "--epochs", "1", launcher=launcher))
    assert f"(outputs in {tmp_path}: model.safetensors" in first and "TensorBoard" in first
    assert (tmp_path / "checkpoints" / "checkpoint-00000004" / "stage-1.pt").is_file()
    resumed = check(run_recipe("cifar.py", *flags, "--epochs", "2", "--resume", launcher=launcher))
    assert "1 epochs done" in resumed
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["command"].startswith("torchrun --nproc_per_node 2") and record["epochs"] == 2
    assert any((tmp_path / "logs" / "hpff").iterdir())
