"""Context-modelled rANS (codec 'crans'): round trips of random and adversarial streams, a slow
one-symbol-at-a-time reference decoder, the model choices (prototype rows, column classes),
size against the model's bound, corruption refusal, and the artifact codec."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch

from pgolf import crans, rans
from pgolf.artifact import ArtifactError, QTensor, decode_artifact, encode_artifact

L = 1 << 16


def gauss(shape: tuple[int, int], sd: float = 5.0, seed: int = 0, q: int = 31) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.normal(0, sd, shape)), -q, q).astype(np.int8)


def embedding_like(seed: int = 0) -> np.ndarray:
    """Half the rows = one shared vector + rounding noise (rare tokens), half independent."""
    rng = np.random.default_rng(seed)
    c = gauss((96, 48), 6.0, seed)
    shared = rng.normal(0, 6.0, 48)
    rare = rng.random(96) < 0.5
    c[rare] = np.round(shared + rng.normal(0, 0.4, (int(rare.sum()), 48))).astype(np.int8)
    return c


def column_scaled(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(0, 1, (64, 96)) * rng.choice([0.7, 2.0, 6.0], 96)).astype(np.int8)


def ref_decode(blob: bytes) -> list[int]:
    """Slow reference: the same stream decoded one symbol at a time in plain Python."""
    _, prec, lanes, nt, _ = struct.unpack_from("<BBIII", blob)
    models, ctx_tab, stored, n, pos = crans._read_head(blob, 14, nt, prec, 1 << 40)
    fr = []  # per context (all tensors' contexts in order): its full 256-symbol table
    for tab in ctx_tab:
        for t in tab:
            f = np.zeros(256, np.int64)
            if t >= 0:
                lo, part = stored[t]
                f[lo : lo + len(part)] = part
            fr.append(f)
    nwords, pos = rans._get_varint(blob, pos)
    x = list(struct.unpack_from(f"<{lanes}I", blob, pos)) if n else []
    words = list(struct.unpack_from(f"<{nwords}H", blob, pos + 4 * lanes)) if n else []
    tid, base = [], 0
    for r, cc, flags, _, cls, k in models:
        tid += [
            base + (int(flags[i]) if flags is not None else 0) * k + int(cls[j])
            for i in range(r)
            for j in range(cc)
        ]
        base += 2 * k
    sym, ptr, mask = [], 0, (1 << prec) - 1
    for i in range(n):
        f, lane = fr[tid[i]].tolist(), i % lanes
        slot, s, cum = x[lane] & mask, 0, 0
        while cum + f[s] <= slot:
            cum, s = cum + f[s], s + 1
        x[lane] = f[s] * (x[lane] >> prec) + slot - cum
        if (i + 1) % lanes == 0 or i == n - 1:  # a step of lanes ends: renormalize in lane order
            for j in range(i - (i % lanes), i + 1):
                if x[j % lanes] < L:
                    x[j % lanes] = (x[j % lanes] << 16) | words[ptr]
                    ptr += 1
        sym.append(s)
    assert ptr == nwords and all(v == L for v in x)
    out, pos = [], 0
    for r, cc, flags, proto, _, _ in models:
        for i in range(r):
            for j in range(cc):
                v = sym[pos] - 128 + (int(proto[j]) if flags is not None and flags[i] else 0)
                out.append((v + 128) % 256 - 128)
                pos += 1
    return out


rare = np.where(np.arange(3000) == 1234, -128, 0).astype(np.int8).reshape(60, 50)
wrap = np.full((20, 10), 127, np.int8)
wrap[1::2] = -128  # prototype rows whose residual wraps around mod 256
CASES = {
    "random": [gauss((40, 50), seed=1), gauss((30, 20), 20.0, 2, 127)],
    "all_equal": [np.full((50, 60), 5, np.int8)],
    "single_rare": [rare],
    "alphabet": [
        np.random.default_rng(2)
        .permutation(np.arange(-128, 128).repeat(9))
        .astype(np.int8)
        .reshape(48, 48)
    ],
    "empty_tensors": [
        np.zeros((0, 5), np.int8),
        gauss((9, 7), seed=3),
        np.zeros((4, 0), np.int8),
        np.zeros((0, 0), np.int8),
        gauss((1, 1), seed=4),
    ],
    "empty": [],
    "embedding": [embedding_like(5)],
    "columns": [column_scaled(6)],
    "wrap": [wrap],
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(("prec", "lanes"), [(14, 1), (14, 32), (11, 7), (15, 256)])
def test_round_trips_and_matches_the_slow_reference(case: str, prec: int, lanes: int) -> None:
    ts = CASES[case]
    codes = np.concatenate([t.reshape(-1) for t in ts]) if ts else np.zeros(0, np.int8)
    blob = crans.encode(codes, [t.shape for t in ts], prec=prec, lanes=lanes)
    got = crans.decode(blob, expect=codes.size)
    assert got.dtype == np.int8 and np.array_equal(got, codes)
    if codes.size <= 3000 or lanes > 1:
        assert ref_decode(blob) == codes.tolist()


@pytest.mark.parametrize("seed", range(5))
def test_random_tensor_sets_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ts = []
    for i in range(int(rng.integers(1, 8))):
        shape = (int(rng.integers(0, 200)), int(rng.integers(0, 150)))
        kind, sd, q = rng.integers(3), float(rng.uniform(0.3, 40)), int(rng.integers(1, 128))
        if kind == 0 or 0 in shape:
            ts.append(gauss(shape, sd, seed * 10 + i, q))
        else:
            ts.append(embedding_like(i) if kind == 1 else column_scaled(i))
    codes = np.concatenate([t.reshape(-1) for t in ts])
    lanes, prec = int(rng.choice([1, 3, 64, 1000])), int(rng.integers(8, 16))
    lanes = max(lanes, -(-codes.size // rans.MAX_STEPS))  # the fewest lanes the bound allows
    blob = crans.encode(codes, [t.shape for t in ts], prec=prec, lanes=lanes)
    assert np.array_equal(crans.decode(blob, expect=codes.size), codes)


def test_models_are_chosen_where_they_pay_and_beat_order0() -> None:
    emb, cols, plain = embedding_like(7), column_scaled(8), gauss((64, 96), 4.0, 9)
    flags, proto, _, _ = crans.plan(emb)
    assert proto is not None and 30 < int(flags.sum()) < 70
    assert crans.plan(cols)[3] > 1 and crans.plan(cols)[1] is None
    assert crans.plan(plain)[1] is None
    for c, ratio in ((emb, 0.8), (cols, 0.95)):
        ours = len(crans.encode(c.reshape(-1), [c.shape], lanes=1))
        order0 = len(rans.encode(c.reshape(-1), [c.size], lanes=1))
        assert ours < ratio * order0
    ours = len(crans.encode(plain.reshape(-1), [plain.shape], lanes=1))  # no model: same as order-0
    assert ours <= len(rans.encode(plain.reshape(-1), [plain.size], lanes=1)) + 16


def test_size_is_near_the_model_bound() -> None:
    c = embedding_like(10)
    c = np.concatenate([c] * 40)  # 3,840 rows, prototype rows throughout
    flags, proto, cls, k = crans.plan(c)
    sym = crans._symbols(c, flags, proto).reshape(-1)
    ctx = crans._ctx_ids(flags, cls, k, c.shape[0])
    bound = 0.0
    for j in np.unique(ctx):
        h = np.bincount(sym[ctx == j])
        h = h[h > 0]
        bound += float(h.sum() * np.log2(h.sum()) - (h * np.log2(h)).sum()) / 8
    blob = crans.encode(c.reshape(-1), [c.shape])
    side = (c.shape[0] + 7) // 8 + c.shape[1] + c.shape[1] * (k.bit_length() - 1) / 8
    states = 4 * rans.default_lanes(c.size)
    assert bound < len(blob) <= 1.005 * bound + side + states + 2 * k * 120 + 32


def test_corrupted_streams_are_refused() -> None:
    ts = [embedding_like(11)[:40], column_scaled(12)[:, :30]]
    codes = np.concatenate([t.reshape(-1) for t in ts])
    blob = crans.encode(codes, [t.shape for t in ts], lanes=32)
    rng = np.random.default_rng(13)
    for pos in range(len(blob)):  # every byte, xor a random non-zero value
        bad = bytearray(blob)
        bad[pos] ^= int(rng.integers(1, 256))
        with pytest.raises(ValueError, match="crans|varint"):
            crans.decode(bytes(bad), expect=codes.size)
    for cut in (0, 9, 20, len(blob) // 2, len(blob) - 1):
        with pytest.raises(ValueError, match="crans|varint"):
            crans.decode(blob[:cut], expect=codes.size)
    with pytest.raises(ValueError, match="expect"):
        crans.decode(blob, expect=codes.size + 1)
    with pytest.raises(ValueError, match="crans"):
        crans.decode(blob + b"\0\0")
    with pytest.raises(ValueError, match="crans: shapes"):
        crans.encode(codes, [(3, 3)])


def artifact_tensors() -> list[QTensor]:
    g = torch.Generator().manual_seed(0)
    ts = [
        QTensor(
            "emb",
            (96, 48),
            "int",
            8,
            torch.from_numpy(embedding_like(14)),
            torch.rand(96, generator=g).half(),
            group="embed",
        )
    ]
    for i, (shape, bits) in enumerate([((16, 40), 6), ((32, 1), 8), ((0, 5), 6), ((1,), 4)]):
        q = 2 ** (bits - 1) - 1
        c = (torch.randn(shape, generator=g) * q / 3).round().clamp(-q, q).to(torch.int8)
        s = torch.rand(c.shape[0] if c.dim() > 1 else 1, generator=g).half()
        ts.append(QTensor(f"w{i}", shape, "int", bits, codes=c, scales=s, group="mlp"))
    ts.append(QTensor("norm", (7,), "fp16", data=torch.randn(7, generator=g).half()))
    return ts


def test_artifact_crans_round_trips_and_corruption_is_refused_by_the_coder() -> None:
    ts, meta = artifact_tensors(), {"model": {"d": 3}}
    blob = encode_artifact(ts, meta, codec="crans")
    assert blob[9] == 5 and encode_artifact(ts, meta, codec="crans") == blob  # deterministic
    assert len(blob) < len(encode_artifact(ts, meta, codec="rans"))
    out, m = decode_artifact(blob)
    assert m == meta and [t.name for t in out] == [t.name for t in ts]
    for a, b in zip(ts, out):
        assert a.shape == b.shape and a.kind == b.kind and a.bits == b.bits
        for f in ("codes", "scales", "data"):
            u, v = getattr(a, f), getattr(b, f)
            assert (u is None) == (v is None)
            if u is not None:
                assert u.dtype == v.dtype and u.numpy().tobytes() == v.numpy().tobytes()
    _, _, slen = struct.unpack_from("<QQQ", blob, 32)
    start = 32 + 24 + slen  # the crans stream
    rng = np.random.default_rng(15)
    for pos in rng.choice(np.arange(start, len(blob)), 25, replace=False):
        bad = bytearray(blob)
        bad[pos] ^= int(rng.integers(1, 256))
        struct.pack_into("<I", bad, 28, zlib.crc32(bytes(bad[32:]), zlib.crc32(bytes(bad[:28]))))
        with pytest.raises(ArtifactError, match="crans stream does not decode") as e:
            decode_artifact(bytes(bad))
        assert "SHA-256" not in str(e.value)
