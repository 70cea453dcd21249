"""Phased score-first LoRA test-time training, the form of PR #1855 (after #1530, #1610, #1626,
#1736, #1767), legal under issue #1017's conditions. `ttt.mode=phased`; every knob is a
`TTTConfig.phased_*` / `global_*` field, named after the record's environment variables.

Documents are found by BOS (`pgolf.ttt_lora.documents`: document d owns the targets [s_d, s_{d+1}),
so its last target is the next document's BOS). Queue (`phased_order='length'`, the record's): the
documents sorted by length (shortest first, ties by position), cut into batches of
`phased_batch_docs`, the batches run longest first. That order reads every document's length (its
closing BOS) before scoring, so a change late in the stream can reorder earlier documents and move
their scores: the auditor's prefix-invariance test (C1, T1.1) fails on it; so does the record's
window of a document's last chunk (it ends at the document's end, i.e. reads where the next BOS is)
and its phase boundaries (min(documents, prefix), the document count). `phased_order= 'stream'` is
pgolf's causal variant: consecutive documents in stream order, windows ending at the nominal chunk
end, a short last batch padded with empty rows, A drawn per row from its own generator (no draw
depends on the batch size), boundaries from `phased_prefix_docs` alone; every score is then a
function of its prefix (the auditor's T1.1/T2.3 pass). One document per batch row; each is cut into
chunks of `phased_chunk` targets; chunk k of every row is scored in one forward whose window starts
at the document start or `phased_seq_len` targets before the chunk end, so no row sees another
document. The chunk's NLL enters the totals (detached) BEFORE the optimizer step that uses it; a
document's last chunk is never trained on.

Adapters (per batch row, per virtual-layer slot): rank-`phased_rank` LoRAs, output scaled by
`phased_alpha / phased_rank`, on Q and V (and K), bypass LoRAs beside the attention output (O)
and the MLP fed from their normed inputs, plus one on the head (logits before the softcap).
A ~ U(+-1/sqrt(in)) from a generator seeded `phased_seed`, B = 0. Between batches of full size
the adapters are reset: B zeroed, A kept (`phased_warm_a`) or re-drawn, optimizer moments
cleared; a batch of another size (the ragged one) gets fresh adapters. Optimizer: AdamW (betas
`phased_beta1/2`, eps 1e-10, decoupled weight decay `phased_wd`) at a constant `phased_lr`; the
loss is the sum over training rows of the mean NLL of the chunk's `phased_chunk` targets.

Phases: the first `phased_prefix_docs` documents of the queue are split into `phased_phases`
cumulative boundaries. After the batch that reaches a boundary, the documents scored so far
(ordered by batch index of the ascending sort, then row; cut at the boundary) are concatenated
(each with its closing BOS) and the base weights take cosine-lr SGD (`global_*`) over chunks of
`global_chunk_tokens` of that stream (the last chunk is skipped, as in the record): sequences
of `eval.eval_seq_len` tokens (the record's EVAL_SEQ_LEN), `global_batch_seqs` per step,
gradient clip, attention masked at BOS when `global_respect_docs` (the model's document mask
switched on for the SGD). Then the
adapters are rebuilt (fresh A). Only already-scored documents are read: Condition 3 holds and
the `Ledger` proves it. Batches go round-robin to ranks; the phase SGD splits its sequences
across ranks and averages gradients.

The record splits a document longer than `phased_seq_len` into segments of that length inside
its packed SGD rows; pgolf's SGD reads rows of `eval_seq_len` tokens of the concatenation
(a document crossing a row boundary is cut there). Per-document scores equal the record's
(benchmarks/parity_ttt_1855.py).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf import dist as pdist
from pgolf.bpb import ByteTables
from pgolf.config import RunConfig
from pgolf.evaluate import EvalResult, result_from_sums, score_batch
from pgolf.ttt_lora import documents

# ----------------------------------------------------------------------------------------------
# Adapters


def _uniform(shape: tuple[int, ...], bound: float, gen) -> Tensor:
    """U(-bound, bound) of `shape` [rows, ...]: one draw from `gen`, or (a list of generators)
    row r from gen[r], so a row's values do not depend on how many rows there are."""
    if isinstance(gen, list):
        return torch.stack(
            [torch.empty(shape[1:]).uniform_(-bound, bound, generator=g) for g in gen[: shape[0]]]
        )
    return torch.empty(shape).uniform_(-bound, bound, generator=gen)


class SlotLoRA(nn.Module):
    """Batched LoRA: row b maps x [B,T,in] to (x A_b^T) B_b^T * alpha / rank."""

    def __init__(
        self, rows: int, fin: int, fout: int, rank: int, alpha: float, gen, device
    ) -> None:
        super().__init__()
        self.bound, self.scale, self.gen = 1.0 / math.sqrt(fin), alpha / rank, gen
        self.A = nn.Parameter(_uniform((rows, rank, fin), self.bound, gen).to(device))
        self.B = nn.Parameter(torch.zeros(rows, fout, rank, device=device))

    def reset(self, warm_a: bool) -> None:
        with torch.no_grad():
            if not warm_a:
                self.A.copy_(_uniform(tuple(self.A.shape), self.bound, self.gen))
            self.B.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return ((x @ self.A.transpose(1, 2)) @ self.B.transpose(1, 2)) * self.scale


class Adapters(nn.Module):
    """Every LoRA of one batch; built in a fixed order (head, q, v, k, mlp, o), which fixes the
    generator's draws."""

    def __init__(self, model: nn.Module, rows: int, t, gen: torch.Generator) -> None:
        super().__init__()
        m, dev = model.cfg, next(model.parameters()).device
        D, slots = m.model_dim, len(model.virtual_layers())
        kv = m.num_kv_heads * (D // m.num_heads)

        def many(fout: int) -> nn.ModuleList:
            return nn.ModuleList(
                SlotLoRA(rows, D, fout, t.phased_rank, t.phased_alpha, gen, dev)
                for _ in range(slots)
            )

        self.head = SlotLoRA(rows, D, m.vocab_size, t.phased_rank, t.phased_alpha, gen, dev)
        self.q, self.v = many(D), many(kv)
        self.k = many(kv) if t.phased_k else None
        self.mlp = many(D) if t.phased_mlp else None
        self.o = many(D) if t.phased_o else None
        self.rows, self.slot = rows, 0

    def reset(self, warm_a: bool) -> None:
        for mod in self.modules():
            if isinstance(mod, SlotLoRA):
                mod.reset(warm_a)


class _SlotLinear(nn.Module):
    """A projection plus the LoRA of the current slot, fed the projection's own input."""

    def __init__(self, base: nn.Module, loras: nn.ModuleList, ad: Adapters) -> None:
        super().__init__()
        self.base, self.loras = base, loras
        self.ad = [ad]  # a list: not a submodule (no second registration of the adapters)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.loras[self.ad[0].slot](x)


class _Bypass(nn.Module):
    """A sub-layer plus the LoRA of the current slot fed the sub-layer's (normed) input;
    `sets_slot`: the attention call carries the virtual layer index (`vi`) and sets the slot."""

    def __init__(self, base: nn.Module, loras, ad: Adapters, sets_slot: bool) -> None:
        super().__init__()
        self.base, self.loras, self.sets_slot = base, loras, sets_slot
        self.ad = [ad]

    def forward(self, x: Tensor, **kw) -> Tensor:
        if self.sets_slot:
            self.ad[0].slot = int(kw["vi"])
        out = self.base(x, **kw)
        return out if self.loras is None else out + self.loras[self.ad[0].slot](x)


@contextmanager
def attached(model: nn.Module, ad: Adapters):
    """The model with `ad` wired in (Q/K/V projections, attention and MLP bypasses, the head);
    restored on exit."""
    saved = []
    try:
        for block in model.blocks:
            a = block.attn
            saved.append((block, a, block.mlp, a.c_q, a.c_k, a.c_v))
            a.c_q = _SlotLinear(a.c_q, ad.q, ad)
            a.c_v = _SlotLinear(a.c_v, ad.v, ad)
            if ad.k is not None:
                a.c_k = _SlotLinear(a.c_k, ad.k, ad)
            block.attn = _Bypass(a, ad.o, ad, sets_slot=True)
            block.mlp = _Bypass(block.mlp, ad.mlp, ad, sets_slot=False)
        model.logits = _head_logits(model, ad)
        yield
    finally:
        model.__dict__.pop("logits", None)
        for block, a, mlp, cq, ck, cv in saved:
            block.attn, block.mlp = a, mlp
            a.c_q, a.c_k, a.c_v = cq, ck, cv


def _head_logits(model: nn.Module, ad: Adapters):
    """GPT.logits with the head LoRA added before the softcap (set on the instance while
    attached, so `model(x)` and its forward hooks see the adapted distribution)."""

    def logits(h: Tensor) -> Tensor:
        w = model.tok_emb.weight if model.lm_head is None else model.lm_head.weight
        z = (F.linear(h, w.to(h.dtype)) + ad.head(h)).float()
        cap = model.cfg.logit_softcap
        return cap * torch.tanh(z / cap) if cap > 0 else z

    return logits


def _optimizer(ad: Adapters, t) -> torch.optim.Optimizer:
    if t.phased_optimizer == "sgd":
        return torch.optim.SGD(
            ad.parameters(), lr=t.phased_lr, momentum=t.phased_beta1, weight_decay=t.phased_wd
        )
    return torch.optim.AdamW(
        ad.parameters(),
        lr=t.phased_lr,
        betas=(t.phased_beta1, t.phased_beta2),
        eps=1e-10,
        weight_decay=t.phased_wd,
    )


# ----------------------------------------------------------------------------------------------
# Queue and phases


def queue(docs: list[tuple[int, int]], batch_docs: int, order: str = "length") -> list:
    """[(batch index, [(s, e), ...]), ...] in processing order. 'length' (the record's): the
    documents sorted by length, batched, longest batch first, the index that of the ascending
    sort; 'stream': consecutive documents in stream order."""
    if order == "stream":
        return list(enumerate(docs[i : i + batch_docs] for i in range(0, len(docs), batch_docs)))
    asc = sorted(docs, key=lambda d: d[1] - d[0])  # stable: ties keep stream order
    batches = [asc[i : i + batch_docs] for i in range(0, len(asc), batch_docs)]
    indexed = list(enumerate(batches))
    indexed.sort(key=lambda ib: -max(e - s for s, e in ib[1]))
    return indexed


def boundaries(n_docs: int, prefix_docs: int, phases: int, clamp: bool = True) -> list[int]:
    """Cumulative document counts after which each global phase runs (`clamp`: the record's
    min(n_docs, prefix_docs), which reads the number of documents up front)."""
    prefix = max(0, min(n_docs, prefix_docs) if clamp else prefix_docs)
    return [prefix * (i + 1) // max(1, phases) for i in range(max(1, phases))] if prefix else []


# ----------------------------------------------------------------------------------------------
# The global (phase) SGD


@contextmanager
def _doc_mask(model: nn.Module, on: bool):
    cfg = model.cfg
    model.cfg = replace(cfg, doc_mask=on)
    try:
        yield
    finally:
        model.cfg = cfg


def global_sgd(model: nn.Module, stream: Tensor, t, seq_len: int, device, amp) -> int:
    """Cosine SGD on the token stream `stream` (already-scored documents); returns the steps."""
    total = stream.numel() - 1
    C = t.global_chunk_tokens
    n_chunks = -(-total // C)
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=t.global_lr, momentum=t.global_momentum)
    di, steps = pdist.info(), 0
    warm = max(0, min(t.global_warmup_chunks, n_chunks - 1))
    with _doc_mask(model, t.global_respect_docs):
        for ci in range(n_chunks - 1):  # the last chunk is skipped (as the record does)
            if t.global_epochs <= 0:
                break
            cs, ce = ci * C, min((ci + 1) * C, total)
            n_seq = (ce - cs) // seq_len
            if n_seq <= 0:
                continue
            if warm > 0 and ci < warm:
                frac = ci / max(warm - 1, 1)
                lr = t.global_warmup_start_lr + (t.global_lr - t.global_warmup_start_lr) * frac
            else:
                k = max(ci - warm, 0) / max(n_chunks - 1 - warm, 1)
                lr = t.global_lr * 0.5 * (1.0 + math.cos(math.pi * k))
            for g in opt.param_groups:
                g["lr"] = lr
            lo = n_seq * di.rank // di.world_size
            hi = n_seq * (di.rank + 1) // di.world_size
            model.train()
            bsz = t.global_batch_seqs
            share = -(-n_seq // di.world_size)  # the largest rank share of sequences
            n_steps = -(-share // bsz)
            for _ in range(t.global_epochs):
                for k in range(n_steps):  # every rank takes every step (collectives match)
                    bs, be = min(lo + k * bsz, hi), min(lo + (k + 1) * bsz, hi)
                    opt.zero_grad(set_to_none=True)
                    if be > bs:
                        local = stream[cs + bs * seq_len : cs + be * seq_len + 1].to(device)
                        x, y = local[:-1].view(-1, seq_len), local[1:].view(-1, seq_len)
                        with torch.autocast(device.type, amp, enabled=amp is not None):
                            logits = model(x)
                        F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).backward()
                    if di.world_size > 1:  # a rank with no sequence still joins the mean
                        for p in params:
                            if p.grad is None:
                                p.grad = torch.zeros_like(p)
                            pdist.all_reduce_(p.grad, "avg")
                    if t.global_grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(params, t.global_grad_clip)
                    opt.step()
                    steps += 1
            model.eval()
            pdist.log0(f"ttt_phased_sgd chunk:{ci + 1}/{n_chunks} lr:{lr:.6f}", console=False)
    for p in params:
        p.requires_grad_(False)
    return steps


# ----------------------------------------------------------------------------------------------
# The evaluation


def phased_ttt(
    cfg: RunConfig,
    model: nn.Module,
    val_tokens: Tensor,
    tables: ByteTables,
    device: torch.device,
    ledger,
    token_nll: Tensor | None = None,
    tilt=None,
) -> EvalResult:
    """PR #1855's phased LoRA TTT (module docstring), same calling shape as
    `pgolf.ttt_lora.lora_ttt`; `ledger` a pgolf.ttt.Ledger; `token_nll` (float64 [N], optional)
    receives this rank's per-target NLL; `tilt` (optional) a `pgolf.ngram_tilt.Tilt`."""
    t = cfg.ttt
    L = t.phased_seq_len or cfg.eval.eval_seq_len
    chunk = t.phased_chunk
    if not 1 <= chunk <= L:
        raise ValueError(f"ttt.phased_chunk {chunk} must be in 1..context ({L})")
    amp = torch.bfloat16 if device.type == "cuda" else None
    tokens = torch.as_tensor(val_tokens).to(torch.int64).cpu()
    docs = documents(tokens, cfg.model.bos_id)
    q = queue(docs, t.phased_batch_docs, t.phased_order)
    causal = t.phased_order == "stream"
    bounds = boundaries(len(docs), t.phased_prefix_docs, t.phased_phases, clamp=not causal)
    di = pdist.info()
    tab = tables.to(device)
    acc = torch.zeros(3, dtype=torch.float64, device=device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    gen: torch.Generator | list[torch.Generator] = torch.Generator().manual_seed(t.phased_seed)
    if causal:  # one stream per row: a row's draws do not depend on the batch size
        gen = [
            torch.Generator().manual_seed(t.phased_seed * 1_000_003 + r)
            for r in range(t.phased_batch_docs)
        ]
    ad = Adapters(model, t.phased_batch_docs, t, gen)
    phase, done, scored, t0, sgd_s = 0, 0, [], time.perf_counter(), 0.0
    pdist.log0(
        f"ttt_phased:start docs:{len(docs)} batches:{len(q)} "
        f"prefix_docs:{bounds[-1] if bounds else 0} phases:{len(bounds)} boundaries:{bounds} "
        f"rank:{t.phased_rank} chunk:{chunk} context:{L}"
    )
    for qi, (bidx, batch) in pdist.progress(enumerate(q), len(q), "ttt phased batches"):
        version = qi * 10**6
        if qi % di.world_size == di.rank:
            rows = batch
            if causal and len(batch) < ad.rows:  # empty rows: no draw depends on the count
                rows = batch + [(0, 0)] * (ad.rows - len(batch))
            if len(rows) == ad.rows:
                ad.reset(t.phased_warm_a)
                cur, fresh = ad, False
            else:
                cur, fresh = Adapters(model, len(batch), t, gen), True
            n_ev = len(ledger.events)
            _run_batch(
                model,
                cur,
                rows,
                tokens,
                t,
                L,
                tab,
                device,
                amp,
                acc,
                ledger,
                version,
                token_nll,
                tilt,
            )
            for ev in ledger.events[n_ev:]:
                ev["order"] = qi
            pdist.log0(
                f"ttt_phased:batch {qi + 1}/{len(q)} docs:{len(batch)} "
                f"len:{min(e - s for s, e in batch)}-{max(e - s for s, e in batch)} "
                f"reset:{'fresh' if fresh else 'B' if t.phased_warm_a else 'AB'} "
                f"running_loss:{float(acc[0]) / max(float(acc[1]), 1):.4f} "
                f"time:{time.perf_counter() - t0:.1f}s",
                console=False,
            )
        if phase >= len(bounds):
            continue
        scored += [(bidx, row, s, e) for row, (s, e) in enumerate(batch)]
        done += len(batch)
        if done < bounds[phase]:
            continue
        use = sorted(scored)[: bounds[phase]]
        stream = torch.cat([tokens[:0], *(tokens[s : e + 1] for _, _, s, e in use)])
        ts = time.perf_counter()
        steps = global_sgd(model, stream, t, cfg.eval.eval_seq_len, device, amp)
        sgd_s += time.perf_counter() - ts
        if di.is_main:  # one copy of this global event, ordered after batch qi's scores
            ledger.update([(s, e) for _, _, s, e in use], version + 999_999)
            ledger.events[-1]["order"] = qi + 0.5
        phase += 1
        pdist.log0(
            f"ttt_phased:phase {phase}/{len(bounds)} scored_docs:{done} sgd_docs:{len(use)} "
            f"sgd_tokens:{stream.numel()} sgd_steps:{steps} "
            f"sgd_time:{time.perf_counter() - ts:.1f}s time:{time.perf_counter() - t0:.1f}s"
        )
        ad = Adapters(model, t.phased_batch_docs, t, gen)  # fresh A after every phase
    pdist.all_reduce_(acc, "sum")
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    nll, n, nb = acc.tolist()
    if int(n) != tokens.numel() - 1:
        raise RuntimeError(f"ttt_phased: scored {int(n)} targets, expected {tokens.numel() - 1}")
    pdist.log0(
        f"ttt_phased:done phases:{phase} sgd_time:{sgd_s:.1f}s time:{time.perf_counter() - t0:.1f}s"
    )
    return result_from_sums(nll, int(n), int(nb), time.perf_counter() - t0)


def _run_batch(
    model, ad, batch, tokens, t, L, tab, device, amp, acc, ledger, version, token_nll, tilt
):
    """Score-then-step every chunk of one batch of documents with adapters `ad`."""
    chunk, nominal = t.phased_chunk, t.phased_order == "stream"
    s_doc = np.array([s for s, _ in batch])
    pred = np.array([e - s for s, e in batch])
    n_ch = -(-pred // chunk)
    opt = _optimizer(ad, t)
    n_tok = tokens.numel()
    with attached(model, ad):
        for ci in range(int(n_ch.max())):
            live = ci < n_ch
            last = ci == n_ch - 1
            c_end = np.where(last, pred, (ci + 1) * chunk)
            # the record's window ends at the chunk's end (the document's end for its last
            # chunk, which reads the document's length); 'stream' ends it at the nominal one
            w_start = np.maximum(
                0, (np.full_like(c_end, (ci + 1) * chunk) if nominal else c_end) - L
            )
            c_off = np.where(live, ci * chunk - w_start, 0)
            c_len = np.where(live, c_end - ci * chunk, 0)
            w_len = np.where(live, c_end - w_start, 0)
            ctx = int(min((ci + 1) * chunk, L))
            start = torch.from_numpy(np.where(live, s_doc + w_start, 0))
            col = torch.arange(ctx + 1)
            at = (start[:, None] + col).clamp_(max=n_tok - 1)
            valid = col[None, :ctx] < torch.from_numpy(w_len)[:, None]
            g = tokens[at]
            x = torch.where(valid, g[:, :ctx], 0).to(device)
            y = torch.where(valid, g[:, 1:], 0).to(device)
            lo, hi = torch.from_numpy(c_off), torch.from_numpy(c_off + c_len)
            nll, mask, nbytes = score_batch(model, x, y, lo, hi, tab, amp, at[:, 1:], tilt=tilt)
            m = mask.double()
            acc[0] += (nll.detach().double() * m).sum()
            acc[1] += m.sum()
            acc[2] += (nbytes.double() * m).sum()
            if token_nll is not None:
                tgt = (at[:, :ctx].to(device))[mask]
                token_nll.index_add_(0, tgt.cpu(), nll.detach()[mask].double().cpu())
            a_t, b_t = s_doc + ci * chunk, s_doc + c_end
            ledger.score(
                [(int(a), int(b)) for a, b, v in zip(a_t, b_t, live, strict=True) if v],
                version + ci,
            )
            train = ci < n_ch - 1
            if not train.any():
                continue
            off = ci * chunk - max(0, (ci + 1) * chunk - L)
            w = torch.from_numpy(train).to(device, nll.dtype)
            for gi in range(t.phased_grad_steps):
                if gi > 0:
                    nll, _, _ = score_batch(model, x, y, lo, hi, tab, amp, at[:, 1:])
                per_doc = nll[:, off : off + chunk].mean(dim=-1)
                opt.zero_grad(set_to_none=True)
                (per_doc * w).sum().backward()
                opt.step()
            # consumed: each training row's window inputs (its own BOS excluded, read up front)
            # and its targets up to the chunk end
            rng = [
                (int(s + ws) if ws == 0 else int(s + ws) - 1, int(s + ce))
                for s, ws, ce, tr in zip(s_doc, w_start, c_end, train, strict=True)
                if tr
            ]
            ledger.update(rng, version + ci + 1)
