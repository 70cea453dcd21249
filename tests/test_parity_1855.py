"""Parity with PR #1855's own script (benchmarks/parity_1855.py). The name mapping, the stand-ins
for FA3 and the preset's checks are tested everywhere; the comparison against the record runs only
where a copy exists ($PGOLF_REF_1855 or .ref/train_gpt_1855.py, never in git), else it is skipped
with the command that fetches it."""

from __future__ import annotations

import dataclasses as dc
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from pgolf import config as C
from pgolf.model import GPT

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "parity_1855.py"
_spec = importlib.util.spec_from_file_location("parity_1855", _PATH)
assert _spec is not None and _spec.loader is not None
P = importlib.util.module_from_spec(_spec)
sys.modules["parity_1855"] = P
_spec.loader.exec_module(P)

SMALL = dc.replace(P.parity_config("tiny"), vocab_size=128, model_dim=64, num_heads=1)


def test_names_round_trip_through_the_records_banked_layout():
    torch.manual_seed(0)
    sd = {k: torch.randn_like(v) for k, v in GPT(SMALL).state_dict().items()}
    banked = P.pgolf_to_ref(sd)
    n = SMALL.num_layers
    assert banked["qo_bank"].shape == (2 * n, 64, 64) and banked["mlp_up_bank"].shape[0] == n
    assert torch.equal(banked["kv_bank"][n + 2], sd["blocks.2.attn.c_v.weight"])
    assert torch.equal(banked["blocks.4.attn.attn_gate_w"], sd["blocks.4.attn.gate_w"])
    assert {"parallel_post_lambdas", "smear_gate.weight", "smear_lambda"} <= set(banked)
    back = P.ref_to_pgolf(banked)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_varlen_stand_in_is_block_diagonal_causal_sdpa():
    torch.manual_seed(1)
    q, k, v = torch.randn(10, 4, 8), torch.randn(10, 2, 8), torch.randn(10, 2, 8)
    cu = torch.tensor([0, 3, 7, 10, 10, 10], dtype=torch.int32)  # padded as #1855 pads
    y = P.fa3_varlen(q, k, v, cu_seqlens_q=cu)
    for a, b in ((0, 3), (3, 7), (7, 10)):  # each segment alone = plain causal attention
        one = P.fa3_dense(q[None, a:b], k[None, a:b], v[None, a:b])[0]
        assert torch.allclose(y[a:b], one, atol=1e-6)
    idx = torch.tensor([1, 5, 6, 1, 7, 1])
    bounds, longest = P.cu_seqlens_of(idx, 1)
    assert bounds.tolist() == [0, 3, 5, 6] and longest == 3


def test_reference_hparams_refuse_other_models():
    ns = type("Ref", (), {"Hyperparameters": type("H", (), {"x": 1})})
    with pytest.raises(ValueError, match="cannot express"):
        P.reference_hparams(ns, C.pr1550().model)
    assert P.reference_hparams(ns, SMALL).gate_window == 12


REF = P.find_reference()
needs_ref = pytest.mark.skipif(
    REF is None, reason=f"PR #1855 reference not present; fetch it with: {P.FETCH}"
)


@needs_ref
def test_forward_backward_and_step_match_the_record():
    ref = P.load_reference(REF)
    gen = torch.Generator().manual_seed(4)
    idx = torch.randint(2, SMALL.vocab_size, (1, 49), generator=gen)
    idx[0, [0, 17, 30]] = SMALL.bos_id
    logits = {}
    for doc in (False, True):
        r, g = P.build_pair(ref, dc.replace(SMALL, doc_mask=doc), seed=3)
        for recur in (False, True):
            res = P.compare_forward(r, g, idx[:, :-1], idx[:, 1:], recur)
            assert res["dlogit"] <= 1e-4 and res["dloss"] <= 1e-5, (doc, recur, res)
            assert res["dgrad_rel"] <= 1e-4, (doc, recur, res)
        with torch.no_grad():
            logits[doc] = g(idx[:, :-1])
    assert not torch.allclose(logits[False], logits[True])  # isolation was exercised
    r, g = P.build_pair(ref, SMALL, seed=3)
    r(idx[:, :-1], idx[:, 1:], *P.cu_seqlens_of(idx[0, :-1], SMALL.bos_id)).backward()
    step = P.compare_step(ref, r, g, C.pr1855().optim)
    for kind in ("matrix", "embed", "scalar"):
        assert step[f"{kind}_dW"] <= 1e-6 and step[f"{kind}_update"] > 1e-3, (kind, step)
    assert P.hyper_diffs(ref, C.pr1855()) == []


@needs_ref
def test_gptq_gates_and_low_rank_codes_are_the_records():
    ref = P.load_reference(REF)
    qm = dc.replace(SMALL, model_dim=256, num_heads=4, num_kv_heads=2, vocab_size=512)
    rows = P.compare_quant(ref, C.pr1855(), qm, layers=1, seed=5)
    assert rows["gptq"]["tensors"] == 3 and rows["gate int8"]["tensors"] == 1  # fc, proj, emb
    assert rows["low-rank A"]["tensors"] == 3 and rows["low-rank tensors chosen"]["tensors"] == 3
    for kind, row in rows.items():
        assert row.get("code_diff", 0) == 0 and row.get("scale_diff", 0) == 0, (kind, row)
