"""Train/validation overlap: exact and near-duplicate documents between two splits.

Why: challenge issue #2127 found that the published CaseOps preparation put validation documents
into training by default (15 of 34 CaseOps PRs trained on most of the validation set). A score on
documents the model was trained on is not a validation score.

Documents: token shards are cut at every BOS (id 1; a document may run across shard borders);
text (`.jsonl` with a `text` field, `.txt` one document per line, optionally `.xz`/`.gz`) is cut
into whitespace-separated words, each hashed to a token. A folder means its `*_train_*` shards
for TRAIN and its `*_val_*` shards for VAL, so `pgolf data overlap DIR DIR` checks one build.

* exact: the same token sequence (a 128-bit BLAKE2b digest of it);
* near: Jaccard similarity >= `threshold` (default 0.5) between the sets of `SHINGLE`-token
  shingles (5 consecutive tokens; a document shorter than that is one shingle). Candidates come
  from MinHash (`NUM_PERM` = 64 hash functions) with LSH banding (32 bands of 2 rows: a pair at
  Jaccard 0.5 becomes a candidate with probability 1 - (1 - 0.5^2)^32 > 0.9998, at 0.3 with 0.95);
  a candidate whose signature estimate is within 0.25 of the threshold is then measured exactly
  on its shingle sets, so every reported Jaccard is exact. A val document both exact and near is
  counted once, as exact.

Memory: the validation split is held (its tokens as uint16/uint32, 32 band keys and a 64-word
signature per document); the training split is streamed one document at a time, so memory does
not grow with it. Time: about 64 hash evaluations per training token (numpy).

`check_overlap(train, val)` is the function `pgolf data overlap` runs and `pgolf verify` can call
on a record's prepared data.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import lzma
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pgolf import data as D

SHINGLE = 5
NUM_PERM = 64
BANDS = 32
ROWS = NUM_PERM // BANDS
PREFILTER = 0.25
TEXT_SUFFIXES = (".jsonl", ".txt")
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_MUL = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer (uint64 in, uint64 out, wrapping)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def shingles(seq: np.ndarray) -> np.ndarray:
    """Sorted unique 64-bit hashes of the `SHINGLE`-token windows of `seq` (one when shorter)."""
    s = np.asarray(seq, dtype=np.uint64)
    k = min(SHINGLE, s.size)
    n = s.size - k + 1
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):
            h = _mix(h * _MUL + s[j : j + n] + np.uint64(1))
    return np.unique(h)


@functools.cache
def _seeds() -> np.ndarray:
    """One fixed 64-bit seed per MinHash function (the same on every run and machine)."""
    return np.random.Generator(np.random.PCG64(20240520)).integers(
        0, 2**63, size=NUM_PERM, dtype=np.uint64
    )


def signature(sh: np.ndarray, chunk: int = 1 << 14) -> np.ndarray:
    """MinHash signature (uint64 [NUM_PERM]) of a shingle set."""
    seeds = _seeds()
    sig = np.full(NUM_PERM, _M64, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(0, sh.size, chunk):
            v = _mix(sh[i : i + chunk, None] ^ seeds[None, :])
            np.minimum(sig, v.min(axis=0), out=sig)
    return sig


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted unique arrays."""
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter) if a.size + b.size else 1.0


def _bands(sig: np.ndarray) -> list[bytes]:
    rows = sig.reshape(BANDS, ROWS)
    return [bytes([b]) + rows[b].tobytes() for b in range(BANDS)]


def _digest(seq: np.ndarray) -> bytes:
    return hashlib.blake2b(np.asarray(seq, dtype=np.uint32).tobytes(), digest_size=16).digest()


# ----------------------------------------------------------------------------------------------
# Reading documents


def _shard_docs(files: list[Path], bos_id: int) -> Iterator[tuple[np.ndarray, str]]:
    carry: list[np.ndarray] = []
    for f in files:
        arr = D.read_shard(f)
        cuts = np.flatnonzero(np.asarray(arr) == bos_id)
        prev = 0
        for c in cuts.tolist():
            carry.append(np.asarray(arr[prev:c]))
            doc = np.concatenate(carry)
            carry = []
            if doc.size:
                yield doc, ""
            prev = c + 1
        carry.append(np.asarray(arr[prev:]))
    doc = np.concatenate(carry) if carry else np.zeros(0, dtype=np.uint16)
    if doc.size:
        yield doc, ""


def _words(text: str) -> np.ndarray:
    return np.array([zlib.crc32(w.encode("utf-8")) for w in text.split()], dtype=np.uint32)


def _text_docs(path: Path) -> Iterator[tuple[np.ndarray, str]]:
    import json

    opener = {".xz": lzma.open, ".gz": gzip.open}.get(path.suffix, open)
    jsonl = ".jsonl" in path.suffixes
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if jsonl:
                    obj = json.loads(line)
                    text = obj.get("text") if isinstance(obj, dict) else None
                    if not isinstance(text, str):
                        raise ValueError(f"line {lineno}: expected an object with a 'text' string")
                else:
                    text = line
                if (w := _words(text)).size:
                    yield w, " ".join(text[:120].split())[:80]
    except (UnicodeDecodeError, ValueError, lzma.LZMAError, OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read documents ({e}); expected UTF-8 text") from None


def documents(path: Path, split: str, bos_id: int = 1) -> Iterator[tuple[np.ndarray, str]]:
    """(tokens, first words of the text or "") of each document of `path` (module docstring)."""
    path = Path(path)
    if path.is_dir():
        files = D.find_shards(path, split)
        if not files:
            raise D.ShardError(f"{path}: no *_{split}_NNNNNN.bin shards for the {split} side")
        return _shard_docs(files, bos_id)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass token shards or a text file")
    if path.suffix == ".bin":
        D.read_header(path)
        return _shard_docs([path], bos_id)
    if any(s in path.suffixes for s in TEXT_SUFFIXES):
        return _text_docs(path)
    raise ValueError(f"{path}: pass a .bin shard, a shard folder, or .jsonl/.txt(.xz/.gz) text")


# ----------------------------------------------------------------------------------------------
# The check


@dataclass
class Match:
    val_doc: int
    train_doc: int
    jaccard: float
    val_tokens: int
    head: list[int]
    """The val document's first tokens (text: word hashes)."""
    preview: str = ""
    """Its first words, decoded with the shards' tokenizer when one is found (shards only)."""


@dataclass
class OverlapReport:
    train: str
    val: str
    threshold: float
    train_docs: int = 0
    val_docs: int = 0
    val_tokens: int = 0
    exact: dict[int, Match] = field(default_factory=dict)
    near: dict[int, Match] = field(default_factory=dict)
    examples: int = 5
    near_checked: bool = True

    @property
    def leaks(self) -> int:
        """Validation documents found in training (exact or near)."""
        return len(self.exact) + len(self.near)

    def as_dict(self) -> dict[str, Any]:
        def pick(d: dict[int, Match]) -> list[dict[str, Any]]:
            return [vars(m) for _, m in sorted(d.items())[: self.examples]]

        return {
            "train": self.train,
            "val": self.val,
            "method": "exact: BLAKE2b of the tokens; "
            + (
                f"near: Jaccard of {SHINGLE}-token shingles >= {self.threshold} (MinHash "
                f"{NUM_PERM}, LSH {BANDS}x{ROWS}, verified exactly)"
                if self.near_checked
                else "near duplicates not checked (--exact-only)"
            ),
            "train_docs": self.train_docs,
            "val_docs": self.val_docs,
            "val_tokens": self.val_tokens,
            "exact_docs": len(self.exact),
            "exact_tokens": sum(m.val_tokens for m in self.exact.values()),
            "near_docs": len(self.near),
            "near_tokens": sum(m.val_tokens for m in self.near.values()),
            "exact_examples": pick(self.exact),
            "near_examples": pick(self.near),
        }

    def lines(self) -> list[str]:
        d = self.as_dict()
        out = [
            f"overlap train:{self.train} ({d['train_docs']} docs) val:{self.val} "
            f"({d['val_docs']} docs, {d['val_tokens']} tokens)",
            f"method: {d['method']}",
            f"exact_duplicates: {d['exact_docs']} val docs ({d['exact_tokens']} tokens)",
            f"near_duplicates: {d['near_docs']} val docs ({d['near_tokens']} tokens)",
        ]
        for kind in ("exact", "near"):
            for m in d[f"{kind}_examples"]:
                out.append(
                    f"  {kind}: val doc {m['val_doc']} ~ train doc {m['train_doc']} "
                    f"jaccard:{m['jaccard']:.3f} tokens:{m['val_tokens']} starts "
                    + (repr(m["preview"]) if m["preview"] else str(m["head"]))
                )
        out.append(
            f"LEAK: {self.leaks} of {self.val_docs} validation documents are in training"
            if self.leaks
            else "clean: no validation document is in training"
        )
        return out


def check_overlap(
    train: str | Path,
    val: str | Path,
    threshold: float = 0.5,
    examples: int = 5,
    bos_id: int = 1,
    tokenizer: str | Path | None = None,
    near: bool = True,
) -> OverlapReport:
    """Find the validation documents of `val` that occur in `train`, exactly or nearly
    (see the module docstring). Bad input raises ValueError / FileNotFoundError / ShardError.
    `tokenizer` (a .model; default: the one beside shards of `val`, if any) decodes previews.
    `near=False`: exact duplicates only (hashing alone: for FineWeb-sized training splits)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"--threshold {threshold}: a Jaccard similarity in (0, 1]")
    rep = OverlapReport(str(train), str(val), threshold, examples=examples, near_checked=near)
    docs: list[np.ndarray] = []
    sigs: list[np.ndarray] = []
    exact: dict[bytes, list[int]] = {}
    buckets: dict[bytes, list[int]] = {}
    heads: list[str] = []
    for i, (doc, head) in enumerate(documents(Path(val), "val", bos_id)):
        heads.append(head)
        small = doc.astype(np.uint16) if doc.max(initial=0) < 1 << 16 else doc.astype(np.uint32)
        docs.append(small)
        exact.setdefault(_digest(doc), []).append(i)
        rep.val_tokens += int(doc.size)
        if not near:
            continue
        sig = signature(shingles(doc))
        sigs.append(sig)
        for key in _bands(sig):
            buckets.setdefault(key, []).append(i)
    rep.val_docs = len(docs)
    if not docs:
        raise ValueError(f"{val}: no validation documents")
    sig_arr = np.stack(sigs) if near else None
    for t, (doc, _) in enumerate(documents(Path(train), "train", bos_id)):
        rep.train_docs += 1
        for i in exact.get(_digest(doc), ()):
            if i not in rep.exact:
                rep.exact[i] = Match(i, t, 1.0, int(docs[i].size), docs[i][:8].tolist())
                rep.near.pop(i, None)
        if sig_arr is None:
            continue
        sh = shingles(doc)
        sig = signature(sh)
        cands = {i for key in _bands(sig) for i in buckets.get(key, ())} - rep.exact.keys()
        for i in sorted(cands):
            if float(np.mean(sig_arr[i] == sig)) < threshold - PREFILTER:
                continue
            j = jaccard(shingles(docs[i]), sh)
            if j >= threshold and (i not in rep.near or j > rep.near[i].jaccard):
                rep.near[i] = Match(i, t, round(j, 4), int(docs[i].size), docs[i][:8].tolist())
    sp = _tokenizer(Path(val), tokenizer)
    for m in (*rep.exact.values(), *rep.near.values()):
        m.preview = heads[m.val_doc] or (
            _readable(sp.decode(docs[m.val_doc][:24].tolist()))[:80] if sp is not None else ""
        )
    return rep


def _readable(text: str) -> str:
    """CaseOps text (a CaseOps tokenizer's pieces) back to its original case, where it decodes."""
    from pgolf.lab.data import caseops as caseops

    try:
        return caseops.decode(text.rstrip("".join(caseops.OPERATORS)))
    except caseops.CaseOpsError:  # cut inside an operator pair: show it as it is
        return text


def _tokenizer(val: Path, tokenizer: str | Path | None) -> Any:
    from pgolf.bpb import load_sp

    if tokenizer is not None:
        return load_sp(tokenizer)
    if val.suffix != ".bin" and not val.is_dir():
        return None
    try:
        return load_sp(D.find_tokenizer(val if val.is_dir() else val.parent))
    except (OSError, ValueError):  # no (single) tokenizer beside the shards: ids only
        return None


def verify_evidence(
    train: str | Path, val: str | Path, threshold: float = 0.5, near: bool = True
) -> tuple[bool, str]:
    """(clean, one line of evidence) for `pgolf verify` where a record ships its data
    preparation: run it on the prepared shards (`train` = `val` = the folder works) and report
    `Check("data_overlap", PASS if clean else FAIL, evidence)`."""
    d = check_overlap(train, val, threshold, examples=3, near=near).as_dict()
    pairs = [f"val {m['val_doc']}~train {m['train_doc']}" for m in d["exact_examples"]]
    pairs += [
        f"val {m['val_doc']}~train {m['train_doc']} J {m['jaccard']}" for m in d["near_examples"]
    ]
    return d["exact_docs"] + d["near_docs"] == 0, (
        f"{d['exact_docs']} exact + {d['near_docs']} near-duplicate of {d['val_docs']} val docs "
        f"in {d['train_docs']} train docs" + (f" (e.g. {', '.join(pairs[:3])})" if pairs else "")
    )
