"""Token shards and the training / validation token streams.

Shard format (the challenge's, spec pr1550-stack.md section 1.1): 256 little-endian int32 header
words (magic 20240520, version 1, token count, zeros) followed by the tokens as little-endian
uint16. `read_shard` memory-maps a shard after checking magic, version and exact size;
`write_shard` writes atomically (temporary file + rename).

Training loaders (section 1.6), both deterministic and resumable through `state_dict()`:

* `StreamLoader` ("stream", the TokenStream of PR #1550): one sequential stream over the sorted
  train shards, wrapping around at the end. Each call consumes `world_size * (B*T + 1)`
  consecutive tokens and rank r keeps the r-th slice, so the union over ranks of one call equals
  one rank's view of `world_size` calls.
* `ShuffledLoader` ("shuffled", the ShuffledSequenceLoader of PR #1493/#1394): shards are dealt
  round-robin to ranks; each rank has its own numpy PCG64 generator seeded from (seed, rank).
  Per epoch every shard gets a random phase in [0, min(T-1, n-T-1)] and a random order of its
  windows of T+1 tokens starting at phase + k*T; each sequence first picks a shard with
  probability proportional to its remaining windows, then pops that shard's next window. When
  every window was used, a new epoch reshuffles all shards. Departure from #1493: with fewer
  shards than ranks, every shard is cut into `world_size` contiguous parts and rank r samples
  from part r of each shard, so ranks still see disjoint tokens.

`load_val_tokens` concatenates the val shards and keeps the largest prefix of k*seq_len+1 tokens
(section 1.5).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

MAGIC = 20240520
VERSION = 1
HEADER_WORDS = 256
HEADER_BYTES = HEADER_WORDS * 4
MAX_TOKEN_ID = 65535


class ShardError(ValueError):
    """A token shard (or a folder of shards) that cannot be used as it is."""


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_shard(path: str | Path, tokens: Any) -> None:
    """Write `tokens` (any integer array-like) as a shard; ids must lie in [0, 65535]."""
    path = Path(path)
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ShardError(f"{path}: tokens must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ShardError(f"{path}: tokens must be integers, got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > MAX_TOKEN_ID):
        raise ShardError(
            f"{path}: token ids must be in [0, {MAX_TOKEN_ID}] to fit uint16 "
            f"(got min {int(arr.min())}, max {int(arr.max())}); use a vocabulary of <= 65536"
        )
    header = np.zeros(HEADER_WORDS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, arr.size
    atomic_write(path, header.tobytes() + arr.astype("<u2").tobytes())


def temp_path(path: Path) -> Path:
    """A temporary name beside `path`, unique to this process and call (pid + random suffix)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` to a unique temporary file beside `path`, then rename it over `path`; the
    temporary file is removed whatever happens (a full disk leaves nothing behind)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, blob: bytes) -> None:
    """Write `blob` to a temporary file beside `path`, then rename it over `path`."""
    write_atomically(path, lambda tmp: tmp.write_bytes(blob))


def read_header(path: str | Path) -> int:
    """Validate a shard's header and size; return its token count."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"{path}: no such shard file")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(
            f"{path}: {size} bytes is shorter than the {HEADER_BYTES}-byte header; "
            "the file is truncated or not a token shard (re-download or rebuild it)"
        )
    header = np.fromfile(path, dtype="<i4", count=HEADER_WORDS)
    if int(header[0]) != MAGIC:
        raise ShardError(
            f"{path}: bad magic {int(header[0])} (expected {MAGIC}); not a Parameter Golf shard"
        )
    if int(header[1]) != VERSION:
        raise ShardError(f"{path}: unsupported version {int(header[1])} (expected {VERSION})")
    n = int(header[2])
    expected = HEADER_BYTES + 2 * n
    if n < 0 or size != expected:
        raise ShardError(
            f"{path}: header says {n} tokens ({expected} bytes) but the file has {size} bytes; "
            "it is truncated or corrupt (re-download or rebuild it)"
        )
    return n


def read_shard(path: str | Path, vocab_size: int | None = None) -> np.ndarray:
    """Memory-map a shard's tokens (uint16, read-only) after validating it."""
    n = read_header(path)
    if n == 0:
        return np.zeros(0, dtype="<u2")
    arr = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,))
    if vocab_size is not None:
        top = int(arr.max())
        if top >= vocab_size:
            raise ShardError(
                f"{path}: token id {top} >= vocab_size {vocab_size}; the shard was made with a "
                "larger vocabulary: set VOCAB_SIZE to match its tokenizer"
            )
    return arr


_SHARD_RE = r"^.+_{split}_\d{{6}}\.bin$"


def find_shards(data_dir: str | Path, split: str) -> list[Path]:
    """`*_{split}_NNNNNN.bin` files in `data_dir`, sorted by name ([] when there are none)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"data folder {data_dir} does not exist: build it with `pgolf data default|corpus` "
            "or download it with `pgolf data fineweb`"
        )
    pat = re.compile(_SHARD_RE.format(split=re.escape(split)))
    return sorted(p for p in data_dir.iterdir() if p.is_file() and pat.match(p.name))


def find_tokenizer(data_dir: str | Path) -> Path:
    """The SentencePiece `.model` for a shard folder: in it, its parent, or `../../tokenizers/`.

    Where one place holds several models, the one whose name contains the folder's vocabulary
    size (`sp8192` -> `*8192*`) is taken.
    """
    data_dir = Path(data_dir)
    places = [data_dir, data_dir.parent, data_dir.parent.parent / "tokenizers"]
    m = re.search(r"sp(\d+)", data_dir.name)
    for place in places:
        models = sorted(place.glob("*.model")) if place.is_dir() else []
        if len(models) > 1 and m:
            same = [p for p in models if re.search(rf"(?<!\d){m.group(1)}(?!\d)", p.name)]
            models = same or models
        if len(models) > 1:  # a plain and a CaseOps tokenizer side by side: the folder's kind
            kind = [p for p in models if ("caseops" in p.name) == ("caseops" in data_dir.name)]
            models = kind or models
        if len(models) == 1:
            return models[0]
        if len(models) > 1:
            raise FileNotFoundError(
                f"several tokenizers in {place}: {[p.name for p in models]}; "
                "set TOKENIZER_PATH (data.tokenizer_path) to the one matching the shards"
            )
    raise FileNotFoundError(
        f"no SentencePiece .model found for {data_dir} (looked in "
        f"{', '.join(str(p) for p in places)}); set TOKENIZER_PATH (data.tokenizer_path)"
    )


def load_val_tokens(
    data_dir: str | Path, seq_len: int, max_tokens: int = 0, vocab_size: int | None = None
) -> torch.Tensor:
    """Concatenated val shards (int64), cut to the largest prefix of length k*seq_len + 1."""
    files = find_shards(data_dir, "val")
    if not files:
        raise ShardError(f"no *_val_NNNNNN.bin shards in {data_dir}")
    parts, n = [], 0
    for arr in [read_shard(f, vocab_size) for f in files]:  # every shard checked up front
        if max_tokens > 0:
            arr = arr[: max(0, max_tokens - n)]
        parts.append(np.asarray(arr, dtype=np.int64))
        n += arr.size
        if max_tokens > 0 and n >= max_tokens:
            break
    tokens = np.concatenate(parts)
    usable = ((tokens.size - 1) // seq_len) * seq_len
    if usable <= 0:
        raise ShardError(
            f"validation split in {data_dir} has {tokens.size} tokens (max_tokens={max_tokens}), "
            f"too few for one sequence of {seq_len}: lower seq_len or raise max_tokens"
        )
    return torch.from_numpy(tokens[: usable + 1].copy())


def sidecar_name(shard_name: str) -> str:
    """Byte sidecar of a token shard: `X_val_000000.bin` -> `X_val_bytes_000000.bin` (the
    naming of the record #1855's CaseOps preparation)."""
    stem, sep, num = shard_name.removesuffix(".bin").rpartition("_")
    return f"{stem}_bytes_{num}.bin" if sep else f"{shard_name}.bytes"


def load_val_bytes(data_dir: str | Path, n_tokens: int, bos_id: int = 1) -> np.ndarray | None:
    """Per-token original UTF-8 byte counts of the validation stream from its byte sidecars
    (`*_val_bytes_NNNNNN.bin`, the shard format, one count per token of the matching val shard;
    BOS and CaseOps operators 0), cut to the first `n_tokens` (as `load_val_tokens` cuts the
    tokens); None when the folder has no sidecar. A sidecar missing for one shard, of another
    length than its shard, or nonzero at a BOS is refused (ShardError naming the file)."""
    files = find_shards(data_dir, "val")
    sides = [f.with_name(sidecar_name(f.name)) for f in files]
    if not any(s.is_file() for s in sides):
        return None
    parts, n = [], 0
    for f, s in zip(files, sides, strict=True):
        if n >= n_tokens:
            break
        if not s.is_file():
            raise ShardError(
                f"{s}: byte sidecar missing for {f.name} while other val shards have one; "
                "rebuild the folder (`pgolf data corpus --caseops`) or remove every sidecar"
            )
        tok, nb = read_shard(f), read_shard(s)
        if nb.size != tok.size:
            raise ShardError(
                f"{s}: byte sidecar holds {nb.size} counts but its shard {f.name} holds "
                f"{tok.size} tokens; it belongs to another build: rebuild the folder"
            )
        k = min(tok.size, n_tokens - n)
        if np.any(np.asarray(nb[:k])[np.asarray(tok[:k]) == bos_id]):
            raise ShardError(
                f"{s}: nonzero byte count at a BOS token of {f.name}; it is not this shard's "
                "sidecar: rebuild the folder"
            )
        parts.append(np.asarray(nb[:k], dtype=np.int32))
        n += k
    if n < n_tokens:
        raise ShardError(f"{data_dir}: byte sidecars cover {n} of {n_tokens} val tokens")
    return np.concatenate(parts)


# ----------------------------------------------------------------------------------------------
# Training loaders


def _to_xy(chunk: np.ndarray, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.from_numpy(chunk.astype(np.int64))
    return t[:-1].reshape(rows, -1), t[1:].reshape(rows, -1)


class _Loader:
    kind = ""

    def __init__(self, files: list[Path], vocab_size: int | None) -> None:
        self.files = files
        self.vocab_size = vocab_size
        self.shards = [read_shard(f, vocab_size) for f in files]  # headers + max id, up front

    def _check_state(self, d: dict[str, Any]) -> None:
        if d.get("kind") != self.kind:
            raise ValueError(f"loader state is for kind {d.get('kind')!r}, not {self.kind!r}")
        names = [f.name for f in self.files]
        if d.get("files") != names:
            raise ValueError(
                f"loader state was saved over shards {d.get('files')} but this loader reads "
                f"{names}: resume with the same data folder and train_shards"
            )


class StreamLoader(_Loader):
    """Sequential wrap-around stream (PR #1550 TokenStream), one slice per rank."""

    kind = "stream"

    def __init__(self, files, rank, world_size, seq_len, local_batch_seqs, vocab_size=None):
        super().__init__(files, vocab_size)
        if sum(s.size for s in self.shards) == 0:
            raise ShardError(f"train shards {[str(f) for f in files]} hold no tokens")
        self.rank, self.world_size = rank, world_size
        self.rows, self.span = local_batch_seqs, local_batch_seqs * seq_len + 1
        self.file_idx, self.pos = 0, 0

    def _walk(self, n: int, keep: bool) -> np.ndarray | None:
        out = []
        while n > 0:
            shard = self.shards[self.file_idx]
            if self.pos >= shard.size:
                self.file_idx, self.pos = (self.file_idx + 1) % len(self.shards), 0
                continue
            k = min(n, shard.size - self.pos)
            if keep:
                out.append(np.asarray(shard[self.pos : self.pos + k]))
            self.pos += k
            n -= k
        return np.concatenate(out) if keep else None

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._walk(self.rank * self.span, keep=False)
        chunk = self._walk(self.span, keep=True)
        self._walk((self.world_size - self.rank - 1) * self.span, keep=False)
        return _to_xy(chunk, self.rows)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "files": [f.name for f in self.files],
            "file_idx": self.file_idx,
            "pos": self.pos,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self._check_state(d)
        self.file_idx, self.pos = int(d["file_idx"]), int(d["pos"])


class ShuffledLoader(_Loader):
    """Random windows from this rank's shards (PR #1493 ShuffledSequenceLoader)."""

    kind = "shuffled"

    def __init__(self, files, rank, world_size, seq_len, local_batch_seqs, seed, vocab_size=None):
        super().__init__(files, vocab_size)
        if seed < 0:
            raise ValueError(f"shuffled loader needs a non-negative seed, got {seed}")
        self.seq_len, self.rows, self.seed = seq_len, local_batch_seqs, seed
        # segments: (shard index, start, end) owned by this rank
        if len(files) >= world_size:
            segs = [(i, 0, self.shards[i].size) for i in range(rank, len(files), world_size)]
        else:
            segs = []
            for i, s in enumerate(self.shards):
                cut = [s.size * r // world_size for r in range(world_size + 1)]
                segs.append((i, cut[rank], cut[rank + 1]))
        self.segments = [g for g in segs if g[2] - g[1] >= seq_len + 1]
        if not self.segments:
            raise ShardError(
                f"rank {rank}/{world_size}: no train shard part holds one window of "
                f"{seq_len + 1} tokens in {[str(f) for f in files]}; use more data, a smaller "
                "seq_len or the 'stream' loader"
            )
        self.rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, rank])))
        self.epoch = 0
        self._new_epoch()

    def _new_epoch(self) -> None:
        self.epoch_rng_state = self.rng.bit_generator.state
        T = self.seq_len
        self.phases, self.orders = [], []
        for _, a, b in self.segments:
            n = b - a
            phase = int(self.rng.integers(0, min(T - 1, n - T - 1) + 1))
            self.phases.append(phase)
            self.orders.append(self.rng.permutation((n - 1 - phase) // T))
        self.ptrs = [0] * len(self.segments)

    def _pick(self) -> tuple[int, int]:
        remaining = np.array([len(o) - p for o, p in zip(self.orders, self.ptrs)], dtype=np.int64)
        total = int(remaining.sum())
        if total == 0:
            self.epoch += 1
            self._new_epoch()
            return self._pick()
        r = int(self.rng.integers(0, total))
        s = int(np.searchsorted(np.cumsum(remaining), r, side="right"))
        w = int(self.orders[s][self.ptrs[s]])
        self.ptrs[s] += 1
        return s, self.segments[s][1] + self.phases[s] + w * self.seq_len

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for _ in range(self.rows):
            s, start = self._pick()
            i = self.segments[s][0]
            rows.append(np.asarray(self.shards[i][start : start + self.seq_len + 1]))
        t = torch.from_numpy(np.stack(rows).astype(np.int64))
        return t[:, :-1], t[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "files": [f.name for f in self.files],
            "seed": self.seed,
            "epoch": self.epoch,
            "epoch_rng": self.epoch_rng_state,
            "rng": self.rng.bit_generator.state,
            "ptrs": list(self.ptrs),
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self._check_state(d)
        if len(d["ptrs"]) != len(self.segments):
            raise ValueError("loader state does not match this rank's shard segments")
        self.rng.bit_generator.state = d["epoch_rng"]
        self._new_epoch()  # regenerates that epoch's phases and orders
        self.epoch, self.ptrs = int(d["epoch"]), [int(p) for p in d["ptrs"]]
        self.rng.bit_generator.state = d["rng"]


def make_train_loader(
    data_dir: str | Path,
    kind: str,
    rank: int,
    world_size: int,
    seq_len: int,
    local_batch_seqs: int,
    seed: int,
    train_shards: int = 0,
    vocab_size: int | None = None,
) -> StreamLoader | ShuffledLoader:
    """A training loader over the (first `train_shards`, 0 = all) train shards of `data_dir`."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    if seq_len <= 0 or local_batch_seqs <= 0:
        raise ValueError(f"seq_len ({seq_len}) and local_batch_seqs must be positive")
    files = find_shards(data_dir, "train")
    if train_shards > 0:
        files = files[:train_shards]
    if not files:
        raise ShardError(
            f"no *_train_NNNNNN.bin shards in {data_dir}: build them with `pgolf data ...`"
        )
    if kind == "stream":
        return StreamLoader(files, rank, world_size, seq_len, local_batch_seqs, vocab_size)
    if kind == "shuffled":
        return ShuffledLoader(files, rank, world_size, seq_len, local_batch_seqs, seed, vocab_size)
    raise ValueError(f"unknown loader kind {kind!r}; choose 'stream' or 'shuffled'")
