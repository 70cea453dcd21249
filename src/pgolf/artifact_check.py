"""Guards for the artifact loader: limits, reading a regular file of the declared size only,
bounded decompression, and the metadata config checked against the stored tensors.

Every function here raises `ArtifactError` (a ValueError naming the file and the fix) for hostile
or malformed input, and none allocates more than a bound derived from the limits below before the
input has been checked against them. The config check compares the model's parameter shapes,
built on the meta device (no memory), with the artifact's tensors before a real model is built.
Ours; no credits needed beyond the container in `artifact.py`.
"""

from __future__ import annotations

import lzma
import math
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields
from typing import Any
from unittest import mock

import brotli
import numpy as np
import torch
import zstandard

from pgolf import config as C

MAX_RAW_BYTES = 128 << 20
"""Largest payload accepted (a 16 MB-cap artifact's payload is well under 64 MiB)."""
MAX_ELEMENTS = 1 << 26
"""Most tensor elements in one artifact (4x a challenge-sized model stored as 2-bit codes)."""
MAX_TENSORS = 4096
MAX_META_BYTES = 1 << 20
MAX_LAYERS = 128  # physical layers; records use 9-11 (a meta-device build costs ~4 ms each)
MAX_TUPLE = 256
MAX_EVAL_TOKENS = 1 << 21  # eval_seq_len * val_batch_seqs (PR #1550 uses 2048 * 32 = 2^16)
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
CODEC_IDS = {"brotli": 1, "lzma": 2, "zstd": 3, "rans": 4, "crans": 5}  # rans/crans: artifact.py
ENTROPY_CODECS = ("rans", "crans")  # int8 codes entropy-coded (rans.py, crans.py), the rest brotli
CODECS = tuple(CODEC_IDS)
LOWRANK_SUFFIXES = (".lqer.a", ".lqer.b")
"""A low-rank term of tensor "<name>" [R, C] (R = shape[0], 1 for a vector; C = the rest) is the
pair "<name>.lqer.a" A [R, r] and "<name>.lqer.b" B [r, C], added back as W + A @ B (lqer.py)."""
PROMOTED_TAG = ".awq."
"""A promoted column group (AWQ-lite, PR #1908) of int tensor "<name>" [R, C] is the int tensor
"<name>.awq.<start>" [R, g]: columns start..start+g of <name> on their own grid and row scales
(start a multiple of g, in decimal without leading zeros), those columns of <name> stored as 0."""
_PROMOTED = re.compile(r"(.+)\.awq\.(0|[1-9][0-9]{0,9})")


class ArtifactError(ValueError):
    """A file or blob that is not a valid pgolf artifact (message names the source and problem)."""


def max_stream_bytes(raw: int) -> int:
    """Largest compressed stream a payload of `raw` bytes can legitimately need (incompressible
    data grows by well under 1/256 with brotli, LZMA2 and zstd)."""
    return raw + raw // 256 + 4096


# ---- reading ----------------------------------------------------------------------------------


def _read_exact(f: Any, n: int) -> bytes:
    parts, left = [], n
    while left > 0:
        b = f.read(min(left, 1 << 24))
        if not b:
            break
        parts.append(b)
        left -= len(b)
    return b"".join(parts)


def read_regular(
    path: str | os.PathLike, head_len: int, total_of: Callable[[bytes, int], int], max_bytes: int
) -> bytes:
    """The bytes of a regular file whose size matches its header: stat first (a FIFO or device is
    refused before it is opened, so nothing blocks or streams forever), read `head_len` bytes,
    ask `total_of(head, size)` for the total the header declares (it raises on a bad header),
    then read exactly that many bytes."""
    src = str(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(
                f"{src}: not a regular file (a directory, FIFO or device); give an artifact file"
            )
        if st.st_size > max_bytes:
            raise ArtifactError(f"{src}: {st.st_size} bytes exceeds the {max_bytes}-byte limit")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
                raise ArtifactError(f"{src}: the file changed while it was opened; try again")
            head = _read_exact(f, min(head_len, st.st_size))
            total = total_of(head, st.st_size)
            rest = _read_exact(f, total - len(head))
            if len(head) + len(rest) != total or f.read(1):
                raise ArtifactError(f"{src}: the file changed size while it was read; try again")
    except OSError as e:
        raise ArtifactError(f"{src}: cannot read artifact: {e.strerror or e}") from None
    return head + rest


# ---- decompression ----------------------------------------------------------------------------


def compress(data: bytes, codec: str) -> bytes:
    """Compress with the codec's strongest setting (brotli 11, LZMA2 9e, zstd 22)."""
    if codec == "brotli":
        return brotli.compress(data, quality=11)
    if codec == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    if codec == "zstd":
        return zstandard.ZstdCompressor(level=22).compress(data)
    raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")


def decompress(stream: bytes, codec: str, limit: int) -> bytes:
    """Decompress a whole stream into at most limit+1 bytes: a stream that decodes to more is
    stopped there (a decompression bomb never expands), one that ends early is an error."""
    if codec == "brotli":
        d = brotli.Decompressor()
        try:
            out = d.process(stream, output_buffer_limit=limit + 1)
        except TypeError:  # brotli < 1.2 has no output bound: refuse rather than risk a bomb
            raise ValueError("brotli >= 1.2 is needed to read artifacts safely") from None
        done = d.is_finished()
    elif codec == "lzma":
        d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
        out = d.decompress(stream, max_length=limit + 1)
        done = d.eof and not d.unused_data
    elif codec == "zstd":
        dctx = zstandard.ZstdDecompressor(max_window_size=1 << 27)
        buf, n = bytearray(limit + 1), 0  # one buffer: never more than limit+1 bytes out
        with dctx.stream_reader(stream, read_across_frames=True) as r:
            while n < len(buf) and (k := r.readinto(memoryview(buf)[n:])):
                n += k
        out = memoryview(buf)[:n]
        done = True  # a short stream shows as a short output; the frame checks its own end
    else:
        raise ValueError(f"unknown codec {codec!r}")
    if len(out) > limit:
        raise ValueError(f"decodes to more than the {limit} bytes the header declares")
    if not done:
        raise ValueError(f"{codec} stream is incomplete or has trailing data")
    return out


# ---- metadata config --------------------------------------------------------------------------


def _fits(kind: str, v: Any) -> bool:
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool) and abs(v) < 1 << 53
    if kind == "float":
        ok = isinstance(v, int | float) and not isinstance(v, bool)
        return ok and math.isfinite(v) and abs(v) < 1e30
    if kind == "str":
        return isinstance(v, str) and len(v) <= 4096
    if kind.startswith("tuple[int"):
        return isinstance(v, list) and len(v) <= MAX_TUPLE and all(_fits("int", x) for x in v)
    return False


def config_from_meta(meta: Mapping[str, Any], source: str) -> C.RunConfig:
    """The run config stored in an artifact's metadata, type-checked (no unknown sections or keys,
    no wrong types) and validated; ArtifactError otherwise."""
    fail = lambda msg: ArtifactError(f"{source}: metadata config {msg}")  # noqa: E731
    d = meta.get("config")
    if not isinstance(d, dict):
        raise ArtifactError(f"{source}: artifact has no model config in its metadata; re-quantize")
    extra = sorted(set(d) - {"preset", *C.SECTIONS})
    if extra:
        raise fail(f"has unknown sections {extra[:5]}: not written by this pgolf")
    if not isinstance(d.get("preset", ""), str):
        raise fail("field 'preset' must be a string")
    for section, cls in C.SECTION_CLASSES.items():
        sub = d.get(section, {})
        if not isinstance(sub, dict):
            raise fail(f"section {section!r} must be an object")
        kinds = {f.name: str(f.type) for f in fields(cls)}
        for k, v in sub.items():
            if k not in kinds:
                raise fail(f"has an unknown key {section}.{str(k)[:40]}")
            if not _fits(kinds[k], v):
                raise fail(f"{section}.{k} = {str(v)[:40]} is not a valid {kinds[k]}")
    try:
        cfg = C.from_dict(d)
        C.validate(cfg)
    except (TypeError, ValueError) as e:
        raise fail(f"is invalid: {e}") from None
    m, e = cfg.model, cfg.eval
    if m.num_layers > MAX_LAYERS:
        raise fail(f"num_layers {m.num_layers} exceeds {MAX_LAYERS}")
    if e.eval_seq_len * e.val_batch_seqs > MAX_EVAL_TOKENS:
        raise fail(f"eval_seq_len * val_batch_seqs exceeds {MAX_EVAL_TOKENS} tokens")
    return cfg


def _keep(t: torch.Tensor, *args: Any, **kw: Any) -> torch.Tensor:
    return t


def _fits_b(shape: tuple[int, ...], cols: int) -> bool:
    """A low-rank B [r, cols], or the same stored as rows of a group size (quant.lqer_group)."""
    return shape[1] == cols or (shape[0] * shape[1]) % cols == 0


def check_shapes(cfg: C.RunConfig, tensors: Iterable[Any], source: str) -> None:
    """The model the config describes has exactly the artifact's tensor names and shapes: checked
    on the meta device (no memory), and only after each layer showed a tensor of its own, so the
    cost is bounded by the artifact's size, not by what its config claims."""
    from pgolf.model import GPT

    got = {t.name: tuple(int(d) for d in t.shape) for t in tensors}
    layers = {int(m.group(1)) for n in got if (m := re.match(r"blocks\.(\d+)\.", n))}
    nl = cfg.model.num_layers
    if not set(range(nl)) <= layers:
        raise ArtifactError(
            f"{source}: config says {nl} layers but the artifact stores blocks "
            f"{sorted(layers)[:8]}...: config and weights disagree"
        )
    try:  # normal_ on meta tensors costs seconds of lazy imports; on meta it has nothing to do
        with torch.device("meta"), mock.patch.object(torch.nn.init, "normal_", _keep):
            want = {k: tuple(v.shape) for k, v in GPT(cfg.model).state_dict().items()}
    except (AssertionError, RuntimeError, ValueError, TypeError) as e:
        raise ArtifactError(f"{source}: metadata config builds no model: {e}") from None
    for k in [k for k in got if k.endswith(LOWRANK_SUFFIXES)]:  # low-rank terms (lqer)
        shape, w = got.pop(k), want.get(k[:-7])
        if not (
            w
            and len(shape) == 2
            and (shape[0] == w[0] if k[-1] == "a" else _fits_b(shape, math.prod(w[1:])))
        ):
            raise ArtifactError(
                f"{source}: low-rank term {k!r} {shape} does not fit "
                f"{k[:-7]!r} {w}; re-quantize the run"
            )
    for k in [k for k in got if promoted_of(k)]:  # promoted column groups (AWQ-lite)
        shape, w = got.pop(k), want.get(promoted_of(k)[0])
        try:
            if w is None:
                raise ValueError(f"promoted columns {k[:80]!r} belong to no model tensor")
            promoted_cols(k, shape, w)
        except ValueError as e:
            raise ArtifactError(f"{source}: {e}; re-quantize the run") from None
    diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    if diff:
        k = diff[0]
        raise ArtifactError(
            f"{source}: weights do not fit the config in its metadata ({len(diff)} tensors differ, "
            f"e.g. {k!r}: stored {got.get(k)}, config wants {want.get(k)}); re-quantize the run"
        )


def lowrank_rank(name: str, a_shape: Any, b_shape: Any, base_shape: Any) -> int:
    """The rank r of the low-rank term A [R, r] @ B [r, C] of the tensor `name` shaped
    `base_shape`; ValueError unless both factors are matrices, A has the tensor's R rows, B its
    C = numel / R columns, their inner sizes agree and 1 <= r <= min(R, C) (a larger rank adds
    nothing a rank-min(R, C) term cannot, a rank of 0 nothing at all). The one rule for every
    reader of low-rank terms (the artifact loader, `lqer.add_back`)."""
    a, b, w = (tuple(int(d) for d in s) for s in (a_shape, b_shape, base_shape))
    rows = w[0] if len(w) > 1 else 1
    cols = math.prod(w) // rows if rows else 0
    r = a[1] if len(a) == 2 else -1
    if len(b) == 2 and r > 0 and b != (r, cols) and b[0] * b[1] == r * cols:
        b = (r, cols)  # B stored as rows of quant.lqer_group entries (#1855's grouped scales)
    if len(a) != 2 or len(b) != 2 or (a[0], b) != (rows, (r, cols)):
        raise ValueError(
            f"low-rank term of {name!r} {w}: factors {a} @ {b} must be [{rows}, r] @ [r, {cols}]"
        )
    if not 1 <= r <= min(rows, cols):
        raise ValueError(
            f"low-rank term of {name!r} {w}: rank {r} outside 1..{min(rows, cols)} (min(R, C))"
        )
    return r


def check_lowrank(tensors: Iterable[Any], source: str) -> None:
    """Every low-rank term among an artifact's tensors (`LOWRANK_SUFFIXES`): both factors and
    their tensor stored (the tensor not itself a factor), shapes and rank by `lowrank_rank`,
    values finite; ArtifactError naming `source` and the fix otherwise. Cost: the factors only."""
    a_sfx, b_sfx = LOWRANK_SUFFIXES
    by_name = {t.name: t for t in tensors}
    for name, t in by_name.items():
        sfx = next((x for x in LOWRANK_SUFFIXES if name.endswith(x)), None)
        if sfx is None:
            continue
        base = name[: -len(sfx)]
        a, b, w = by_name.get(base + a_sfx), by_name.get(base + b_sfx), by_name.get(base)
        try:
            if (
                a is None
                or b is None
                or w is None
                or base.endswith(LOWRANK_SUFFIXES)
                or promoted_of(base)
            ):
                raise ValueError(
                    f"low-rank factor {name[:80]!r} has no partner factor or no tensor "
                    f"{base[:80]!r} of its own"
                )
            lowrank_rank(base, a.shape, b.shape, w.shape)
            vals = [getattr(t, f) for f in ("scales", "data")]
            if not all(bool(torch.isfinite(v.float()).all()) for v in vals if v is not None):
                raise ValueError(f"low-rank factor {name[:80]!r} has values that are not finite")
        except ValueError as e:
            raise ArtifactError(f"{source}: {e}; re-quantize the run") from None


def promoted_of(name: str) -> tuple[str, int] | None:
    """(tensor name, first column) of a promoted column group's name, None for any other name."""
    m = _PROMOTED.fullmatch(name)
    return (m.group(1), int(m.group(2))) if m else None


def promoted_cols(name: str, shape: Any, base_shape: Any) -> tuple[int, int]:
    """(start, width) of the promoted group `name` shaped `shape` in a tensor shaped
    `base_shape`; ValueError unless it is [R, g] with the tensor's R rows, 1 <= g, start a
    multiple of g and start + g <= C. The one rule for every reader (the artifact loader,
    `check_shapes`, `quant.dequantize_state`)."""
    got = promoted_of(name)
    a, w = tuple(int(d) for d in shape), tuple(int(d) for d in base_shape)
    rows = w[0] if len(w) > 1 else 1
    cols = math.prod(w) // rows if rows else 0
    if got is None or len(a) != 2 or a[0] != rows or a[1] < 1:
        raise ValueError(f"promoted columns {name[:80]!r} {a} must be [{rows}, g] of {w}")
    start, width = got[1], a[1]
    if start % width or start + width > cols:
        raise ValueError(
            f"promoted columns {name[:80]!r}: group {start}..{start + width} is not a whole "
            f"group of {width} columns within the tensor's {cols}"
        )
    return start, width


def check_promoted(tensors: Iterable[Any], source: str) -> None:
    """Every promoted column group among an artifact's tensors: an int tensor whose tensor is
    stored, is an int tensor on fewer bits and is neither a low-rank factor nor promoted itself;
    shape by `promoted_cols`; one group width per tensor; the tensor's own codes 0 in those
    columns. ArtifactError naming `source` and the fix otherwise. Cost: the groups' columns."""
    by_name = {t.name: t for t in tensors}
    width: dict[str, int] = {}
    for name, t in by_name.items():
        if (got := promoted_of(name)) is None:
            continue
        base = by_name.get(got[0])
        try:
            if (
                base is None
                or base.kind != "int"
                or t.kind != "int"
                or promoted_of(base.name)
                or base.name.endswith(LOWRANK_SUFFIXES)
            ):
                raise ValueError(
                    f"promoted columns {name[:80]!r} have no int tensor {got[0][:80]!r} "
                    "of their own"
                )
            if t.bits <= base.bits:
                raise ValueError(
                    f"promoted columns {name[:80]!r} on {t.bits} bits, not more than the "
                    f"tensor's {base.bits}"
                )
            start, g = promoted_cols(name, t.shape, base.shape)
            if width.setdefault(base.name, g) != g:
                raise ValueError(f"promoted groups of {base.name[:80]!r} differ in width")
            if bool(base.codes.reshape(t.shape[0], -1)[:, start : start + g].any()):
                raise ValueError(
                    f"{base.name[:80]!r} stores codes in its promoted columns {start}..{start + g}"
                )
        except ValueError as e:
            raise ArtifactError(f"{source}: {e}; re-quantize the run") from None


def require_finite(label: str, scores: Mapping[str, Any]) -> None:
    """A NaN/inf score is an error (broken weights), never a result."""
    bad = {k: v for k, v in scores.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise ValueError(
            f"{label}: scores are not finite {bad}: the weights are broken (NaN/inf); "
            "retrain or re-quantize"
        )


def byte_shuffle(data: bytes, stride: int) -> bytes:
    """Zero-pad to a multiple of `stride`, then all bytes at offset 0 mod stride, 1 mod stride..."""
    a = np.frombuffer(bytes(data) + b"\0" * (-len(data) % stride), dtype=np.uint8)
    return a.reshape(-1, stride).T.tobytes()


def byte_unshuffle(data: bytes, stride: int, n: int) -> bytes | memoryview:
    """Inverse of `byte_shuffle` for an original length n (padding must be zero); a view of one
    copy, so a large payload is held once, not twice."""
    if len(data) % stride or len(data) // stride != -(-n // stride):
        raise ValueError(f"byte_unshuffle: {len(data)} bytes do not match length {n}/{stride}")
    a = np.frombuffer(data, dtype=np.uint8).reshape(stride, -1).T.reshape(-1)
    if a[n:].any():
        raise ValueError("byte_unshuffle: non-zero padding")
    return data if stride == 1 else memoryview(a[:n])


def inflate(stream: bytes, stride: int, n: int, codec: str = "brotli") -> bytes:
    """Bounded decompress + unshuffle to exactly n bytes."""
    raw = decompress(stream, codec, expect := -(-n // stride) * stride)
    if len(raw) != expect:
        raise ValueError(f"decompressed to {len(raw)} bytes, header says {expect}")
    return byte_unshuffle(raw, stride, n)
