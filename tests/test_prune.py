"""±1 pruning in the core (`pgolf.quant.pm1_order` / `zero_codes`, the `prune` key of
quant.groups): differential against a slow per-element reference, identity at 0, the config
check, and `pgolf budget --prune-to` using the same rule."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from pgolf.artifact import QTensor
from pgolf.quant import PlanEntry, pm1_order, quantize_state, zero_codes
from pgolf.quantplan import GroupPlan, parse_groups


def qtensors(seed: int) -> list[QTensor]:
    """Int tensors of two groups (codes in -3..3, scales with ties) and an fp16 one."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, (rows, cols, group) in enumerate([(5, 7, "mlp"), (3, 4, "attn"), (6, 3, "mlp")]):
        codes = torch.randint(-3, 4, (rows, cols), generator=g, dtype=torch.int8)
        scales = (torch.randint(1, 4, (rows,), generator=g) * 0.01).to(torch.float16)
        out.append(QTensor(f"t{i}", (rows, cols), "int", 4, codes, scales, None, group))
    out.append(
        QTensor(
            "f", (4,), "fp16", 16, None, None, torch.ones(4, dtype=torch.float16), "passthrough"
        )
    )
    return out


def reference(tensors: list[QTensor], group: str, frac: float) -> list[torch.Tensor]:
    """Slow: list every ±1 code (tensor, row, col, scale²) one by one, sort by scale² with ties
    in listing order, zero the first round(frac·n)."""
    cand = []
    for j, t in enumerate(tensors):
        if t.kind != "int" or t.group != group:
            continue
        for r in range(t.shape[0]):
            for c in range(t.shape[1]):
                if abs(int(t.codes[r, c])) == 1:
                    cand.append((float(t.scales[r].float()) ** 2, len(cand), j, r, c))
    cand.sort()
    codes = [t.codes.clone() if t.kind == "int" else None for t in tensors]
    for _, _, j, r, c in cand[: round(frac * len(cand))]:
        codes[j][r, c] = 0
    return codes


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("frac", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_pruning_matches_the_slow_reference(seed: int, frac: float) -> None:
    ts = qtensors(seed)
    idx, flat = pm1_order(ts, lambda t: t.group == "mlp")
    n = sum(int((t.codes.abs() == 1).sum()) for t in ts if t.kind == "int" and t.group == "mlp")
    assert idx.numel() == n
    got = zero_codes(ts, idx, flat, round(frac * n))
    want = reference(ts, "mlp", frac)
    for t, g, w in zip(ts, got, want, strict=True):
        if t.kind != "int":
            assert g is t
            continue
        assert torch.equal(g.codes, w), t.name
        assert torch.equal(t.codes, qtensors(seed)[ts.index(t)].codes)  # input not mutated
        changed = g.codes != t.codes
        assert (t.codes[changed].abs() == 1).all() and (g.codes[changed] == 0).all()
    zeroed = sum(int((g.codes != t.codes).sum()) for t, g in zip(ts, got) if t.kind == "int")
    assert zeroed == round(frac * n)
    if frac == 0:
        assert all(g is t for g, t in zip(got, ts, strict=True))


def test_quantize_state_applies_the_plans_prune_per_group() -> None:
    g = torch.Generator().manual_seed(0)
    state = {"a": torch.randn(8, 16, generator=g), "b": torch.randn(8, 16, generator=g)}
    plan = [PlanEntry("a", "rtn", 3, 2.0, "mlp"), PlanEntry("b", "rtn", 3, 2.0, "attn")]
    base = quantize_state(state, {}, plan, log=False)
    same = quantize_state(state, {}, [replace(e, prune=0.0) for e in plan], log=False)
    assert all(torch.equal(x.codes, y.codes) for x, y in zip(base, same, strict=True))
    pruned = quantize_state(state, {}, [replace(plan[0], prune=0.5), plan[1]], log=False)
    n = int((base[0].codes.abs() == 1).sum())
    assert int((pruned[0].codes.abs() == 1).sum()) == n - round(0.5 * n)
    assert torch.equal(pruned[1].codes, base[1].codes)  # the other group untouched
    idx, flat = pm1_order(base, lambda t: t.group == "mlp")
    assert torch.equal(pruned[0].codes, zero_codes(base, idx, flat, round(0.5 * n))[0].codes)


def test_bad_prune_values_are_refused_naming_quant_groups() -> None:
    assert parse_groups("mlp=prune:0.2,bits:5") == {"mlp": GroupPlan(prune=0.2, bits=5)}
    for bad in ("mlp=prune:1.5", "mlp=prune:-0.1", "mlp=prune:nan", "mlp=prune:x"):
        with pytest.raises(ValueError, match="quant.groups"):
            parse_groups(bad)


def test_budget_prune_what_if_uses_the_core_rule() -> None:
    """`pgolf budget --prune-to`: the zeroed codes are the first `pruned` of `pm1_order` over the
    groups it prunes."""
    from pgolf.lab.budget.sizes import _prune

    ts = qtensors(3)

    def size(x: list[QTensor]) -> int:  # one byte per nonzero code: monotone in the pruning
        return sum(int((t.codes != 0).sum()) for t in x if t.kind == "int")

    target = size(ts) - 7
    new, pruned, cand = _prune(ts, ("mlp", "attn"), target, size, 0.0)
    idx, flat = pm1_order(ts, lambda t: t.group in ("mlp", "attn"))
    assert cand == idx.numel() and pruned == 7 and size(new) == target
    want = zero_codes(ts, idx, flat, pruned)
    assert all(torch.equal(a.codes, b.codes) for a, b in zip(new, want) if a.kind == "int")
