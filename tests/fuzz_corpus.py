"""Hostile inputs for the artifact's codecs, shared by tests/test_fuzz_codecs.py (crafted files at
and past every bound, a short random corpus) and benchmarks/fuzz_codecs.py (the long random
corpus, run by hand with a seed).

Crafting writes the bytes directly (no encoder checks): rANS and crans streams with any header,
tables, states and words; the 24-byte split wrapper of the entropy codecs; the artifact's
32-byte wrapper with its CRC-32 recomputed, so the file reaches the codec it attacks."""

from __future__ import annotations

import hashlib
import random
import resource
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import brotli
import numpy as np
import torch

from pgolf import artifact as A
from pgolf import crans, rans
from pgolf.artifact import ArtifactError, QTensor

MiB = 1 << 20
ONE = 1 << 15  # the frequency of a one-symbol table at precision 15
AC_MAX = A.MAX_ELEMENTS  # the container's element limit: the most codes an artifact declares


def varint(v: int) -> bytes:
    out = bytearray()
    rans._put_varint(out, v)
    return bytes(out)


def table(lo: int, freqs: list[int]) -> bytes:
    """u8 lo, u8 hi, varint freqs (no check: any range, any sum)."""
    return bytes((lo, lo + len(freqs) - 1)) + b"".join(varint(f) for f in freqs)


def coded_tail(n: int, lanes: int, states: list[int] | None, words: list[int]) -> bytes:
    """varint W, the lane states (only when n > 0; default 2^16 each), the u16 words."""
    st = [rans.L] * lanes if states is None else states
    out = varint(len(words)) + (struct.pack(f"<{len(st)}I", *st) if n else b"")
    return out + struct.pack(f"<{len(words)}H", *words)


def rans_stream(
    segs: list[tuple[int, bytes]],
    lanes: int = 1,
    prec: int = 15,
    states: list[int] | None = None,
    words: tuple[int, ...] = (),
    crc: int | None = None,
    codes: np.ndarray | None = None,
    nseg: int | None = None,
) -> bytes:
    """A rANS stream of segments (count, table bytes); CRC-32 of `codes` unless `crc` given."""
    n = sum(c for c, _ in segs)
    crc = zlib.crc32(b"" if codes is None else codes.tobytes()) if crc is None else crc
    head = struct.pack(
        "<BBIII", rans.VERSION, prec, lanes, len(segs) if nseg is None else nseg, crc
    )
    tabs = b"".join(varint(c) + (t if c else b"") for c, t in segs)
    return head + tabs + coded_tail(n, lanes, states, list(words))


def crans_tensor(r: int, c: int, mode: int = 0, side: bytes = b"", tables: bytes = b"") -> bytes:
    """One tensor's side information: varint R, varint C, mode, flags/P/classes, tables."""
    return varint(r) + varint(c) + bytes((mode,)) + side + tables


def crans_stream(
    tensors: list[bytes],
    n: int,
    lanes: int = 1,
    prec: int = 15,
    states: list[int] | None = None,
    words: tuple[int, ...] = (),
    crc: int | None = None,
    codes: np.ndarray | None = None,
    nt: int | None = None,
) -> bytes:
    crc = zlib.crc32(b"" if codes is None else codes.tobytes()) if crc is None else crc
    head = struct.pack(
        "<BBIII", crans.VERSION, prec, lanes, len(tensors) if nt is None else nt, crc
    )
    return head + b"".join(tensors) + coded_tail(n, lanes, states, list(words))


def const_crc(n: int, sym: int = 128) -> int:
    """CRC-32 of n equal codes (sym - 128), in chunks (n may be far more than memory)."""
    crc, chunk = 0, bytes([(sym - 128) & 255]) * MiB
    for i in range(0, n, MiB):
        crc = zlib.crc32(chunk[: min(MiB, n - i)], crc)
    return crc


def one_symbol_rans(n: int, lanes: int, sym: int = 128) -> bytes:
    """A valid stream of n equal codes (sym - 128): a one-symbol table moves no state, reads no
    word; every lane starts and ends at 2^16."""
    return rans_stream([(n, table(sym, [ONE]))], lanes, crc=const_crc(n, sym))


def one_symbol_crans(r: int, c: int, lanes: int, sym: int = 128) -> bytes:
    """A valid crans stream of one r x c tensor of equal codes (mode 0: one context)."""
    t = crans_tensor(r, c, 0, b"", b"\0" + table(sym, [ONE]))
    return crans_stream([t], r * c, lanes, crc=const_crc(r * c, sym))


def empty_tensors_crans(count: int, rows: int, side: int = 2**11, lanes: int = 2048) -> bytes:
    """`count` tensors of `rows` x 0 codes, then one valid side x side tensor of equal codes
    (so the stream holds the codes it declares and an empty tensor may claim that many rows)."""
    full = crans_tensor(side, side, 0, b"", b"\0" + table(128, [ONE]))
    ts = [crans_tensor(rows, 0)] * count + [full]
    return crans_stream(ts, side * side, lanes, crc=const_crc(side * side))


def split_artifact(codec: str, coded: bytes, n: int, rest: bytes = b"", a: int = 0) -> bytes:
    """An entropy-codec artifact declaring len(rest) + n payload bytes: n codes from `coded`
    (inserted at `a`), the rest Brotli'd (stride 1); wrapper CRC-32 recomputed."""
    sq = brotli.compress(rest, quality=1)
    stream = struct.pack("<QQQ", len(rest), a, len(sq)) + sq + coded
    return wrapper(stream, codec, len(rest) + n)


def wrapper(stream: bytes, codec: str, plen: int, stride: int = 1) -> bytes:
    head = A._WRAP.pack(A.WRAP_MAGIC, 1, A.CODEC_IDS[codec], stride, 0, plen, len(stream))
    return head + struct.pack("<I", zlib.crc32(stream, zlib.crc32(head))) + stream


def resign(payload: bytes | bytearray) -> bytes:
    p = bytearray(payload)
    p[-32:] = hashlib.sha256(bytes(p[:-32])).digest()
    return bytes(p)


# ---- low-rank terms -----------------------------------------------------------------------------


def lowrank_tensors(rank: int = 4, rows: int = 24, cols: int = 16, seed: int = 0) -> list[QTensor]:
    """An int tensor [rows, cols] and a rank-`rank` low-rank term of int8 factors."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(rows, cols, generator=g) * 3).round().clamp(-31, 31).to(torch.int8)
    base = QTensor("blocks.0.mlp.fc.weight", (rows, cols), "int", 6, w, torch.rand(rows).half())
    ca = (torch.randn(rows, rank, generator=g) * 40).round().clamp(-127, 127).to(torch.int8)
    cb = (torch.randn(rank, cols, generator=g) * 40).round().clamp(-127, 127).to(torch.int8)
    a = QTensor(base.name + ".lqer.a", (rows, rank), "int", 8, ca, torch.rand(rows).half(), "lqer")
    b = QTensor(base.name + ".lqer.b", (rank, cols), "int", 8, cb, torch.rand(rank).half(), "lqer")
    return [base, a, b]


def hostile_lowrank(rows: int = 24, cols: int = 16) -> dict[str, list[QTensor]]:
    """Low-rank terms a hostile writer could store, each one defect (all must be refused)."""
    base, a, b = lowrank_tensors(4, rows, cols)
    big = min(rows, cols) + 1
    nan = a.scales.clone()
    nan[0] = float("nan")
    out = {
        "rank 0": lowrank_tensors(0, rows, cols),
        f"rank {big} > min(R, C)": lowrank_tensors(big, rows, cols),
        "inner sizes differ": [base, a, lowrank_tensors(3, rows, cols)[2]],
        "A rows differ": [base, *lowrank_tensors(4, rows + 1, cols)[1:2], b],
        "B cols differ": [base, a, lowrank_tensors(4, rows, cols + 1)[2]],
        "no B": [base, a],
        "no A": [base, b],
        "no tensor": [a, b],
        "NaN scale": [base, replace(a, scales=nan), b],
        "A is 3-D": [
            base,
            replace(a, shape=(rows, 2, 2), codes=a.codes.reshape(rows, 2, 2)),
            b,
        ],
    }
    return out


def encode_hostile(tensors: list[QTensor], codec: str, meta: dict | None = None) -> bytes:
    """Encode without the writer's checks (`_check`, `check_lowrank`), as a hostile writer."""
    saved = A._check, A.check_lowrank
    A._check, A.check_lowrank = (lambda t: None), (lambda ts, src: None)
    try:
        return A.encode_artifact(tensors, meta or {}, codec=codec)
    finally:
        A._check, A.check_lowrank = saved


# ---- measuring ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    result: str  # "refused", "accepted" or "crashed: <type>"
    message: str
    seconds: float
    peak: int  # traced bytes


def attempt(fn: Callable[[], object], source: str = "x.pgolf", trace: bool = True) -> Outcome:
    """Run one decode; classify the result; time it and (`trace`) its tracemalloc peak (tracing
    slows numpy-heavy loops ~20x: time the untraced runs)."""
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    try:
        fn()
        res, msg = "accepted", ""
    except ArtifactError as e:
        res, msg = ("refused" if str(e).startswith(f"{source}: ") else "unnamed"), str(e)
    except ValueError as e:  # a codec's own error (decode() called directly)
        res, msg = "refused", str(e)
    except Exception as e:  # the finding itself
        res, msg = f"crashed: {type(e).__name__}", str(e)[:200]
    secs = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] if trace else 0
    if trace:
        tracemalloc.stop()
    return Outcome(res, msg, secs, peak)


def rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---- the random corpus ------------------------------------------------------------------------


def valid_artifacts(seed: int = 0) -> dict[str, bytes]:
    """Small valid artifacts: every codec, with and without a low-rank term."""
    g = torch.Generator().manual_seed(seed)
    ts = lowrank_tensors(4, 48, 40, seed)
    ts.append(
        QTensor(
            "blocks.0.attn.proj.weight",
            (40, 48),
            "int",
            6,
            (torch.randn(40, 48, generator=g) * 6).round().clamp(-31, 31).to(torch.int8),
            torch.rand(40, generator=g).half(),
        )
    )
    ts.append(QTensor("norm", (8,), "fp16", data=torch.randn(8, generator=g).half()))
    plain = [t for t in ts if ".lqer." not in t.name]
    out = {}
    for codec in A.CODECS:
        out[f"{codec}"] = A.encode_artifact(plain, {"k": 1}, codec=codec)
        out[f"{codec}+lowrank"] = A.encode_artifact(ts, {"k": 1}, codec=codec)
    return out


def mutate_resigned(blob: bytes, rng: random.Random) -> bytes:
    """Change the stream after the wrapper (or its header fields) and recompute the CRC-32, so the
    change reaches the codec: byte flips, an extreme u32/u64, truncation, insertion."""
    b = bytearray(blob)
    op = rng.choice(["flip", "flip", "word", "trunc", "insert", "plen"])
    lo = 32 if len(b) > 33 else 0
    if op == "flip":
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(lo, len(b))] ^= 1 << rng.randrange(8)
    elif op == "word":  # a u32/u64 in the codec's headers set to an extreme value
        at = rng.randrange(lo, max(lo + 1, min(len(b) - 8, 32 + 24 + 64)))
        fmt = rng.choice(["<I", "<Q"])
        v = rng.choice([0, 1, 2**15, 2**16, 2**26 + 1, 2**31, 2**32 - 1, 2**64 - 1])
        struct.pack_into(fmt, b, at, v % (1 << (8 * struct.calcsize(fmt))))
    elif op == "trunc":
        del b[rng.randrange(lo, len(b)) :]
    elif op == "insert":
        i = rng.randrange(lo, len(b) + 1)
        b[i:i] = rng.randbytes(rng.randint(1, 32))
    else:  # the declared payload length: more or fewer codes
        plen = struct.unpack_from("<Q", b, 12)[0]
        struct.pack_into("<Q", b, 12, max(0, plen + rng.choice([-1, 1, 2**20, 2**26, 2**27])))
    stream = bytes(b[32:])
    struct.pack_into("<Q", b, 20, len(stream))
    struct.pack_into("<I", b, 28, zlib.crc32(stream, zlib.crc32(bytes(b[:28]))))
    return bytes(b)


def random_table(rng: random.Random, prec: int = 15) -> bytes:
    """A table that sums to 2^prec (one symbol, two extreme ones, or random), or a broken one."""
    kind = rng.choice(["one", "extreme", "random", "broken"])
    lo = rng.randrange(256)
    if kind == "one":
        return table(lo, [1 << prec])
    if kind == "extreme" and lo < 255:
        return table(lo, [(1 << prec) - 1, 1])
    if kind == "random":
        k = rng.randint(1, 256 - lo)
        cuts = sorted(rng.sample(range(1, 1 << prec), k - 1)) if k > 1 else []
        f = [b - a for a, b in zip([0, *cuts], [*cuts, 1 << prec])]
        return table(lo, f) if all(f) else table(lo, [1 << prec])
    return bytes((lo, rng.randrange(256))) + rng.randbytes(rng.randint(0, 8))


def crafted(rng: random.Random) -> bytes:
    """An entropy-codec artifact crafted around the decoders' bounds: lanes, declared codes (at,
    past and far past `rans.max_codes` and the element limit), segments or tensors (some empty
    with huge rows), tables, lane states, words and CRC at random."""
    codec, lanes = rng.choice(["rans", "crans"]), rng.choice([1, 2, 3, 64, 2048, 65536])
    bound = rans.max_codes(lanes)
    n = rng.choice([0, 1, rng.randrange(1, 4096), bound + 1, AC_MAX + 1, 10**8])
    n = n if n <= 4096 or n > min(bound, AC_MAX) else 1  # decodable counts stay small (fast)
    states = None if rng.random() < 0.5 else [rng.getrandbits(32) for _ in range(lanes)]
    words = tuple(rng.getrandbits(16) for _ in range(rng.choice([0, 0, 1, 7, 100])))
    crc = const_crc(min(n, 1 << 24)) if rng.random() < 0.7 else rng.getrandbits(32)
    if codec == "rans":
        segs = [(0, b"")] * rng.choice([0, 1, 3])
        segs.append((n, random_table(rng)))
        if rng.random() < 0.2:
            segs += [(0, b"")] * rng.choice([rans.MAX_SEGMENTS, rans.MAX_SEGMENTS + 1])
        coded = rans_stream(segs, lanes, states=states, words=words, crc=crc)
    else:
        side = max(1, int(n**0.5))
        r, c = (side, n // side) if side * (n // side) == n else (1, n)
        empties = [crans_tensor(rng.choice([0, 1, n, 2**40]), 0)] * rng.choice([0, 1, 3000])
        mode = 0 if rng.random() < 0.7 else rng.randrange(256)
        extra = rng.randbytes(rng.randint(0, 16)) if mode else b""
        t = crans_tensor(r, c, mode, extra, b"\0" + random_table(rng))
        coded = crans_stream(empties + [t], n, lanes, states=states, words=words, crc=crc)
    declared = n if rng.random() < 0.8 else rng.choice([0, n + 1, AC_MAX + 1])
    rest = b"" if rng.random() < 0.5 else rng.randbytes(rng.randint(1, 64))
    if len(coded) + 64 > A.max_stream_bytes(len(rest) + declared):  # reach the codec
        rest += bytes(len(coded) + 4096)
    return split_artifact(codec, coded, declared, rest)


def run_corpus(
    seed: int, rounds: int, report: Callable[[str], None] | None = None, trace_every: int = 8
) -> dict:
    """`rounds` cases: re-signed mutations of every valid artifact and (every third round) a
    crafted entropy-codec artifact. Each must be refused naming the file or decode; never
    another exception. -> counts per outcome, the slowest (untraced) and the largest
    (tracemalloc peak, every `trace_every`-th round) case, the bad ones."""
    rng, valid = random.Random(seed), valid_artifacts(seed)
    counts: dict[str, int] = {}
    worst = {"seconds": 0.0, "peak": 0, "bad": []}
    for i in range(rounds):
        if i % 3 == 2:
            name, bad = "crafted", crafted(rng)
        else:
            name = rng.choice(sorted(valid))
            bad = mutate_resigned(valid[name], rng)
        o = attempt(partial(A.decode_artifact, bad, source="x.pgolf"), trace=i % trace_every == 0)
        counts[o.result] = counts.get(o.result, 0) + 1
        worst["seconds"] = max(worst["seconds"], o.seconds)
        worst["peak"] = max(worst["peak"], o.peak)
        if o.result not in ("refused", "accepted"):
            worst["bad"].append((i, name, o.result, o.message))
        if report and (i + 1) % 500 == 0:
            report(f"{i + 1}/{rounds} {counts} slowest {worst['seconds']:.2f}s")
    return {"counts": counts, **worst}
