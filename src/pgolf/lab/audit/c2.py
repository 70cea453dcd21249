"""The auditor's Condition 2 tests (spec rules-and-compliance.md part (d)): T2.1 normalization
of the scoring distribution, T2.3 the arithmetic-coding round trip, T2.4 the byte oracle, T2.5
coverage. Each returns one `pgolf.lab.audit.Row`.

T2.4 recomputes the byte denominator from text, not from tables: per document of the audited
stream ([BOS] + pieces, the shards' layout), the bytes the evaluator's tables give its targets
(`pgolf.bpb.target_bytes`: the challenge's rule, leading '\u2581' worth one byte unless the
previous token is a boundary, the next document's BOS worth zero) must equal the UTF-8 length of
`sp.decode` of its pieces. A document cut by the end of the stream is compared up to its last
complete character (trailing byte-fallback pieces dropped). Catches a leading space counted
twice (#1734), byte pieces counted as their text, a '\u2581' flag after BOS, bytes on BOS.
T2.5: the evaluator's reported counts equal the canonical ones of the stream - every target
(ledger union and reported count) and the canonical byte total (`pgolf.bpb.build_byte_tables`
of the tokenizer, independent of the evaluator's own tables). Catches subset evaluation and
loader truncation (PRs #1785/#1835: scoring a prefix of the validation set).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pgolf import bpb
from pgolf.lab.audit.arith import Decoder, encode, freqs
from pgolf.lab.audit.base import EvalOut, Evaluator, Row, scoring_row


def normalization(base: EvalOut, tokens: torch.Tensor, probes: list[int]) -> Row:
    """T2.1: finite, sum p = 1 (float64) and NLL = -log p(target) at the probed positions."""
    worst_sum, worst_nll, missing = 0.0, 0.0, []
    for t in probes:
        r = scoring_row(base, t, int(tokens[t + 1]))
        if r is None:
            missing.append(t)
            continue
        p = r[1]
        s = float(torch.logsumexp(p, 0).exp()) if torch.isfinite(p).all() else float("inf")
        worst_sum = max(worst_sum, abs(s - 1))
        worst_nll = max(worst_nll, abs(-float(p[int(tokens[t + 1])]) - float(base.nll[t])))
    ok = not missing and worst_sum < 1e-5 and worst_nll < 1e-4
    return Row(
        "C2",
        "T2.1 normalization and NLL = -log p",
        "pass" if ok else "fail",
        f"{len(probes)} positions: max|sum p - 1| {worst_sum:.1e}, max|NLL + log p| "
        f"{worst_nll:.1e}" + (f"; no distribution at {missing[:3]}" if missing else ""),
    )


def round_trip(ev: Evaluator, model: nn.Module, tokens: torch.Tensor, k: int, tol: float) -> Row:
    """T2.3 on the first k targets: encode with the full-stream distributions, decode with a
    fresh evaluator per step on the decoded prefix plus a dummy next token. Where the two
    distributions agree within `tol` (the noise floor: CPU kernels are not bitwise invariant to
    the stream length) the decoder uses the encoder's table, so float noise cannot derail it;
    any larger difference decodes with the decoder's own table. The decoder runs with one window
    per batch (a prefix of at most k + 1 tokens fills one window; the rest would be padding)."""
    test = "T2.3 arithmetic-coding round trip"
    k = min(k, tokens.numel() - 1)
    sl = tokens[: k + 1]
    try:
        enc = ev.run(model, sl, list(range(k)))
    except (ValueError, RuntimeError) as e:
        why = f"the evaluator cannot score a {k}-target prefix ({e})"
        return Row("C2", test, "fail", why[:160])
    rows = [scoring_row(enc, j, int(sl[j + 1])) for j in range(k)]
    if any(r is None for r in rows):
        return Row("C2", test, "fail", "the evaluator exposed no distribution at some positions")
    tabs = [freqs(r[1]) for r in rows]
    m, b = encode([int(x) for x in sl[1:]], tabs)
    dec, got, noisy, worst = Decoder(m, b), [int(sl[0])], 0, 0.0
    dummy = int(torch.nonzero(ev.tables.base_bytes > 0)[0])  # any token with bytes
    one = ev.with_batch(1)  # a prefix fills one window: no padding rows to run
    for j in range(k):
        stream = torch.tensor([*got, dummy], dtype=torch.int64)
        try:
            row = scoring_row(one.run(model, stream, [j]), j, dummy)
        except (ValueError, RuntimeError) as e:
            row, why = None, f"the evaluator cannot score the decoded prefix alone ({e})"
        else:
            why = f"no distribution for target {j} on the decoded prefix"
        if row is None:
            return Row("C2", test, "fail", why[:160])
        d = float((row[1] - rows[j][1]).abs().max())
        worst = max(worst, d)
        noisy += 0 < d <= tol
        got.append(dec.next(tabs[j] if d <= tol else freqs(row[1])))
    nll_bits = float(enc.nll.sum()) / math.log(2)
    bad = [j for j in range(k) if got[j + 1] != int(sl[j + 1])]
    ok = not bad and b <= 1.005 * nll_bits + 2
    txt = (
        f"{k} tokens: decoded {'exactly' if not bad else f'wrong from target {bad[0]}'}; "
        f"code {b} bits vs sum NLL {nll_bits:.1f} bits ({100 * (b / nll_bits - 1):+.2f}%); "
        f"max|dlog p| enc/dec {worst:.1e} ({noisy} steps within noise)"
    )
    return Row("C2", test, "pass" if ok else "fail", txt)


def _segments(ev: Evaluator, tokens: torch.Tensor) -> list[tuple[int, int, int]]:
    """(first target, end target, end token) of each document opened by a BOS in the stream:
    targets [p, e) are the document's pieces tokens[p + 1 : end] plus, when the next document
    starts inside the stream, its BOS (target e - 1, worth 0 bytes)."""
    n, bos = tokens.numel() - 1, ev.cfg.model.bos_id
    starts = [int(i) for i in torch.nonzero(tokens[:-1] == bos).flatten()]
    out = []
    for i, p in enumerate(starts):
        if i + 1 < len(starts):
            q = starts[i + 1]
            out.append((p, q, q))  # pieces p+1..q-1, targets p..q-1 (the last is the BOS)
            continue
        end = n + 1
        while end > p + 1 and ev.sp.is_byte(int(tokens[end - 1])):
            end -= 1  # a character cut by the end of the stream is not compared
        out.append((p, end - 1, end))
    return out


def byte_oracle(ev: Evaluator, tokens: torch.Tensor) -> Row:
    """T2.4 (module docstring)."""
    test = "T2.4 byte oracle (tables vs UTF-8 of decoded text)"
    if ev.sp is None:
        return Row("C2", test, "n.a.", "no tokenizer to decode the stream with")
    segs = _segments(ev, tokens)
    if not segs:
        return Row("C2", test, "n.a.", "no document start (BOS) in the audited stream")
    tb = bpb.target_bytes(tokens[:-1], tokens[1:], ev.tables).to(torch.int64)
    total, bad = 0, []
    for p, e, end in segs:
        text = len(ev.sp.decode([int(x) for x in tokens[p + 1 : end]]).encode("utf-8"))
        tab = int(tb[p:e].sum())
        total += text
        if tab != text:
            bad.append(f"document at token {p}: tables {tab} bytes, text {text}")
    skipped = segs[0][0]
    txt = (
        f"{len(segs)} documents, {total} bytes of decoded text"
        + (f" ({skipped} targets before the first BOS not compared)" if skipped else "")
        + (f"; {len(bad)} differ, {bad[0]}" if bad else ": equal")
    )
    return Row("C2", test, "fail" if bad else "pass", txt)


def coverage(ev: Evaluator, tokens: torch.Tensor, base: EvalOut) -> Row:
    """T2.5 (module docstring)."""
    n = tokens.numel() - 1
    if ev.sp is not None:
        ref, src = bpb.build_byte_tables(ev.sp, ev.tables.vocab_size, True), "tokenizer's"
    else:
        ref, src = ev.tables, "evaluator's"
    canon = int(bpb.target_bytes(tokens[:-1], tokens[1:], ref).to(torch.int64).sum())
    hit = torch.zeros(n + 1, dtype=torch.int64)
    for e in base.ledger.events:
        if e["kind"] == "score":
            for a, b in e["ranges"]:
                hit[max(0, min(a, n))] += 1
                hit[max(0, min(b, n))] -= 1
    covered = int((hit.cumsum(0)[:n] > 0).sum())
    ok = base.tokens == n and covered == n and base.bytes == canon
    return Row(
        "C2",
        "T2.5 coverage (all targets, canonical bytes)",
        "pass" if ok else "fail",
        f"reported {base.tokens} targets / {base.bytes} bytes; canonical {n} / {canon} "
        f"({src} byte tables); ledger covers {covered} of {n}",
    )
