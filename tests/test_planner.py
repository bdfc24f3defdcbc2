"""The memory planner predicts measured peaks and picks the fewest modules that fit."""

from __future__ import annotations

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


def test_plan_picks_the_fewest_modules_that_fit_and_they_do_fit():
    batch = 32
    e2e = hpff_zoo.plan("hpff_resnet32", batch, None, "16GiB")
    assert e2e.chosen.method == "e2e" and len(e2e.candidates) == 1

    e2e_peak = e2e.chosen.predicted_bytes
    tight = hpff_zoo.plan("hpff_resnet32", batch, None, int(0.7 * e2e_peak))
    chosen = tight.chosen
    assert chosen.num_modules > 1 and chosen.predicted_bytes <= 0.7 * e2e_peak
    # Everything tried before it had fewer modules (or the same K with a smaller grid) and no fit.
    assert all(c.predicted_bytes > tight.budget_bytes for c in tight.candidates[:-1])
    assert tight.candidates[-1] == chosen

    model = timm.create_model("hpff_resnet32", num_classes=10, **tight.model_kwargs())
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    actual = static_bytes(model) + step_peak_bytes(model, x, y)
    assert actual <= tight.budget_bytes


def test_impossible_budget_states_the_minimum_in_the_budgets_unit():
    with pytest.raises(ValueError, match=r"fits 8 MB .* smallest predicted peak is [\d.]+ MB"):
        hpff_zoo.plan("hpff_resnet32", 8, None, "8MB", pff_grids=(1,))


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
