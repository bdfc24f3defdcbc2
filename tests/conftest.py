"""Every test starts from the same random state, with the hpff_* models registered."""

from __future__ import annotations

import contextlib

import pytest
import torch

import hpff_zoo  # noqa: F401  (registers the models)

# One intra-op thread per test process: `pytest -n 2` already fills both cores, and
# oversubscribed OpenMP threads spin (model builds measured ~10x slower on a busy 2-core box).
torch.set_num_threads(1)


def pytest_configure(config):
    """Import yapf (through mmengine's config) once before xdist starts its workers.

    yapf writes a grammar cache on its first import; two workers writing and reading it at once
    crash one of them with 'EOFError: Ran out of input'.
    """
    with contextlib.suppress(ImportError):
        import yapf  # noqa: F401


def pytest_collection_modifyitems(config, items):
    """Skip ``cuda``-marked tests, with the reason, where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Fail a test that leaves this worker's intra-op thread count changed, and restore it.

    The thread count decides the reduction order of oneDNN's kernels: a test that ran later in
    the same xdist worker with 2 threads instead of 1 trained a segmentor 1e-2 away from the
    same run in a 1-thread process (test_seg_distributed's E2E case, failing or passing by
    which worker the scheduler gave it).
    """
    yield
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    assert threads == 1, f"the test left torch's intra-op threads at {threads} (expected 1)"


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Every test starts with Accelerate's process-wide state unset.

    ``Accelerator()`` records its device and precision in a singleton that a later
    ``Accelerator(cpu=True, mixed_precision="bf16")`` in the same xdist worker may not change:
    a recipe run in-process before test_bf16_step_on_cpu failed it with "AcceleratorState has
    already been initialized", passing or failing by which worker the scheduler gave it.
    """
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
