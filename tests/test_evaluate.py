"""Tests for pgolf.evaluate: window plans, plain/sliding eval, bpb, n-gram references, gloo."""

from __future__ import annotations

import math
import os
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pgolf import dist as pdist
from pgolf.bpb import ByteTables
from pgolf.evaluate import (
    EvalResult,
    eval_plain,
    eval_plain_sliding,
    eval_sliding,
    format_eval_line,
    plain_windows,
    sliding_windows,
)
from pgolf.lab.data.references import bigram_bpb, unigram_bpb

V = 32
CPU = torch.device("cpu")


class CumMean(nn.Module):
    """Tiny causal LM stand-in: embedding, running mean over the prefix, linear head."""

    def __init__(self, vocab: int = V, dim: int = 16, reverse: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)
        self.reverse = reverse  # reverse=True looks at the future: a deliberately leaky model
        self.seen: list[tuple[bool, bool, bool]] = []

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.seen.append(
            (self.training, torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        )
        h = self.emb(idx)
        if self.reverse:
            h = h.flip(1)
        n = torch.arange(1, idx.size(1) + 1, dtype=h.dtype)[:, None]
        h = h.cumsum(1) / n
        if self.reverse:
            h = h.flip(1)
        return 10.0 * torch.tanh(self.head(torch.tanh(3.0 * h)) / 10.0)


class ConstLogits(nn.Module):
    """Same logits at every position: NLL of a target depends only on the target id."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.b = nn.Parameter(logits.clone())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.b.expand(*idx.shape, -1).clone()


def make_tables(vocab: int = V, seed: int = 0) -> ByteTables:
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 5, (vocab,), generator=g, dtype=torch.int32)
    lead = torch.rand(vocab, generator=g) < 0.5
    bound = torch.zeros(vocab, dtype=torch.bool)
    bound[:2] = True
    base[:2] = 0
    lead[:2] = False
    return ByteTables(base_bytes=base, has_leading_space=lead, is_boundary=bound)


def make_tokens(n: int, seed: int = 0, vocab: int = V) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g, dtype=torch.int64)


def make_model(seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return CumMean(**kw)


def make_gpt(seed: int = 0) -> nn.Module:
    """The real GPT, tiny, every feature on, parameters perturbed so zero-init paths matter."""
    from helpers import perturbed_gpt

    from pgolf.config import ModelConfig

    cfg = ModelConfig(
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
    return perturbed_gpt(cfg, True, seed)


MODELS = {"cummean": make_model, "gpt": make_gpt}


def naive_token_nll(
    model: nn.Module, toks: torch.Tensor, seq_len: int, stride: int
) -> torch.Tensor:
    """Per target t: run the model on the one window the rule assigns to t (no batching/padding).

    The window start is the smallest multiple of `stride` whose window reaches past t (0 for
    t < seq_len); the input is that window truncated at the end of the stream.
    """
    n = toks.numel() - 1
    out = torch.empty(n, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        for t in range(n):
            k = 0 if t < seq_len else -(-(t - seq_len + 1) // stride)
            ws = k * stride
            x = toks[ws : min(ws + seq_len, n)][None]
            logp = F.log_softmax(model(x).float()[0, t - ws], -1)
            out[t] = -logp[toks[t + 1]].double()
    return out


# ----------------------------------------------------------------------------------------------
# Window plans


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 300), seq_len=st.integers(1, 40), data=st.data())
def test_sliding_plan_tiles_targets_exactly_once(n: int, seq_len: int, data) -> None:
    stride = data.draw(st.integers(1, seq_len))
    starts, lo, hi = sliding_windows(n, seq_len, stride)
    count = np.zeros(n, dtype=np.int64)
    for k, (s, a, b) in enumerate(zip(starts.tolist(), lo.tolist(), hi.tolist(), strict=True)):
        assert s == k * stride and 0 <= a < b <= seq_len and s + b <= n
        count[s + a : s + b] += 1
        if k > 0:  # every later target sees at least seq_len - stride tokens of context
            assert a == seq_len - stride
    assert (count == 1).all()


def test_plain_plan_and_errors() -> None:
    starts, lo, hi = plain_windows(10, 4)
    assert starts.tolist() == [0, 4, 8] and lo.tolist() == [0, 0, 0] and hi.tolist() == [4, 4, 2]
    for n, L, s in ((10, 4, 0), (10, 4, 5), (0, 4, 4), (10, 0, 1)):
        with pytest.raises(ValueError):
            sliding_windows(n, L, s)


# ----------------------------------------------------------------------------------------------
# Model evals


@pytest.mark.parametrize("n_seq,batch", [(6, 4), (5, 2), (3, 8)])
def test_sliding_at_full_stride_equals_plain(n_seq: int, batch: int) -> None:
    L = 8
    toks, tables, model = make_tokens(n_seq * L + 1, seed=n_seq), make_tables(), make_model()
    p = eval_plain(model, toks, L, batch, tables, CPU)
    s = eval_sliding(model, toks, L, L, batch, tables, CPU)
    assert (p.nll_sum, p.tokens, p.bytes) == (s.nll_sum, s.tokens, s.bytes)
    assert p.tokens == n_seq * L and p.val_loss == s.val_loss and p.val_bpb == s.val_bpb


@pytest.mark.parametrize("n,L,stride", [(100, 16, 4), (97, 16, 5), (10, 16, 4), (64, 8, 8)])
def test_sliding_scores_each_target_once(n: int, L: int, stride: int) -> None:
    toks = make_tokens(n, seed=1)
    model = ConstLogits(torch.zeros(V))  # NLL = ln V for every target
    per = torch.zeros(n - 1, dtype=torch.float64)
    r = eval_sliding(model, toks, L, stride, 3, make_tables(), CPU, token_nll=per)
    assert r.tokens == n - 1
    torch.testing.assert_close(per, torch.full_like(per, math.log(V)), rtol=0, atol=1e-6)
    assert r.val_loss == pytest.approx(math.log(V), abs=1e-6)


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("n,L,stride,batch", [(81, 16, 4, 5), (60, 12, 5, 3), (9, 12, 3, 2)])
def test_sliding_matches_naive_reference(
    kind: str, n: int, L: int, stride: int, batch: int
) -> None:
    toks, tables, model = make_tokens(n, seed=2), make_tables(), MODELS[kind](seed=3)
    per = torch.zeros(n - 1, dtype=torch.float64)
    r = eval_sliding(model, toks, L, stride, batch, tables, CPU, token_nll=per)
    ref = naive_token_nll(model, toks, L, stride)
    torch.testing.assert_close(per, ref, rtol=1e-5, atol=1e-5)
    assert r.nll_sum == pytest.approx(float(ref.sum()), rel=1e-6)
    # sliding differs from plain (more context), so the comparison is not vacuous
    if n > L:
        plain_ref = naive_token_nll(model, toks, L, L)
        assert not torch.allclose(plain_ref, ref, atol=1e-4)


@pytest.mark.parametrize("kind", list(MODELS))
def test_sliding_is_causal(kind: str) -> None:
    n, L, stride = 70, 16, 4
    toks, tables = make_tokens(n, seed=4), make_tables()

    def per_token(model: nn.Module, t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(n - 1, dtype=torch.float64)
        eval_sliding(model, t, L, stride, 4, tables, CPU, token_nll=out)
        return out

    for leaky in (False, True) if kind == "cummean" else (False,):
        model = make_model(seed=5, reverse=True) if leaky else MODELS[kind](seed=5)
        base = per_token(model, toks)
        changed = False
        for t in (0, 15, 16, 33, 60):
            alt = toks.clone()
            alt[t + 2 :] = (alt[t + 2 :] + 1 + make_tokens(n - t - 2, seed=t, vocab=V - 1)) % V
            diff = (per_token(model, alt)[: t + 1] - base[: t + 1]).abs().max().item()
            changed |= diff > 1e-9
            if not leaky:
                assert diff <= 1e-9, f"target {t} changed by {diff}"
        assert changed == leaky  # the check does catch a model that looks ahead (cummean only)


def _forwards(model: nn.Module) -> list[int]:
    """Rows of every forward call on `model` (a hook that stays on)."""
    rows: list[int] = []
    model.register_forward_hook(lambda m, a, out: rows.append(a[0].size(0)))
    return rows


# targets: 6 x 16 (no tail); 6 x 16 + 3 (a plain tail window too short to be a sliding one);
# 6 x 16 + 13 (a tail that is one); stride = seq_len (plain and sliding are the same windows)
@pytest.mark.parametrize("n,L,stride", [(97, 16, 4), (100, 16, 4), (110, 16, 8), (75, 16, 16)])
@pytest.mark.parametrize("kind", list(MODELS))
def test_one_pass_gives_plain_and_sliding_as_the_two_passes(
    kind: str, n: int, L: int, stride: int
) -> None:
    toks, tables, batch = make_tokens(n, seed=8), make_tables(), 5
    model = MODELS[kind](seed=8)
    p, s = (
        eval_plain(model, toks, L, batch, tables, CPU),
        eval_sliding(model, toks, L, stride, batch, tables, CPU),
    )
    rows = _forwards(model)
    p1, s1 = eval_plain_sliding(model, toks, L, stride, batch, tables, CPU)
    assert (p1.tokens, p1.bytes, s1.tokens, s1.bytes) == (p.tokens, p.bytes, s.tokens, s.bytes)
    assert p1.nll_sum == pytest.approx(p.nll_sum, rel=1e-9, abs=0)
    assert p1.val_bpb == pytest.approx(p.val_bpb, rel=1e-9, abs=0)
    assert s1.nll_sum == s.nll_sum and s1.val_bpb == s.val_bpb  # the sliding batches unchanged
    # one pass: the sliding windows, plus the plain tail window when it starts past them
    ps, ss = plain_windows(n - 1, L)[0], sliding_windows(n - 1, L, stride)[0]
    tail = int(ps[-1] > ss[-1])
    assert tail == (n == 100)
    assert len(rows) == -(-(ss.numel() + tail) // batch)
    assert len(rows) < -(-ss.numel() // batch) + -(-ps.numel() // batch)


def test_one_pass_falls_back_to_two_when_the_stride_does_not_divide_the_length() -> None:
    toks, tables, model = make_tokens(90, seed=9), make_tables(), make_model(seed=9)
    p, s = (
        eval_plain(model, toks, 16, 4, tables, CPU),
        eval_sliding(model, toks, 16, 5, 4, tables, CPU),
    )
    rows = _forwards(model)
    p1, s1 = eval_plain_sliding(model, toks, 16, 5, 4, tables, CPU)
    assert (p1.nll_sum, p1.tokens, p1.bytes) == (p.nll_sum, p.tokens, p.bytes)
    assert (s1.nll_sum, s1.tokens, s1.bytes) == (s.nll_sum, s.tokens, s.bytes)
    n_p, n_s = plain_windows(89, 16)[0].numel(), sliding_windows(89, 16, 5)[0].numel()
    assert len(rows) == -(-n_p // 4) + -(-n_s // 4)


def test_eval_mode_no_grad_and_restore() -> None:
    model = make_model()
    model.train()
    toks = make_tokens(33)
    eval_plain(model, toks, 8, 2, make_tables(), CPU)
    eval_sliding(model, toks, 8, 2, 2, make_tables(), CPU)
    assert model.seen and all(s == (False, False, False) for s in model.seen)
    assert model.training
    model.eval()
    eval_plain(model, toks, 8, 2, make_tables(), CPU)
    assert not model.training
    # the model still trains afterwards (no inference tensors left behind)
    model.train()
    F.cross_entropy(model(toks[None, :-1])[0], toks[1:]).backward()
    assert model.emb.weight.grad is not None


def test_padding_and_autocast_do_not_change_scores() -> None:
    toks, tables, model = make_tokens(75, seed=6), make_tables(), make_model(seed=6)
    a = eval_sliding(model, toks, 16, 4, 5, tables, CPU)
    b = eval_sliding(model, toks, 16, 4, 5, tables, CPU, pad_batches=False)
    assert (a.tokens, a.bytes) == (b.tokens, b.bytes)
    assert a.nll_sum == pytest.approx(b.nll_sum, rel=1e-9)
    c = eval_sliding(model, toks, 16, 4, 5, tables, CPU, autocast_dtype=torch.bfloat16)
    assert (c.tokens, c.bytes) == (a.tokens, a.bytes)
    assert c.val_loss == pytest.approx(a.val_loss, rel=2e-2)


def test_bpb_hand_computed() -> None:
    # vocab 4: 0 = BOS (boundary, 0 bytes); 1 = "▁a" (1 + space); 2 = "bc"; 3 = "▁de" (2 + space)
    tables = ByteTables(
        base_bytes=torch.tensor([0, 1, 2, 2], dtype=torch.int32),
        has_leading_space=torch.tensor([False, True, False, True]),
        is_boundary=torch.tensor([True, False, False, False]),
    )
    toks = torch.tensor([0, 1, 2, 3, 0, 3, 1, 2, 2])
    # bytes of targets 1,2,3,0,3,1,2,2 given previous 0,1,2,3,0,3,1,2:
    # 1 after BOS: 1; 2: 2; 3 after 2: 3; BOS: 0; 3 after BOS: 2; 1 after 3: 2; 2: 2; 2: 2 -> 14
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    model = ConstLogits(logits)
    nll = -math.log(0.2) * 2 - math.log(0.3) * 3 - math.log(0.4) * 2 - math.log(0.1)
    for r in (
        eval_plain(model, toks, 4, 2, tables, CPU),
        eval_sliding(model, toks, 4, 1, 3, tables, CPU),
    ):
        assert (r.tokens, r.bytes) == (8, 14)
        assert r.nll_sum == pytest.approx(nll, rel=1e-6)
        assert r.val_loss == pytest.approx(nll / 8, rel=1e-6)
        assert r.val_bpb == pytest.approx(nll / math.log(2) / 14, rel=1e-6)


def test_format_eval_line() -> None:
    r = EvalResult(
        val_loss=2.734346712, val_bpb=1.058555271, nll_sum=1.0, tokens=1, bytes=1, seconds=109.7874
    )
    assert format_eval_line("final_int6_sliding_window", r, "stride:64") == [
        "final_int6_sliding_window val_loss:2.7343 val_bpb:1.0586 stride:64 eval_time:109787ms",
        "final_int6_sliding_window_exact val_loss:2.73434671 val_bpb:1.05855527",
    ]
    assert format_eval_line("x", r)[0] == "x val_loss:2.7343 val_bpb:1.0586 eval_time:109787ms"


# ----------------------------------------------------------------------------------------------
# n-gram references


def ref_bytes(val: list[int], tables: ByteTables) -> int:
    base, lead, bound = (
        t.tolist() for t in (tables.base_bytes, tables.has_leading_space, tables.is_boundary)
    )
    return sum(base[y] + int(lead[y] and not bound[p]) for p, y in zip(val[:-1], val[1:]))


def ref_unigram_p(train: list[int], vocab: int) -> dict[int, float]:
    c = Counter(train)
    return {w: (c[w] + 0.5) / (len(train) + 0.5 * vocab) for w in range(vocab)}


def test_unigram_and_bigram_match_dict_reference() -> None:
    vocab, tables = 12, make_tables(12, seed=7)
    g = torch.Generator().manual_seed(7)
    # skewed stream with some ids never seen in training (11 never; 10 never as a history)
    train = torch.multinomial(torch.linspace(1.0, 0.05, 10), 500, True, generator=g).tolist()
    val = torch.randint(0, vocab, (200,), generator=g).tolist() + [10, 11, 10, 0]
    train_l, val_l = train + [10], val
    nbytes = ref_bytes(val_l, tables)
    p_uni = ref_unigram_p(train_l, vocab)
    uni_nll = -sum(math.log(p_uni[y]) for y in val_l[1:])
    pair = Counter(zip(train_l[:-1], train_l[1:]))
    hist = Counter(train_l[:-1])
    types = Counter(h for h, _ in pair)
    bi_nll = 0.0
    for h, w in zip(val_l[:-1], val_l[1:]):
        if hist[h] == 0:
            p = p_uni[w]
        else:
            p = (pair[(h, w)] + types[h] * p_uni[w]) / (hist[h] + types[h])
        bi_nll -= math.log(p)
    uni = unigram_bpb(torch.tensor(train_l), torch.tensor(val_l), tables, vocab)
    bi = bigram_bpb(np.array(train_l, dtype=np.uint16), torch.tensor(val_l), tables, vocab)
    assert uni == pytest.approx(uni_nll / math.log(2) / nbytes, rel=1e-10)
    assert bi == pytest.approx(bi_nll / math.log(2) / nbytes, rel=1e-10)
    # on in-distribution val text the bigram beats the unigram
    val_in = torch.tensor(train_l[:300])
    assert bigram_bpb(torch.tensor(train_l), val_in, tables, vocab) < unigram_bpb(
        torch.tensor(train_l), val_in, tables, vocab
    )
    with pytest.raises(ValueError):
        unigram_bpb(torch.tensor(train_l), torch.tensor([0, vocab]), tables, vocab)


def test_bigram_is_fast_on_millions_of_tokens() -> None:
    import time

    vocab = 1024
    g = torch.Generator().manual_seed(8)
    train = torch.randint(0, vocab, (3_000_000,), generator=g).numpy().astype(np.uint16)
    val = torch.randint(0, vocab, (100_001,), generator=g)
    tables = make_tables(vocab, seed=8)
    t0 = time.perf_counter()
    bigram_bpb(train, val, tables, vocab)
    unigram_bpb(train, val, tables, vocab)
    assert time.perf_counter() - t0 < 4.0  # < 2 s each on a quiet core; margin for a busy box


# ----------------------------------------------------------------------------------------------
# Distributed: 2 gloo ranks give the same totals as 1 process


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    pdist.set_info(pdist.DistInfo(rank=rank, world_size=world))
    try:
        toks, tables, model = make_tokens(203, seed=9), make_tables(), make_model(seed=9)
        res = [
            eval_plain(model, toks, 16, 3, tables, CPU),
            eval_sliding(model, toks, 16, 5, 3, tables, CPU),
            *eval_plain_sliding(model, toks, 16, 4, 3, tables, CPU),  # one pass, sharded
        ]
        rows = [[r.nll_sum, r.tokens, r.bytes] for r in res]
        torch.save(rows, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_two_gloo_ranks_match_one_process(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_dist_worker, args=(2, str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True)
    toks, tables, model = make_tokens(203, seed=9), make_tables(), make_model(seed=9)
    single = [
        eval_plain(model, toks, 16, 3, tables, CPU),
        eval_sliding(model, toks, 16, 5, 3, tables, CPU),
        eval_plain(model, toks, 16, 3, tables, CPU),
        eval_sliding(model, toks, 16, 4, 3, tables, CPU),
    ]
    for rank in range(2):
        rows = torch.load(tmp_path / f"rank{rank}.pt")
        for (nll, n, nb), r in zip(rows, single, strict=True):
            assert (n, nb) == (r.tokens, r.bytes)
            assert nll == pytest.approx(r.nll_sum, rel=1e-9)
    assert single[1].tokens == 202
