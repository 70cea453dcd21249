"""Shared test setup: one intra-op thread (tiny tensors are faster and deterministic that way) and
a deterministic hypothesis profile (same examples on every run, no per-example deadline)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings

torch.set_num_threads(1)
settings.register_profile("pgolf", derandomize=True, deadline=None, max_examples=50)
settings.load_profile("pgolf")


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts on one intra-op thread, whatever an earlier test set."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
