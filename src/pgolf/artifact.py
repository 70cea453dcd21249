"""The artifact: our own binary container for quantized weights, compressed by a pluggable codec.

Nothing is ever unpickled, `eval`ed or `torch.load`ed: a file is parsed field by field; a truncated,
tampered or foreign file raises `ArtifactError` naming the file and the problem. Credits: per-row
int codes + fp16 scales, byte-shuffle + Brotli-11: PR #1550 (stride 4), PR #1493 (stride 2); the
container (no pickle, table, checksums, bit-packing, grouped sections) is ours.

File = 32-byte wrapper header + compressed stream (all integers little-endian):

    0   8  magic b"\\x89PGOLF\\r\\n"
    8   1  wrapper version (1)
    9   1  codec id: 1 brotli-11, 2 lzma (raw LZMA2, 9|EXTREME), 3 zstd-22, 4 rans
           (rans.wrap_split),
           5 crans (rans.wrap_split with the context-modelled coder of crans.py)
    10  1  byte-shuffle stride S (1 = none, up to 8)
    11  1  reserved (0)
    12  8  u64 payload length P (before shuffling)
    20  8  u64 stream length L (the file is exactly 32 + L bytes)
    28  4  u32 CRC-32 of bytes 0..27 followed by the stream
    32  L  codec(shuffle(payload, S)): zero-pad to ceil(P/S)*S bytes, then every S-th byte from 0,
           then from 1, ... S-1

Payload (P bytes):

    0   8  magic b"PGOLFQT\\0"
    8   2  u16 format version (1)
    10  2  u16 flags: bit 0 = integer codes bit-packed
    12  4  u32 number of tensors N
    16  40 five u64 section lengths: table, codes, scales, data, meta
    56     table: N records of
              u16 n + n bytes name (UTF-8); u16 g + g bytes group (UTF-8);
              u8 kind (1 int, 2 fp16); u8 bits; u8 ndim; ndim x u32 dims;
              3 x (u64 offset, u64 length) into the codes, scales and data sections
    ...    codes section: each int tensor's codes in table order, one int8 byte per code or
           `pack_bits` (code + 2^(bits-1) in `bits` bits, MSB first, zero-padded to a byte);
           scales section: all fp16 row scales; data section: all fp16 passthrough tensors
    ...    meta: UTF-8 JSON object (model config etc.)
    P-32   32  SHA-256 of payload bytes 0..P-33
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgolf import crans, rans
from pgolf.artifact_check import (
    CODEC_IDS,
    CODECS,
    ENTROPY_CODECS,
    MAX_ELEMENTS,
    MAX_META_BYTES,
    MAX_RAW_BYTES,
    MAX_TENSORS,
    ArtifactError,
    byte_shuffle,
    byte_unshuffle,  # noqa: F401  (re-exported: part of the container API)
    check_lowrank,
    check_promoted,
    compress,
    decompress,  # noqa: F401
    inflate,
    max_stream_bytes,
    read_regular,
)

WRAP_MAGIC = b"\x89PGOLF\r\n"
PAYLOAD_MAGIC = b"PGOLFQT\x00"
WRAP_VERSION = 1
FORMAT_VERSION = 1
DEFAULT_SHUFFLE = 2
"""Stride 2 (fp16 scales' high/low bytes apart) measured smallest with brotli; 4 is within 0.01%."""
_WRAP = struct.Struct("<8sBBBBQQ")
_KIND_IDS = {"int": 1, "fp16": 2}
_PARTS = ("codes", "scales", "data")  # table order of the (offset, length) pairs
_MIN_RECORD = 55  # bytes of a table record with empty name and group and no dims


@dataclass
class QTensor:
    """One stored tensor: integer codes + per-row fp16 scales, or an fp16 passthrough tensor."""

    name: str
    shape: tuple[int, ...]
    kind: str  # "int" or "fp16"
    bits: int = 0
    codes: torch.Tensor | None = None  # int8, `shape`
    scales: torch.Tensor | None = None  # fp16 [rows]
    data: torch.Tensor | None = None  # fp16, `shape`
    group: str = ""

    @property
    def numel(self) -> int:
        return math.prod(int(d) for d in self.shape)

    @property
    def rows(self) -> int:
        return int(self.shape[0]) if len(self.shape) > 1 else 1


def pack_bits(codes: torch.Tensor | np.ndarray, bits: int) -> bytes:
    """Signed codes in [-2^(bits-1), 2^(bits-1)-1] -> `bits` bits each, MSB first, zero-padded."""
    if not 2 <= bits <= 8:
        raise ValueError(f"pack_bits: bits must be within 2..8, got {bits}")
    c = codes.numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    u = c.reshape(-1).astype(np.int16) + (1 << (bits - 1))
    if u.size and (u.min() < 0 or u.max() >= 1 << bits):
        raise ValueError(f"pack_bits: codes outside the signed {bits}-bit range")
    out, chunk = [], 1 << 20  # a multiple of 8 codes: each chunk ends on a byte boundary
    for i in range(0, u.size, chunk):
        b = np.unpackbits(u[i : i + chunk].astype(np.uint8)[:, None], axis=1)[:, 8 - bits :]
        out.append(np.packbits(b.reshape(-1)).tobytes())
    return b"".join(out)


def unpack_bits(buf: bytes, bits: int, n: int) -> np.ndarray:
    """Inverse of `pack_bits`: n signed codes (int8 numpy array)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"unpack_bits: bits must be within 2..8, got {bits}")
    if len(buf) != (n * bits + 7) // 8:
        raise ValueError(f"unpack_bits: {len(buf)} bytes cannot hold exactly {n} {bits}-bit codes")
    raw, out = np.frombuffer(buf, dtype=np.uint8), np.empty(n, dtype=np.int8)
    if n * bits % 8 and raw[-1] & ((1 << (8 - n * bits % 8)) - 1):
        raise ValueError("unpack_bits: non-zero padding bits")
    chunk = 1 << 18  # codes per step (a multiple of 8: byte-aligned); bounds the 8x temporaries
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        flat = np.unpackbits(raw[i * bits // 8 : (i * bits + m * bits + 7) // 8])
        b = np.zeros((m, 8), dtype=np.uint8)
        b[:, 8 - bits :] = flat[: m * bits].reshape(m, bits)
        u = np.packbits(b, axis=1).reshape(m).astype(np.int16)
        out[i : i + m] = u - (1 << (bits - 1))
    return out


def _check(t: QTensor) -> None:
    bad = ""
    if t.kind == "int":
        lo, hi, c, s = -(1 << (t.bits - 1)), (1 << (t.bits - 1)) - 1, t.codes, t.scales
        if not 2 <= t.bits <= 8:
            bad = f"bits {t.bits} outside 2..8"
        elif c is None or c.dtype != torch.int8 or c.numel() != t.numel:
            bad = f"codes must be int8 with {t.numel} elements"
        elif s is None or s.dtype != torch.float16 or s.numel() != t.rows:
            bad = f"scales must be fp16 with {t.rows} elements"
        elif t.numel and (int(c.min()) < lo or int(c.max()) > hi):
            bad = f"codes outside the signed {t.bits}-bit range"
        elif not bool(torch.isfinite(s).all()):
            bad = "scales must be finite (NaN or inf found)"
    elif t.kind == "fp16":
        if t.data is None or t.data.dtype != torch.float16 or t.data.numel() != t.numel:
            bad = f"data must be fp16 with {t.numel} elements"
        elif not bool(torch.isfinite(t.data).all()):
            bad = "data must be finite (NaN or inf found)"
    else:
        bad = f"kind {t.kind!r} is neither 'int' nor 'fp16'"
    if not 0 <= t.bits <= 255 or len(t.shape) > 255 or any(not 0 <= d < 1 << 32 for d in t.shape):
        bad = bad or f"unsupported bits {t.bits} or shape {t.shape}"
    if bad:
        raise ArtifactError(f"tensor {t.name!r}: {bad}")


def _raw(x: torch.Tensor) -> bytes:
    return x.detach().cpu().contiguous().reshape(-1).numpy().tobytes()


def tensor_parts(t: QTensor, packed: bool = False) -> tuple[bytes, bytes, bytes]:
    """(codes, scales, data) bytes of one tensor exactly as the payload stores them."""
    _check(t)
    if t.kind == "fp16":
        return b"", b"", _raw(t.data)
    codes = pack_bits(t.codes.detach().cpu(), t.bits) if packed else _raw(t.codes)
    return codes, _raw(t.scales), b""


def meta_bytes(meta: dict) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def build_payload(tensors: Iterable[QTensor], meta: dict, packed: bool = False) -> bytes:
    """The uncompressed payload (see the module docstring)."""
    tensors = list(tensors)
    if len({t.name for t in tensors}) != len(tensors):
        raise ArtifactError("duplicate tensor names in artifact")
    table, sections = [], ([], [], [])
    offs = [0, 0, 0]
    for t in tensors:
        name, group, parts = t.name.encode(), t.group.encode(), tensor_parts(t, packed)
        if len(name) > 0xFFFF or len(group) > 0xFFFF:
            raise ArtifactError(f"tensor {t.name[:40]!r}: name or group too long")
        table += [struct.pack("<H", len(name)), name, struct.pack("<H", len(group)), group]
        table.append(
            struct.pack(f"<BBB{len(t.shape)}I", _KIND_IDS[t.kind], t.bits, len(t.shape), *t.shape)
        )
        for i, b in enumerate(parts):
            table.append(struct.pack("<QQ", offs[i], len(b)))
            sections[i].append(b)
            offs[i] += len(b)
    parts = [b"".join(table), *(b"".join(x) for x in sections), meta_bytes(meta)]
    head = struct.pack("<8sHHI", PAYLOAD_MAGIC, FORMAT_VERSION, int(packed), len(tensors))
    body = head + struct.pack("<5Q", *[len(p) for p in parts]) + b"".join(parts)
    return body + hashlib.sha256(body).digest()


def wrap(payload: bytes, codec: str = "brotli", shuffle: int = DEFAULT_SHUFFLE) -> bytes:
    """Shuffle + compress a payload and prepend the wrapper header."""
    if codec not in CODEC_IDS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    if not 1 <= shuffle <= 8:
        raise ValueError(f"shuffle stride must be within 1..8, got {shuffle}")
    if codec in ENTROPY_CODECS:  # int8 codes section by (c)rANS, the rest brotli
        lens, packed = struct.unpack_from("<5Q", payload, 16), payload[10] & 1
        ints = [
            t for t in parse_payload(payload, checked=False)[0] if t.kind == "int" and not packed
        ]
        rows = [t.shape[0] if t.shape else 1 for t in ints]
        shapes = [(r, t.numel // r if r else math.prod(t.shape[1:])) for r, t in zip(rows, ints)]
        coder = (lambda c: crans.encode(c, shapes)) if codec == "crans" else None
        squeeze = lambda b: compress(byte_shuffle(b, shuffle), "brotli")  # noqa: E731
        stream = rans.wrap_split(
            payload,
            56 + lens[0],
            56 + sum(lens[:2]),
            [t.numel for t in ints],
            squeeze,
            coder,
            codec,
        )
    else:
        stream = compress(byte_shuffle(payload, shuffle), codec)
    head = _WRAP.pack(
        WRAP_MAGIC, WRAP_VERSION, CODEC_IDS[codec], shuffle, 0, len(payload), len(stream)
    )
    return head + struct.pack("<I", zlib.crc32(stream, zlib.crc32(head))) + stream


def encode_artifact(
    tensors: Iterable[QTensor],
    meta: dict,
    codec: str = "brotli",
    pack_bits: bool = False,
    shuffle: int = DEFAULT_SHUFFLE,
) -> bytes:
    """tensors + JSON-able meta -> artifact bytes."""
    return wrap(build_payload(tensors, meta, pack_bits), codec, shuffle)


def _header(
    head: bytes, size: int, source: str, max_raw: int, checked: bool = True
) -> tuple[str, int, int, int]:
    """Check the 32-byte wrapper header against the file size -> (codec, stride, P, L).
    `checked=False` (the run's own artifact, see `load_artifact`): the fields as written."""
    fail = lambda msg: ArtifactError(f"{source}: {msg}")  # noqa: E731
    if checked and (not head or head[:8] != WRAP_MAGIC[: len(head[:8])]):
        raise fail("not a pgolf artifact (maybe a torch.save/pickle file?): bad magic")
    if checked and len(head) < 32:
        raise fail(f"truncated: {len(head)} bytes, the header alone needs 32")
    _, ver, codec_id, stride, res, plen, slen = _WRAP.unpack_from(head)
    codec = {v: k for k, v in CODEC_IDS.items()}.get(codec_id)
    if not checked:
        return codec, stride, plen, slen
    if ver != WRAP_VERSION:
        raise fail(f"unknown artifact version {ver} (this pgolf reads {WRAP_VERSION})")
    if codec is None or not 1 <= stride <= 8 or res:
        raise fail(f"corrupt header: codec id {codec_id}, shuffle stride {stride}, reserved {res}")
    expect = -(-plen // stride) * stride
    if expect > max_raw:
        raise fail(f"declared size {expect} bytes exceeds the {max_raw}-byte limit")
    if slen > max_stream_bytes(expect):
        raise fail(f"stream of {slen} bytes is too long for a {plen}-byte payload")
    if size - 32 != slen:
        got = size - 32
        raise fail(
            f"truncated: stream has {got} of {slen} bytes"
            if got < slen
            else f"{got - slen} unexpected trailing bytes after the stream"
        )
    return codec, stride, plen, slen


def unwrap(
    blob: bytes, source: str = "<bytes>", max_raw: int = MAX_RAW_BYTES, checked: bool = True
) -> bytes:
    """Check the wrapper, decompress (bounded) and unshuffle -> payload bytes (`checked=False`:
    the header as written, see `load_artifact`; the CRC-32 is checked either way)."""
    codec, stride, plen, _ = _header(blob[:32], len(blob), source, max_raw, checked)
    (crc,) = struct.unpack_from("<I", blob, 28)
    view = memoryview(blob)
    if zlib.crc32(view[32:], zlib.crc32(view[:28])) != crc:
        raise ArtifactError(f"{source}: bad checksum (CRC-32): the file is corrupted or modified")
    try:
        if codec in ENTROPY_CODECS:
            dec = crans.decode if codec == "crans" else rans.decode
            return rans.unwrap_split(
                view[32:], plen, lambda b, n: inflate(b, stride, n), dec, MAX_ELEMENTS
            )
        return inflate(view[32:], stride, plen, codec)
    except Exception as e:  # every codec has its own error type; all mean a bad stream
        raise ArtifactError(f"{source}: {codec} stream does not decode: {e}") from None


def _read_str(tab: memoryview, pos: int) -> tuple[str, int]:
    (ln,) = struct.unpack_from("<H", tab, pos)
    if pos + 2 + ln > len(tab):
        raise ValueError("tensor table ends inside a name")
    return bytes(tab[pos + 2 : pos + 2 + ln]).decode(), pos + 2 + ln


def parse_payload(
    payload: bytes, source: str = "<bytes>", checked: bool = True
) -> tuple[list[QTensor], dict]:
    """Payload -> (tensors, meta). Counts are bounded by the bytes that hold them before anything
    is allocated; names must be unique, sections contiguous and in table order, every tensor must
    pass the writer's own check (`_check`), every low-rank term `check_lowrank`, every promoted
    column group `check_promoted`. `checked=False` (bytes this process wrote: `load_artifact`,
    `wrap`): none of those bounds, only the SHA-256."""
    fail = lambda msg: ArtifactError(f"{source}: {msg}")  # noqa: E731
    view = memoryview(payload)
    if checked and (len(view) < 56 + 32 or view[:8] != PAYLOAD_MAGIC):
        raise fail("payload is not a pgolf tensor table (bad inner magic or too short)")
    if hashlib.sha256(view[:-32]).digest() != view[-32:]:
        raise fail("bad checksum (SHA-256 of the payload)")
    _, ver, flags, n = struct.unpack_from("<8sHHI", view)
    lens = struct.unpack_from("<5Q", view, 16)
    if checked:
        if ver != FORMAT_VERSION or flags & ~1:
            raise fail(f"unknown payload format version {ver} / flags {flags}")
        if 56 + sum(lens) + 32 != len(view):
            raise fail("section lengths do not add up to the payload length")
        if n > MAX_TENSORS or n * _MIN_RECORD > lens[0] or lens[4] > MAX_META_BYTES:
            raise fail(
                f"{n} tensors in a {lens[0]}-byte table or {lens[4]} bytes of meta: too many"
            )
    starts = np.cumsum((56,) + lens[:-1]).tolist()
    sec = {k: view[a : a + ln] for k, a, ln in zip(("table", *_PARTS, "meta"), starts, lens)}
    tab, pos, out, names, offs, total = sec["table"], 0, [], set(), [0, 0, 0], 0
    try:
        for _ in range(n):
            name, pos = _read_str(tab, pos)
            if checked:
                if name in names:
                    raise ValueError(f"duplicate tensor name {name[:60]!r}")
                names.add(name)
            group, pos = _read_str(tab, pos)
            kind_id, bits, ndim = struct.unpack_from("<BBB", tab, pos)
            shape = struct.unpack_from(f"<{ndim}I", tab, pos + 3)
            ol = struct.unpack_from("<6Q", tab, pos + 3 + 4 * ndim)
            pos += 51 + 4 * ndim
            if checked:
                total += math.prod(shape)
                if total > MAX_ELEMENTS:
                    raise ValueError(f"more than {MAX_ELEMENTS} elements in all")
                for i in range(3):
                    if ol[2 * i] != offs[i]:
                        raise ValueError(
                            f"{name}: {_PARTS[i]} offset {ol[2 * i]}, expected {offs[i]}"
                        )
                    offs[i] += ol[2 * i + 1]
            rec = (name, group, kind_id, bits, shape, ol)
            out.append(_tensor(rec, sec, bool(flags & 1), checked))
        if checked and (pos != len(tab) or tuple(offs) != lens[1:4]):
            raise ValueError("unread bytes in the tensor table or its sections")
        meta = json.loads(bytes(sec["meta"]).decode())
    except (struct.error, ValueError, RecursionError) as e:
        raise fail(f"corrupt tensor table or meta: {e}") from None
    if checked:
        if not isinstance(meta, dict):
            raise fail("meta is not a JSON object")
        check_lowrank(out, source)
        check_promoted(out, source)
    return out, meta


def _tensor(rec: tuple, sec: dict[str, memoryview], packed: bool, checked: bool) -> QTensor:
    name, group, kind_id, bits, shape, ol = rec
    t = QTensor(name, tuple(shape), {1: "int", 2: "fp16"}.get(kind_id, "?"), bits, group=group)
    n, is_int = t.numel, t.kind == "int"
    p = [sec[k][ol[2 * i] : ol[2 * i] + ol[2 * i + 1]] for i, k in enumerate(_PARTS)]  # views
    if checked:
        if t.kind == "?" or (is_int and not 2 <= bits <= 8):
            raise ValueError(f"{name}: unknown kind id {kind_id} or bits {bits}")
        ncodes = ((n * bits + 7) // 8 if packed else n) if is_int else 0
        want = (ncodes, 2 * t.rows, 0) if is_int else (0, 0, 2 * n)
        if tuple(ol[1::2]) != want:
            raise ValueError(f"{name}: part lengths {ol[1::2]} do not fit shape {shape} ({want})")
        if tuple(len(x) for x in p) != want:
            raise ValueError(f"{name}: parts run past the end of their sections")
    if is_int:
        c = unpack_bits(p[0], bits, n) if packed else np.frombuffer(p[0], dtype=np.int8).copy()
        t.codes, t.scales = torch.from_numpy(c).reshape(shape), _f16(p[1])
    else:
        t.data = _f16(p[2]).reshape(shape)
    if checked:
        _check(t)
    return t


def _f16(b: bytes | memoryview) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(b, dtype=np.float16).copy())


def decode_artifact(
    blob: bytes, source: str = "<bytes>", checked: bool = True
) -> tuple[list[QTensor], dict]:
    """Artifact bytes -> (tensors, meta); ArtifactError for anything not a valid artifact
    (`checked=False`: see `load_artifact`)."""
    return parse_payload(unwrap(blob, source, checked=checked), source, checked)


def save_artifact(
    path: str | os.PathLike, tensors: Iterable[QTensor], meta: dict, **kw: Any
) -> int:
    """Encode and write atomically (tmp file + rename); returns the number of bytes written."""
    path = Path(path)
    blob = encode_artifact(tensors, meta, **kw)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(blob)


def load_artifact(path: str | os.PathLike, checked: bool = True) -> tuple[list[QTensor], dict]:
    """Read and decode an artifact file; ArtifactError (naming the file) for anything else: a
    directory, FIFO or device is refused before it is opened, the rest is read only once the
    header's declared size matches the file's.

    `checked=False` is for the run's own artifact only (`pipeline.run` reading back the file it
    wrote a moment ago): the file is read plainly and none of the hostile-input bounds run
    (header limits, table counts and offsets, per-tensor, low-rank and promoted-group checks);
    the CRC-32 and SHA-256 still catch a file changed on disk. Same tensors and meta as the
    checked read of the same file. Anything read from elsewhere keeps the default."""
    src = str(path)
    if not checked:
        return decode_artifact(Path(path).read_bytes(), src, checked)
    total = lambda head, size: 32 + _header(head, size, src, MAX_RAW_BYTES)[3]  # noqa: E731
    blob = read_regular(path, 32, total, 32 + max_stream_bytes(MAX_RAW_BYTES))
    return decode_artifact(blob, source=src)
