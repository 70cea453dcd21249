"""The auditor's T2.4 (byte oracle), T2.5 (coverage), T3.4 (no-update counterfactual) and T4.2
(commit order), each shown failing on a planted violation - a wrong byte table, a subset
evaluator, TTT that trains on a chunk before scoring it (with a ledger that says otherwise),
updates no ledger announces, score-first walking the stream backwards - while the legal modes
pass."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from helpers import perturbed_gpt, tiny_corpus
from test_audit import MCFG, N, evaluator, failed, run_audit

from pgolf import bpb
from pgolf import score as S
from pgolf.data import read_shard
from pgolf.evaluate import EvalResult, eval_sliding, score_windows, sliding_windows
from pgolf.lab import audit as AU
from pgolf.lab.audit.c2 import byte_oracle, coverage
from pgolf.ttt import consumed
from pgolf.ttt_lora import sgd_on_ranges

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    data, tok, sp = tiny_corpus(tmp_path_factory.mktemp("corpus"))
    val = torch.from_numpy(read_shard(data / "tiny_val_000000.bin").astype("int64"))
    return sp, bpb.build_byte_tables(sp, sp.vocab_size()), val


def text_evaluator(corpus, cls=AU.Evaluator, tables=None) -> AU.Evaluator:
    sp, tab, val = corpus
    mcfg = replace(MCFG, vocab_size=sp.vocab_size())
    ev = evaluator("sliding", cls, mcfg)
    return replace(ev, tables=tables if tables is not None else tab, sp=sp)


def text_model(corpus):
    return perturbed_gpt(replace(MCFG, vocab_size=corpus[0].vocab_size()), True, 0)


# ----------------------------------------------------------------------------------------------
# T2.4 byte oracle


def wrong_tables(tab: bpb.ByteTables, kind: str, sp=None) -> bpb.ByteTables:
    base, lead, bound = tab.base_bytes.clone(), tab.has_leading_space, tab.is_boundary
    if kind == "double_space":  # #1734: the '▁' counted in the piece and again as a flag
        base = base + lead.to(base.dtype)
    elif kind == "bos_byte":  # a boundary token worth one byte
        base[1] = 1
        bound = bound.clone()
        bound[1] = False
    elif kind == "byte_piece_text":  # '<0xE2>' counted as its 6 characters
        is_byte = torch.tensor([sp.is_byte(i) for i in range(base.numel())])
        base = torch.where(is_byte, 6, base).to(base.dtype)
    return bpb.ByteTables(base, lead, bound)


@pytest.mark.parametrize("kind", ["double_space", "bos_byte", "byte_piece_text"])
def test_byte_oracle_catches_wrong_tables(corpus, kind) -> None:
    sp, tab, val = corpus
    assert any(sp.is_byte(int(t)) for t in val)  # the stream has byte-fallback pieces
    good = byte_oracle(text_evaluator(corpus), val)
    assert good.verdict == "pass" and "equal" in good.evidence
    bad = byte_oracle(text_evaluator(corpus, tables=wrong_tables(tab, kind, sp)), val)
    assert bad.verdict == "fail" and "differ" in bad.evidence, bad


def test_byte_oracle_ignores_a_character_cut_by_the_stream_end(corpus) -> None:
    sp, _, val = corpus
    ends = [
        i for i in range(2, val.numel()) if sp.is_byte(int(val[i - 1])) and sp.is_byte(int(val[i]))
    ]
    cut = val[: ends[0] + 1]  # ends between the byte pieces of one character
    assert byte_oracle(text_evaluator(corpus), cut).verdict == "pass"
    assert byte_oracle(replace(text_evaluator(corpus), sp=None), cut).verdict == "n.a."


# ----------------------------------------------------------------------------------------------
# Planted evaluators


class Subset(AU.Evaluator):
    """Scores only the first three quarters of the stream (#1785/#1835: a validation prefix)."""

    def score(self, model, tokens, nll, ledger, tap):
        e, m = self.cfg.eval, 3 * (tokens.numel() - 1) // 4
        h = model.register_forward_hook(tap)
        r = eval_sliding(
            model,
            tokens[: m + 1],
            e.eval_seq_len,
            e.eval_stride,
            4,
            self.tables,
            CPU,
            token_nll=nll[:m],
        )
        h.remove()
        S.ledger_from_plan(ledger, sliding_windows(m, e.eval_seq_len, e.eval_stride))
        return r, model


class ChunkTTT(AU.Evaluator):
    """Score-first TTT by hand over chunks of the sliding plan, with two planted variants:
    `train_first` trains on a chunk and then scores it while logging score before update (its
    ledger reads legal); `backward` walks the chunks last to first (honest ledger; it trains on
    a chunk's own tokens only, so every update consumes already scored targets)."""

    train_first, backward = False, False

    def score(self, model, tokens, nll, ledger, tap):
        e, n = self.cfg.eval, tokens.numel() - 1
        s, lo, hi = sliding_windows(n, e.eval_seq_len, e.eval_stride)
        chunk_of = (s + lo) // self.cfg.ttt.chunk_tokens
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        acc, h, version = [0.0, 0, 0], model.register_forward_hook(tap), 0
        order = sorted(set(chunk_of.tolist()), reverse=self.backward)
        for c in order:
            sel = chunk_of == c
            plan = (s[sel], lo[sel], hi[sel])
            a, b = int((plan[0] + plan[1]).min()), int((plan[0] + plan[2]).max())
            rng = [(a + int(self.backward), b)]
            if self.train_first:
                sgd_on_ranges(model, opt, tokens, rng, e.eval_seq_len, 4, 1.0, CPU, None)
            r = score_windows(
                model, tokens, plan, e.eval_seq_len, 4, self.tables, CPU, token_nll=nll
            )
            acc = [acc[0] + r.nll_sum, acc[1] + r.tokens, acc[2] + r.bytes]
            ledger.score([(a, b)], version)
            if not self.train_first and c != order[-1]:
                sgd_on_ranges(model, opt, tokens, rng, e.eval_seq_len, 4, 1.0, CPU, None)
            version += 1
            ledger.update(consumed(rng), version)
        h.remove()
        model.eval()
        return EvalResult(acc[0] / acc[1], 0.0, acc[0], acc[1], acc[2], 0.0), model


class TrainFirst(ChunkTTT):
    train_first = True


class Backward(ChunkTTT):
    backward = True


class Silent(AU.Evaluator):
    """One SGD step on the whole stream before sliding scoring, absent from the ledger."""

    def score(self, model, tokens, nll, ledger, tap):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        e = self.cfg.eval
        sgd_on_ranges(
            model, opt, tokens, [(0, tokens.numel() - 1)], e.eval_seq_len, 4, 1.0, CPU, None
        )
        return super().score(model, tokens, nll, ledger, tap)


def test_chunk_ttt_by_hand_is_legal() -> None:
    rows = run_audit(evaluator("sliding", ChunkTTT), coder=0)
    assert failed(rows) == set()
    got = {r.test.split()[0]: r.verdict for r in rows}
    assert got["T3.4"] == "pass" and got["T4.2"] == "pass"


@pytest.mark.parametrize(
    "cls, expected, clean",
    [
        (TrainFirst, {"T3.4"}, {"T3.1/T3.2", "T4.2"}),  # the ledger hides it from T3.1
        (Backward, {"T4.2", "T1.1"}, {"T3.1/T3.2", "T3.4"}),
        (Silent, {"T3.4", "T1.1"}, {"T3.1/T3.2"}),
    ],
)
def test_planted_order_and_update_violations(cls, expected, clean) -> None:
    rows = run_audit(evaluator("sliding", cls), coder=0)
    got = failed(rows)
    assert expected <= got and not (clean & got), (cls.__name__, got)


def test_subset_and_wrong_bytes_fail_coverage_and_legal_text_passes(corpus) -> None:
    _, tab, val = corpus
    toks, model = val[:N], text_model(corpus)
    rows = AU.audit(text_evaluator(corpus), model, toks, quick=True, coder_tokens=4)
    assert failed(rows) == set()
    got = {r.test.split()[0]: r.verdict for r in rows}
    assert got["T2.4"] == "pass" and got["T2.5"] == "pass"
    sub = failed(AU.audit(text_evaluator(corpus, Subset), model, toks, quick=True, coder_tokens=0))
    assert "T2.5" in sub and "T2.4" not in sub
    ev = text_evaluator(corpus, tables=wrong_tables(tab, "double_space"))
    base = ev.run(model, toks)
    assert coverage(ev, toks, base).verdict == "fail"  # reported bytes != canonical bytes
    assert math.isclose(base.total, float(base.nll.sum()))
