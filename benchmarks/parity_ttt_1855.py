"""Parity of pgolf's phased LoRA TTT (`ttt.mode=phased`) with PR #1855's own TTT, CPU fp32.

    python benchmarks/parity_ttt_1855.py --reference .ref/train_gpt_1855.py   # ~1-2 min, 2 cores

The reference script is the record's `train_gpt.py`, copied into the git-ignored `.ref/` (the
fetch command is `benchmarks.parity_1855.FETCH`); it is imported under the stand-ins of
`benchmarks/parity_1855.py` (SDPA for FA3, no Triton, eager MLP and CE, autocast off: the
script's CUDA autocast disables itself on a CPU-only machine). Its AdamW's `fused=True` is
dropped while its TTT runs (the CPU reference then takes torch's default AdamW, as pgolf does).

Both sides get the same weights (`parity_1855.build_pair`: the reference GPT at width 128 with
every parameter perturbed, mapped onto pgolf's `pr1855` model), the same token stream of
documents (BOS-led, random tokens), the same LoRA seed (the reference draws its A matrices from
the global generator seeded just before its TTT; pgolf from its own generator with that seed)
and the same knobs: rank, alpha, lr, weight decay, betas, chunk, context, batch, phases, global
SGD. The reference's per-document scores come from its own accumulator (`_accumulate_bpb`,
wrapped to keep per-row sums, mapped to documents through its own `_build_ttt_global_batches`
queue); pgolf's from `token_nll`. The global SGD runs with GLOBAL_TTT_RESPECT_DOC_BOUNDARIES=0
on both sides (rows of EVAL_SEQ_LEN tokens, plain causal): with 1, the record packs a batch of
rows into one varlen sequence whose documents may cross row boundaries, pgolf masks at BOS within
each row (see pgolf.ttt_phased).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses as dc
import json
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import parity_1855 as P  # noqa: E402  (the sibling benchmark: stand-ins, weight mapping)

from pgolf import ttt, ttt_phased  # noqa: E402
from pgolf.bpb import ByteTables  # noqa: E402
from pgolf.config import EvalConfig, RunConfig, TTTConfig  # noqa: E402

KNOBS = dict(  # pgolf field -> value; the reference's Hyperparameters get the same (REF_NAMES)
    phased_rank=4,
    phased_alpha=144.0,
    phased_lr=3e-3,
    phased_wd=0.5,
    phased_beta1=0.0,
    phased_beta2=0.99,
    phased_chunk=16,
    phased_seq_len=64,
    phased_batch_docs=2,
    phased_prefix_docs=4,
    phased_phases=1,
    phased_seed=1234,
    global_lr=0.01,
    global_momentum=0.9,
    global_epochs=1,
    global_chunk_tokens=128,
    global_batch_seqs=2,
    global_grad_clip=1.0,
    global_respect_docs=False,
)
REF_NAMES = {
    "phased_rank": "ttt_lora_rank",
    "phased_lr": "ttt_lora_lr",
    "phased_wd": "ttt_weight_decay",
    "phased_beta1": "ttt_beta1",
    "phased_beta2": "ttt_beta2",
    "phased_chunk": "ttt_chunk_size",
    "phased_seq_len": "ttt_eval_seq_len",
    "phased_batch_docs": "ttt_batch_size",
    "phased_prefix_docs": "phased_ttt_prefix_docs",
    "phased_phases": "phased_ttt_num_phases",
    "global_lr": "global_ttt_lr",
    "global_momentum": "global_ttt_momentum",
    "global_epochs": "global_ttt_epochs",
    "global_chunk_tokens": "global_ttt_chunk_tokens",
    "global_batch_seqs": "global_ttt_batch_seqs",
    "global_grad_clip": "global_ttt_grad_clip",
    "global_respect_docs": "global_ttt_respect_doc_boundaries",
}


def doc_stream(lengths: list[int], vocab: int, bos: int, seed: int = 0) -> torch.Tensor:
    """[BOS] + random tokens per document (no BOS inside), the documents concatenated."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for n in lengths:
        body = torch.randint(2, vocab, (n,), generator=g)
        parts.append(torch.cat([torch.tensor([bos]), body]))
    return torch.cat(parts)


def byte_tables(vocab: int, seed: int = 0) -> ByteTables:
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(1, 5, (vocab,), generator=g, dtype=torch.int32)
    base[:2] = 0
    bound = torch.zeros(vocab, dtype=torch.bool)
    bound[:2] = True
    lead = torch.rand(vocab, generator=g) < 0.5
    lead[:2] = False
    return ByteTables(base_bytes=base, has_leading_space=lead, is_boundary=bound)


def reference_scores(ref, r, tokens: torch.Tensor, tab: ByteTables, knobs: dict, seed: int):
    """Per-document (nll sum, targets) of the record's `eval_val_ttt_phased`, in stream order."""
    h = SimpleNamespace(**vars(P.reference_hparams(ref, r._pgolf_cfg)))
    for k, v in knobs.items():
        if k in REF_NAMES:
            setattr(h, REF_NAMES[k], v)
    h.eval_seq_len = knobs["eval_seq_len"]
    h.ttt_grad_steps, h.ttt_k_lora, h.ttt_mlp_lora, h.ttt_o_lora = 1, True, True, True
    h.ttt_optimizer, h.ttt_eval_batches, h.val_doc_fraction = "adam", "", 1.0
    h.global_ttt_warmup_start_lr, h.global_ttt_warmup_chunks = 0.0, 0
    h.rank, h.world_size, h.run_id = 0, 1, f"pgolf_parity_{uuid.uuid4().hex[:8]}"
    ref.BatchedLinearLoRA._ALPHA = float(knobs["phased_alpha"])
    ref.BatchedLinearLoRA._WARM_START_A = True
    val = SimpleNamespace(
        val_tokens=tokens,
        caseops_enabled=False,
        val_bytes=None,
        base_bytes_lut=tab.base_bytes.long(),
        has_leading_space_lut=tab.has_leading_space,
        is_boundary_token_lut=tab.is_boundary,
    )
    rows: list[tuple[torch.Tensor, torch.Tensor]] = []
    acc = ref._accumulate_bpb

    def spy(ptl, x, y, chunk_offsets, chunk_lens, pos_idx, *a, **k):
        pos = pos_idx[: x.size(1)].unsqueeze(0)
        m = (
            (chunk_lens.unsqueeze(1) > 0)
            & (pos >= chunk_offsets.unsqueeze(1))
            & (pos < (chunk_offsets + chunk_lens).unsqueeze(1))
        )
        rows.append(((ptl.double() * m).sum(1).detach(), m.sum(1)))
        return acc(ptl, x, y, chunk_offsets, chunk_lens, pos_idx, *a, **k)

    adamw = torch.optim.AdamW

    def no_fused(*a, **k):
        k.pop("fused", None)
        return adamw(*a, **k)

    ref._accumulate_bpb, torch.optim.AdamW = spy, no_fused
    r.looping_active = True
    try:
        torch.manual_seed(seed)
        loss, bpb = ref.eval_val_ttt_phased(
            h, r, torch.device("cpu"), val, lambda x, y, lora: r.forward_ttt(x, y, lora=lora)
        )
    finally:
        ref._accumulate_bpb, torch.optim.AdamW = acc, adamw
    docs = ref._find_docs(tokens)
    queue = ref._build_ttt_global_batches(list(enumerate(docs)), h)
    out = {d: [0.0, 0] for d in range(len(docs))}
    it = iter(rows)
    for _, entries in queue:
        n_ch = max(-(-(dl - 1) // h.ttt_chunk_size) for _, (_, dl) in entries)
        for _ in range(n_ch):
            s, c = next(it)
            for b, (di, _) in enumerate(entries):
                out[di][0] += float(s[b])
                out[di][1] += int(c[b])
    return [tuple(out[d]) for d in range(len(docs))], (loss, bpb)


def pgolf_scores(g, tokens, tab, knobs: dict, eval_seq_len: int):
    t = TTTConfig(mode="phased", **{k: v for k, v in knobs.items() if k in TTTConfig.__slots__})
    cfg = RunConfig(model=g.cfg, eval=EvalConfig(eval_seq_len=eval_seq_len), ttt=t)
    g.set_recurrence(True)
    nll = torch.zeros(tokens.numel() - 1, dtype=torch.float64)
    led = ttt.Ledger()
    r = ttt_phased.phased_ttt(cfg, g, tokens, tab, torch.device("cpu"), led, token_nll=nll)
    docs = ttt_phased.documents(tokens, g.cfg.bos_id)
    c3, c4 = ttt.score_before_update(led), ttt.single_pass(led, tokens.numel() - 1)
    return [(float(nll[s:e].sum()), e - s) for s, e in docs], r, (c3, c4)


def compare(
    ref_path: Path, lengths: list[int], knobs: dict, seed: int = 0, pgolf_knobs: dict | None = None
) -> dict[str, Any]:
    """Per-document scores of both sides; `pgolf_knobs` overrides pgolf's side only (a negative
    control: a different knob must break parity)."""
    ref = P.load_reference(ref_path)
    m = dc.replace(P.parity_config("tiny"), doc_mask=False)
    r, g = P.build_pair(ref, m, seed)
    r._pgolf_cfg = m
    tokens = doc_stream(lengths, m.vocab_size, m.bos_id, seed)
    tab = byte_tables(m.vocab_size, seed)
    t0 = time.perf_counter()
    ref_docs, (rl, rb) = reference_scores(ref, r, tokens, tab, knobs, knobs["phased_seed"])
    t1 = time.perf_counter()
    g0 = copy.deepcopy(g)  # before TTT: the no-learning control below starts from it
    mine = {**knobs, **(pgolf_knobs or {})}
    ours, res, (c3, c4) = pgolf_scores(g, tokens, tab, mine, knobs["eval_seq_len"])
    t2 = time.perf_counter()
    still = {**knobs, "phased_lr": 0.0, "phased_wd": 0.0, "global_lr": 0.0}
    base, _, _ = pgolf_scores(g0, tokens, tab, still, knobs["eval_seq_len"])
    moved = max(abs(a - b) / n for (a, n), (b, _) in zip(ours, base, strict=True))
    per_doc = [
        {
            "targets": n,
            "ref_mean_nll": a / n,
            "pgolf_mean_nll": b / n,
            "abs_diff": abs(a - b) / n,
        }
        for (a, n), (b, n2) in zip(ref_docs, ours, strict=True)
        if n == n2
    ]
    if len(per_doc) != len(ours):
        raise RuntimeError("parity_ttt_1855: the two sides found different documents")
    return {
        "documents": per_doc,
        "max_abs_diff": max(d["abs_diff"] for d in per_doc),
        "ttt_effect_max": moved,  # how far TTT moved a document's mean NLL (the control)
        "ref_val_loss": rl,
        "pgolf_val_loss": res.val_loss,
        "ref_val_bpb": rb,
        "pgolf_val_bpb": res.val_bpb,
        "pgolf_condition3_violations": c3,
        "pgolf_condition4_violations": c4,
        "seconds_ref": t1 - t0,
        "seconds_pgolf": t2 - t1,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", default=None, help="the record's train_gpt.py")
    ap.add_argument("--lengths", default="90,40,70,30,55,25", help="document lengths (tokens)")
    ap.add_argument("--phases", type=int, default=1)
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args(argv)
    path = P.find_reference(args.reference)
    if path is None:
        raise SystemExit(f"parity_ttt_1855: the reference is absent; fetch it with\n  {P.FETCH}")
    torch.set_num_threads(1)
    knobs = {**KNOBS, "phased_phases": args.phases, "eval_seq_len": 64}
    out = compare(path, [int(x) for x in args.lengths.split(",")], knobs)
    out["tolerance"] = args.tol
    out["pass"] = (
        out["max_abs_diff"] <= args.tol
        and out["ttt_effect_max"] > 10 * args.tol
        and not out["pgolf_condition3_violations"]
    )
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
