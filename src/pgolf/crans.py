"""Context-modelled rANS for the artifact's int8 codes (codec 'crans').

Trained codes are not independent draws from one per-tensor table: the rows of a small-vocabulary
embedding for tokens the data rarely shows (byte-fallback pieces) stay nearly equal to one shared
vector, and the columns of an MLP output projection differ in spread (its hidden units do). Per
tensor [R, C] (R = shape[0]) the encoder picks, by exact estimated cost, a model of two parts:

* a **prototype** row P (C int8 codes) and a row flag: flagged rows are coded as the residual
  code - P (mod 256), which is near 0 for rows close to P; P = rounded mean of the rows whose
  cosine with the codes' leading singular vector is above 0.9 (the larger-signed group);
* **column classes**: 1, 2, 4 or 8 groups of columns (quantiles of the mean |residual|).

Context = row flag x column class; one static frequency table per context (sum 2^M), coded
by `pgolf.rans.code` (interleaved rANS, symbol i on lane i mod N). Every context is known before
decoding (flags, classes and P are side information), so decoding is the same lane-parallel
loop as order-0 plus one `searchsorted` over all tables, and the residual is undone per tensor.
Credits: rANS (Duda, arXiv:1311.2540), interleaving (Giesen, arXiv:1402.3392), rANS for
Parameter Golf weights (PR #1510); the models and stream are ours.

Stream (little-endian): u8 version, u8 M, u32 lanes N, u32 tensors T, u32 CRC-32 of the codes;
per tensor: varint R, varint C, u8 mode (bit 0 prototype, bits 1-2 log2 classes); with a
prototype ceil(R/8) bytes row flags (packbits) + C bytes P; with classes ceil(C*b/8) bytes of
b-bit classes (packbits); then for each context in use (row flag major): varint j > 0 = the j-th
table stored so far (contexts with similar statistics share one, chosen greedily by the encoder),
or 0 + a new table: u8 lo, u8 hi, varint freqs of symbols lo..hi; then varint W words, N u32
states (if any codes), W u16 words.
The decoder checks sizes, table sums, states, the word count and the CRC-32: a corrupted
stream raises ValueError. Its work and memory follow the bytes present, checked before anything
is allocated: codes at most `rans.max_codes(lanes)` (lanes cost 4 bytes each), tensors at most
`rans.MAX_SEGMENTS` and (each takes 3 bytes at least: R, C, mode) a third of the stream; an
empty tensor (R·C = 0) carries mode 0 and nothing else, whatever R and C say, and costs no
allocation; per-context table references, not copies (each stored table is its own bytes), and
at most `rans.MAX_SEGMENTS` stored tables (as many as rans has segments: the varints parsed one
at a time in Python stay under 4096 x 256, ~1 s; without it 16 contexts x 4096 tensors of full
tables made 32 MiB of tables, 32 s); per code a u16 table id and the u8 output (3 bytes).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from pgolf import rans
from pgolf.rans import (
    MAX_LANES,
    MAX_SEGMENTS,
    L,
    _get_varint,
    _put_varint,
    check_counts,
    default_lanes,
    normalize_freqs,
)

VERSION = 1
CLASSES = (1, 2, 4, 8)


def _prototype(c: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(row flags, P) of the larger group of rows within cosine 0.9 of the leading direction."""
    x = c.astype(np.float64)
    v = x[int(np.argmax((x * x).sum(1)))].copy()
    for _ in range(12):  # power iteration for the leading right singular vector
        v = x.T @ (x @ v)
        v /= max(float(np.linalg.norm(v)), 1e-30)
    cos = (x @ v) / np.maximum(np.linalg.norm(x, axis=1), 1e-30)
    flags = cos > 0.9 if (cos > 0.9).sum() >= (cos < -0.9).sum() else cos < -0.9
    if flags.sum() < 2:
        return None
    return flags, np.clip(np.round(x[flags].mean(0)), -128, 127).astype(np.int8)


def _classes(d: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return np.zeros(d.shape[1], np.int64)
    m = np.abs(d.astype(np.int64)).mean(0)
    return np.searchsorted(np.quantile(m, np.linspace(0, 1, k + 1)[1:-1]), m, side="right")


def _cost(sym: np.ndarray, ctx: np.ndarray, nctx: int) -> float:
    """Bytes: static empirical entropy per context + ~table bytes."""
    cnt = np.bincount(ctx * 256 + sym, minlength=nctx * 256).reshape(nctx, 256)
    tot, bits, tab = cnt.sum(1), 0.0, 0.0
    for j in np.flatnonzero(tot):
        h = cnt[j][cnt[j] > 0]
        bits += float(tot[j] * np.log2(tot[j]) - (h * np.log2(h)).sum())
        nz = np.flatnonzero(cnt[j])
        tab += 2 + 1.6 * (nz[-1] - nz[0] + 1)
    return bits / 8 + tab


def _symbols(c: np.ndarray, flags, proto) -> np.ndarray:
    u = c.astype(np.int64)
    if proto is not None:
        u[flags] -= proto.astype(np.int64)
    return (u + 128) & 255


def plan(c: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray, int]:
    """[R, C] int8 codes -> (row flags or None, P or None, column classes, k) of least cost."""
    best, out = float("inf"), None
    cands: list = [(np.zeros(c.shape[0], bool), None)]
    if c.shape[0] >= 8 and c.shape[1] >= 2:
        cands += [p for p in [_prototype(c)] if p is not None]
    for flags, proto in cands:
        sym = _symbols(c, flags, proto)
        side = 0 if proto is None else (c.shape[0] + 7) // 8 + c.shape[1]
        for k in CLASSES if c.shape[0] >= 8 else (1,):
            cls = _classes(sym - 128, k)
            ctx = (flags.astype(np.int64)[:, None] * k + cls[None, :]).reshape(-1)
            side_k = side + c.shape[1] * (k.bit_length() - 1) / 8
            cost = _cost(sym.reshape(-1), ctx, 2 * k) + side_k
            if cost < best:
                best, out = cost, (None if proto is None else flags, proto, cls, k)
    return out if out is not None else (None, None, np.zeros(c.shape[1], np.int64), 1)


def _bits(cnt: np.ndarray) -> float:
    h = cnt[cnt > 0]
    return float(h.sum() * np.log2(h.sum()) - (h * np.log2(h)).sum()) if h.size else 0.0


def _span(cnt: np.ndarray) -> int:
    nz = np.flatnonzero(cnt)
    return int(nz[-1] - nz[0] + 1) if nz.size else 0


def _pools(cnts: list[np.ndarray]) -> tuple[list[int], list[np.ndarray]]:
    """Greedy table sharing: a context joins the pool whose table it costs least to share when
    the extra coded bits are below the bytes of its own table (~2 + 1.6 per symbol of range)."""
    pool, pooled = [], []
    for c in cnts:
        best, arg = 2 + 1.6 * _span(c), -1
        for i, p in enumerate(pooled):
            extra = (_bits(p + c) - _bits(p) - _bits(c)) / 8 + 1.6 * (_span(p + c) - _span(p))
            if extra < best:
                best, arg = extra, i
        if arg < 0 or not c.any():
            arg = len(pooled)
            pooled.append(c.copy())
        else:
            pooled[arg] += c
        pool.append(arg)
    return pool, pooled


def _ctx_ids(flags, cls: np.ndarray, k: int, rows: int) -> np.ndarray:
    f = np.zeros(rows, np.int64) if flags is None else flags.astype(np.int64)
    return (f[:, None] * k + cls[None, :]).reshape(-1)


def encode(
    codes: np.ndarray, shapes: list[tuple[int, int]], prec: int = rans.DEFAULT_PREC, lanes: int = 0
) -> bytes:
    """Flat int8 codes of tensors shaped `shapes` ([rows, cols] each, in order) -> stream."""
    codes = np.ascontiguousarray(codes, dtype=np.int8).reshape(-1)
    n = sum(r * c for r, c in shapes)
    if n != codes.size or any(r < 0 or c < 0 for r, c in shapes):
        raise ValueError(f"crans: shapes hold {n} codes, got {codes.size}")
    if not 8 <= prec <= 15:
        raise ValueError(f"crans: precision must be within 8..15 bits, got {prec}")
    lanes = lanes or default_lanes(n)
    if not 1 <= lanes <= MAX_LANES:
        raise ValueError(f"crans: lanes must be within 1..{MAX_LANES}, got {lanes}")
    check_counts(n, lanes, len(shapes), "crans")
    sides, cnts, syms, tids, pos = [], [], [], [], 0
    for r, cc in shapes:
        c = codes[pos : pos + r * cc].reshape(r, cc)
        pos += r * cc
        side = bytearray()
        _put_varint(side, r)
        _put_varint(side, cc)
        flags, proto, cls, k = plan(c) if r * cc else (None, None, np.zeros(cc, np.int64), 1)
        b = k.bit_length() - 1
        side.append(int(proto is not None) | b << 1)
        if proto is not None:
            side += np.packbits(flags).tobytes() + proto.tobytes()
        if b:
            bits = (cls[:, None] >> np.arange(b - 1, -1, -1)) & 1
            side += np.packbits(bits.reshape(-1).astype(np.uint8)).tobytes()
        sym, tid = _symbols(c, flags, proto).reshape(-1), _ctx_ids(flags, cls, k, r)
        tids.append(tid + len(cnts))
        cnts += list(np.bincount(tid * 256 + sym, minlength=2 * k * 256).reshape(2 * k, 256))
        sides.append((side, 2 * k))
        syms.append(sym)
    pool, pooled = _pools(cnts)
    pf = [normalize_freqs(p, prec) for p in pooled]
    head, stored, g = bytearray(), {}, 0
    for side, m in sides:
        head += side
        for j in range(g, g + m):
            if not cnts[j].any():
                continue
            if pool[j] in stored:  # a table stored before: its 1-based index
                _put_varint(head, stored[pool[j]])
                continue
            stored[pool[j]] = len(stored) + 1
            if len(stored) > MAX_SEGMENTS:
                raise ValueError(f"crans: more than {MAX_SEGMENTS} distinct tables to store")
            f, nz = pf[pool[j]], np.flatnonzero(pf[pool[j]])
            head += bytes((0, int(nz[0]), int(nz[-1])))
            for v in f[nz[0] : nz[-1] + 1].tolist():
                _put_varint(head, v)
        g += m
    zero = np.zeros(256, np.int64)
    fr = np.array([pf[pool[j]] if cnts[j].any() else zero for j in range(len(cnts))], np.int64)
    fr = fr.reshape(-1, 256)
    cum = np.concatenate([np.zeros((len(fr), 1), np.int64), np.cumsum(fr, 1)[:, :-1]], 1)
    flat = (np.concatenate(tids) * 256 + np.concatenate(syms)) if syms else np.zeros(0, np.int64)
    x, words = rans.code(fr.reshape(-1)[flat], cum.reshape(-1)[flat], lanes, prec)
    out = bytearray(struct.pack("<BBIII", VERSION, prec, lanes, len(shapes), zlib.crc32(codes)))
    out += head
    _put_varint(out, int(words.size))
    if n:
        out += x.astype("<u4").tobytes()
    return bytes(out) + words.astype("<u2").tobytes()


def _take(buf: bytes, pos: int, k: int) -> tuple[bytes, int]:
    if pos + k > len(buf):
        raise ValueError("crans: stream ends inside a tensor's side information")
    return buf[pos : pos + k], pos + k


MIN_TENSOR_BYTES = 3
"""Fewest stream bytes one tensor's side information takes: varint R, varint C, the mode byte."""


def _read_head(buf: bytes, pos: int, nt: int, prec: int, limit: int):
    """-> (per-tensor (rows, cols, flags, P, classes, k), per-tensor table index of each of its
    2k contexts (-1: no code uses it), stored tables [(lo, freqs of lo..hi)], codes, pos).
    At most `limit` codes; nothing allocated beyond the bytes read and the codes' own sizes."""
    models, ctx_tab, stored, n = [], [], [], 0
    for i in range(nt):
        r, pos = _get_varint(buf, pos)
        cc, pos = _get_varint(buf, pos)
        mode, pos = _take(buf, pos, 1)
        if r * cc == 0:  # the encoder writes mode 0 and no tables; R and C only name the shape
            if mode[0]:
                raise ValueError(f"crans: empty tensor {i} ({r}x{cc}) has mode {mode[0]}, not 0")
            models.append((r, cc, None, None, np.zeros(0, np.int64), 1))
            ctx_tab.append([-1, -1])
            continue
        n += r * cc
        if n > limit:  # also bounds r, cc <= r * cc and every array below by the codes
            raise ValueError(f"crans: tensor {i} takes the codes past the bound {limit}")
        if mode[0] > 7:
            raise ValueError(f"crans: tensor {i} has a bad mode byte {mode[0]}")
        b, flags, proto = mode[0] >> 1, None, None
        if mode[0] & 1:
            fb, pos = _take(buf, pos, (r + 7) // 8)
            flags = np.unpackbits(np.frombuffer(fb, np.uint8))[:r].astype(bool)
            pb, pos = _take(buf, pos, cc)
            proto = np.frombuffer(pb, np.int8)
        cls = np.broadcast_to(np.uint8(0), (cc,))  # one class: no memory per column
        if b:  # a byte per column (8 classes at most), from cc * b bits present
            cb, pos = _take(buf, pos, (cc * b + 7) // 8)
            bits = np.unpackbits(np.frombuffer(cb, np.uint8))[: cc * b].reshape(cc, b)
            cls = (bits << np.arange(b - 1, -1, -1, dtype=np.uint8)).sum(1, dtype=np.uint8)
        k = 1 << b
        nflag = 0 if flags is None else int(flags.sum())
        ncls = [int(np.count_nonzero(cls == j)) for j in range(k)] if b else [cc]
        rows = (r - nflag, nflag)
        tab = []
        for j in range(2 * k):  # context j = flag * k + class; in use when it has codes
            if not rows[j // k] * ncls[j % k]:
                tab.append(-1)
                continue
            ref, pos = _get_varint(buf, pos)
            if ref > len(stored):
                raise ValueError(f"crans: tensor {i} refers to a table not stored ({ref})")
            if not ref:
                if len(stored) == MAX_SEGMENTS:  # the table bytes parsed stay <= 4096 x 256
                    raise ValueError(f"crans: tensor {i} stores more than {MAX_SEGMENTS} tables")
                stored.append(_read_table(buf, pos, prec, i))
                pos = stored[-1][2]
                ref = len(stored)
            tab.append(ref - 1)
        ctx_tab.append(tab)
        models.append((r, cc, flags, proto, cls, k))
    return models, ctx_tab, [(lo, f) for lo, f, _ in stored], n, pos


def _read_table(buf: bytes, pos: int, prec: int, i: int) -> tuple[int, np.ndarray, int]:
    """u8 lo, u8 hi, varint freqs of lo..hi (summing to 2^M) -> (lo, freqs, pos)."""
    lh, pos = _take(buf, pos, 2)
    if lh[0] > lh[1]:
        raise ValueError(f"crans: tensor {i} has a bad symbol range")
    f = []
    for _ in range(lh[1] - lh[0] + 1):
        v, pos = _get_varint(buf, pos)
        f.append(v)
    if sum(f) != 1 << prec or not f[0] or not f[-1]:
        raise ValueError(f"crans: tensor {i} has a table not summing to 2^{prec}")
    return lh[0], np.array(f, np.int64), pos


def _table_ids(models: list, ctx_tab: list, n: int) -> np.ndarray:
    """The stored table of every code (u16: at most 2^16 contexts, `MAX_SEGMENTS` x 16)."""
    tid, pos = np.empty(n, np.uint16), 0
    for (r, cc, flags, _, cls, k), tab in zip(models, ctx_tab):
        if not r * cc:
            continue
        t2, lut = tid[pos : pos + r * cc].reshape(r, cc), np.array(tab).astype(np.uint16)
        for f in (0, 1):  # rows of either flag value (-1, unused, only where no row has it)
            rows = np.ones(r, bool) if flags is None else flags == bool(f)
            if f and flags is None or not rows.any():
                continue
            if k == 1:
                t2[rows] = lut[f]
                continue
            row = t2[int(np.argmax(rows))]  # one row's ids in place (no intp index array)...
            for j in range(k):
                np.copyto(row, lut[f * k + j], where=cls == j)
            t2[rows] = row.copy() if r > 1 else row  # ...then copied to the others
        pos += r * cc
    return tid


def _entries(stored: list, prec: int) -> tuple[np.ndarray, ...]:
    """Every (table, symbol) in use, table-major, symbol ascending: search keys (table << M) +
    cum, symbols, freqs and cums; one entry per coded frequency byte at most."""
    keys, syms, fs, cs = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [], []
    for t, (lo, f) in enumerate(stored):
        nz = np.flatnonzero(f)
        cum = (np.cumsum(f) - f)[nz]
        keys.append((t << prec) + cum)
        syms.append(lo + nz)
        fs.append(f[nz])
        cs.append(cum)
    keys, syms = np.concatenate(keys), np.concatenate(syms).astype(np.uint8)
    return keys, syms, np.concatenate([keys[:0], *fs]), np.concatenate([keys[:0], *cs])


def decode(stream: bytes, expect: int | None = None) -> np.ndarray:
    """Stream -> flat int8 codes; ValueError for anything that is not a consistent stream."""
    buf = bytes(stream)
    if len(buf) < 14:
        raise ValueError("crans: stream shorter than its 14-byte header")
    ver, prec, lanes, nt, crc = struct.unpack_from("<BBIII", buf)
    if ver != VERSION or not 8 <= prec <= 15 or not 1 <= lanes <= MAX_LANES:
        raise ValueError(f"crans: bad header (version {ver}, precision {prec}, lanes {lanes})")
    if nt > MAX_SEGMENTS or nt * MIN_TENSOR_BYTES > len(buf) - 14:
        raise ValueError(
            f"crans: {nt} tensors cannot fit a {len(buf)}-byte stream (at most {MAX_SEGMENTS})"
        )
    limit = rans.max_codes(lanes) if expect is None else min(expect, rans.max_codes(lanes))
    models, ctx_tab, stored, n, pos = _read_head(buf, 14, nt, prec, limit)
    if expect is not None and n != expect:
        raise ValueError(f"crans: stream holds {n} codes, the header expects {expect}")
    check_counts(n, lanes, nt, "crans")
    nwords, pos = _get_varint(buf, pos)
    sb = 4 * lanes if n else 0
    if len(buf) - pos != sb + 2 * nwords or nwords > n:
        raise ValueError(f"crans: {len(buf) - pos} bytes left after the tables, counts disagree")
    keys, esym, ef, ec = _entries(stored, prec)
    tid, out = _table_ids(models, ctx_tab, n), np.empty(n, np.uint8)
    if n:
        x = np.frombuffer(buf, "<u4", lanes, pos).astype(np.int64)
        words = np.frombuffer(buf, "<u2", nwords, pos + sb).astype(np.int64)
        if (x < L).any():
            raise ValueError("crans: a lane's start state is below 2^16")
        mask, ptr = (1 << prec) - 1, 0
        for a in range(0, n, lanes):
            b = min(n, a + lanes)
            xs = x[: b - a]
            slot = xs & mask
            j = np.searchsorted(keys, (tid[a:b].astype(np.int64) << prec) + slot, side="right")
            j -= 1
            out[a:b] = esym[j]
            xs[:] = ef[j] * (xs >> prec) + slot - ec[j]
            ptr = rans.renorm(xs, words, ptr, "crans")
        rans.check_end(x, ptr, nwords, "crans")
    del tid
    pos = 0
    for r, cc, flags, proto, _, _ in models:  # code = symbol - 128 (+ P on flagged rows), mod 256
        u = out[pos : pos + r * cc].reshape(r, cc)
        u ^= 0x80
        if proto is not None:
            np.add(u, proto.view(np.uint8), out=u, where=flags[:, None])
        pos += r * cc
    if zlib.crc32(out) != crc:
        raise ValueError("crans: CRC-32 of the decoded codes does not match (corrupted stream)")
    return out.view(np.int8)
