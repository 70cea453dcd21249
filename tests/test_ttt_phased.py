"""Phased LoRA TTT (`ttt.mode=phased`, PR #1855's form): ledger (Conditions 3/4), zero learning
rates equal plain per-document scoring, a document's score ignores later documents, phases run
and are logged, adapters reset per batch, the record's environment names, the dispatch."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import perturbed_gpt
from test_ttt import CPU, MCFG, V, stream, tables

from pgolf import score, ttt, ttt_phased
from pgolf.config import EvalConfig, RunConfig, TTTConfig, apply_env, validate
from pgolf.ttt_lora import documents


def _run_ttt(cfg, model, tokens, tables, device, token_nll=None, tilt=None):
    """(totals, ledger) of `cfg.ttt.mode` through the one scoring entry point."""
    s = score.score(
        model, tokens, cfg.ttt.mode, cfg, tables, device, token_nll=token_nll, tilt=tilt
    )
    return s.result, s.ledger


def model():
    torch.manual_seed(0)
    return perturbed_gpt(MCFG)


def pcfg(**kw) -> RunConfig:
    base = dict(
        mode="phased",
        phased_rank=2,
        phased_chunk=8,
        phased_batch_docs=2,
        phased_prefix_docs=4,
        phased_phases=2,
        phased_lr=0.01,
        global_lr=0.01,
        global_chunk_tokens=32,
        global_batch_seqs=2,
    )
    ev = EvalConfig(eval_seq_len=16, eval_stride=8, val_batch_seqs=4)
    return RunConfig(model=MCFG, eval=ev, ttt=TTTConfig(**{**base, **kw}))


def run(c: RunConfig, toks: torch.Tensor, m=None):
    out = torch.zeros(toks.numel() - 1, dtype=torch.float64)
    led = ttt.Ledger()
    r = ttt_phased.phased_ttt(c, m or model(), toks, tables(), CPU, led, token_nll=out)
    return r, led, out


def test_phased_legal_and_logged(capsys) -> None:
    from pgolf import dist as pdist

    toks = stream(301, docs=7)
    logs: list[str] = []
    old = pdist.log0
    pdist.log0 = lambda msg, console=True: logs.append(msg)  # type: ignore[assignment]
    try:
        r, led, nll = run(pcfg(), toks)
    finally:
        pdist.log0 = old  # type: ignore[assignment]
    assert r.tokens == 300 and r.nll_sum == pytest.approx(float(nll.sum()), rel=1e-9)
    assert ttt.score_before_update(led) == [] and ttt.single_pass(led, 300) == []
    phases = [x for x in logs if x.startswith("ttt_phased:phase ")]
    assert len(phases) == 2 and "phase 2/2" in phases[1]
    assert any("reset:" in x for x in logs)
    globals_ = [e for e in led.events if e["kind"] == "update" and e["version"] % 10**6 == 999_999]
    assert len(globals_) == 2  # one event per phase, the second's documents a superset
    assert set(globals_[0]["ranges"]) <= set(globals_[1]["ranges"])


def test_ledger_catches_a_phase_on_unscored_documents() -> None:
    """The checker is not vacuous: a global update claiming an unscored document fails C3."""
    toks = stream(301, docs=7)
    _, led, _ = run(pcfg(), toks)
    bad = ttt.Ledger(events=[dict(e) for e in led.events])
    first_update = next(i for i, e in enumerate(bad.events) if e["kind"] == "update")
    bad.events.insert(first_update, {"kind": "update", "ranges": [(250, 300)], "version": 1})
    assert ttt.score_before_update(bad) != []


def test_zero_learning_rates_equal_per_document_scoring() -> None:
    """lr 0 everywhere: each document's NLL is the base model's on that document alone."""
    toks = stream(301, docs=7)
    c = pcfg(phased_lr=0.0, global_lr=0.0, phased_wd=0.0)
    m = model()
    _, _, nll = run(c, toks, m)
    ref = torch.zeros_like(nll)
    m.eval()
    with torch.no_grad():
        for s, e in documents(toks, 1):
            for a in range(s, e, 8):  # the chunk's window: from the doc start, <= 16 tokens
                b = min(a + 8, e)
                w = max(s, b - 16)
                logits = m(toks[w:b][None])
                nl = torch.nn.functional.cross_entropy(
                    logits[0].float(), toks[w + 1 : b + 1], reduction="none"
                )
                ref[a:b] = nl[a - w :].double()
    assert torch.allclose(nll, ref, atol=2e-5)


def test_training_changes_scores_and_later_documents_do_not_leak() -> None:
    toks = stream(301, docs=7)
    _, _, base = run(pcfg(phased_lr=0.0, global_lr=0.0, phased_wd=0.0), toks)
    _, _, nll = run(pcfg(), toks)
    assert (nll - base).abs().max() > 1e-4  # the adapters and the phases act
    docs = documents(toks, 1)
    q = ttt_phased.queue(docs, 2)
    last = q[-1][1]  # the last batch of the queue: every other document is scored first
    other = toks.clone()
    for s, e in last:
        other[s + 1 : e] = (other[s + 1 : e] + 1 - 2) % (V - 2) + 2
    _, _, nll2 = run(pcfg(), other)
    keep = torch.ones(300, dtype=torch.bool)
    for s, e in last:
        keep[s:e] = False
    assert torch.allclose(nll[keep], nll2[keep], atol=1e-9)


def test_queue_and_boundaries() -> None:
    docs = [(0, 5), (5, 7), (7, 20), (20, 24), (24, 30)]
    q = ttt_phased.queue(docs, 2)
    assert [b for b, _ in q] == [2, 1, 0]  # longest batch first, indices of the ascending sort
    assert q[0][1] == [(7, 20)] and q[2][1] == [(5, 7), (20, 24)]
    assert ttt_phased.boundaries(2500 + 10, 2500, 3) == [833, 1666, 2500]
    assert ttt_phased.boundaries(10, 2500, 3) == [3, 6, 10]
    assert ttt_phased.boundaries(10, 0, 3) == []


def test_warm_a_keeps_a_and_resets_b() -> None:
    g = torch.Generator().manual_seed(0)
    t = pcfg().ttt
    ad = ttt_phased.Adapters(model(), 2, t, g)
    with torch.no_grad():
        for p in ad.parameters():
            p.add_(1.0)
    a0 = ad.q[0].A.detach().clone()
    ad.reset(warm_a=True)
    assert torch.equal(ad.q[0].A, a0) and not ad.q[0].B.any()
    ad.reset(warm_a=False)
    assert not torch.equal(ad.q[0].A, a0)
    n_slots = len(model().virtual_layers())
    assert len(ad.q) == n_slots and ad.head.B.shape == (2, V, 2)


def test_record_environment_names_and_dispatch() -> None:
    env = {
        "TTT_LORA_RANK": "16",
        "TTT_LORA_ALPHA": "32",
        "TTT_WARM_START_A": "0",
        "TTT_CHUNK_SIZE": "32",
        "TTT_EVAL_SEQ_LEN": "1024",
        "TTT_WEIGHT_DECAY": "2.0",
        "TTT_BETA2": "0.999",
        "TTT_K_LORA": "0",
        "PHASED_TTT_PREFIX_DOCS": "2000",
        "PHASED_TTT_NUM_PHASES": "1",
        "GLOBAL_TTT_CHUNK_TOKENS": "16384",
        "GLOBAL_TTT_RESPECT_DOC_BOUNDARIES": "0",
    }
    t = apply_env(RunConfig(), env).ttt
    assert (t.phased_rank, t.phased_alpha, t.phased_warm_a, t.phased_chunk) == (16, 32.0, False, 32)
    assert (t.phased_seq_len, t.phased_wd, t.phased_beta2, t.phased_k) == (1024, 2.0, 0.999, False)
    assert (t.phased_prefix_docs, t.phased_phases, t.global_chunk_tokens) == (2000, 1, 16384)
    assert t.global_respect_docs is False
    from pgolf.config import pr1855

    p = pr1855()
    validate(p)
    assert p.ttt.mode == "phased" and (p.ttt.phased_rank, p.ttt.phased_alpha) == (80, 144.0)
    toks = stream(301, docs=7)
    r, led = _run_ttt(pcfg(), model(), toks, tables(), CPU)
    r2, _, _ = run(pcfg(), toks)
    assert r.nll_sum == pytest.approx(r2.nll_sum, rel=1e-9) and led.events


def test_phase_sgd_reads_only_scored_documents() -> None:
    """The phase SGD's stream is the first documents of the queue, each with its closing BOS."""
    toks = stream(301, docs=7)
    seen: list[torch.Tensor] = []
    orig = ttt_phased.global_sgd

    def spy(model, s, t, seq_len, device, amp):
        seen.append(s.clone())
        return orig(model, s, t, seq_len, device, amp)

    ttt_phased.global_sgd = spy
    try:
        run(pcfg(phased_prefix_docs=3, phased_phases=1), toks)
    finally:
        ttt_phased.global_sgd = orig
    q = ttt_phased.queue(documents(toks, 1), 2)
    scored = sorted((b, r, s, e) for b, batch in q[:2] for r, (s, e) in enumerate(batch))[:3]
    want = torch.cat([toks[s : e + 1] for _, _, s, e in scored])
    assert len(seen) == 1 and torch.equal(seen[0], want)


def test_config_rejects_bad_optimizer() -> None:
    with pytest.raises(ValueError, match="phased_optimizer"):
        validate(replace(pcfg(), ttt=replace(pcfg().ttt, phased_optimizer="lion")))


def _audit(order: str):
    from test_audit import evaluator, run_audit

    ev = evaluator("phased")
    t = replace(
        ev.cfg.ttt,
        phased_order=order,
        phased_rank=2,
        phased_chunk=8,
        phased_prefix_docs=2,
        phased_phases=2,
        global_chunk_tokens=40,
        phased_lr=0.01,
    )
    return run_audit(replace(ev, cfg=replace(ev.cfg, ttt=t)), coder=4)


def test_audit_c3_c4_pass_and_the_length_queue_fails_prefix_invariance() -> None:
    """The record's length-sorted queue reads future document lengths: T1.1 catches it; the
    ledger rows (C3/C4) pass."""
    rows = _audit("length")
    bad = {r.test.split()[0] for r in rows if r.verdict == "fail"}
    assert not [r for r in rows if r.condition in ("C3", "C4") and r.verdict == "fail"]
    assert "T1.1" in bad and bad <= {"T1.1"}
    assert any(r.test.startswith("T3.4") and r.verdict == "pass" for r in rows)


@pytest.mark.slow
def test_audit_stream_order_passes_everything() -> None:
    rows = _audit("stream")
    assert [r for r in rows if r.verdict == "fail"] == []


def test_stream_order_scores_do_not_read_where_a_document_ends() -> None:
    """Removing the BOS that closes a document (a future token) moves no earlier score in the
    'stream' order; the record's order reads it (its last-chunk window ends at the BOS)."""
    g = torch.Generator().manual_seed(5)
    parts = [
        torch.cat([torch.tensor([1]), torch.randint(2, V, (n,), generator=g)])
        for n in (40, 36, 50, 45, 30, 60)
    ]  # the 2nd document: 37 targets, a partial last chunk
    toks = torch.cat(parts)
    cut = documents(toks, 1)[2][0]  # the BOS closing the 2nd document
    merged = toks.clone()
    merged[cut] = 5
    for order, same in (("stream", True), ("length", False)):
        c = pcfg(phased_order=order, phased_batch_docs=3)
        _, _, a = run(c, toks)
        _, _, b = run(c, merged)
        d = float((a[: cut - 1] - b[: cut - 1]).abs().max())
        assert (d <= 1e-9) == same, (order, d)


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import os

    import torch.distributed as dist

    from pgolf import dist as pdist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    pdist.set_info(pdist.DistInfo(rank=rank, world_size=world))
    try:
        torch.set_num_threads(1)
        # 3 sequences per phase chunk over 2 ranks: shares of 2 and 1 (uneven step counts)
        c = pcfg(global_chunk_tokens=48, global_batch_seqs=1)
        r, led = _run_ttt(c, model(), stream(301, docs=7), tables(), CPU)
        bad = ttt.score_before_update(led) + ttt.single_pass(led, 300)
        torch.save([r.tokens, r.bytes, bad], os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
@pytest.mark.slow
def test_two_gloo_ranks_run_phases_and_pass_the_ledger(tmp_path) -> None:
    """Batches round-robin, the phase SGD split across ranks with uneven shares: no hang,
    every target scored once, Condition 3 holds on the gathered ledger."""
    import torch.multiprocessing as mp

    mp.spawn(_dist_worker, args=(2, str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True)
    single, _ = _run_ttt(pcfg(), model(), stream(301, docs=7), tables(), CPU)
    for rank in range(2):
        n, nb, bad = torch.load(tmp_path / f"rank{rank}.pt")
        assert (n, nb, bad) == (single.tokens, single.bytes, [])


def test_stream_order_first_document_ignores_the_batch_size() -> None:
    """Per-row generators: the first document (row 0, before any phase) scores the same with 1
    or 3 documents per batch (the auditor's round-trip decoder runs one per batch)."""
    toks = stream(301, docs=7)
    s, e = documents(toks, 1)[0]
    out = [run(pcfg(phased_order="stream", phased_batch_docs=b), toks)[2][s:e] for b in (1, 3)]
    assert torch.allclose(out[0], out[1], atol=1e-6)
    rec = [run(pcfg(phased_order="length", phased_batch_docs=b), toks)[2] for b in (1, 3)]
    assert not torch.allclose(rec[0], rec[1], atol=1e-6)


def test_eval_stage_times_every_pass_and_logs_the_mode() -> None:
    from pgolf import dist as pdist

    c = replace(pcfg(), eval=replace(pcfg().eval, ngram_tilt=True, ngram_order=3))
    logs: list[str] = []
    old, old_s = pdist.log0, score.log0

    def grab(msg, console=True):
        logs.append(msg)

    pdist.log0 = score.log0 = grab  # type: ignore[assignment]
    try:
        clock = ttt.EvalClock()
        out = score.eval_stage(c, model(), stream(301, docs=7), tables(), CPU, clock)
    finally:
        pdist.log0, score.log0 = old, old_s  # type: ignore[assignment]
    assert {"ngram_tilt", "ttt_phased"} <= set(out["eval_stage_seconds"])
    assert out["ttt_mode"] == "phased" and out["ttt_condition3_violations"] == []
    assert any("mode:phased ngram_tilt:1" in x for x in logs)
    assert any(x.startswith("ttt_ledger ") and "condition3:True" in x for x in logs)
