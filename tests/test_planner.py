"""The memory planner predicts measured peaks and picks the fastest configuration that fits."""

from __future__ import annotations

import re

import pytest
import timm
import torch

import hpff_zoo
from hpff_zoo.measure import step_peak_bytes
from hpff_zoo.planner import parse_bytes, predict_dynamic_bytes, static_bytes


@pytest.mark.parametrize(
    "name,kwargs,batch,img",
    [
        ("hpff_resnet32", dict(), 64, None),
        ("hpff_resnet110", dict(), 32, None),
        ("hpff_resnet101", dict(num_modules=4), 4, 224),
    ],
)
def test_prediction_within_15_percent_of_the_measured_peak(name, kwargs, batch, img):
    model = timm.create_model(name, num_classes=10, **kwargs)
    predicted = predict_dynamic_bytes(model, batch, img)
    size = img or model.input_size[-1]
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    measured = step_peak_bytes(model, x, y)
    mib = 2**20
    print(f"\n{name} bs{batch}: predicted {predicted / mib:.1f} MiB, measured {measured / mib:.1f}")
    assert predicted == pytest.approx(measured, rel=0.15)


# --- the choice, on fake memory lines and step times (fast; the real ones: the slow test) ---

MIB = 2**20
# Dynamic MiB per sample of each configuration: (method, K, checkpointing) -> MiB.
FAKE_PER_SAMPLE = {("e2e", 1, False): 2.0, ("e2e", 1, True): 0.7, ("infopro", 2, False): 2.1,
                   ("infopro", 4, False): 1.4, ("infopro", 8, False): 0.9,
                   ("infopro", 16, False): 0.5, ("infopro", 16, True): 0.3}  # fmt: skip


def _key(model) -> tuple[str, int, bool | str]:
    """(method, K, checkpointing), the last ``"block"`` at that granularity."""
    block = model.grad_checkpointing and model.checkpoint_granularity == "block"
    return model.method, model.num_modules, "block" if block else model.grad_checkpointing


@pytest.fixture
def fake_measurements(monkeypatch):
    """Memory lines from FAKE_PER_SAMPLE (a checkpointed local step not listed there saves
    nothing, as before local checkpointing) and step times from the dict this returns."""
    from hpff_zoo import planner

    def fit(model, img_size):
        key = _key(model)
        per_sample = FAKE_PER_SAMPLE.get(key, FAKE_PER_SAMPLE[(*key[:2], False)])
        return planner._Fit(0.0, per_sample * MIB)

    step_seconds: dict[tuple[str, int, bool], float] = {}
    calls = []

    def speed(models, x, y, repetitions=10, time_limit=None):
        calls.append((len(x), [_key(m) for m in models]))
        return [[step_seconds[_key(m)]] * repetitions for m in models]

    monkeypatch.setattr(planner, "_dynamic_fit", fit)
    monkeypatch.setattr(planner, "measure_speed", speed)
    return step_seconds, calls


def _budget(per_sample_mib: float, batch: int = 128) -> int:
    """A budget of ``per_sample_mib`` dynamic MiB per sample over the E2E weights."""
    static = static_bytes(timm.create_model("hpff_resnet32", num_classes=10, method="e2e"))
    return static + int(per_sample_mib * MIB * batch)


def _plan(budget, **kwargs):
    return hpff_zoo.plan("hpff_resnet32", 128, None, budget, pff_grids=(1,), **kwargs)


def test_budget_every_configuration_fits_is_plain_e2e_untimed(fake_measurements):
    _, calls = fake_measurements
    result = _plan(_budget(3.0))
    assert (result.chosen.method, result.chosen.checkpointing) == ("e2e", False)
    assert calls == [] and all(c.step_time is None for c in result.candidates)
    assert result.summary().startswith("plain E2E fits the budget")
    # Every plain configuration is listed; checkpointed twins only where the plain one misses.
    assert [(c.method, c.num_modules, c.checkpointing) for c in result.candidates] == [
        ("e2e", 1, False), ("infopro", 2, False), ("infopro", 4, False), ("infopro", 8, False),
        ("infopro", 16, False)]  # fmt: skip


@pytest.mark.parametrize("fastest", [("e2e", 1, True), ("infopro", 8, False)])
def test_budget_below_e2e_picks_the_fastest_that_fits(fake_measurements, fastest):
    """Between E2E + checkpointing's need and E2E's, the faster of E2E + checkpointing and the
    local configurations that fit wins, whichever it is; all of them are timed, on one batch
    at which plain E2E, the reference, fits too."""
    step_seconds, calls = fake_measurements
    fits = [("e2e", 1, True), ("infopro", 8, False), ("infopro", 16, False)]
    step_seconds.update({("e2e", 1, False): 1.0, **{key: 1.5 for key in fits}, fastest: 1.2})
    budget = _budget(1.0)
    result = _plan(budget)
    chosen = result.chosen
    assert (chosen.method, chosen.num_modules, chosen.checkpointing) == fastest
    assert chosen.step_time == pytest.approx(1.2) and chosen.predicted_bytes <= budget
    timed = {(c.method, c.num_modules, c.checkpointing): c.step_time for c in result.candidates}
    assert timed == {("e2e", 1, False): 1.0, ("e2e", 1, True): 1.5 if fastest != fits[0] else 1.2,
                     ("infopro", 2, False): None, ("infopro", 4, False): None,
                     ("infopro", 8, False): 1.5 if fastest != fits[1] else 1.2,
                     ("infopro", 16, False): 1.5}  # fmt: skip
    ((batch, keys),) = calls
    assert keys == [("e2e", 1, False), *fits]  # E2E first: the reference
    assert batch == 32  # the default timing batch: E2E (2 MiB a sample) fits 64 of them
    assert "is the fastest configuration that fits (1.20x plain E2E's step time)" in (
        result.summary()
    )
    assert result.table().count("(chosen)") == 1


def test_timing_batch_keeps_the_reference_within_the_budget(fake_measurements):
    step_seconds, calls = fake_measurements
    step_seconds.update({("e2e", 1, False): 1.0, ("e2e", 1, True): 1.3, ("infopro", 16, False): 2})
    _plan(_budget(0.8), timing_batch=128)
    ((batch, _),) = calls
    assert batch == 51  # 0.8 MiB a sample at 128 is 102 MiB: 51 samples of E2E's 2 MiB


def test_budget_below_e2e_checkpointing_is_local(fake_measurements):
    step_seconds, _ = fake_measurements
    step_seconds.update({("e2e", 1, False): 1.0, ("infopro", 16, False): 1.4,
                         ("infopro", 16, True): 1.9})  # fmt: skip
    # Budgets from the K=16 model's own weights and optimizer state (its auxiliaries' are
    # larger than E2E's): first between its plain need and E2E + checkpointing's.
    k16 = next(c for c in _plan(_budget(3.0)).candidates if c.num_modules == 16)
    plain_k16_need, e2e_ckpt_need = k16.static_bytes + k16.dynamic_bytes, _budget(0.7)
    assert plain_k16_need < e2e_ckpt_need
    result = _plan((plain_k16_need + e2e_ckpt_need) // 2)
    assert (result.chosen.method, result.chosen.num_modules) == ("infopro", 16)
    assert not result.chosen.checkpointing  # the plain K=16 fits: its twin is not even measured
    result = _plan(k16.static_bytes + int(0.4 * MIB * 128))
    assert result.chosen.checkpointing and result.chosen.num_modules == 16
    assert "and model.set_grad_checkpointing(True)" in result.summary()


def test_block_granularity_is_chosen_where_it_fits_and_is_faster(fake_measurements, monkeypatch):
    """Between the module granularity's need and the plain step's, both checkpointed steps
    fit and the faster wins; below the block granularity's need only the module one fits."""
    monkeypatch.setitem(FAKE_PER_SAMPLE, ("infopro", 16, "block"), 0.4)
    step_seconds, _ = fake_measurements
    step_seconds.update({("e2e", 1, False): 1.0, ("infopro", 16, True): 1.9,
                         ("infopro", 16, "block"): 1.6})  # fmt: skip
    k16 = next(c for c in _plan(_budget(3.0)).candidates if c.num_modules == 16)
    result = _plan(k16.static_bytes + int(0.45 * MIB * 128))
    chosen = result.chosen
    assert (chosen.num_modules, chosen.checkpointing, chosen.checkpoint_granularity) == (
        16, True, "block")  # fmt: skip
    assert "model.set_grad_checkpointing(True, granularity='block')" in result.summary()
    assert "| infopro | 16 | 1 | on (block) |" in result.table()
    model = timm.create_model("hpff_resnet32", **result.model_kwargs())
    chosen.apply_checkpointing(model)
    assert model.grad_checkpointing and model.checkpoint_granularity == "block"
    result = _plan(k16.static_bytes + int(0.35 * MIB * 128))
    assert (result.chosen.checkpointing, result.chosen.checkpoint_granularity) == (True, "module")


def test_cli_prints_every_candidate_and_the_choice(fake_measurements, capsys):
    from hpff_zoo import planner

    step_seconds, _ = fake_measurements
    step_seconds.update({("e2e", 1, False): 1.0, ("e2e", 1, True): 1.3, ("infopro", 8, False): 2,
                         ("infopro", 16, False): 1.8})  # fmt: skip
    planner.main(["--model", "hpff_resnet32", "--batch-size", "128", "--budget",
                  str(_budget(1.0)), "--pff-grids", "1"])  # fmt: skip
    out = capsys.readouterr().out
    assert "| method | K | PFF | checkpointing | predicted peak | step time / E2E | fits |" in out
    assert "| e2e | 1 | 1 | on |" in out and out.count("\n| infopro |") == 4
    assert "chosen: E2E + checkpointing is the fastest configuration that fits (1.30x" in out


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(method="infopr"), "unknown method 'infopr'; did you mean 'infopro'?"),
        (dict(repetitions=0), "repetitions must be a positive integer, got 0"),
        (dict(checkpointing=()), "checkpointing must list True and/or False"),
        (dict(time_limit=0), "time_limit must be a positive number of seconds"),
    ],
)
def test_bad_arguments_are_one_line_before_any_build(kwargs, message, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("built a model before checking the arguments")

    monkeypatch.setattr(timm, "create_model", never)
    with pytest.raises(ValueError, match=re.escape(message)):
        hpff_zoo.plan("hpff_resnet32", 8, None, "1GB", **kwargs)


def test_unknown_model_names_the_closest():
    with pytest.raises(ValueError, match="unknown hpff_\\* model 'hpff_resnet23'; did you mean"):
        hpff_zoo.plan("hpff_resnet23", 8, None, "1GB")


@pytest.mark.slow
def test_resnet32_bs128_three_budgets_measured():
    """The three budgets of issue 24 on real measurements: every configuration fits -> plain
    E2E; between E2E + checkpointing's need and E2E's -> the fastest timed of those that fit;
    below E2E + checkpointing's -> a local configuration whose measured peak is within it."""
    batch = 128
    roomy = _plan("16GiB")
    e2e = roomy.chosen
    assert e2e.method == "e2e" and not e2e.checkpointing
    between = _plan(e2e.predicted_bytes - 1)
    print("\n" + between.table() + "\n" + between.summary())
    ckpt = next(c for c in between.candidates if c.method == "e2e" and c.checkpointing)
    fitting = [c for c in between.candidates if c.predicted_bytes <= between.budget_bytes]
    assert ckpt in fitting and all(c.step_time is not None for c in fitting)
    assert between.chosen == min(fitting, key=lambda c: c.step_time)
    local = [c for c in roomy.candidates if c.method != "e2e"]
    smallest = min(c.predicted_bytes for c in local)
    assert smallest < ckpt.predicted_bytes, "no local configuration needs less than E2E + ckpt"
    tight = _plan((smallest + ckpt.predicted_bytes) // 2)
    print("\n" + tight.table() + "\n" + tight.summary())
    assert tight.chosen.method != "e2e"
    model = timm.create_model("hpff_resnet32", num_classes=10, **tight.model_kwargs())
    model.set_grad_checkpointing(tight.chosen.checkpointing)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    measured = static_bytes(model) + step_peak_bytes(model, x, y)
    print(f"measured peak {measured / MIB:.1f} MiB, budget {tight.budget_bytes / MIB:.1f} MiB")
    assert measured <= tight.budget_bytes


def test_impossible_budget_states_the_minimum_in_the_budgets_unit():
    with pytest.raises(ValueError, match=r"fits 8 MB .* smallest predicted peak is [\d.]+ MB"):
        hpff_zoo.plan("hpff_resnet32", 8, None, "8MB", pff_grids=(1,), checkpointing=(False,))


def test_budget_below_the_static_memory_stops_before_measuring(monkeypatch):
    from hpff_zoo import planner

    def never(*args, **kwargs):
        raise AssertionError("measured activations although the weights alone do not fit")

    monkeypatch.setattr(planner, "predict_dynamic_bytes", never)
    with pytest.raises(ValueError, match=r"alone take 5\d\d\d KB, above the budget of 1 KB"):
        hpff_zoo.plan("hpff_resnet32", 8, None, "1KB")


@pytest.mark.parametrize("text,value", [("4GB", 4 * 10**9), ("512MiB", 512 * 2**20), (7, 7)])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


def test_parse_bytes_rejects_nonsense():
    with pytest.raises(ValueError, match="memory size"):
        parse_bytes("lots")
