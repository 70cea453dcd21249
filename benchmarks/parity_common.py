"""What the parity benchmarks share: a reference model and pgolf's GPT holding the same perturbed
weights, the loss and gradient comparison of one forward/backward, and the fp32 probe of a
reference's bf16 casts. Imported by `parity_1550.py` and `parity_1855.py` (sibling modules)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

Mapper = Callable[[Mapping[str, Tensor]], dict[str, Tensor]]


def load_perturbed(r: torch.nn.Module, g: torch.nn.Module, ref_to_pgolf: Mapper, tag: str) -> None:
    """Perturb every reference parameter (zero-initialised projections would hide bugs), then
    load the same weights into pgolf's model through `ref_to_pgolf`; names must map one to one."""
    with torch.no_grad():
        for p in r.parameters():
            p.add_(torch.randn_like(p) * (0.02 if p.ndim >= 2 else 0.1))
    mapped = ref_to_pgolf({k: v.detach() for k, v in r.state_dict().items()})
    missing = set(dict(g.named_parameters())) ^ set(mapped)
    if missing:
        raise KeyError(f"{tag}: names do not map one to one: {sorted(missing)}")
    g.load_state_dict(mapped, strict=True)


def loss_and_grads(
    r: Any,
    g: torch.nn.Module,
    ref_loss: Callable[[], Tensor],
    our_loss: Callable[[], Tensor],
    ref_to_pgolf: Mapper,
    dlogit: float,
) -> dict[str, Any]:
    """One backward on each side: |loss| difference, max |gradient difference| over the largest
    gradient entry, and the parameter with the largest ratio of its own."""
    r.zero_grad(set_to_none=True)
    g.zero_grad(set_to_none=True)
    lr, lg = ref_loss(), our_loss()
    lr.backward()
    lg.backward()
    rg = ref_to_pgolf({k: p.grad for k, p in r.named_parameters()})
    gmax = max(t.abs().max().item() for t in rg.values())
    diffs = {k: (rg[k] - p.grad).abs().max().item() for k, p in g.named_parameters()}
    own = {k: d / max(rg[k].abs().max().item(), 1e-30) for k, d in diffs.items()}
    worst = max(own, key=lambda k: own[k])
    return {
        "dlogit": dlogit,
        "dloss": abs(lr.item() - lg.item()),
        "dgrad_rel": max(diffs.values()) / gmax,
        "worst_param": worst,
        "worst_param_rel": own[worst],
    }


@contextlib.contextmanager
def bf16_as_fp32() -> Iterator[None]:
    """Turn `Tensor.bfloat16()` into `.float()` while active (the references' Muon casts)."""
    orig = torch.Tensor.bfloat16
    torch.Tensor.bfloat16 = lambda self, *a, **k: self.float()  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.bfloat16 = orig  # type: ignore[method-assign]
