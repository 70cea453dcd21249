"""Shared test setup: one intra-op thread (tiny tensors are faster and deterministic that way)."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
