"""AWQ-lite parity with PR #1908's own quantizer (benchmarks/parity_awq.py). The assembly of the
promoted groups is tested everywhere; the comparison against #1908 runs only where a copy of its
script exists ($PGOLF_REF_1908 or .ref/train_gpt_1908.py, never in git), else it is skipped with
the command that fetches it."""

from __future__ import annotations

import dataclasses as dc
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from pgolf import config as C
from pgolf.artifact import QTensor

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "parity_awq.py"
_spec = importlib.util.spec_from_file_location("parity_awq", _PATH)
assert _spec is not None and _spec.loader is not None
P = importlib.util.module_from_spec(_spec)
sys.modules["parity_awq"] = P
_spec.loader.exec_module(P)


def test_promoted_groups_are_put_back_where_1908_stores_them():
    base = torch.arange(24, dtype=torch.int8).reshape(2, 12) % 7
    base[:, 4:8] = 0
    block = torch.tensor([[100, -100, 90, 1], [2, 3, -127, 5]], dtype=torch.int8)
    s = torch.ones(2, dtype=torch.float16)
    got = P.assembled(
        [
            QTensor("w", (2, 12), "int", 4, base, s, group="mlp"),
            QTensor("w.awq.4", (2, 4), "int", 8, block, s, group="awq"),
        ]
    )
    assert list(got) == ["w"] and torch.equal(got["w"][:, 4:8], block)
    assert torch.equal(got["w"][:, :4], base[:, :4]) and torch.equal(got["w"][:, 8:], base[:, 8:])


def test_synthetic_rms_has_a_heavy_tail():
    H = torch.eye(512) * 4
    rms = P.synthetic_rms({"w": H}, 0)["w"]
    assert rms.min() >= 2 and rms.max() > 10 * rms.median()


REF = P.find_reference()
needs_ref = pytest.mark.skipif(
    REF is None, reason=f"PR #1908 reference not present; fetch it with: {P.FETCH}"
)


@needs_ref
@pytest.mark.parametrize("k", [1, 5])
def test_promoted_groups_codes_and_low_rank_terms_are_1908s(k):
    ref = P.P.load_reference(REF)
    m = dc.replace(
        P.P.parity_config("tiny"), model_dim=384, num_heads=6, num_kv_heads=3, vocab_size=512
    )
    rows, groups = P.compare(ref, C.pr1855(), m, layers=1, seed=7, k=k)
    assert len(groups) == k and rows["promoted groups chosen"]["code_diff"] == 0
    assert rows["gptq"]["tensors"] == 7 and rows["low-rank A"]["tensors"] == 3
    assert rows["promoted scales"]["tensors"] == k
    for kind, row in rows.items():
        assert row.get("code_diff", 0) == 0 and row.get("scale_diff", 0) == 0, (kind, row)
