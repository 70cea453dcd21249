"""Reference points for a score: unigram and bigram models of the training tokens, scored on the
validation stream with the same exact byte accounting as the model (CPU, numpy). A model that does
not beat the bigram has learned little beyond token pair statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pgolf.bpb import ByteTables, bits_per_byte, count_bytes


def _as_np(t: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy().astype(np.int64, copy=False).reshape(-1)
    return np.asarray(t).astype(np.int64, copy=False).reshape(-1)


def _val_targets(
    val_tokens: torch.Tensor | np.ndarray, tables: ByteTables, vocab_size: int
) -> tuple[np.ndarray, np.ndarray, int]:
    v = _as_np(val_tokens)
    if v.size < 2:
        raise ValueError("evaluate: the validation stream needs at least 2 tokens")
    if v.min() < 0 or v.max() >= vocab_size:
        raise ValueError(f"evaluate: val token ids outside [0, {vocab_size}); check vocab_size")
    return v[:-1], v[1:], count_bytes(v, tables)


def _unigram_probs(train: np.ndarray, vocab_size: int) -> np.ndarray:
    if train.size and (train.min() < 0 or train.max() >= vocab_size):
        raise ValueError(f"evaluate: train token ids outside [0, {vocab_size}); check vocab_size")
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64)
    return (counts + 0.5) / (train.size + 0.5 * vocab_size)


def unigram_bpb(
    train_tokens: torch.Tensor | np.ndarray,
    val_tokens: torch.Tensor | np.ndarray,
    tables: ByteTables,
    vocab_size: int,
) -> float:
    """Bits per byte of an add-1/2 unigram of `train_tokens` on the val targets.

    p(w) = (c(w) + 1/2) / (n + V/2), where c(w) counts w in the n training tokens. Scored on the
    same N = len(val) - 1 targets and byte counts as the model evals.
    """
    _, y, n_bytes = _val_targets(val_tokens, tables, vocab_size)
    p = _unigram_probs(_as_np(train_tokens), vocab_size)
    nll = float(-np.log(p[y]).sum())
    return bits_per_byte(nll, int(y.size), n_bytes)


def bigram_bpb(
    train_tokens: torch.Tensor | np.ndarray,
    val_tokens: torch.Tensor | np.ndarray,
    tables: ByteTables,
    vocab_size: int,
) -> float:
    """Bits per byte of a Witten-Bell interpolated bigram of `train_tokens` on the val targets.

    With c(h, w) the count of the pair (h, w) in the training stream, c(h) = sum_w c(h, w) and
    T(h) the number of distinct w seen after h:

        p(w | h) = (c(h, w) + T(h) * p_uni(w)) / (c(h) + T(h)),

    falling back to p_uni(w) (the add-1/2 unigram of `unigram_bpb`) when h was never a history.
    Nothing is fitted on val. Pair counts use np.unique over h*V + w (no V*V table).
    """
    x, y, n_bytes = _val_targets(val_tokens, tables, vocab_size)
    train = _as_np(train_tokens)
    p_uni = _unigram_probs(train, vocab_size)
    pairs = train[:-1] * vocab_size + train[1:]
    keys, counts = np.unique(pairs, return_counts=True)
    c_h = np.bincount(train[:-1], minlength=vocab_size).astype(np.float64)
    t_h = np.bincount(keys // vocab_size, minlength=vocab_size).astype(np.float64)
    q = x * vocab_size + y
    c_hw = np.zeros(q.size, dtype=np.float64)
    if keys.size:
        j = np.searchsorted(keys, q).clip(max=keys.size - 1)
        hit = keys[j] == q
        c_hw[hit] = counts[j[hit]]
    denom = c_h[x] + t_h[x]
    seen = denom > 0
    p = p_uni[y].copy()
    p[seen] = (c_hw[seen] + t_h[x][seen] * p_uni[y][seen]) / denom[seen]
    nll = float(-np.log(p).sum())
    return bits_per_byte(nll, int(y.size), n_bytes)


def references(train_dir: Path, val_tokens, tables, vocab: int, max_train: int = 20_000_000):
    """Unigram and bigram bits per byte of the training tokens on the validation stream."""
    from pgolf.data import find_shards, read_shard

    parts, n = [], 0
    for f in find_shards(train_dir, "train"):
        arr = read_shard(f, vocab)
        parts.append(torch.from_numpy(arr[: max_train - n].astype("int64")))
        n += parts[-1].numel()
        if n >= max_train:
            break
    train_tokens = torch.cat(parts)
    return {
        "unigram_bpb": unigram_bpb(train_tokens, val_tokens, tables, vocab),
        "bigram_bpb": bigram_bpb(train_tokens, val_tokens, tables, vocab),
    }
