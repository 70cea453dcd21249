"""The causal token n-gram tilt (`eval.ngram_tilt`, PR #2135): hints equal a brute-force count
over the strict prefix, never read the future, the tilted distribution is normalized over the
full vocabulary and its NLL is the scored one, the auditor's C1/C2 rows pass on it, and it lives
in the core (bundled only when used)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import perturbed_gpt
from test_ttt import CPU, MCFG, V, stream, tables

from pgolf import ngram_tilt, score
from pgolf.config import EvalConfig, RunConfig, TTTConfig, modules_needed, validate


def _run_ttt(cfg, model, tokens, tables, device, token_nll=None, tilt=None):
    """(totals, ledger) of `cfg.ttt.mode` through the one scoring entry point."""
    s = score.score(
        model, tokens, cfg.ttt.mode, cfg, tables, device, token_nll=token_nll, tilt=tilt
    )
    return s.result, s.ledger


def brute(tokens: list[int], order: int) -> tuple[list[int], list[float]]:
    """hint/confidence per position from an explicit scan of the strict prefix."""
    ctx = order - 1
    hint, conf = [0] * len(tokens), [0.0] * len(tokens)
    for p in range(ctx, len(tokens)):
        key = tuple(tokens[p - ctx : p])
        top, top_c, total, counts = 0, 0, 0, {}
        for i in range(ctx, p):
            if tuple(tokens[i - ctx : i]) == key:
                y = tokens[i]
                counts[y] = counts.get(y, 0) + 1
                total += 1
                if counts[y] > top_c:
                    top, top_c = y, counts[y]
        if total:
            hint[p], conf[p] = top, top_c / total
    return hint, conf


def repetitive(n: int, seed: int = 0, vocab: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g)


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_hints_equal_a_brute_force_prefix_count(order: int) -> None:
    toks = repetitive(300, seed=order).tolist()
    h, c, g = ngram_tilt.hints(np.array(toks), order, 0.5)
    bh, bc = brute(toks, order)
    assert np.allclose(c, bc) and g.tolist() == [x >= 0.5 for x in bc]
    assert [a for a, x in zip(h.tolist(), bc, strict=True) if x] == [
        a for a, x in zip(bh, bc, strict=True) if x
    ]


@pytest.mark.parametrize("n", [0, 1, 2, 15, 16, 17])
def test_streams_shorter_than_the_context(n: int) -> None:
    """A decoder's short prefix (the auditor's round trip) gets no hint and no error."""
    h, c, g = ngram_tilt.hints(np.arange(n) % 3, 16, 0.8)
    assert h.shape == c.shape == g.shape == (n,) and not g.any()


def test_hints_read_only_the_prefix() -> None:
    toks = repetitive(400, seed=3)
    h, c, _ = ngram_tilt.hints(toks.numpy(), 3, 0.5)
    for cut in (50, 199, 333):
        other = toks.clone()
        other[cut:] = (other[cut:] + 1) % 6
        h2, c2, _ = ngram_tilt.hints(other.numpy(), 3, 0.5)
        assert np.array_equal(h[: cut + 1], h2[: cut + 1])  # position cut: reads tokens < cut
        assert np.array_equal(c[: cut + 1], c2[: cut + 1])
    assert (c > 0).sum() > 100  # the small alphabet repeats its trigrams: hints exist


def test_tilted_distribution_is_normalized_and_matches_delta() -> None:
    g = torch.Generator().manual_seed(0)
    toks = repetitive(64, seed=1, vocab=V)
    tilt = ngram_tilt.Tilt(
        hint=torch.randint(0, V, (64,), generator=g),
        gate=torch.ones(64, dtype=torch.bool),
        boost=2.625,
    )
    logits = torch.randn(1, 5, V, generator=g)
    at = torch.arange(10, 15)[None]
    y = toks[10:15][None]
    y[0, 2] = tilt.hint[12]  # one hit
    d = tilt.delta(logits, y, at)
    logp = torch.log_softmax(logits.double(), -1)
    for j in range(5):
        p = tilt.logprobs(logp[0, j], 10 + j)
        assert abs(float(torch.logsumexp(p, 0)) - 0.0) < 1e-12  # sums to 1 over the vocabulary
        scored = float(-logp[0, j, y[0, j]] + d[0, j])
        assert scored == pytest.approx(-float(p[y[0, j]]), abs=1e-5)
    assert float(d[0, 2]) < 0  # a hit gains


def _tilt_cfg(**kw) -> RunConfig:
    ev = EvalConfig(eval_seq_len=16, eval_stride=8, val_batch_seqs=4, ngram_tilt=True, **kw)
    return RunConfig(model=MCFG, eval=ev, ttt=TTTConfig(mode="none"))


def _looping_stream(n: int = 241) -> torch.Tensor:
    """BOS-led documents that repeat one 30-token text: order-4 contexts recur, gates open."""
    g = torch.Generator().manual_seed(0)
    text = torch.randint(2, V, (30,), generator=g)
    out = torch.cat([torch.cat([torch.tensor([1]), text]) for _ in range(n // 31 + 1)])
    return out[:n]


def test_tilt_gains_on_repeats_and_is_neutral_without_gates() -> None:
    toks = _looping_stream()
    m = perturbed_gpt(MCFG, True, 0)
    c = _tilt_cfg(ngram_order=4)
    tilted, _ = _run_ttt(c, m, toks, tables(), CPU, tilt=ngram_tilt.build(c, toks))
    base, _ = _run_ttt(c, m, toks, tables(), CPU)
    assert tilted.val_bpb < base.val_bpb - 0.1
    rand = stream(241)  # random tokens: no 7-token context recurs, no gate opens
    never = ngram_tilt.build(_tilt_cfg(ngram_order=8), rand)
    assert int(never.gate.sum()) == 0
    r, _ = _run_ttt(c, m, rand, tables(), CPU, tilt=never)
    r0, _ = _run_ttt(c, m, rand, tables(), CPU)
    assert r.nll_sum == pytest.approx(r0.nll_sum, rel=1e-9)


def test_audit_rows_pass_with_the_tilt() -> None:
    from test_audit import N

    from pgolf.lab import audit as AU

    c = AU.audit_scale(_tilt_cfg(ngram_order=4), N - 1)
    ev = AU.Evaluator("sliding", c, tables())
    toks = _looping_stream(N)
    assert int(ngram_tilt.build(c, toks).gate.sum()) > 50  # the tilt is active in the audit
    rows = AU.audit(ev, perturbed_gpt(MCFG, True, 0), toks, quick=True, coder_tokens=8)
    assert [r for r in rows if r.verdict == "fail"] == []
    names = {r.test.split()[0] for r in rows if r.verdict == "pass"}
    assert {"T1.1", "T1.2", "T2.1", "T2.3"} <= names
    active = next(r for r in rows if r.test.startswith("T2.1 n-gram tilt active"))
    assert active.verdict == "pass" and " 0 target-flipped" not in active.evidence


def test_audit_catches_scores_off_the_tilted_distribution() -> None:
    """The rows can fail: scores that are not -log of the (recorded) tilted distribution."""
    from test_audit import N, failed

    from pgolf.lab import audit as AU

    class Cheat(ngram_tilt.Tilt):
        def delta(self, logits, y, at):
            return super().delta(logits, y, at) - 1.0 * (at > 0)

    c = AU.audit_scale(_tilt_cfg(ngram_order=4), N - 1)
    toks = _looping_stream(N)
    orig = ngram_tilt.build

    def cheat_build(cfg, tokens):
        t = orig(cfg, tokens)
        return Cheat(t.hint, t.gate, t.boost)

    ngram_tilt.build = cheat_build
    try:
        ev = AU.Evaluator("sliding", c, tables())
        bad = failed(AU.audit(ev, perturbed_gpt(MCFG, True, 0), toks, quick=True, coder_tokens=0))
    finally:
        ngram_tilt.build = orig
    assert "T2.1" in bad  # the scores no longer come from a normalized distribution


def test_config_env_and_bundle() -> None:
    from pgolf.config import apply_env

    env = {"NGRAM_TILT_ENABLED": "1", "TOKEN_ORDER": "12", "TOKEN_THRESHOLD": "0.9"}
    e = apply_env(RunConfig(), {**env, "TOKEN_BOOST": "2.0"}).eval
    assert (e.ngram_tilt, e.ngram_order, e.ngram_threshold, e.ngram_boost) == (True, 12, 0.9, 2.0)
    c = _tilt_cfg()
    validate(c)
    assert "ngram_tilt" in modules_needed(c) and "ngram_tilt" not in modules_needed(RunConfig())
    import pgolf

    assert "ngram_tilt" in pgolf.CORE_MODULES
    with pytest.raises(ValueError, match="ngram_tilt"):
        _run_ttt(
            replace(c, ttt=TTTConfig(mode="lora")),
            perturbed_gpt(MCFG, True, 0),
            _looping_stream(),
            tables(),
            CPU,
            tilt=ngram_tilt.build(c, _looping_stream()),
        )
    assert math.isfinite(c.eval.ngram_boost)
