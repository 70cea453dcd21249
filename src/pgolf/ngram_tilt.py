"""The causal token n-gram "tilt" of PR #2135 (precedent: merged #1514), `eval.ngram_tilt`.

From the strict prefix of the validation stream only, an order-k token n-gram proposes one hint
per position: the token that most often followed the same k - 1 previous tokens earlier in the
stream, with its share c_top / c_total of those continuations as the confidence. Where the
confidence is at least `ngram_threshold`, the model's distribution p over the full vocabulary is
tilted toward the hint h and renormalized:

    p'(a) = p(a) exp(beta [a = h]) / Z,   Z = sum_a p(a) exp(beta [a = h]) = 1 + p(h)(e^beta - 1)

so the scored NLL is  -log p'(y) = -log p(y) - beta [y = h] + log1p(p(h) (e^beta - 1)).
Elsewhere p' = p. The distribution is complete and normalized over the real vocabulary (C2);
the hint at position t reads tokens < t only and the count tables grow only with scored tokens
(C1, C3); one left-to-right pass builds every hint (C4). Counts of the most frequent follower
change the hint only when a count strictly exceeds the current top (ties keep the earlier one).

Contexts are keyed by a 64-bit polynomial hash of the k - 1 tokens (numpy, wrapping); only
positions whose context occurred before need the sequential pass, so the Python loop runs over
repeats only. The tilt's gradient is zero by construction in `Tilt.delta`'s use (a detached
additive term), so TTT that trains on tilted scores trains on the model's own NLL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

_MUL = np.uint64(0x9E3779B97F4A7C15)


def context_keys(tokens: np.ndarray, ctx: int) -> np.ndarray:
    """uint64 key per token position p of the `ctx` tokens before it (p < ctx: key 0, unused)."""
    t = tokens.astype(np.uint64) + np.uint64(1)
    n = t.size
    key = np.zeros(n, dtype=np.uint64)
    if n <= ctx:  # every position lacks a full context
        return key
    with np.errstate(over="ignore"):
        for j in range(1, ctx + 1):  # key[p] = sum_j tok[p - j] * MUL^j (wrapping)
            shifted = np.zeros(n, dtype=np.uint64)
            shifted[j:] = t[: n - j]
            key = key * _MUL + shifted
    key[: min(ctx, n)] = 0
    return key


def hints(tokens: Tensor | np.ndarray, order: int, threshold: float) -> tuple[np.ndarray, ...]:
    """(hint [n] int64, confidence [n] float64, gate [n] bool) per token position p: the hint
    for predicting token p from tokens < p."""
    tok = np.asarray(tokens, dtype=np.int64)
    n, ctx = tok.size, max(order - 1, 0)
    hint = np.zeros(n, dtype=np.int64)
    conf = np.zeros(n, dtype=np.float64)
    if n == 0:
        return hint, conf, np.zeros(0, dtype=bool)
    key = context_keys(tok, ctx)
    first = np.arange(n) >= ctx
    _, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
    repeats = np.flatnonzero(first & (counts[inv] > 1))
    table: dict[int, tuple[dict[int, int], list[int]]] = {}
    for p in repeats.tolist():
        k = int(inv[p])
        entry = table.get(k)
        y = int(tok[p])
        if entry is None:
            table[k] = ({y: 1}, [y, 1, 1])  # followers, [top token, top count, total]
            continue
        follow, top = entry
        hint[p], conf[p] = top[0], top[1] / top[2]  # from earlier occurrences only
        c = follow.get(y, 0) + 1
        follow[y] = c
        top[2] += 1
        if c > top[1]:
            top[0], top[1] = y, c
    gate = conf >= threshold
    return hint, conf, gate


@dataclass(frozen=True)
class Tilt:
    """Hints over one validation stream; token position p's hint predicts token p."""

    hint: Tensor  # [n] int64
    gate: Tensor  # [n] bool
    boost: float

    @classmethod
    def build(cls, tokens: Tensor, order: int, threshold: float, boost: float) -> Tilt:
        h, _, g = hints(torch.as_tensor(tokens).cpu().numpy(), order, threshold)
        return cls(torch.from_numpy(h), torch.from_numpy(g), float(boost))

    def delta(self, logits: Tensor, y: Tensor, at: Tensor) -> Tensor:
        """-beta [y = h] + log1p(p(h)(e^beta - 1)) where gated, else 0, for logits [B,T,V],
        targets y [B,T] at stream positions `at` [B,T]; detached (no gradient)."""
        with torch.no_grad():
            at = at.to(self.hint.device).clamp(0, self.hint.numel() - 1)
            h = self.hint[at].to(y.device)
            g = self.gate[at].to(y.device)
            logq = torch.log_softmax(logits.float(), -1).gather(-1, h[..., None])[..., 0]
            q = logq.double().clamp(max=0.0).exp()
            d = torch.log1p(q * math.expm1(self.boost)) - self.boost * (y == h).double()
            return torch.where(g, d, torch.zeros_like(d)).to(torch.float32)

    def logprobs(self, logp: Tensor, position: int) -> Tensor:
        """The full tilted log-distribution [V] at stream position `position` from the model's
        log-probabilities `logp` [V] (identity where the gate is closed)."""
        if not bool(self.gate[position]):
            return logp
        h = int(self.hint[position])
        out = logp.double().clone()
        out[h] += self.boost
        return out - math.log1p(float(logp[h].double().exp()) * math.expm1(self.boost))

    def stats(self) -> dict[str, float]:
        return {"ngram_tilt_gated": int(self.gate.sum()), "ngram_tilt_positions": self.gate.numel()}


def build(cfg, tokens: Tensor) -> Tilt | None:
    """The configured tilt (`cfg.eval.ngram_*`) over `tokens`, or None when off."""
    e = cfg.eval
    if not e.ngram_tilt:
        return None
    if e.ngram_order < 1 or e.ngram_boost < 0 or not 0 < e.ngram_threshold <= 1:
        raise ValueError(
            "eval.ngram_order must be >= 1, eval.ngram_boost >= 0 and eval.ngram_threshold in "
            f"(0, 1]; got {e.ngram_order}, {e.ngram_boost}, {e.ngram_threshold}"
        )
    return Tilt.build(tokens, e.ngram_order, e.ngram_threshold, e.ngram_boost)
