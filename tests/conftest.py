"""Every test starts from the same random state, with the hpff_* models registered."""

from __future__ import annotations

import pytest
import torch

import hpff_zoo  # noqa: F401  (registers the models)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
