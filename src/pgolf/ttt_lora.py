"""Per-document LoRA test-time training (PR #1530's batched form, after the 2026-03-17 LoRA TTT
record; phased global SGD of PRs #1610/#1626), legal under issue #1017's conditions.

Documents are found by BOS (`model.bos_id`; the shards write [BOS] + tokens per document, spec
section 1.5): document d owns the targets [s_d, s_{d+1}), so the BOS that opens the next
document is predicted by the last position of this one. Documents are sorted by length (longest
first) and processed in batches of `lora_batch_docs`, one document per row. Each document is
cut into chunks of `lora_chunk` targets; chunk k of every row is scored in one forward whose
window starts at max(doc start, chunk end - eval_seq_len), so no row ever sees another
document's tokens on its left and SmearGate's previous token at a window start is zero: a
document's score does not depend on its batch neighbours and no attention mask is needed.
The chunk's NLL is added to the totals (detached) BEFORE the optimizer step that uses it, and
the last chunk of a document is never trained on.

Adapters: rank-`lora_rank` A/B per row (A seeded and identical for every row, B zero) added to
the chosen projections (`lora_targets`: q, k, v, o, fc, mlp_proj) by swapping those
`CastedLinear` modules for `LoRALinear` wrappers for the duration of the call. Adam (betas
0.9/0.95), one step per chunk; per-row losses are means summed over rows, so rows never share
gradient. `lora_init='reset'` starts every batch from the seed init; 'warm' starts it from the
mean of the previous batch's adapters (earlier in the queue, already fully scored).

`phased_docs` > 0: once that many documents (in queue order) are fully scored, the adapters are
removed, the base weights take one SGD epoch (`lr`, `momentum`, `grad_clip`) on exactly those
documents, and the queue resumes. Batches go round-robin to ranks; totals are all-reduced.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf import dist as pdist
from pgolf.bpb import ByteTables
from pgolf.config import RunConfig
from pgolf.evaluate import EvalResult, result_from_sums, score_batch

TARGETS = {
    "q": ("attn", "c_q"),
    "k": ("attn", "c_k"),
    "v": ("attn", "c_v"),
    "o": ("attn", "proj"),
    "fc": ("mlp", "fc"),
    "mlp_proj": ("mlp", "proj"),
}


class LoRALinear(nn.Module):
    """base(x) + (x A_b^T) B_b^T for batch row b; A [R,r,in], B [R,out,r] (R rows = documents)."""

    def __init__(self, base: nn.Module, rows: int, rank: int, seed: int) -> None:
        super().__init__()
        self.base = base
        w = base.weight
        g = torch.Generator().manual_seed(seed)
        a0 = torch.randn(rank, w.size(1), generator=g) / math.sqrt(w.size(1))
        self.a = nn.Parameter(a0.to(w.device).expand(rows, -1, -1).clone())
        self.b = nn.Parameter(torch.zeros(rows, w.size(0), rank, device=w.device))

    def forward(self, x: Tensor) -> Tensor:
        delta = torch.bmm(
            torch.bmm(x, self.a.to(x.dtype).transpose(1, 2)), self.b.to(x.dtype).transpose(1, 2)
        )
        return self.base(x) + delta


def attach(model: nn.Module, targets: list[str], rows: int, rank: int) -> list[LoRALinear]:
    """Wrap the target projections of every block; returns the wrappers (see `detach`)."""
    out = []
    for bi, block in enumerate(model.blocks):
        for ti, name in enumerate(targets):
            if name not in TARGETS:
                raise ValueError(f"ttt.lora_targets: {name!r} not in {', '.join(TARGETS)}")
            parent = getattr(block, TARGETS[name][0])
            w = LoRALinear(getattr(parent, TARGETS[name][1]), rows, rank, 1000 * bi + ti)
            setattr(parent, TARGETS[name][1], w)
            out.append(w)
    return out


def detach(model: nn.Module, targets: list[str]) -> None:
    for block in model.blocks:
        for name in targets:
            parent = getattr(block, TARGETS[name][0])
            mod = getattr(parent, TARGETS[name][1])
            if isinstance(mod, LoRALinear):
                setattr(parent, TARGETS[name][1], mod.base)


def documents(tokens: Tensor, bos_id: int) -> list[tuple[int, int]]:
    """Target ranges [s_d, s_{d+1}) of the documents (a leading partial document included)."""
    n = tokens.numel() - 1
    starts = torch.nonzero(tokens[:n] == bos_id).flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    return [(a, b) for a, b in zip(starts, [*starts[1:], n], strict=True) if b > a]


def lora_ttt(
    cfg: RunConfig,
    model: nn.Module,
    val_tokens: Tensor,
    tables: ByteTables,
    device: torch.device,
    ledger,
    token_nll: Tensor | None = None,
) -> EvalResult:
    """Per-document LoRA TTT (module docstring); `ledger` is a pgolf.ttt.Ledger; `token_nll`
    (float64 [N], optional) receives this rank's per-target NLL."""
    import time

    t, L = cfg.ttt, cfg.eval.eval_seq_len
    if not 1 <= t.lora_chunk <= L:
        raise ValueError(f"ttt.lora_chunk {t.lora_chunk} must be in 1..eval_seq_len ({L})")
    amp = torch.bfloat16 if device.type == "cuda" else None
    tokens = torch.as_tensor(val_tokens).to(torch.int64).cpu()
    docs = sorted(documents(tokens, cfg.model.bos_id), key=lambda d: (-(d[1] - d[0]), d[0]))
    batches = [docs[i : i + t.lora_batch_docs] for i in range(0, len(docs), t.lora_batch_docs)]
    targets = [s.strip() for s in t.lora_targets.split(",") if s.strip()]
    di = pdist.info()
    tab = tables.to(device)
    acc = torch.zeros(3, dtype=torch.float64, device=device)
    ar = torch.arange(L + 1)
    for p in model.parameters():
        p.requires_grad_(False)
    base_opt: torch.optim.Optimizer | None = None
    warm: list[tuple[Tensor, Tensor]] | None = None
    version, done, phased, t0 = 0, 0, t.phased_docs <= 0, time.perf_counter()
    for bi, batch in pdist.progress(enumerate(batches), len(batches), "ttt lora batches"):
        if bi % di.world_size == di.rank:
            n_ev = len(ledger.events)
            warm = _run_batch(
                model,
                batch,
                tokens,
                targets,
                t,
                L,
                ar,
                tab,
                device,
                amp,
                acc,
                ledger,
                version,
                warm,
                token_nll,
            )
            version += 10**6  # each batch's adapters are a new state lineage
            for ev in ledger.events[n_ev:]:
                ev["order"] = bi
        done += len(batch)
        if not phased and done >= t.phased_docs:
            phased = True
            for p in model.parameters():
                p.requires_grad_(True)
            base_opt = torch.optim.SGD(list(model.parameters()), lr=t.lr, momentum=t.momentum)
            scored = sorted(d for b in batches[: bi + 1] for d in b)
            bs = cfg.eval.val_batch_seqs
            loss = sgd_on_ranges(model, base_opt, tokens, scored, L, bs, t.grad_clip, device, amp)
            version += 1
            if di.is_main:  # one copy of this global event, ordered after batch bi's scores
                ledger.update(scored, version)  # BOS inputs excluded
                ledger.events[-1]["order"] = bi + 0.5
            for p in model.parameters():
                p.requires_grad_(False)
            pdist.log0(f"ttt_lora:phase global SGD on {len(scored)} scored docs loss:{loss:.4f}")
    pdist.all_reduce_(acc, "sum")
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    nll, n, nb = acc.tolist()
    if int(n) != tokens.numel() - 1:
        raise RuntimeError(f"ttt_lora: scored {int(n)} targets, expected {tokens.numel() - 1}")
    return result_from_sums(nll, int(n), int(nb), time.perf_counter() - t0)


def _run_batch(
    model, batch, tokens, targets, t, L, ar, tab, device, amp, acc, ledger, version, warm, token_nll
):
    """Score-then-step every chunk of one batch of documents; returns the adapters' mean."""
    rows = len(batch)
    wrappers = attach(model, targets, rows, t.lora_rank)
    try:
        if warm is not None:
            with torch.no_grad():
                for w, (a, b) in zip(wrappers, warm, strict=True):
                    w.a.copy_(a.expand_as(w.a))
                    w.b.copy_(b.expand_as(w.b))
        params = [p for w in wrappers for p in (w.a, w.b)]
        opt = torch.optim.Adam(params, lr=t.lora_lr, betas=(0.9, 0.95))
        model.eval()  # no dropout anywhere; eval mode as the scorer
        s_doc = np.array([a for a, _ in batch])
        e_doc = np.array([b for _, b in batch])
        n_chunks = int(max(math.ceil((b - a) / t.lora_chunk) for a, b in batch))
        for k in range(n_chunks):
            ca = np.minimum(s_doc + k * t.lora_chunk, e_doc)
            cb = np.minimum(ca + t.lora_chunk, e_doc)
            start = np.maximum(s_doc, cb - L)
            live = cb > ca
            start = np.where(live, start, s_doc)
            st = torch.from_numpy(start)
            at = (st[:, None] + ar).clamp_(max=tokens.numel() - 1)
            chunk = tokens[at].to(device)
            lo = torch.from_numpy(np.where(live, ca - start, 0))
            hi = torch.from_numpy(np.where(live, cb - start, 0))
            nll, mask, nbytes = score_batch(
                model, chunk[:, :-1], chunk[:, 1:], lo, hi, tab, amp, at[:, 1:]
            )
            m = mask.double()
            acc[0] += (nll.detach().double() * m).sum()
            acc[1] += m.sum()
            acc[2] += (nbytes.double() * m).sum()
            if token_nll is not None:
                tgt = (st.to(device)[:, None] + torch.arange(L, device=device))[mask]
                token_nll.index_add_(0, tgt.cpu(), nll.detach()[mask].double().cpu())
            ledger.score([(int(a), int(b)) for a, b in zip(ca, cb, strict=True)], version + k)
            nxt = live & (cb < e_doc)  # rows with a later chunk train on this one
            if not nxt.any():
                break
            w_row = torch.from_numpy(nxt).to(device)[:, None] & mask
            per_row = (nll * w_row).sum(1) / mask.sum(1).clamp(min=1)
            opt.zero_grad(set_to_none=True)
            per_row.sum().backward()
            opt.step()
            # consumed: the window's inputs up to the chunk's last target, except a document's
            # own BOS (boundaries are read up front, as in every LoRA TTT record)
            rng = [
                (int(a) if a == s else int(a) - 1, int(b))
                for a, b, s, x in zip(start, cb, s_doc, nxt, strict=True)
                if x
            ]
            ledger.update(rng, version + k + 1)
        if t.lora_init != "warm":
            return None
        return [(w.a.detach().mean(0), w.b.detach().mean(0)) for w in wrappers]
    finally:
        detach(model, targets)


def _ranges_to_seqs(ranges: list[tuple[int, int]], seq_len: int) -> list[tuple[int, int]]:
    """Non-overlapping (token start, length) sequences covering the targets of each range."""
    return [(s, min(seq_len, b - s)) for a, b in ranges for s in range(a, b, seq_len)]


def sgd_on_ranges(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    tokens: torch.Tensor,
    ranges: list[tuple[int, int]],
    seq_len: int,
    batch_seqs: int,
    grad_clip: float,
    device: torch.device,
    amp: torch.dtype | None,
) -> float:
    """One optimizer step on the mean NLL of the targets in `ranges`, shared across ranks
    (each rank takes a contiguous share of the sequences, micro-batches of `batch_seqs`;
    gradients summed, so the result does not depend on the world size). Returns the loss."""
    seqs = _ranges_to_seqs(ranges, seq_len)
    n_total = sum(n for _, n in seqs)
    di = pdist.info()
    mine = seqs[len(seqs) * di.rank // di.world_size : len(seqs) * (di.rank + 1) // di.world_size]
    model.train()
    opt.zero_grad(set_to_none=False)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    ar = torch.arange(seq_len + 1)
    for i in range(0, len(mine), batch_seqs):
        part = mine[i : i + batch_seqs]
        st = torch.tensor([s for s, _ in part])
        ln = torch.tensor([n for _, n in part])
        chunk = tokens[(st[:, None] + ar).clamp_(max=tokens.numel() - 1)].to(device)
        x, y = chunk[:, :-1], chunk[:, 1:]
        with torch.autocast(device.type, amp, enabled=amp is not None):
            logits = model(x)
        nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
        keep = (torch.arange(seq_len)[None, :] < ln[:, None]).to(device).flatten()
        loss = (nll * keep).sum() / n_total
        loss.backward()
        loss_sum += loss.detach().double()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        pdist.all_reduce_(p.grad, "sum")
    pdist.all_reduce_(loss_sum, "sum")
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    return float(loss_sum)
