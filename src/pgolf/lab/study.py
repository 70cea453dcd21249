"""`pgolf study ttt-memorization RUN_DIR`: how much of pre-quant TTT's gain (PR #1550) is
memorization of the very tokens later scored, and how much is generalization (spec
rules-and-compliance.md, "Quantifying memorization vs generalization"). NON-RECORD throughout.

REDUCED protocol (what this module does, and what it leaves out):
* Validation documents (split at BOS, `pgolf.ttt_lora.documents`; a corpus with fewer than 8
  uses fixed-length segments instead) are sorted by length and taken
  in consecutive pairs; a fixed hash of the pair index decides which one goes to half A and which
  to B (a split stratified by length). M canary documents of uniformly random tokens are added to
  each half (audit-only data, never part of any official number).
* From the run's post-EMA weights, `pgolf.ttt.prequant_ttt` trains on stream A only; its
  `on_epoch` callback scores, after each epoch in the ladder, A and B with the core's sliding
  evaluator (`eval_sliding`, per-target NLL through `token_nll`). Epoch 0 = no TTT.
* Per document: NLL and bytes. DeltaA(e) = bpb_A(0) - bpb_A(e), DeltaB(e) likewise, memorization
  ~ DeltaA - DeltaB; 95% paired bootstrap intervals over documents (resampling documents, the
  same draw for epoch 0 and e). Canary NLL per epoch on A and B.
Left out (say so when quoting numbers): quantization of each TTT result (scored unquantized),
fractional epochs (the ladder is whole epochs: `on_epoch` fires per epoch), cross-fitting A<->B,
the control TTTs (unseen training docs, score-first, decoy targets), several seeds, near-duplicate
tagging, curve fits and the per-length breakdown.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pgolf import dist as pdist
from pgolf.evaluate import eval_sliding
from pgolf.ttt import NON_RECORD_REASON, prequant_ttt
from pgolf.ttt_lora import documents


def split_halves(tokens: torch.Tensor, bos: int, seg: int) -> tuple[list, list, str]:
    """Documents (token ranges incl. their BOS) into halves A, B: pairs by length, hashed.
    Fewer than 8 documents (a corpus of long texts): segments of `seg` tokens instead."""
    docs = [(a, b + 1) for a, b in documents(tokens, bos)]
    unit = "documents"
    if len(docs) < 8:
        n = tokens.numel() - 1
        docs, unit = [(a, min(a + seg, n) + 1) for a in range(0, n, seg)], f"{seg}-token segments"
    docs.sort(key=lambda d: (d[1] - d[0], d[0]))
    A, B = [], []
    for i in range(0, len(docs) - 1, 2):
        flip = hashlib.sha256(f"pgolf-study-{i}".encode()).digest()[0] & 1
        A.append(docs[i + flip])
        B.append(docs[i + 1 - flip])
    return A, B, unit


def build_stream(tokens, docs, canaries: list[torch.Tensor]) -> tuple[torch.Tensor, list, int]:
    """Concatenated documents then canaries -> (stream, target ranges per doc, # real docs)."""
    parts = [tokens[a:b] for a, b in docs] + canaries
    ranges, pos = [], 0
    for p in parts:
        ranges.append((pos, pos + p.numel() - 1))  # targets inside the document
        pos += p.numel()
    return torch.cat(parts), ranges, len(docs)


def per_doc(nll: torch.Tensor, nbytes: torch.Tensor, ranges) -> tuple[np.ndarray, np.ndarray]:
    n = np.array([float(nll[a:b].sum()) for a, b in ranges])
    by = np.array([float(nbytes[a:b].sum()) for a, b in ranges])
    return n, by


def bootstrap(n0, n1, by, reps: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Delta bpb = bpb(epoch 0) - bpb(epoch e) with a 95% paired bootstrap interval over docs."""
    rng = np.random.default_rng(seed)
    d = (n0.sum() - n1.sum()) / by.sum() / np.log(2)
    idx = rng.integers(0, len(by), (reps, len(by)))
    boots = (n0[idx].sum(1) - n1[idx].sum(1)) / by[idx].sum(1) / np.log(2)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(d), float(lo), float(hi)


def run_study(run_dir: str | Path, epochs: list[int], max_tokens: int = 16384, canaries: int = 4,
              out: str | Path | None = None, seed: int = 0) -> dict:  # fmt: skip
    from pgolf import bpb
    from pgolf import config as C
    from pgolf.data import load_val_tokens
    from pgolf.pipeline import load_run_model

    run_dir = Path(run_dir)
    cfg = C.from_dict(json.loads((run_dir / "config.json").read_text()))
    dev = torch.device("cpu")
    torch.manual_seed(seed)
    model = load_run_model(cfg, run_dir / "final_model.safetensors", dev)
    val = load_val_tokens(cfg.data.data_path, 1, max_tokens + 1, cfg.model.vocab_size)
    tables = bpb.build_byte_tables(cfg.data.tokenizer_path, cfg.model.vocab_size)
    A, B, unit = split_halves(val, cfg.model.bos_id, cfg.eval.eval_seq_len)
    g = torch.Generator().manual_seed(seed + 1)
    L, V, bos = cfg.eval.eval_seq_len, cfg.model.vocab_size, cfg.model.bos_id
    lens = sorted(b - a for a, b in A)
    canary = []
    for i in range(2 * canaries):
        c = torch.randint(2, V, (max(8, lens[(i * 7) % len(lens)]),), generator=g)
        c[0] = bos
        canary.append(c)
    sA, rA, nA = build_stream(val, A, canary[:canaries])
    sB, rB, nB = build_stream(val, B, canary[canaries:])
    t = replace(cfg.ttt, mode="prequant", prequant_epochs=max(epochs),
                prequant_seq_len=min(cfg.ttt.prequant_seq_len, L),
                prequant_batch_seqs=max(1, min(cfg.ttt.prequant_batch_seqs,
                                               sA.numel() // (4 * L))))  # fmt: skip
    cfg = replace(cfg, ttt=t)

    def score(net) -> dict:
        res = {}
        for name, s, r in (("A", sA, rA), ("B", sB, rB)):
            nll = torch.zeros(s.numel() - 1, dtype=torch.float64)
            e = cfg.eval
            eval_sliding(net, s, L, e.eval_stride, e.val_batch_seqs, tables, dev, token_nll=nll)
            nb = bpb.target_bytes(s[:-1][None], s[1:][None], tables)[0].double()
            res[name] = per_doc(nll, nb, r)
        return res

    scores = {0: score(model)}
    want = set(epochs)
    prequant_ttt(cfg, model, sA, dev,
                 on_epoch=lambda ep, net: scores.__setitem__(ep, score(net)) if ep in want
                 else None)  # fmt: skip
    rows = []
    for ep in sorted(scores):
        row = {"epoch": ep}
        for h, n_real in (("A", nA), ("B", nB)):
            n0, by = scores[0][h][0][:n_real], scores[0][h][1][:n_real]
            n1 = scores[ep][h][0][:n_real]
            row[f"delta_{h}"] = bootstrap(n0, n1, by, seed=seed)
            can = (rA if h == "A" else rB)[n_real:]
            n_can = sum(b - a for a, b in can)
            row[f"canary_nll_{h}"] = float(scores[ep][h][0][n_real:].sum() / max(1, n_can))
        nA0, nA1, byA = scores[0]["A"][0][:nA], scores[ep]["A"][0][:nA], scores[0]["A"][1][:nA]
        nB0, nB1, byB = scores[0]["B"][0][:nB], scores[ep]["B"][0][:nB], scores[0]["B"][1][:nB]
        rng = np.random.default_rng(seed)
        boots = []
        for _ in range(1000):
            ia, ib = rng.integers(0, nA, nA), rng.integers(0, nB, nB)
            boots.append(((nA0[ia].sum() - nA1[ia].sum()) / byA[ia].sum()
                          - (nB0[ib].sum() - nB1[ib].sum()) / byB[ib].sum()) / np.log(2))
        mem = row["delta_A"][0] - row["delta_B"][0]
        row["memorization"] = (mem, *map(float, np.percentile(boots, [2.5, 97.5])))
        rows.append(row)
    out_dir = Path(out) if out else run_dir / "study_ttt_memorization"
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"non_record": True, "non_record_reason": NON_RECORD_REASON, "reduced": True,
              "protocol": __doc__.split("REDUCED protocol")[1].strip(), "docs_A": nA, "docs_B": nB,
              "unit": unit,
              "tokens_A": int(sA.numel()), "tokens_B": int(sB.numel()), "canaries": canaries,
              "rows": rows}  # fmt: skip
    (out_dir / "study.json").write_text(json.dumps(result, indent=1))
    plot(rows, out_dir / "study.png")
    pdist.log0(f"study: wrote {out_dir}/study.json and study.png", console=False)
    return result


def table(result: dict) -> list[str]:
    out = ["epoch  dA bpb [95% CI]            dB bpb [95% CI]            mem=dA-dB [95% CI]"
           "          canary NLL A / B   (NON-RECORD, reduced protocol)"]
    for r in result["rows"]:
        f = lambda x: f"{x[0]:+.4f} [{x[1]:+.4f},{x[2]:+.4f}]"  # noqa: E731
        out.append(f"{r['epoch']:>5}  {f(r['delta_A'])}  {f(r['delta_B'])}  "
                   f"{f(r['memorization'])}  {r['canary_nll_A']:.3f} / {r['canary_nll_B']:.3f}")
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, lab in (("delta_A", "dA (seen)"), ("delta_B", "dB (unseen)"),
                     ("memorization", "dA - dB")):  # fmt: skip
        y = np.array([r[key] for r in rows])
        a1.errorbar(ep, y[:, 0], yerr=[y[:, 0] - y[:, 1], y[:, 2] - y[:, 0]], label=lab,
                    capsize=3, marker="o")  # fmt: skip
    a1.set(xlabel="pre-quant TTT epochs on A", ylabel="bpb gain", title="NON-RECORD study")
    a1.legend()
    a2.plot(ep, [r["canary_nll_A"] for r in rows], marker="o", label="canaries in A")
    a2.plot(ep, [r["canary_nll_B"] for r in rows], marker="o", label="canaries in B")
    a2.set(xlabel="epochs", ylabel="NLL per token (nats)", title="random-token canaries")
    a2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
