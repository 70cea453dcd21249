"""Test-time training: score-first at lr 0 equals sliding eval, ledger checks (Conditions 3/4, and
the pre-quant mode failing them), LoRA document independence, the inference-mode poisoning case,
config/env mapping, 2 gloo ranks equal 1."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch
from helpers import perturbed_gpt

from pgolf import dist as pdist
from pgolf import modes as M
from pgolf import ttt
from pgolf.bpb import ByteTables
from pgolf.config import EvalConfig, ModelConfig, RunConfig, TTTConfig, apply_env
from pgolf.evaluate import eval_sliding
from pgolf.score import score

V, CPU = 32, torch.device("cpu")
MCFG = ModelConfig(
    vocab_size=V,
    num_layers=3,
    model_dim=32,
    num_heads=2,
    num_kv_heads=1,
    mlp_mult=2.0,
    rope_dims=8,
    xsa_layers=(0, 1, 2),
    ve_dim=8,
    ve_layers=(1, 2),
    parallel_start=1,
    recur_layers=(0, 1, 1, 2),
    attn_backend="sdpa",
)


def tables() -> ByteTables:
    g = torch.Generator().manual_seed(0)
    base = torch.randint(1, 5, (V,), generator=g, dtype=torch.int32)
    base[:2] = 0
    bound = torch.zeros(V, dtype=torch.bool)
    bound[:2] = True
    lead = torch.rand(V, generator=g) < 0.5
    lead[:2] = False
    return ByteTables(base_bytes=base, has_leading_space=lead, is_boundary=bound)


def stream(n: int, seed: int = 0, docs: int = 5) -> torch.Tensor:
    """Random tokens 2..V-1 with BOS (1) at a few document starts, the first at 0."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(2, V, (n,), generator=g)
    cuts = torch.randperm(n - 8, generator=g)[: docs - 1] + 4
    t[0], t[cuts] = 1, 1
    return t


def cfg(**ttt_kw) -> RunConfig:
    ev = EvalConfig(eval_seq_len=16, eval_stride=8, val_batch_seqs=4)
    return RunConfig(model=MCFG, eval=ev, ttt=TTTConfig(**ttt_kw))


def model(seed: int = 0):
    return perturbed_gpt(MCFG, True, seed)


def run(c: RunConfig, m, toks, tab):
    """The configured ttt.mode through the one scoring entry point -> (totals, ledger)."""
    s = score(m, toks, c.ttt.mode, c, tab, CPU)
    return s.result, s.ledger


def test_score_first_at_lr_zero_equals_sliding() -> None:
    toks, tab = stream(301), tables()
    c = cfg(mode="score_first", chunk_tokens=64, lr=0.0, epochs=2)
    ref = eval_sliding(model(), toks, 16, 8, 4, tab, CPU)
    r, led = run(c, model(), toks, tab)
    assert (r.tokens, r.bytes) == (ref.tokens, ref.bytes) == (300, r.bytes)
    assert r.nll_sum == pytest.approx(ref.nll_sum, rel=1e-12, abs=0)
    assert ttt.score_before_update(led) == [] and ttt.single_pass(led, 300) == []
    assert sum(e["kind"] == "update" for e in led.events) == 2 * 4  # 5 chunks, last not trained


def test_score_first_learns_and_stays_legal() -> None:
    toks, tab = stream(301).repeat(3)[:601], tables()  # repeated text: TTT should help
    c = cfg(mode="score_first", chunk_tokens=64, lr=0.05, epochs=2)
    ref = eval_sliding(model(), toks, 16, 8, 4, tab, CPU)
    r, led = run(c, model(), toks, tab)
    assert r.val_bpb < ref.val_bpb
    assert ttt.score_before_update(led) == [] and ttt.single_pass(led, 600) == []


def test_ledger_checks_catch_violations_and_roundtrip_json() -> None:
    led = ttt.Ledger()
    led.score([(0, 10)], 0)
    led.update([(0, 10)], 1)
    led.update([(9, 20)], 2)  # 10..19 not scored yet
    led.score([(10, 20)], 2)
    led.score([(15, 25)], 2)  # 15..19 twice
    back = ttt.Ledger.from_json(led.to_json())
    assert back.events == led.events
    v3 = ttt.score_before_update(back)
    assert len(v3) == 1 and "first 10" in v3[0]
    v4 = ttt.single_pass(back, 30)
    assert any("never scored" in v for v in v4) and any("more than once" in v for v in v4)


def test_prequant_fails_score_before_update_and_is_labelled(capsys) -> None:
    toks, tab = stream(301), tables()
    c = cfg(mode="prequant", prequant_epochs=2, prequant_seq_len=16, prequant_batch_seqs=4)
    led = ttt.Ledger()
    seen = []
    m = ttt.prequant_ttt(c, model(), toks, CPU, on_epoch=lambda e, net: seen.append(e), ledger=led)
    r, ev = run(replace(c, ttt=replace(c.ttt, mode=M.NONE)), m, toks, tab)
    led.events += ev.events
    assert seen == [1, 2]
    assert ttt.score_before_update(led) != []  # trained on val before scoring it
    assert ttt.single_pass(led, 300) == []
    assert "NON-RECORD" in capsys.readouterr().out


def test_prequant_after_inference_mode_still_trains() -> None:
    """#1550's poisoning case: the model was first run under inference_mode."""
    toks = stream(301)
    m = model()
    with torch.inference_mode():
        m(toks[None, :16])
    c = cfg(mode="prequant", prequant_epochs=1, prequant_seq_len=16, prequant_batch_seqs=4)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    out = ttt.prequant_ttt(c, m, toks, CPU)
    after = out.state_dict()
    assert out is not m
    assert not torch.equal(after["blocks.2.attn.c_q.weight"], before["blocks.2.attn.c_q.weight"])
    assert torch.equal(after["blocks.0.attn.c_q.weight"], before["blocks.0.attn.c_q.weight"])


def _lora_cfg(**kw) -> RunConfig:
    base = dict(mode="lora", lora_chunk=8, lora_rank=2, lora_lr=0.05, lora_targets="q,v,o")
    return cfg(**{**base, **kw})


def _lora_nll(c: RunConfig, toks: torch.Tensor):
    from pgolf import ttt_lora

    out = torch.zeros(toks.numel() - 1, dtype=torch.float64)
    led = ttt.Ledger()
    r = ttt_lora.lora_ttt(c, model(), toks, tables(), CPU, led, token_nll=out)
    return r, led, out


@pytest.mark.parametrize("init", ["reset", "warm"])
def test_lora_legal_and_documents_independent(init: str) -> None:
    from pgolf.ttt_lora import documents

    toks = stream(301, docs=6)
    c = _lora_cfg(lora_batch_docs=3, lora_init=init)
    r, led, nll = _lora_nll(c, toks)
    assert r.tokens == 300 and r.nll_sum == pytest.approx(float(nll.sum()), rel=1e-9)
    assert ttt.score_before_update(led) == [] and ttt.single_pass(led, 300) == []
    docs = sorted(documents(toks, 1), key=lambda d: (-(d[1] - d[0]), d[0]))  # queue order
    # the last document of the queue changes: every earlier one scores the same
    a, b = docs[-1]
    other = toks.clone()
    other[a + 1 : b + 1] = (other[a + 1 : b + 1] + 1 - 2) % (V - 2) + 2
    other[b] = toks[b]  # keep the next BOS
    _, _, nll2 = _lora_nll(c, other)
    keep = torch.ones(300, dtype=torch.bool)
    keep[max(a - 1, 0) : b] = False  # the changed document's targets, and the one before
    assert not torch.equal(nll2[a:b], nll[a:b])
    torch.testing.assert_close(nll2[keep], nll[keep], rtol=1e-5, atol=1e-6)
    if init == "reset":  # a document alone scores as it did batched with the others
        a, b = docs[1]
        _, _, alone = _lora_nll(c, toks[a : b + 1])
        torch.testing.assert_close(alone, nll[a:b], rtol=1e-5, atol=1e-6)


def test_lora_learns_on_repeated_text_and_phased_stays_legal() -> None:
    doc = stream(120, seed=3, docs=1)
    toks = torch.cat([doc, doc, doc, torch.tensor([1, 5])])
    ref = eval_sliding(model(), toks, 16, 8, 4, tables(), CPU)
    r, led, _ = _lora_nll(_lora_cfg(lora_lr=0.05, phased_docs=1, lr=0.05), toks)
    assert r.tokens == toks.numel() - 1
    assert ttt.score_before_update(led) == [] and ttt.single_pass(led, toks.numel() - 1) == []
    assert any(e["kind"] == "update" and len(e["ranges"]) == 4 for e in led.events)  # phase
    assert r.val_bpb < ref.val_bpb + 0.5  # sanity; LoRA gains are checked on real text


def test_env_mapping() -> None:
    base = RunConfig()
    assert apply_env(base, {"TTT_ENABLED": "1", "TTT_LR": "0.01"}).ttt.mode == "score_first"
    assert apply_env(base, {"TTT_ENABLED": "1", "TTT_LR": "0.01"}).ttt.lr == 0.01
    pre = replace(base, ttt=TTTConfig(mode="prequant"))
    got = apply_env(pre, {"TTT_ENABLED": "1", "TTT_LR": "0.0003", "TTT_EPOCHS": "4"}).ttt
    assert (got.mode, got.prequant_lr, got.prequant_epochs, got.lr) == ("prequant", 3e-4, 4, 0.005)
    assert apply_env(pre, {"TTT_ENABLED": "0"}).ttt.mode == "none"


# ----------------------------------------------------------------------------------------------
# 2 gloo ranks == 1 process


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    pdist.set_info(pdist.DistInfo(rank=rank, world_size=world))
    try:
        torch.set_num_threads(1)
        rows = []
        for c in _dist_cfgs():
            r, led = run(c, model(), stream(301, docs=6), tables())
            rows.append([r.nll_sum, r.tokens, r.bytes, ttt.single_pass(led, 300)])
        torch.save(rows, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _dist_cfgs() -> list[RunConfig]:
    return [
        cfg(mode="score_first", chunk_tokens=64, lr=0.05, epochs=2),
        _lora_cfg(lora_batch_docs=2),
    ]


@pytest.mark.dist
@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True)
    single = [run(c, model(), stream(301, docs=6), tables())[0] for c in _dist_cfgs()]
    for rank in range(2):
        rows = torch.load(tmp_path / f"rank{rank}.pt")
        for (nll, n, nb, sp), r in zip(rows, single, strict=True):
            assert (n, nb, sp) == (r.tokens, r.bytes, [])
            assert nll == pytest.approx(r.nll_sum, rel=1e-5)
