"""Interleaved rANS: differential tests against a slow one-symbol-at-a-time reference coder,
adversarial streams, frequency tables, corruption refusal, and the artifact codec 'rans'."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf import rans
from pgolf.artifact import (
    ArtifactError,
    QTensor,
    decode_artifact,
    encode_artifact,
    load_artifact,
    save_artifact,
)

L = 1 << 16


def gauss_codes(n: int, sd: float = 6.0, seed: int = 0, q: int = 31) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.normal(0, sd, n)), -q, q).astype(np.int8)


# ----------------------------------------------------------------------------------------------
# The slow reference: the same algorithm, one symbol at a time in plain Python


def ref_encode(codes: np.ndarray, sizes: list[int], prec: int, lanes: int) -> bytes:
    codes = codes.astype(np.int8)
    segs = rans._segments(codes, sizes)
    freqs, table_bytes = rans._tables(segs, prec)
    sym = [int(v) + 128 for v in codes.reshape(-1).tolist()]
    seg_of = [i for i, s in enumerate(sizes) for _ in range(s)]
    x, words = [L] * lanes, []
    for i in reversed(range(len(sym))):
        j, s, f = i % lanes, sym[i], freqs[seg_of[i]]
        fs, cum = int(f[s]), int(f[: sym[i]].sum())
        if x[j] >= fs << (32 - prec):
            words.append(x[j] & 0xFFFF)
            x[j] >>= 16
        x[j] = ((x[j] // fs) << prec) + x[j] % fs + cum
    words.reverse()
    crc = zlib.crc32(codes.tobytes())
    out = bytearray(struct.pack("<BBIII", rans.VERSION, prec, lanes, len(sizes), crc))
    out += table_bytes
    rans._put_varint(out, len(words))
    if sym:
        out += struct.pack(f"<{lanes}I", *x)
    return bytes(out) + struct.pack(f"<{len(words)}H", *words)


def ref_decode(stream: bytes) -> list[int]:
    _, prec, lanes, nseg, _ = struct.unpack_from("<BBIII", stream)
    sizes, tabs, pos = rans._decode_tables(stream, 14, nseg, prec)
    nwords, pos = rans._get_varint(stream, pos)
    n = sum(sizes)
    x = list(struct.unpack_from(f"<{lanes}I", stream, pos)) if n else []
    words = struct.unpack_from(f"<{nwords}H", stream, pos + 4 * lanes * (n > 0))
    seg_of = [i for i, s in enumerate(sizes) for _ in range(s)]
    out, ptr = [], 0
    for i in range(n):
        j, f = i % lanes, [int(v) for v in tabs[seg_of[i]]]
        slot, s, cum = x[j] & ((1 << prec) - 1), 0, 0
        while cum + f[s] <= slot:
            cum, s = cum + f[s], s + 1
        x[j] = f[s] * (x[j] >> prec) + slot - cum
        if x[j] < L:
            x[j], ptr = (x[j] << 16) | words[ptr], ptr + 1
        out.append(s - 128)
    assert ptr == nwords and all(v == L for v in x)
    return out


CASES = {
    "random": (gauss_codes(5000, seed=1), [2000, 3000]),
    "all_equal": (np.full(3000, 5, np.int8), [3000]),
    "single_rare": (np.where(np.arange(5000) == 4321, -128, 0).astype(np.int8), [5000]),
    "alphabet": (np.random.default_rng(2).permutation(np.arange(-128, 128).repeat(9)), [2304]),
    "empty_and_tiny": (gauss_codes(700, seed=3), [0, 1, 0, 1, 98, 0, 600, 0]),
    "many_tiny_segments": (gauss_codes(500, seed=4), [1] * 300 + [2] * 100),
    "empty": (np.zeros(0, np.int8), []),
    "empty_tensors_only": (np.zeros(0, np.int8), [0, 0, 0]),
    "one_code": (np.array([-7], np.int8), [1]),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(("prec", "lanes"), [(14, 1), (14, 32), (11, 7), (15, 256)])
def test_vectorized_equals_reference_bytes_and_round_trips(case: str, prec: int, lanes: int):
    codes, sizes = CASES[case]
    codes = codes.astype(np.int8)
    blob = rans.encode(codes, sizes, prec=prec, lanes=lanes)
    assert blob == ref_encode(codes, sizes, prec, lanes)
    assert ref_decode(blob) == codes.tolist()
    got = rans.decode(blob, expect=codes.size)
    assert got.dtype == np.int8 and np.array_equal(got, codes)


@pytest.mark.parametrize("seed", range(6))
def test_random_streams_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    nseg = int(rng.integers(1, 12))
    sizes = [int(s) for s in rng.integers(0, 12000, nseg) * (rng.random(nseg) < 0.8)]
    parts = [
        gauss_codes(s, float(rng.uniform(0.3, 40)), seed * 100 + i, int(rng.integers(1, 128)))
        for i, s in enumerate(sizes)
    ]
    codes = np.concatenate(parts) if parts else np.zeros(0, np.int8)
    lanes = int(rng.choice([1, 3, 64, 1000, 4096]))
    prec = int(rng.integers(8, 16))
    got = rans.decode(rans.encode(codes, sizes, prec=prec, lanes=lanes), expect=codes.size)
    assert np.array_equal(got, codes)


def test_big_segments_use_the_slot_table_and_match_small_search() -> None:
    codes = gauss_codes(40000, seed=5)
    blob = rans.encode(codes, [40000], prec=12, lanes=64)  # 40000 >= 2^12: slot-table path
    assert np.array_equal(rans.decode(blob), codes)
    f = rans.normalize_freqs(np.bincount(codes.astype(np.int16) + 128, minlength=256), 12)
    big, small = rans._Table(f, 1 << 12, 12), rans._Table(f, 1, 12)
    slots = np.arange(1 << 12)
    assert big.slots is not None and small.slots is None
    assert np.array_equal(big.lookup(slots), small.lookup(slots))


def test_normalized_freqs_sum_cover_and_are_locally_optimal() -> None:
    rng = np.random.default_rng(7)
    for prec in (8, 12, 15):
        counts = np.zeros(256, np.int64)
        live = rng.choice(256, 60, replace=False)
        counts[live] = rng.zipf(1.3, 60).clip(max=10**7)
        f = rans.normalize_freqs(counts, prec)
        assert f.sum() == 1 << prec and ((f > 0) == (counts > 0)).all()

        def cost(g: np.ndarray, c: np.ndarray = counts, lv: np.ndarray = live) -> float:
            return float(-(c[lv] * np.log2(g[lv])).sum())

        base = cost(f)
        for a in live:  # no single unit moved from a to b lowers the coded length
            for b in live:
                if a != b and f[a] > 1:
                    g = f.copy()
                    g[a] -= 1
                    g[b] += 1
                    assert cost(g) >= base - 1e-6
    with pytest.raises(ValueError, match="do not fit"):
        rans.normalize_freqs(np.ones(256), 7)


def test_size_is_near_the_order0_bound() -> None:
    codes = gauss_codes(400_000, sd=4.0, seed=8)
    sizes = [100_000] * 4
    blob = rans.encode(codes, sizes)
    bound = 0.0
    for s in np.split(codes, 4):
        p = np.bincount(s.astype(np.int16) + 128) / s.size
        p = p[p > 0]
        bound += -(p * np.log2(p)).sum() * s.size / 8
    tables = len(rans._tables(rans._segments(codes, sizes), rans.DEFAULT_PREC)[1])
    states = 4 * rans.default_lanes(codes.size)
    assert bound < len(blob) <= 1.005 * bound + tables + states + 16


def test_constriction_cross_check() -> None:
    """Same codes, same quantized table: a kept library's rANS lands within 0.2 % of ours."""
    constriction = pytest.importorskip("constriction")
    codes = gauss_codes(200_000, sd=5.0, seed=9)
    f = rans.normalize_freqs(np.bincount(codes.astype(np.int16) + 128, minlength=256))
    sym = codes.astype(np.int32) + 128
    model = constriction.stream.model.Categorical(f / f.sum(), perfect=False)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(sym, model)
    theirs = 4 * coder.get_compressed().size
    ours = len(rans.encode(codes, [codes.size], lanes=8))  # 7 more lane states: 28 bytes
    assert abs(ours - theirs) <= 0.002 * theirs + 64


def test_corrupted_streams_are_refused() -> None:
    codes, sizes = gauss_codes(1500, seed=10), [500, 1000]
    blob = rans.encode(codes, sizes, lanes=64)
    rng = np.random.default_rng(11)
    for pos in range(len(blob)):  # every byte, xor a random non-zero value
        bad = bytearray(blob)
        bad[pos] ^= int(rng.integers(1, 256))
        with pytest.raises(ValueError, match="rans"):
            rans.decode(bytes(bad), expect=codes.size)
    for cut in (0, 5, 11, len(blob) // 2, len(blob) - 1):
        with pytest.raises(ValueError, match="rans"):
            rans.decode(blob[:cut], expect=codes.size)
    with pytest.raises(ValueError, match="expects"):
        rans.decode(blob, expect=codes.size + 1)
    with pytest.raises(ValueError, match="rans"):
        rans.decode(blob + b"\0\0")


# ----------------------------------------------------------------------------------------------
# The artifact codec


def artifact_tensors() -> list[QTensor]:
    g = torch.Generator().manual_seed(0)
    ts = []
    for i, (shape, bits) in enumerate([((16, 40), 6), ((32, 1), 8), ((0, 5), 6), ((1,), 4)]):
        q = 2 ** (bits - 1) - 1
        c = (torch.randn(shape, generator=g) * q / 3).round().clamp(-q, q).to(torch.int8)
        s = torch.rand(c.shape[0] if c.dim() > 1 else 1, generator=g).half()
        ts.append(QTensor(f"w{i}", shape, "int", bits, codes=c, scales=s, group="mlp"))
    ts.append(QTensor("norm", (7,), "fp16", data=torch.randn(7, generator=g).half()))
    return ts


def test_artifact_rans_round_trips_bit_exactly(tmp_path: Path) -> None:
    ts, meta = artifact_tensors(), {"model": {"d": 3}}
    path = tmp_path / "a.pgolf"
    n = save_artifact(path, ts, meta, codec="rans")
    assert n == path.stat().st_size and path.read_bytes()[9] == 4
    out, m = load_artifact(path)
    assert m == meta and [t.name for t in out] == [t.name for t in ts]
    for a, b in zip(ts, out):
        assert a.shape == b.shape and a.kind == b.kind and a.bits == b.bits
        for f in ("codes", "scales", "data"):
            u, v = getattr(a, f), getattr(b, f)
            assert (u is None) == (v is None)
            if u is not None:
                assert u.dtype == v.dtype and u.numpy().tobytes() == v.numpy().tobytes()
    assert save_artifact(path, ts, meta, codec="rans") == n  # deterministic


def test_artifact_rans_corruption_refused_by_the_coder_not_only_the_checksum() -> None:
    blob = encode_artifact(artifact_tensors(), {}, codec="rans")
    _, _, slen = struct.unpack_from("<QQQ", blob, 32)
    start = 32 + 24 + slen  # the rANS stream
    rng = np.random.default_rng(12)
    for pos in rng.choice(np.arange(start, len(blob)), 25, replace=False):
        bad = bytearray(blob)
        bad[pos] ^= int(rng.integers(1, 256))
        struct.pack_into("<I", bad, 28, zlib.crc32(bytes(bad[32:]), zlib.crc32(bytes(bad[:28]))))
        with pytest.raises(ArtifactError, match="rans stream does not decode: rans") as e:
            decode_artifact(bytes(bad))
        assert "SHA-256" not in str(e.value)
