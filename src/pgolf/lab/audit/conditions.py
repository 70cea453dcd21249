"""The auditor's empirical run: `audit` builds the rows of all four conditions for one
evaluation mode (C1 here, C2 from `pgolf.lab.audit.c2`, C3/C4 from `pgolf.lab.audit.c3`); the
evaluator, rows and probes it uses live in `pgolf.lab.audit.base`."""

from __future__ import annotations

import torch
from torch import nn

from pgolf import modes as M
from pgolf import ngram_tilt
from pgolf.lab.audit import c2, c3
from pgolf.lab.audit.base import (
    Evaluator,
    Row,
    maxdiff,
    scoring_row,
    traced,
)
from pgolf.ttt_lora import documents


def _random_tail(tokens: torch.Tensor, c: int, g: torch.Generator) -> torch.Tensor:
    out = tokens.clone()
    tail = tokens[c:]
    out[c:] = tail[torch.randperm(tail.numel(), generator=g)]
    if torch.equal(out[c:], tail):  # a constant tail: shift the values instead
        out[c:] = (tail + 1) % int(tokens.max() + 1)
    return out


def cut_points(ev: Evaluator, tokens: torch.Tensor, bos: int) -> dict[str, int]:
    """Token cut points c (tokens[c:] perturbed): inside a chunk, at a boundary, at a BOS."""
    n = tokens.numel() - 1
    L = ev.cfg.eval.eval_seq_len
    unit = {
        M.SCORE_FIRST: ev.cfg.ttt.chunk_tokens,
        M.LORA: ev.cfg.ttt.lora_chunk,
        M.PHASED: ev.cfg.ttt.phased_chunk,
    }.get(ev.mode, L)
    cuts = {"inside_chunk": min(n - 1, unit // 2 + 3), "chunk_boundary": min(n - 1, unit + 1)}
    bos_at = [int(i) for i in torch.nonzero(tokens[: n - 1] == bos).flatten() if 4 < i < n - 1]
    if bos_at:
        cuts["document_boundary"] = bos_at[len(bos_at) // 2]
    return {k: max(2, v) for k, v in cuts.items()}


def audit(
    ev: Evaluator,
    model: nn.Module,
    tokens: torch.Tensor,
    *,
    quick: bool = False,
    seed: int = 0,
    coder_tokens: int | None = None,
) -> list[Row]:
    """All empirical tests of `ev` on (model, tokens); see the module docstring."""
    tokens = torch.as_tensor(tokens).to(torch.int64).cpu()
    n, bos = tokens.numel() - 1, ev.cfg.model.bos_id
    g = torch.Generator().manual_seed(seed)
    flips = sorted(int(x) for x in torch.randperm(n - 2, generator=g)[: 2 if quick else 4] + 1)
    sample = torch.randperm(n, generator=g)[: 4 if quick else 16]
    tilt = ngram_tilt.build(ev.cfg, tokens)  # the hints a tilted run will use: probe them too
    gated = [] if tilt is None else [int(p) - 1 for p in torch.nonzero(tilt.gate).flatten()]
    gated = [t for t in gated if 1 <= t < n - 1]
    pick = gated[:: max(1, len(gated) // 4)][:4]
    flips = sorted({*flips, *pick})
    probes = sorted({*flips, *(int(x) for x in sample), *gated[1 :: max(1, len(gated) // 8)][:8]})
    base, opened = traced(ev.run, model, tokens, probes)
    again = ev.run(model, tokens, probes)
    floor, _ = maxdiff(base.nll, again.nll)
    tol = max(100 * floor, 1e-5)
    rows: list[Row] = []

    def add(cond: str, test: str, ok: bool | None, evidence: str) -> None:
        verdict = "n.a." if ok is None else ("pass" if ok else "fail")
        rows.append(Row(cond, test, verdict, evidence))

    # C1 -------------------------------------------------------------------------------------
    for label, c in cut_points(ev, tokens, bos).items():
        pert = ev.run(model, _random_tail(tokens, c, g))
        d, j = maxdiff(base.nll[: c - 1], pert.nll[: c - 1])
        add(
            "C1",
            f"T1.1 prefix invariance ({label}, cut {c})",
            d <= tol,
            f"max|dNLL| over {c - 1} earlier targets {d:.2e} (tol {tol:.0e})"
            + (f", first at target {j}" if d > tol else ""),
        )
    worst, where = 0.0, ""
    for t in flips:
        x = tokens.clone()
        x[t + 1] = (
            int(x[t + 1]) + 1 + int(torch.randint(0, 7, (1,), generator=g))
        ) % ev.cfg.model.vocab_size
        if int(x[t + 1]) == bos:
            x[t + 1] = (bos + 1) % ev.cfg.model.vocab_size
        out = ev.run(model, x, [t])
        d, _ = maxdiff(base.nll[:t], out.nll[:t])
        r0, r1 = scoring_row(base, t, int(tokens[t + 1])), scoring_row(out, t, int(x[t + 1]))
        dp = float((r0[1] - r1[1]).abs().max()) if r0 and r1 else float("inf")
        if max(d, dp) > worst:
            worst, where = max(d, dp), f" (target {t}: earlier {d:.2e}, p_t {dp:.2e})"
    add(
        "C1",
        "T1.2 target-flip invariance",
        worst <= tol,
        f"{len(flips)} flips at {flips}: max change {worst:.2e}{where}",
    )
    if ev.per_document:
        docs = documents(tokens, bos)
        if len(docs) >= 3:
            i = len(docs) // 2
            (a0, _), (a, b), (_, b1) = docs[i - 1], docs[i], docs[i + 1]
            x = tokens.clone()
            for lo_, hi_ in ((a0 + 1, a), (b + 1, b1)):  # neighbours' content, BOS kept
                seg = x[lo_:hi_]
                new = torch.randint(0, ev.cfg.model.vocab_size, seg.shape, generator=g)
                new[new == bos] = (bos + 1) % ev.cfg.model.vocab_size
                x[lo_:hi_] = torch.where(seg == bos, seg, new)
            d1, _ = maxdiff(base.nll[a:b], ev.run(model, x).nll[a:b])
            d2, _ = maxdiff(base.nll, ev.with_batch(1).run(model, tokens).nll)
            add(
                "C1",
                "T1.4 document isolation / batch composition",
                max(d1, d2) <= tol,
                f"doc [{a},{b}) with neighbours replaced: {d1:.2e}; batch size 1: {d2:.2e}",
            )
        else:
            add("C1", "T1.4 document isolation / batch composition", None, "fewer than 3 docs")
    else:
        add(
            "C1",
            "T1.4 document isolation / batch composition",
            None,
            f"mode {ev.mode} does not claim per-document scoring",
        )
    bad = [o for o in opened if "train" in o.rsplit("/", 1)[-1] or o.startswith("socket")]
    add(
        "C1",
        "T1.5 no training data / network at eval",
        not bad,
        f"{len(opened)} file/network events during evaluation" + (f": {bad[:2]}" if bad else ""),
    )

    # C2, C3, C4 -----------------------------------------------------------------------------
    rows.append(c2.normalization(base, tokens, probes))
    if tilt is not None:
        k_g = len(set(gated) & set(probes))
        add(
            "C2",
            "T2.1 n-gram tilt active at probed positions",
            k_g > 0 if gated else None,
            f"{len(gated)} of {n} targets tilted (order {ev.cfg.eval.ngram_order}); "
            f"{k_g} probed, {len(set(gated) & set(flips))} target-flipped",
        )
    k = coder_tokens if coder_tokens is not None else (24 if quick else 64)
    if k > 0:
        rows.append(c2.round_trip(ev, model, tokens, k, tol))
    rows += [c2.byte_oracle(ev, tokens), c2.coverage(ev, tokens, base)]
    rows += c3.rows(ev, model, tokens, base, again, floor, tol)
    return rows


def format_rows(rows: list[Row]) -> list[str]:
    w = max(len(r.test) for r in rows)
    return [f"{r.condition}  {r.test:<{w}}  {r.verdict:<4}  {r.evidence}" for r in rows]
