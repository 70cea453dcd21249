"""The auditor's own proof that it can fail: planted violations (a target peeker, two-pass
rescoring, an unnormalized mixer, a target-keyed cache, a SmearGate crossing BOS, a sliding
window scoring a position twice, pre-quant TTT) are each caught by the test of the condition
they break, and the legal modes (plain, sliding, score-first, LoRA) pass every test."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import perturbed_gpt
from test_ttt import MCFG, cfg, stream, tables

from pgolf import score as S
from pgolf.evaluate import eval_sliding, score_windows, sliding_windows
from pgolf.lab import audit as AU
from pgolf.lab.audit.arith import Decoder, encode
from pgolf.lab.audit.c3 import inference_tensors
from pgolf.model import GPT
from pgolf.ttt_lora import sgd_on_ranges

N = 241


def evaluator(mode: str, cls=AU.Evaluator, model_cfg=MCFG) -> AU.Evaluator:
    c = AU.audit_scale(replace(cfg(), model=model_cfg), N - 1)
    return cls(mode, c, tables())


def failed(rows: list[AU.Row]) -> set[str]:
    return {r.test.split()[0] for r in rows if r.verdict == "fail"}


def run_audit(ev, model=None, coder=8):
    m = model if model is not None else perturbed_gpt(ev.cfg.model, True, 0)
    return AU.audit(ev, m, stream(N), quick=True, coder_tokens=coder)


# ----------------------------------------------------------------------------------------------
# Planted violations


class Peek(AU.Evaluator):
    """Adds probability mass to the realized target: normalized, but p_t depends on x_{t+1}."""

    def run(self, model, tokens, probes=()):
        out = super().run(model, tokens, probes)
        out.nll = -torch.log((torch.exp(-out.nll) + 0.5) / 1.5)
        out.total = float(out.nll.sum())
        for t, rows in out.probs.items():
            y = int(torch.as_tensor(tokens)[t + 1])
            hot = torch.zeros_like(rows[0][1])
            hot[y] = 0.5
            out.probs[t] = [(s, torch.log((r.exp() + hot) / 1.5)) for s, r in rows]
        return out


class Mixer(AU.Evaluator):
    """Reports a 'mixture' p^0.5 without renormalizing: causal, but sums exceed 1."""

    def run(self, model, tokens, probes=()):
        out = super().run(model, tokens, probes)
        out.nll, out.total = 0.5 * out.nll, 0.5 * out.total
        out.probs = {t: [(s, 0.5 * r) for s, r in rows] for t, rows in out.probs.items()}
        return out


class TargetCache(AU.Evaluator):
    """Bigram cache q(a) = p(a) + 0.05 * count(x_t, a) updated with (x_t, x_{t+1}) BEFORE
    scoring t (the #779 family): target-dependent and unnormalized."""

    def run(self, model, tokens, probes=()):
        out = super().run(model, tokens, probes)
        x = torch.as_tensor(tokens)
        V = self.cfg.model.vocab_size
        counts = np.zeros((V, V))
        for t in range(x.numel() - 1):
            counts[int(x[t]), int(x[t + 1])] += 1  # update first, then score
            bonus = torch.from_numpy(0.05 * counts[int(x[t])])
            out.nll[t] = -math.log(math.exp(-float(out.nll[t])) + float(bonus[int(x[t + 1])]))
            if t in out.probs:
                out.probs[t] = [(s, torch.log(r.exp() + bonus)) for s, r in out.probs[t]]
        out.total = float(out.nll.sum())
        return out


class TwoPass(AU.Evaluator):
    """Scores the stream, trains one SGD step on all of it, re-scores and reports pass 2."""

    def score(self, model, tokens, nll, ledger, tap):
        e, n = self.cfg.eval, tokens.numel() - 1
        plan = sliding_windows(n, e.eval_seq_len, e.eval_stride)
        eval_sliding(model, tokens, e.eval_seq_len, e.eval_stride, 4, self.tables, "cpu")
        S.ledger_from_plan(ledger, plan, 0)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        sgd_on_ranges(
            model, opt, tokens, [(0, n)], e.eval_seq_len, 4, 1.0, torch.device("cpu"), None
        )
        ledger.update([(0, n)], 1)
        h = model.register_forward_hook(tap)
        r = eval_sliding(
            model, tokens, e.eval_seq_len, e.eval_stride, 4, self.tables, "cpu", token_nll=nll
        )
        h.remove()
        S.ledger_from_plan(ledger, plan, 1)
        return r, model


class DoubleTail(AU.Evaluator):
    """Sliding windows plus a last full window re-scoring the tail (PR #1550's tail)."""

    def score(self, model, tokens, nll, ledger, tap):
        e, n = self.cfg.eval, tokens.numel() - 1
        s, lo, hi = sliding_windows(n, e.eval_seq_len, e.eval_stride)
        last = max(0, n - e.eval_seq_len)
        plan = (
            torch.cat([s, torch.tensor([last])]),
            torch.cat([lo, torch.tensor([0])]),
            torch.cat([hi, torch.tensor([n - last])]),
        )
        h = model.register_forward_hook(tap)
        r = score_windows(model, tokens, plan, e.eval_seq_len, 4, self.tables, "cpu", token_nll=nll)
        h.remove()
        S.ledger_from_plan(ledger, plan)
        return r, model


class LeakySmear(GPT):
    """Claims document isolation (doc_mask) but its SmearGate mixes across BOS."""

    def _embed(self, idx, cache):
        x = torch.nn.functional.rms_norm(self.tok_emb(idx), (self.cfg.model_dim,))
        x_prev = torch.cat((x.new_zeros(x.size(0), 1, x.size(2)), x[:, :-1]), dim=1)
        return self.smear(x, x_prev)


def doc_model(cls):
    mcfg = replace(MCFG, doc_mask=True, smear_gate=True)
    ref = perturbed_gpt(mcfg, True, 0)
    m = cls(mcfg)
    m.load_state_dict(ref.state_dict())
    m.set_recurrence(True)
    with torch.no_grad():
        m.smear.gate.fill_(2.0)  # a smear strong enough to matter
    return m, mcfg


@pytest.mark.parametrize(
    "name, build, expected, consequences",
    [
        ("peek", lambda: (evaluator("sliding", Peek), None), {"T1.2"}, set()),
        ("mixer", lambda: (evaluator("sliding", Mixer), None), {"T2.1"}, set()),
        (
            "target_cache",
            lambda: (evaluator("sliding", TargetCache), None),
            {"T1.2", "T2.1"},
            set(),
        ),
        # the second pass has seen the future (T1.2) and its scores follow updates (T3.4, T4.2)
        (
            "two_pass",
            lambda: (evaluator("sliding", TwoPass), None),
            {"T1.1", "T4.1"},
            {"T1.2", "T3.4", "T4.2"},
        ),
        # consequences of scoring the tail twice: its reported NLL is the sum of two scores
        # (T2.1), the reported targets exceed the canonical ones (T2.5), a position is scored
        # again after its first score event (T3.3)
        (
            "double_tail",
            lambda: (evaluator("sliding", DoubleTail), None),
            {"T4.1"},
            {"T2.1", "T2.5", "T3.3"},
        ),
        (
            "prequant",
            lambda: (evaluator("prequant"), None),
            {"T1.1", "T3.1/T3.2"},
            {"T1.2", "T3.4"},
        ),
    ],
)
def test_planted_violation_is_caught(name, build, expected, consequences) -> None:
    """The rows naming the violated condition fail, and nothing else but the listed
    consequences: a new false positive elsewhere fails this test."""
    ev, model = build()
    got = failed(run_audit(ev, model, coder=0))
    assert expected <= got <= expected | consequences, (name, got)


def test_smear_gate_across_bos_fails_document_isolation() -> None:
    leaky, mcfg = doc_model(LeakySmear)
    ev = evaluator("sliding", model_cfg=mcfg)
    assert ev.per_document
    assert failed(run_audit(ev, leaky, coder=0)) == {"T1.4"}
    good, _ = doc_model(GPT)
    assert failed(run_audit(ev, good, coder=0)) == set()


@pytest.mark.parametrize("mode", ["plain", "sliding", "score_first"])
def test_legal_modes_pass_everything(mode: str) -> None:
    rows = run_audit(evaluator(mode), coder=8 if mode != "score_first" else 4)
    assert [r for r in rows if r.verdict == "fail"] == []
    assert sum(r.verdict == "pass" for r in rows) >= 11


@pytest.mark.slow
def test_lora_passes_everything() -> None:
    rows = run_audit(evaluator("lora"), coder=4)
    assert [r for r in rows if r.verdict == "fail"] == []
    assert any(r.test.startswith("T1.4") and r.verdict == "pass" for r in rows)


def test_inference_tensors_are_found() -> None:
    m = perturbed_gpt(MCFG, True, 0)
    assert inference_tensors(m) == []
    with torch.inference_mode():
        m.rope_cache = torch.ones(3)  # a cache made while scoring under inference_mode
    assert inference_tensors(m) == ["rope_cache"]


def test_arithmetic_coder_round_trips() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        k, v = int(rng.integers(1, 20)), int(rng.integers(2, 40))
        tabs = [rng.integers(1, 1000, v) for _ in range(k)]
        sym = [int(rng.integers(0, v)) for _ in range(k)]
        m, b = encode(sym, tabs)
        dec = Decoder(m, b)
        assert [dec.next(t) for t in tabs] == sym
        ideal = -sum(math.log2(t[s] / t.sum()) for t, s in zip(tabs, sym, strict=True))
        assert b <= ideal + 2


SCRIPT = """
import os
import torch
FIX_BOS = bool(int(os.environ.get("SMEAR_BOS_FIX", "0")))
LIMIT = int(os.environ.get("VAL_MAX_TOKENS", "0"))

def prequant(model, opt, val_tokens):
    for ep in range(3):
        for s in range(0, len(val_tokens), 64):
            loss = model(val_tokens[s:s + 65])
            loss.backward()
            opt.step()

def score_first(model, opt, val_tokens):
    for s in range(0, len(val_tokens), 64):
        with torch.no_grad():
            total = model(val_tokens[s:s + 65])
        loss = model(val_tokens[s:s + 65])
        loss.backward()
        opt.step()

def cache_mix(cache, x, y, p):
    return p + cache[hash((x, y))]

val_tokens = val_tokens[:5_000_000]
"""


def test_static_prescreen_finds_each_rule_with_lines(tmp_path) -> None:
    from pgolf.lab.audit.static import format_findings, screen

    f = tmp_path / "train_gpt.py"
    f.write_text(SCRIPT)
    found = {(x.rule, x.line) for x in screen(f)}
    assert ("bos-switch-off", 4) in found and ("subset-eval", 5) in found
    assert ("val-train", 11) in found  # the pre-quant loop, not the score-first one (line 19)
    assert not any(r == "val-train" and line > 12 for r, line in found)
    assert ("target-hash", 23) in found and ("subset-eval", 25) in found
    assert "not a verdict" in format_findings(f, screen(f))


def test_cli_static_and_artifact_rows(tmp_path) -> None:
    from pgolf.lab.audit.run import artifact_rows, main

    f = tmp_path / "train_gpt.py"
    f.write_text(SCRIPT)
    text, rc = main(None, None, None, False, False, static=str(f))
    assert rc == 0 and "PRE-SCREEN" in text and "val-train" in text
    art = tmp_path / "artifact.pgolf"
    art.write_bytes(b"x" * 1000)
    (tmp_path / "result.json").write_text('{"train_seconds": 700.0, "code_bytes": 50}')
    c = cfg(mode="prequant")
    rows = {r.test: r.verdict for r in artifact_rows(art, c, {})}
    assert rows["T1.3 artifact independent of validation data"] == "fail"
    assert rows["T3.2 no training on unscored validation tokens"] == "fail"
    assert rows["T4.4 artifact bytes (model + code)"] == "pass"
    assert rows["T4.4 train time"] == "fail" and rows["T4.4 eval time"] == "n.a."
    with pytest.raises(ValueError, match="ARTIFACT"):
        main(None, None, None, False, False)
