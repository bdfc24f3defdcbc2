"""Every test starts from the same random state, with the hpff_* models registered."""

from __future__ import annotations

import pytest
import torch

import hpff_zoo  # noqa: F401  (registers the models)

# One intra-op thread per test process: `pytest -n 2` already fills both cores, and
# oversubscribed OpenMP threads spin (model builds measured ~10x slower on a busy 2-core box).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: under ``pytest -n 2`` on 2 cores, more threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
