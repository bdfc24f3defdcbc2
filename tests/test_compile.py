"""compile_local leaves a local step's numbers as they are: losses, gradients and buffers."""

from __future__ import annotations

import copy
import json

import pytest
import timm
import torch

from hpff_zoo import compile_local
from hpff_zoo.compiled import compiled_modules

from .helpers import batch


def _model(**kwargs):
    return timm.create_model("hpff_resnet32", num_modules=3, **kwargs).double().train()


def _assert_same_step(eager, compiled, steps: int = 2) -> None:
    """Two steps (the second after the first's gradients, BatchNorm statistics and MAN/PredSim
    state have moved) give the eager model's losses, gradients and buffers."""
    x, y = batch(4)
    x = x.double()
    for _ in range(steps):
        expected, got = eager.local_step(x, y), compiled.local_step(x, y)
        assert got.keys() == expected.keys()
        for key in expected:
            assert got[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key
    reference = dict(eager.named_parameters())
    for name, param in compiled.named_parameters():
        assert (param.grad is None) == (reference[name].grad is None), name
        if param.grad is not None:
            torch.testing.assert_close(param.grad, reference[name].grad, rtol=1e-9, atol=1e-12)
    buffers = dict(eager.named_buffers())
    for name, buffer in compiled.named_buffers():
        torch.testing.assert_close(buffer, buffers[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", [dict(method="infopro"), dict(method="e2e")], ids=str)
def test_compiled_step_equals_eager_aot(kwargs):
    """aot_eager traces forward and backward into AOTAutograd graphs as inductor does, without
    generating code (still about a minute per model on this 2-core machine: slow)."""
    eager = _model(**kwargs)
    compiled = compile_local(copy.deepcopy(eager), "aot_eager")
    assert all(m._compiled_call_impl is not None for m in compiled_modules(compiled))
    _assert_same_step(eager, compiled)


@pytest.mark.slow
def test_compiled_hpff_step_equals_eager_aot():
    """HiLo runs a module's compiled backward twice (the cascade's input gradient, then the
    parameters'): the numbers stay the eager ones."""
    eager = _model(method="infopro", hilo=2, pff=2)
    _assert_same_step(eager, compile_local(copy.deepcopy(eager), "aot_eager"))


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", [dict(method="infopro"), dict(method="infopro", hilo=2, pff=2)])
def test_compiled_step_equals_eager_inductor(kwargs):
    """inductor's generated C++ kernels, float64: equal within float tolerance (minutes here:
    the C++ compiler runs once per graph)."""
    eager = _model(**kwargs)
    _assert_same_step(eager, compile_local(copy.deepcopy(eager), "inductor"))


def test_state_dict_names_unchanged():
    """Compiling in place keeps parameter names (no ``_orig_mod.``): checkpoints and the hub
    export read the same as the eager model's."""
    eager = _model()
    compiled = compile_local(copy.deepcopy(eager), "aot_eager")
    assert list(compiled.state_dict()) == list(eager.state_dict())


def test_unknown_backend_is_one_line():
    with pytest.raises(ValueError, match=r"backend 'inducter'; did you mean"):
        compile_local(_model(), "inducter")


@pytest.mark.slow
def test_benchmark_compile_reports_equal_numbers_and_writes_its_records(tmp_path):
    """``python -m hpff_zoo.benchmark compile``: one row per configuration, the compiled step's
    gradients and losses those of eager, and the table and JSON in ``--out``."""
    from hpff_zoo.benchmark import main

    rows = main(["compile", "--num-modules", "2", "--batch-size", "4", "--configs",
                 "e2e,infopro+hpff", "--backend", "aot_eager", "--warmup", "1",
                 "--repetitions", "2", "--out", str(tmp_path)])  # fmt: skip
    assert [r.config for r in rows] == ["e2e", "infopro+hpff"]
    assert all(r.max_grad_difference < 1e-4 and r.max_loss_difference < 1e-4 for r in rows)
    assert all(r.eager_median_s > 0 and r.compiled_median_s > 0 for r in rows)
    assert "| infopro+hpff |" in (tmp_path / "compile.md").read_text()
    assert len(json.loads((tmp_path / "compile.json").read_text())["rows"]) == 2
