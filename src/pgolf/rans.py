"""Interleaved rANS entropy coder for the artifact's int8 codes (order-0, one table per segment).

Idea credits: rANS (Duda, "Asymmetric numeral systems", arXiv:1311.2540); interleaved lanes
(Giesen, "Interleaved entropy coders", arXiv:1402.3392); rANS for Parameter Golf weights: PR #1510.
The implementation and the stream layout are ours.

A stream codes the concatenation of S segments (one per int tensor, in table order) of signed
int8 codes; symbol = code + 128 (0..255). Each segment has its own static frequency table that
sums to 2^M. Symbol i goes to lane i mod N; the coder has 32-bit states in [2^16, 2^32) and
moves 16-bit words, so each step of N lanes reads at most one word per lane and decoding is a
handful of numpy operations per step (36 M codes at N = 2048 lanes: ~17.6 K steps).

Stream (all integers little-endian):

    0  1  version (1)
    1  1  M, the table precision in bits (8..15)
    2  4  u32 N, lanes (1..65536)
    6  4  u32 S, segments
    10 4  u32 CRC-32 of the decoded codes (as int8 bytes)
    14    S tables: varint count n; when n > 0: u8 lo, u8 hi, (hi-lo+1) varint freqs of the
          symbols lo..hi (0 = absent); the freqs sum to 2^M
    ...   varint W, the number of 16-bit words
    ...   N x u32 lane states (the encoder's final states; the decoder's start), only when the
          total count is > 0, else nothing
    ...   W x u16 words, in the order the decoder reads them

The decoder checks everything it can (table sums, state ranges, word counts, total count
against the caller's expectation), that every lane ends in the encoder's initial state 2^16 and
the CRC-32 of what it decoded, so a corrupted stream raises ValueError instead of decoding into
garbage (the final-state check alone lets about one corrupted word in 2^13 through).

Work and memory follow the bytes present, checked before anything is allocated (`max_codes`,
`MAX_SEGMENTS`): a stream may declare any count in a few bytes, and the bits it holds do not bound
that count (a one-symbol table costs no bits per code, a table of 2^M - 1 and 1 about 2^-M·1.44
bits), so the bound is on the decoder's own loop instead: at most `MAX_STEPS` steps of N lanes.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

import numpy as np

VERSION = 1
L = 1 << 16  # lower bound of a normalized state
DEFAULT_PREC = 14
MAX_LANES = 1 << 16
MAX_STEPS = 1 << 15
"""Most decoding steps (codes per lane) a stream may take; see `max_codes`."""
MAX_SEGMENTS = 1 << 12
"""Most segments (rans) or tensors (crans) in one stream: the container's tensor limit
(`artifact_check.MAX_TENSORS`). Each costs the decoder one table of 256 counts (rans) or up to 16
contexts (crans, so 2^16 contexts in all: a context id fits a u16)."""


def max_codes(lanes: int) -> int:
    """The most codes a stream of `lanes` lanes may hold: `lanes * MAX_STEPS`.

    Derivation. Decoding is one vectorized step per N = `lanes` codes, each step a few numpy
    calls of fixed cost (~25 us here) plus work linear in N; so the Python work is
    ceil(n / N) steps and the rest is linear in n. Nothing else in the stream bounds n: with a
    one-symbol table (frequency 2^M) a code moves no state and reads no word, so an 85-byte
    stream could declare 10^8 codes on one lane (25 minutes of steps). Capping the steps at
    `MAX_STEPS` = 2^15 (~1 s) makes n <= N * 2^15, and each lane costs 4 bytes of start state in
    the stream: at most 8,192 codes per byte present, and memory (one byte per code for rans,
    three for crans) follows. Every stream `encode` writes by default is within it:
    `default_lanes(n)` >= n / 2^14 up to n = 2^25 and 2048 lanes up to 2^26 (the container's
    `MAX_ELEMENTS`), so n / lanes <= 2^15, and beyond that it takes n / 2^15 lanes.
    """
    return int(lanes) * MAX_STEPS


def default_lanes(n: int) -> int:
    """Power-of-two lane count: ~n/16384, within 1..2048 (state overhead 4 bytes per lane), and
    never fewer than `max_codes` allows (only past 2^26 codes)."""
    lanes = 1
    while lanes < 2048 and lanes * 16384 < n:
        lanes *= 2
    while max_codes(lanes) < n and lanes < MAX_LANES:
        lanes *= 2
    return lanes


def check_counts(n: int, lanes: int, segments: int, who: str) -> None:
    """Refuse a stream (or an encoding) of n codes on `lanes` lanes in `segments` segments that
    the decoder's bounds (`max_codes`, `MAX_SEGMENTS`) do not allow."""
    if segments > MAX_SEGMENTS:
        raise ValueError(f"{who}: {segments} segments, at most {MAX_SEGMENTS} are allowed")
    if n > max_codes(lanes):
        raise ValueError(
            f"{who}: {n} codes on {lanes} lanes exceed the bound {max_codes(lanes)} "
            f"({MAX_STEPS} codes per lane)"
        )


def normalize_freqs(counts: np.ndarray, prec: int = DEFAULT_PREC) -> np.ndarray:
    """Counts [256] -> int64 freqs summing to 2^prec, >= 1 wherever count > 0.

    Proportional floor, then units are added, taken back or moved one at a time where that
    lowers the coded length sum(count·log2(1/f)) the most, until no single move helps.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total, target = counts.sum(), 1 << prec
    if total <= 0:
        return np.zeros(counts.shape, dtype=np.int64)
    live = counts > 0
    if int(live.sum()) > target:
        raise ValueError(f"rans: {int(live.sum())} symbols do not fit a 2^{prec} table")
    f = np.where(live, np.maximum(1, np.floor(counts * target / total)), 0).astype(np.int64)
    for _ in range(4 * target):  # bounded; each move lowers the coded length or fixes the sum
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = np.where(live, counts * np.log2((f + 1) / np.maximum(f, 1)), -np.inf)
            cost = np.where(f > 1, counts * np.log2(f / np.maximum(f - 1, 1)), np.inf)
        up, down, diff = int(np.argmax(gain)), int(np.argmin(cost)), target - int(f.sum())
        if diff > 0:
            f[up] += 1
        elif diff < 0:
            f[down] -= 1
        elif up != down and gain[up] > cost[down] * (1 + 1e-12):
            f[up], f[down] = f[up] + 1, f[down] - 1
        else:
            break
    return f


def _put_varint(out: bytearray, v: int) -> None:
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _get_varint(buf: bytes, pos: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("rans: stream ends inside a varint")
        b = buf[pos]
        v |= (b & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if b < 0x80:
            return v, pos


def _tables(segs: list[np.ndarray], prec: int) -> tuple[np.ndarray, bytes]:
    """Per-segment freqs [S, 256] and their serialized form."""
    freqs, out = np.zeros((len(segs), 256), dtype=np.int64), bytearray()
    for i, s in enumerate(segs):
        _put_varint(out, s.size)
        if s.size:
            f = freqs[i] = normalize_freqs(np.bincount(s, minlength=256), prec)
            nz = np.flatnonzero(f)
            lo, hi = int(nz[0]), int(nz[-1])
            out += bytes((lo, hi))
            for v in f[lo : hi + 1].tolist():
                _put_varint(out, v)
    return freqs, bytes(out)


def _segments(codes: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    u = (np.asarray(codes, dtype=np.int8).reshape(-1).astype(np.int16) + 128).astype(np.uint8)
    if sum(sizes) != u.size or any(s < 0 for s in sizes):
        raise ValueError(f"rans: segment sizes sum to {sum(sizes)}, codes have {u.size}")
    return np.split(u, np.cumsum(sizes)[:-1].tolist()) if sizes else []


def encode(codes: np.ndarray, sizes: list[int], prec: int = DEFAULT_PREC, lanes: int = 0) -> bytes:
    """int8 codes (flat) split into segments of `sizes` -> stream bytes (vectorized over lanes)."""
    if not 8 <= prec <= 15:
        raise ValueError(f"rans: precision must be within 8..15 bits, got {prec}")
    segs = _segments(codes, sizes)
    n = sum(sizes)
    lanes = lanes or default_lanes(n)
    if not 1 <= lanes <= MAX_LANES:
        raise ValueError(f"rans: lanes must be within 1..{MAX_LANES}, got {lanes}")
    check_counts(n, lanes, len(segs), "rans")
    freqs, table_bytes = _tables(segs, prec)
    cums = np.concatenate([np.zeros((len(segs), 1), np.int64), np.cumsum(freqs, 1)[:, :-1]], 1)
    sym = np.concatenate(segs) if segs else np.zeros(0, np.uint8)
    seg_id = np.repeat(np.arange(len(segs)), sizes) if segs else np.zeros(0, np.int64)
    flat = seg_id.astype(np.int64) * 256 + sym
    x, words = code(freqs.reshape(-1)[flat], cums.reshape(-1)[flat], lanes, prec)
    crc = zlib.crc32(np.ascontiguousarray(codes, dtype=np.int8).tobytes())
    out = bytearray(struct.pack("<BBIII", VERSION, prec, lanes, len(segs), crc) + table_bytes)
    _put_varint(out, int(words.size))
    if n:
        out += x.astype("<u4").tobytes()
    return bytes(out) + words.astype("<u2").tobytes()


def code(fq: np.ndarray, cm: np.ndarray, lanes: int, prec: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-symbol freqs/cums (symbol i on lane i mod lanes) -> (final lane states, u16 words in
    the decoder's reading order); the decoder starts from the states and reads words forward."""
    n, x, chunks = fq.size, np.full(lanes, L, dtype=np.int64), []
    for t in range((n + lanes - 1) // lanes - 1, -1, -1):
        a, b = t * lanes, min(n, t * lanes + lanes)
        k, f, c, xs = b - a, fq[a:b], cm[a:b], x[: b - a]
        emit = xs >= (f << (32 - prec))
        if emit.any():
            chunks.append((xs[emit] & 0xFFFF)[::-1].astype(np.uint16))
            xs[emit] >>= 16
        x[:k] = ((xs // f) << prec) + xs % f + c
    return x, (np.concatenate(chunks)[::-1] if chunks else np.zeros(0, np.uint16))


def _decode_tables(buf: bytes, pos: int, nseg: int, prec: int) -> tuple[list[int], list, int]:
    sizes, tabs = [], []
    for i in range(nseg):
        n, pos = _get_varint(buf, pos)
        sizes.append(n)
        if n == 0:
            tabs.append(None)
            continue
        if pos + 2 > len(buf) or buf[pos] > buf[pos + 1]:
            raise ValueError(f"rans: table {i} has a bad symbol range")
        lo, hi, pos = buf[pos], buf[pos + 1], pos + 2
        f = np.zeros(256, dtype=np.int64)
        for s in range(lo, hi + 1):
            f[s], pos = _get_varint(buf, pos)
            if f[s] > 1 << prec:
                raise ValueError(f"rans: table {i} has a frequency above 2^{prec}")
        if int(f.sum()) != 1 << prec or f[lo] == 0 or f[hi] == 0:
            raise ValueError(f"rans: table {i} sums to {int(f.sum())}, not 2^{prec}")
        tabs.append(f)
    return sizes, tabs, pos


def _slot_table(f: np.ndarray, prec: int) -> np.ndarray:
    """slot -> packed (symbol | freq << 8 | (slot - cum) << 24) for one table."""
    cum = np.concatenate([[0], np.cumsum(f)[:-1]])
    sym = np.repeat(np.arange(256, dtype=np.int64), f)
    slots = np.arange(1 << prec, dtype=np.int64)
    return sym | (f[sym] << 8) | ((slots - cum[sym]) << 24)


class _Table:
    """One segment's decoding table: a slot lookup for big segments, a search for small ones."""

    def __init__(self, f: np.ndarray, size: int, prec: int) -> None:
        self.f, self.cum = f, np.concatenate([[0], np.cumsum(f)[:-1]])
        self.slots = _slot_table(f, prec) if size >= 1 << prec else None

    def lookup(self, slot: np.ndarray) -> np.ndarray:
        """slot -> packed (symbol | freq << 8 | (slot - cum) << 24)."""
        if self.slots is not None:
            return self.slots[slot]
        s = np.searchsorted(self.cum, slot, side="right") - 1
        return s | (self.f[s] << 8) | ((slot - self.cum[s]) << 24)


def renorm(xs: np.ndarray, words: np.ndarray, ptr: int, who: str) -> int:
    """Refill (in place) the lane states of `xs` that fell under L from `words[ptr:]`; new ptr."""
    need = xs < L
    cnt = int(np.count_nonzero(need))
    if cnt:
        if ptr + cnt > len(words):
            raise ValueError(f"{who}: the stream runs out of words")
        xs[need] = (xs[need] << 16) | words[ptr : ptr + cnt]
    return ptr + cnt


def check_end(x: np.ndarray, ptr: int, nwords: int, who: str) -> None:
    """A decode that used every word returns every lane to the encoder's start state L."""
    if ptr != nwords or (x != L).any():
        raise ValueError(f"{who}: final states or word count do not match (corrupted stream)")


def decode(stream: bytes, expect: int | None = None) -> np.ndarray:
    """Stream -> flat int8 codes; ValueError for anything that is not a consistent stream.

    `expect` (the number of codes the caller's header declares) is checked before any work.
    Memory and time are linear in the codes and the stream, and the codes are bounded by the
    stream's lanes (`max_codes`), all checked before the output is allocated.
    """
    buf = bytes(stream)
    if len(buf) < 14:
        raise ValueError("rans: stream shorter than its 14-byte header")
    ver, prec, lanes, nseg, crc = struct.unpack_from("<BBIII", buf)
    if ver != VERSION or not 8 <= prec <= 15 or not 1 <= lanes <= MAX_LANES:
        raise ValueError(f"rans: bad header (version {ver}, precision {prec}, lanes {lanes})")
    if nseg > len(buf) - 14:  # each segment's table takes at least one byte
        raise ValueError(f"rans: {nseg} segments cannot fit a {len(buf)}-byte stream")
    check_counts(0, lanes, nseg, "rans")
    sizes, tabs, pos = _decode_tables(buf, 14, nseg, prec)
    n = sum(sizes)
    if expect is not None and n != expect:
        raise ValueError(f"rans: stream holds {n} codes, the header expects {expect}")
    check_counts(n, lanes, nseg, "rans")
    nwords, pos = _get_varint(buf, pos)
    state_bytes = 4 * lanes if n else 0
    if len(buf) - pos != state_bytes + 2 * nwords:
        got, want = len(buf) - pos, state_bytes + 2 * nwords
        raise ValueError(f"rans: {got} bytes left after the tables, the counts say {want}")
    if nwords > n:  # at most one word per symbol
        raise ValueError(f"rans: {nwords} words for {n} symbols")
    out = np.empty(n, dtype=np.uint8)
    if n == 0:
        if crc != zlib.crc32(b""):
            raise ValueError("rans: CRC-32 of an empty stream is wrong")
        return out.view(np.int8)
    x = np.frombuffer(buf, "<u4", lanes, pos).astype(np.int64)
    words = np.frombuffer(buf, "<u2", nwords, pos + state_bytes).astype(np.int64)
    if (x < L).any():
        raise ValueError("rans: a lane's start state is below 2^16")
    live = [i for i, s in enumerate(sizes) if s]
    ends = np.cumsum([sizes[i] for i in live]).tolist()
    mask, ptr, seg, cache = (1 << prec) - 1, 0, 0, {}
    for a in range(0, n, lanes):
        b = min(n, a + lanes)
        xs = x[: b - a]
        while ends[seg] <= a:
            cache.pop(seg, None)
            seg += 1
        lo, j = a, seg
        while lo < b:  # the segments this step of lanes overlaps (usually one)
            hi = min(b, ends[j])
            if j not in cache:
                cache[j] = _Table(tabs[live[j]], sizes[live[j]], prec)
            xx = xs[lo - a : hi - a]
            v = cache[j].lookup(xx & mask)
            out[lo:hi] = v & 0xFF
            xs[lo - a : hi - a] = ((v >> 8) & 0xFFFF) * (xx >> prec) + (v >> 24)
            lo, j = hi, j + 1
        ptr = renorm(xs, words, ptr, "rans")
    check_end(x, ptr, nwords, "rans")
    out ^= 0x80  # symbol = code + 128: in place, so the codes are held once
    if zlib.crc32(out) != crc:
        raise ValueError("rans: CRC-32 of the decoded codes does not match (corrupted stream)")
    return out.view(np.int8)


def wrap_split(
    data: bytes,
    a: int,
    b: int,
    sizes: list[int],
    squeeze: Callable[[bytes], bytes],
    coder: Callable[[np.ndarray], bytes] | None = None,
    name: str = "rans",
) -> bytes:
    """data[a:b] (int8 codes in segments of `sizes`) by rANS (or `coder`), the rest by `squeeze`
    -> u64 len(rest) + u64 a + u64 len(squeezed) + squeezed + coded stream."""
    if sum(sizes) != b - a:
        raise ValueError(
            f"codec {name!r} needs one int8 byte per code ({sum(sizes)}), got {b - a}"
            " bytes: bit-packed codes cannot be entropy-coded, use pack_bits=False"
        )
    rest = data[:a] + data[b:]
    sq = squeeze(rest)
    coded = (coder or (lambda c: encode(c, sizes)))(
        np.frombuffer(data, dtype=np.int8, count=b - a, offset=a)
    )
    return struct.pack("<QQQ", len(rest), a, len(sq)) + sq + coded


def unwrap_split(
    stream: bytes,
    total: int,
    unsqueeze: Callable[[bytes, int], bytes],
    dec: Callable = decode,
    max_total_codes: int | None = None,
) -> memoryview:
    """Inverse of `wrap_split` for `total` data bytes; unsqueeze(bytes, n) must return n bytes;
    `dec(stream, expect=n)` decodes the codes (rANS `decode` or `crans.decode`). The declared
    codes are checked against `max_total_codes` (the container's element limit) and the coded
    stream's lanes (`max_codes`) before anything is decoded; the result is built in one buffer."""
    if len(stream) < 24:
        raise ValueError("rans wrapper shorter than its 24-byte header")
    rlen, a, slen = struct.unpack_from("<QQQ", stream)
    if not a <= rlen <= total or 24 + slen > len(stream):
        raise ValueError(f"rans wrapper declares {rlen}/{a}/{slen} bytes of {total}")
    n, coded = total - rlen, stream[24 + slen :]
    if max_total_codes is not None and n > max_total_codes:
        raise ValueError(
            f"rans wrapper declares {n} codes, more than the {max_total_codes} allowed"
        )
    lanes = struct.unpack_from("<I", coded, 2)[0] if len(coded) >= 6 else 0  # both coders' header
    if 1 <= lanes <= MAX_LANES:  # a bad lane count is the decoder's to report
        check_counts(n, lanes, 0, "rans wrapper")
    rest = np.frombuffer(unsqueeze(stream[24 : 24 + slen], rlen), np.uint8)
    codes = dec(coded, expect=n)
    out = np.empty(total, np.uint8)  # numpy copies slices without a temporary (bytearray won't)
    out[:a], out[a + n :], out[a : a + n] = rest[:a], rest[a:], codes.view(np.uint8)
    return memoryview(out)
