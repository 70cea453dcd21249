"""Tokenizer and exact bits per byte: SentencePiece training with the official exporter's settings
(spec data.md, pr1550-stack.md section 1.4), per-token byte tables, stream byte counts, BPB.

The rule is the challenge's evaluation rule (spec pr1550-stack.md section 2, the
`build_sentencepiece_luts` of the records): a normal piece counts the UTF-8 bytes of its text
without one leading U+2581 ('▁'); that '▁' is a flag worth one byte unless the previous token is
a boundary token; byte-fallback pieces `<0xNN>` count one byte; control, unknown and unused pieces
(and ids beyond the SentencePiece vocabulary) count zero and are boundaries. With the exporter's
`add_dummy_prefix=False` the bytes of the targets after each BOS then sum to the UTF-8 length of
`sp.decode(ids)` of that document (proven in tests/test_bpb.py).

A tokenizer with no standalone '▁' piece (GitHub issue #897) encodes a space that cannot merge as
three byte-fallback tokens worth three bytes, overstating the byte count of the text (its decoded
text shows '▁' where the source had a space); `build_byte_tables` refuses it unless
`allow_missing_space=True`, as PR #1394/#1493 assert. `StreamCounter` gives the dataset
statistics (documents, tokens, bytes, byte-fallback share) with the same rule.

`check_tokenizer` refuses a tokenizer whose sha256 differs from the one the shard folder's
`manifest.json` lists (a same-size vocabulary with other pieces silently gives another bpb).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

SPACE = "\u2581"


@dataclass(frozen=True)
class ByteTables:
    base_bytes: torch.Tensor
    """int32 [V]: bytes of the piece without its leading '▁' (1 for byte-fallback pieces)."""
    has_leading_space: torch.Tensor
    """bool [V]: the piece starts with '▁' (worth one byte after a non-boundary token)."""
    is_boundary: torch.Tensor
    """bool [V]: control / unknown / unused / out-of-vocabulary ids (0 bytes)."""
    sidecar: torch.Tensor | None = None
    """int32 [N] or None: bytes of each token of the validation stream, by position, from the
    folder's byte sidecar (CaseOps); when set it replaces the per-id rule (`with_sidecar`)."""

    @property
    def vocab_size(self) -> int:
        return int(self.base_bytes.numel())

    def to(self, device: torch.device | str) -> ByteTables:
        return ByteTables(
            self.base_bytes.to(device),
            self.has_leading_space.to(device),
            self.is_boundary.to(device),
            None if self.sidecar is None else self.sidecar.to(device),
        )

    def numpy(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            self.base_bytes.cpu().numpy(),
            self.has_leading_space.cpu().numpy(),
            self.is_boundary.cpu().numpy(),
        )


def load_sp(sp_or_path: Any) -> Any:
    """A SentencePieceProcessor from a processor or a `.model` path (clear error if missing)."""
    import sentencepiece as spm

    if isinstance(sp_or_path, spm.SentencePieceProcessor):
        return sp_or_path
    path = Path(sp_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {path} not found: pass a SentencePiece .model file")
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise ValueError(f"{path} is not a SentencePiece model: {e}") from e


def _listed_sha(m: dict, name: str) -> str | None:
    """The tokenizer sha256 a manifest lists for shard folder `name`: a pgolf build
    (`variants[name]`), a single-tokenizer corpus (`tokenizer.sha256`, bench-v1) or the hub's
    export (`datasets[].tokenizer_name` -> `tokenizers[]`)."""
    v = m.get("variants", {}).get(name) if isinstance(m.get("variants"), dict) else None
    if isinstance(v, dict):
        file = (v.get("tokenizer") or {}).get("file")
        return (v.get("files") or {}).get(file) or (v.get("recipe") or {}).get("tokenizer_sha256")
    if isinstance(m.get("tokenizer"), dict) and isinstance(m["tokenizer"].get("sha256"), str):
        return m["tokenizer"]["sha256"]
    ds = [d for d in m.get("datasets", []) if isinstance(d, dict) and d.get("name") == name]
    toks = [
        t
        for t in m.get("tokenizers", [])
        if isinstance(t, dict) and ds and t.get("name") == ds[0].get("tokenizer_name")
    ]
    if toks:
        sha, rel = toks[0].get("sha256"), toks[0].get("model_path") or toks[0].get("path")
        if isinstance(sha, dict):
            sha = sha.get(rel)
        return sha if isinstance(sha, str) else None
    return None


def manifest_tokenizer_sha(data_dir: str | Path) -> tuple[str, Path] | None:
    """(sha256, manifest path) of the tokenizer listed for a shard folder by the `manifest.json`
    in it or up to two folders above it; None when no manifest lists one."""
    d = Path(data_dir).resolve()
    for place in (d, d.parent, d.parent.parent):
        mf = place / "manifest.json"
        if not mf.is_file():
            continue
        try:
            m = json.loads(mf.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{mf}: unreadable manifest ({e}); repair or delete it") from None
        if isinstance(m, dict) and (sha := _listed_sha(m, d.name)):
            return sha, mf
    return None


def check_tokenizer(data_dir: str | Path, tokenizer: str | Path) -> None:
    """Refuse a missing tokenizer, or one whose sha256 is not the one listed for the shards."""
    from pgolf.data import sha256_file

    tok = Path(tokenizer)
    if not tok.is_file():
        raise FileNotFoundError(
            f"tokenizer {tok} is missing: set TOKENIZER_PATH (data.tokenizer_path) or --tokenizer "
            f"to the SentencePiece .model the shards in {data_dir} were made with"
        )
    listed = manifest_tokenizer_sha(data_dir)
    if listed and (got := sha256_file(tok)) != listed[0]:
        raise ValueError(
            f"tokenizer {tok} is not the one the shards in {data_dir} were made with: its sha256 "
            f"{got[:12]}... differs from {listed[0][:12]}... listed in {listed[1]}; pass the "
            "matching tokenizer (TOKENIZER_PATH / --tokenizer) or rebuild the shards with this one"
        )


def build_byte_tables(
    sp_or_path: Any, vocab_size: int | None = None, allow_missing_space: bool = False
) -> ByteTables:
    """Tables of size max(sp vocab, vocab_size) for `target_bytes`."""
    sp = load_sp(sp_or_path)
    n_sp = int(sp.vocab_size())
    size = max(n_sp, int(vocab_size or 0))
    base = np.zeros(size, dtype=np.int32)
    lead = np.zeros(size, dtype=bool)
    boundary = np.ones(size, dtype=bool)
    for i in range(n_sp):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith(SPACE):
            lead[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    space_id = sp.piece_to_id(SPACE)
    if not allow_missing_space and (space_id == sp.unk_id() or boundary[space_id]):
        raise ValueError(
            f"tokenizer {sp_or_path} has no standalone '{SPACE}' piece: a space it cannot merge "
            "becomes 3 byte-fallback tokens counted as 3 bytes, so bits per byte would be too "
            "low (issue #897). Retrain it on text with spaces, or pass allow_missing_space=True"
        )
    return ByteTables(torch.from_numpy(base), torch.from_numpy(lead), torch.from_numpy(boundary))


def with_sidecar(
    tables: ByteTables, data_dir: str | Path, n_tokens: int, required: bool = False
) -> ByteTables:
    """`tables` with the validation stream's byte sidecar (its first `n_tokens` counts) when the
    shard folder has one (`pgolf.data.load_val_bytes`); `required` (data.caseops): refuse a
    folder without one, since the per-id rule overcounts CaseOps text (operators are 3 bytes)."""
    from pgolf.data import ShardError, load_val_bytes

    side = load_val_bytes(data_dir, n_tokens)
    if side is None:
        if required:
            raise ShardError(
                f"data.caseops is on but {data_dir} has no byte sidecar (*_val_bytes_NNNNNN.bin): "
                "build the data with `pgolf data corpus --caseops` (or `data default --caseops`)"
            )
        return tables
    from pgolf.dist import log0

    log0(f"val_bytes_source:sidecar tokens:{side.size} bytes:{int(side[1:].sum(dtype=np.int64))}")
    return replace(tables, sidecar=torch.from_numpy(side))


def target_bytes(
    prev_ids: torch.Tensor,
    target_ids: torch.Tensor,
    tables: ByteTables,
    pos: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bytes of each target given its preceding token (elementwise; int32, same shape). With a
    byte sidecar the count is read at the targets' positions `pos` in the validation stream."""
    if tables.sidecar is not None:
        if pos is None:
            raise ValueError(
                "these byte tables carry a validation byte sidecar (CaseOps): pass the targets' "
                "stream positions (pos=) to count their bytes"
            )
        return tables.sidecar[pos.to(tables.sidecar.device).long()]
    prev_ids, target_ids = prev_ids.long(), target_ids.long()
    extra = tables.has_leading_space[target_ids] & ~tables.is_boundary[prev_ids]
    return tables.base_bytes[target_ids] + extra.to(torch.int32)


def count_bytes(tokens: np.ndarray, tables: ByteTables, chunk: int = 1 << 24) -> int:
    """Total bytes of targets `tokens[1:]` of a 1-D stream (numpy, chunked; eval's count). With
    a byte sidecar, `tokens` is taken as the start of the validation stream."""
    if tables.sidecar is not None:
        if len(tokens) > tables.sidecar.numel():
            raise ValueError(f"{len(tokens)} tokens, but the byte sidecar covers fewer")
        return int(tables.sidecar[1 : len(tokens)].sum(dtype=torch.int64))
    base, lead, boundary = tables.numpy()
    total = 0
    for lo in range(1, len(tokens), chunk):
        tgt = np.asarray(tokens[lo : lo + chunk], dtype=np.int64)
        prev = np.asarray(tokens[lo - 1 : lo - 1 + tgt.size], dtype=np.int64)
        total += int(base[tgt].sum(dtype=np.int64))
        total += int(np.count_nonzero(lead[tgt] & ~boundary[prev]))
    return total


class StreamCounter:
    """Counts over a token stream fed in consecutive pieces (shards): tokens, documents (BOS),
    bytes by the eval rule (each target after the first, across piece borders), byte-fallback
    share and vocabulary use. Without a tokenizer only the token counts are kept."""

    def __init__(self, sp: Any = None, bos_id: int = 1) -> None:
        self.counts = np.zeros(1 << 16, dtype=np.int64)
        self.bos_id, self.bytes, self.prev = bos_id, 0, None
        self.tables = None if sp is None else build_byte_tables(sp, allow_missing_space=True)
        n = 0 if sp is None else int(sp.vocab_size())
        self.is_byte = np.array([sp.is_byte(i) for i in range(n)], dtype=bool)

    def feed(self, tokens: np.ndarray) -> None:
        if not len(tokens):
            return
        self.counts += np.bincount(np.asarray(tokens, dtype=np.int64), minlength=1 << 16)
        if self.tables is not None:
            if self.prev is not None:
                self.bytes += count_bytes(np.array([self.prev, tokens[0]]), self.tables)
            self.bytes += count_bytes(tokens, self.tables)
        self.prev = int(tokens[-1])

    def summary(self) -> dict[str, Any]:
        tokens = int(self.counts.sum())
        nb = self.bytes if self.tables is not None else None
        fb = int(self.counts[: len(self.is_byte)][self.is_byte].sum())
        return {
            "docs": int(self.counts[self.bos_id]),
            "tokens": tokens,
            "bytes": nb,
            "tokens_per_byte": round((tokens - 1) / nb, 6) if nb else None,
            "byte_fallback_share": round(fb / tokens, 6) if nb is not None and tokens else None,
            "vocab_used": int(np.count_nonzero(self.counts)),
        }


def bits_per_byte(nll_sum_nats: float, n_tokens: int, n_bytes: int) -> float:
    """(nll_sum / n_tokens / ln 2) * (n_tokens / n_bytes), in float64."""
    if n_tokens <= 0 or n_bytes <= 0:
        raise ValueError(
            f"bits_per_byte needs positive counts (tokens={n_tokens}, bytes={n_bytes})"
        )
    loss = float(nll_sum_nats) / float(n_tokens)
    return loss / math.log(2.0) * (float(n_tokens) / float(n_bytes))
