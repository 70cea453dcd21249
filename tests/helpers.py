"""Small builders shared by several test files."""

from __future__ import annotations

import torch

from pgolf.config import ModelConfig
from pgolf.model import GPT


def perturbed_gpt(
    cfg: ModelConfig, recur: bool = True, seed: int = 0, scale: float = 0.1, device: str = "cpu"
) -> GPT:
    """A GPT whose every parameter is perturbed, so zero-init paths (projections, VE) matter."""
    torch.manual_seed(seed)
    model = GPT(cfg).to(device)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g).to(device))
    model.set_recurrence(recur)
    return model
