"""Data of the TTT memorization study (`pgolf.lab.study`, spec rules-and-compliance.md,
"Quantifying memorization vs generalization", steps 1, 4 and 5). NON-RECORD.

* `split_halves`: validation documents (split at BOS) into halves A and B by a fixed hash of the
  document index, stratified by length (documents sorted by length, taken in consecutive pairs,
  the lower hash of each pair goes to A). A corpus with too few documents falls back to fixed
  segments (the returned `unit` says so; every consumer prints it).
* `near_duplicates`: B units whose token-shingle Jaccard with some A unit reaches a threshold
  (an inverted shingle index, so exact Jaccard without comparing all pairs); tagged, not removed.
* `canaries`: documents of uniformly random tokens (lengths drawn from the real ones), BOS first.
* `Stream`: units concatenated, with each unit's target range, for the sliding scorer.
* `train_slice` (control a: unseen training tokens) and `shuffle_within` (control c: decoy
  targets, tokens shuffled inside each document).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pgolf.ttt_lora import documents

MIN_DOCS = 16  # fewer documents than this: fixed segments instead


def _hash(i: int) -> int:
    return int.from_bytes(hashlib.sha256(f"pgolf-study-doc-{i}".encode()).digest()[:8], "big")


def units(
    tokens: torch.Tensor, bos: int, seg: int, min_docs: int = MIN_DOCS
) -> tuple[list[tuple[int, int]], str]:
    """Token ranges [a, b) of the documents (each with its BOS), or of `seg`-token segments
    when there are fewer than `min_docs` documents."""
    docs = [(a, b + 1) for a, b in documents(tokens, bos)]
    if len(docs) >= min_docs:
        return docs, "documents"
    n = tokens.numel() - 1
    segs = [(a, min(a + seg, n) + 1) for a in range(0, n, seg) if min(a + seg, n) - a >= 8]
    return segs, (
        f"{seg}-token segments (FALLBACK: only {len(docs)} documents in the slice, "
        f"fewer than {min_docs}; segments of one document are not independent)"
    )


def split_halves(spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Indices of `spans` in A and in B: sorted by length, consecutive pairs, the lower hash of
    the unit index to A (so each pair is a length stratum split one-one); an odd last unit goes
    by its hash's parity. Deterministic: depends only on the lengths and indices."""
    order = sorted(range(len(spans)), key=lambda i: (spans[i][1] - spans[i][0], i))
    A, B = [], []
    for k in range(0, len(order) - 1, 2):
        i, j = order[k], order[k + 1]
        lo, hi = (i, j) if _hash(i) < _hash(j) else (j, i)
        A.append(lo)
        B.append(hi)
    if len(order) % 2:
        (A if _hash(order[-1]) & 1 else B).append(order[-1])
    return sorted(A), sorted(B)


def shingles(toks: np.ndarray, k: int) -> set[bytes]:
    t = np.ascontiguousarray(toks.astype("<u4"))
    return {t[i : i + k].tobytes() for i in range(max(0, len(t) - k + 1))}


def near_duplicates(
    tokens: torch.Tensor, spans, A: list[int], B: list[int], k: int = 8, threshold: float = 0.3
) -> dict[int, tuple[int, float]]:
    """{B unit: (most similar A unit, Jaccard)} for B units with k-shingle Jaccard >= threshold
    against some A unit (exact Jaccard over the candidates sharing any shingle)."""
    arr = tokens.numpy()
    sh = {i: shingles(arr[a:b], k) for i in (*A, *B) for a, b in [spans[i]]}
    index: dict[bytes, list[int]] = {}
    for i in A:
        for s in sh[i]:
            index.setdefault(s, []).append(i)
    out = {}
    for j in B:
        shared: dict[int, int] = {}
        for s in sh[j]:
            for i in index.get(s, ()):
                shared[i] = shared.get(i, 0) + 1
        best = max(
            ((c / (len(sh[i]) + len(sh[j]) - c), i) for i, c in shared.items()), default=(0.0, -1)
        )
        if best[0] >= threshold:
            out[j] = (best[1], float(best[0]))
    return out


def canaries(lengths: list[int], m: int, vocab: int, bos: int, seed: int) -> list[torch.Tensor]:
    """m random-token documents (ids 2..vocab-1, never BOS), lengths drawn from `lengths` with a
    fixed generator (the same for every seed, so replicates pool), tokens drawn with `seed`."""
    g, gl = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(0)
    out = []
    for _ in range(m):
        n = max(8, lengths[int(torch.randint(len(lengths), (1,), generator=gl))])
        c = torch.randint(2, vocab, (n,), generator=g)
        c[0] = bos
        out.append(c)
    return out


@dataclass(frozen=True)
class Stream:
    """Units then canaries, concatenated; `ranges[u]` = that unit's target positions."""

    tokens: torch.Tensor
    ranges: list[tuple[int, int]]
    n_real: int  # the first n_real ranges are real units, the rest canaries


def build_stream(tokens: torch.Tensor, spans, idx: list[int], extra: list[torch.Tensor]) -> Stream:
    parts = [tokens[spans[i][0] : spans[i][1]] for i in idx] + list(extra)
    ranges, pos = [], 0
    for p in parts:
        ranges.append((pos, pos + p.numel() - 1))  # targets whose input is inside the unit
        pos += p.numel()
    return Stream(torch.cat(parts).to(torch.int64), ranges, len(idx))


def shuffle_within(s: Stream, seed: int) -> torch.Tensor:
    """Control (c): the stream with tokens shuffled inside each unit (BOS kept first): the
    unigram statistics stay, the order that a memorizer could learn goes."""
    g = torch.Generator().manual_seed(seed)
    out = s.tokens.clone()
    for a, b in s.ranges:
        body = out[a + 1 : b + 1]
        out[a + 1 : b + 1] = body[torch.randperm(body.numel(), generator=g)]
    return out


def train_slice(
    data_dir: str | Path, n: int, consumed: int, vocab: int
) -> tuple[torch.Tensor, bool]:
    """Control (a): the LAST n tokens of the training shards, and whether the run cannot have
    read them (`consumed` tokens read from the start by the stream loader)."""
    from pgolf.data import find_shards, read_shard

    parts, have, total = [], 0, 0
    for p in reversed(find_shards(data_dir, "train")):
        arr = read_shard(p, vocab)
        total += arr.size
        if have <= n:
            take = np.asarray(arr[max(0, arr.size - (n + 1 - have)) :])
            parts.insert(0, take)
            have += take.size
    if have < n + 1:
        raise ValueError(
            f"{data_dir}: training shards hold {have} tokens, need {n + 1} "
            "for the unseen-training-data control; lower --tokens"
        )
    return torch.from_numpy(np.concatenate(parts).astype(np.int64)), consumed <= total - n - 1
