"""Parity with PR #1550's own model (benchmarks/parity_1550.py). The mapping between its banked
3-D parameters and pgolf's names is tested everywhere; the comparison against the reference
script runs only where a copy exists ($PGOLF_REF_1550 or .ref/train_gpt_1550.py, never in git)."""

from __future__ import annotations

import dataclasses as dc
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from pgolf import config as C
from pgolf.model import GPT

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "parity_1550.py"
_spec = importlib.util.spec_from_file_location("parity_1550", _PATH)
assert _spec is not None and _spec.loader is not None
P = importlib.util.module_from_spec(_spec)
sys.modules["parity_1550"] = P
_spec.loader.exec_module(P)

SMALL = dc.replace(P.parity_config("tiny"), vocab_size=128, model_dim=64, num_heads=1, ve_dim=8)


def reference_layout(m: C.ModelConfig) -> dict[str, tuple[int, ...]]:
    """#1550's parameter names and shapes, written out from its GPT.__init__ (spec section 3)."""
    n, D, kv, F = m.num_layers, m.model_dim, m.num_kv_heads * 64, int(m.mlp_mult * m.model_dim)
    out = {"tok_emb.weight": (m.vocab_size, D), "skip_weights": (n // 2, D), "smear.gate": (D,)}
    out.update(qo_bank=(2 * n, D, D), kv_bank=(2 * n, kv, D))
    out.update(mlp_up_bank=(n, F, D), mlp_down_bank=(n, D, F), lane_merge=())
    for i in range(n):
        out.update({f"blocks.{i}.attn_scale": (D,), f"blocks.{i}.mlp_scale": (D,)})
        out.update({f"blocks.{i}.resid_mix": (2, D), f"blocks.{i}.attn.q_gain": (m.num_heads,)})
    out.update({"ve_shared.embed.weight": (m.vocab_size, m.ve_dim), "ve_shared.scale": ()})
    out["ve_shared.proj.weight"] = (kv, m.ve_dim)
    out.update({f"ve_layer_scales.{j}": (1,) for j in range(len(m.ve_layers))})
    return out


def test_pgolf_to_ref_has_the_reference_layout_and_round_trips():
    torch.manual_seed(0)
    sd = {k: torch.randn_like(v) for k, v in GPT(SMALL).state_dict().items()}
    banked = P.pgolf_to_ref(sd)
    assert {k: tuple(v.shape) for k, v in banked.items()} == reference_layout(SMALL)
    n = SMALL.num_layers
    assert torch.equal(banked["qo_bank"][n + 3], sd["blocks.3.attn.proj.weight"])
    assert torch.equal(banked["kv_bank"][n + 2], sd["blocks.2.attn.c_v.weight"])
    assert torch.equal(banked["kv_bank"][2], sd["blocks.2.attn.c_k.weight"])
    assert torch.equal(banked["mlp_down_bank"][5], sd["blocks.5.mlp.proj.weight"])
    assert banked["ve_layer_scales.1"].item() == sd["ve.layer_scales"][1].item()
    back = P.ref_to_pgolf(banked)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_mapped_weights_give_the_same_model():
    torch.manual_seed(1)
    a = GPT(SMALL)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.05 * torch.randn_like(p))
    b = GPT(SMALL)
    b.load_state_dict(P.ref_to_pgolf(P.pgolf_to_ref(a.state_dict())))
    idx = torch.randint(0, SMALL.vocab_size, (1, 16))
    assert torch.equal(a(idx), b(idx))


def test_reference_kwargs_and_refusals():
    kw = P.reference_kwargs(C.pr1550().model)
    assert kw["recur_layers"] == "3,4,5" and kw["xsa_last_n"] == 11 and kw["ve_layers"] == "9,10"
    assert kw["parallel_start_layer"] == 7 and kw["bigram_vocab_size"] == 0
    with pytest.raises(ValueError, match="cannot express"):
        P.reference_kwargs(C.pr1493().model)
    with pytest.raises(ValueError, match="BigramHash"):
        P.ref_to_pgolf({"mlp_up_bank": torch.zeros(1, 2, 2), "bigram.scale": torch.zeros(())})


def test_rope_ntk_len_changes_only_long_sequences():
    torch.manual_seed(2)
    a = GPT(dc.replace(SMALL, rope_ntk_len=16))
    with torch.no_grad():  # non-zero output projections, so attention reaches the logits
        for p in a.parameters():
            p.add_(0.05 * torch.randn_like(p))
    b = GPT(SMALL)
    b.load_state_dict(a.state_dict())
    short, long = torch.randint(0, 128, (1, 16)), torch.randint(0, 128, (1, 24))
    assert torch.equal(a(short), b(short))
    assert not torch.allclose(a(long), b(long))


REF = P.find_reference()
needs_ref = pytest.mark.skipif(REF is None, reason="PR #1550 reference not present (see module)")


@needs_ref
def test_forward_backward_and_step_match_the_reference():
    ref = P.load_reference(REF)
    r, g = P.build_pair(ref, SMALL, seed=3)
    idx = torch.randint(0, SMALL.vocab_size, (1, 65), generator=torch.Generator().manual_seed(4))
    for recur in (False, True):
        res = P.compare_forward(r, g, idx[:, :-1], idx[:, 1:], recur)
        assert res["dlogit"] <= 1e-4 and res["dloss"] <= 1e-5 and res["dgrad_rel"] <= 1e-4, res
    rows = dict(P.optimizer_rows(ref, SMALL, C.pr1550(), idx, seed=3))
    probe = rows["fp32 probe"]
    for kind in ("matrix", "embed", "scalar"):
        assert probe[f"{kind}_dW"] <= 1e-5 * probe[f"{kind}_update"] + 1e-7, (kind, probe)
    assert P.hyper_diffs(ref, C.pr1550()) == []


@needs_ref
@pytest.mark.slow
def test_rope_quirk_reproduces_the_reference_beyond_1024():
    ref = P.load_reference(REF)
    m = dc.replace(SMALL, rope_ntk_len=1024)
    r, g = P.build_pair(ref, m, seed=5)
    idx = torch.randint(0, m.vocab_size, (1, 1101), generator=torch.Generator().manual_seed(6))
    res = P.compare_forward(r, g, idx[:, :-1], idx[:, 1:], recur=True)
    assert res["dlogit"] <= 1e-4, res
