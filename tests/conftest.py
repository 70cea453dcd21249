"""Shared test setup: one intra-op thread (tiny tensors are faster and deterministic that way) and
a deterministic hypothesis profile (same examples on every run, no per-example deadline)."""

from __future__ import annotations

import torch
from hypothesis import settings

torch.set_num_threads(1)
settings.register_profile("pgolf", derandomize=True, deadline=None, max_examples=50)
settings.load_profile("pgolf")
