"""Artifact container: bit-exact round trips, bit packing, and refusal of bad or hostile files."""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgolf.artifact import (
    CODECS,
    ArtifactError,
    QTensor,
    build_payload,
    byte_shuffle,
    byte_unshuffle,
    decode_artifact,
    encode_artifact,
    load_artifact,
    pack_bits,
    save_artifact,
    unpack_bits,
    unwrap,
    wrap,
)

SETTINGS = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def int_tensor(name: str, shape: tuple[int, ...], bits: int, seed: int = 0, group: str = "mlp"):
    g = torch.Generator().manual_seed(seed)
    q = 2 ** (bits - 1)
    codes = torch.randint(-q, q, shape, generator=g, dtype=torch.int8)
    rows = shape[0] if len(shape) > 1 else 1
    scales = (torch.rand(rows, generator=g) * 0.1 + 1e-3).half()
    return QTensor(name, shape, "int", bits, codes, scales, None, group)


def fp16_tensor(name: str, shape: tuple[int, ...], seed: int = 0):
    data = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).half()
    return QTensor(name, shape, "fp16", 16, None, None, data, "passthrough")


def sample_set() -> list[QTensor]:
    return [
        int_tensor("blocks.0.attn.c_q.weight", (16, 24), 6, 1, "attn"),
        int_tensor("tok_emb.weight", (32, 8), 8, 2, "embed"),
        int_tensor("odd.vector", (7,), 3, 3, "other"),
        int_tensor("empty.rows", (0, 5), 5, 4, "other"),
        fp16_tensor("blocks.0.attn_scale", (8,), 5),
        fp16_tensor("scalar", (), 6),
    ]


META = {"model": {"vocab_size": 32, "num_layers": 1}, "note": "héllo", "k": [1.5, None]}


def assert_same(a: list[QTensor], b: list[QTensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.name, tuple(x.shape), x.kind, x.bits, x.group) == (
            y.name,
            tuple(y.shape),
            y.kind,
            y.bits,
            y.group,
        )
        for f in ("codes", "scales", "data"):
            u, v = getattr(x, f), getattr(y, f)
            assert (u is None) == (v is None), (x.name, f)
            if u is not None:
                assert u.dtype == v.dtype and tuple(u.shape) == tuple(v.shape)
                raw = (lambda t: t.view(torch.int16)) if u.dtype == torch.float16 else (lambda t: t)
                assert torch.equal(raw(u.contiguous()), raw(v.contiguous())), (x.name, f)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("packed", [False, True])
def test_round_trip_every_codec_and_packing(codec: str, packed: bool) -> None:
    ts = sample_set()
    if codec in ("rans", "crans") and packed:
        with pytest.raises(ValueError, match="pack_bits=False"):
            encode_artifact(ts, META, codec=codec, pack_bits=packed)
        return
    blob = encode_artifact(ts, META, codec=codec, pack_bits=packed)
    out, meta = decode_artifact(blob)
    assert_same(ts, out)
    assert meta == META


@pytest.mark.parametrize("stride", [1, 2, 3, 4, 8])
def test_round_trip_every_shuffle_stride(stride: int) -> None:
    ts = sample_set()
    out, _ = decode_artifact(encode_artifact(ts, META, shuffle=stride))
    assert_same(ts, out)


@SETTINGS
@given(bits=st.integers(2, 8), n=st.integers(0, 300), seed=st.integers(0, 2**16))
def test_pack_unpack_inverse(bits: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    c = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), n).astype(np.int8)
    buf = pack_bits(c, bits)
    assert len(buf) == (n * bits + 7) // 8
    assert np.array_equal(unpack_bits(buf, bits, n), c)


def test_pack_bits_layout_and_range() -> None:
    # 3-bit codes -4..3 become 0..7, MSB first: [-4, 3] -> 000 111 -> 0b00011100
    assert pack_bits(np.array([-4, 3], np.int8), 3) == bytes([0b00011100])
    with pytest.raises(ValueError, match="range"):
        pack_bits(np.array([4], np.int8), 3)
    with pytest.raises(ValueError, match="padding"):
        unpack_bits(bytes([0b00011101]), 3, 2)


@SETTINGS
@given(data=st.binary(max_size=64), stride=st.integers(1, 8))
def test_byte_shuffle_inverse(data: bytes, stride: int) -> None:
    assert byte_unshuffle(byte_shuffle(data, stride), stride, len(data)) == data


@SETTINGS
@given(
    specs=st.lists(
        st.tuples(st.integers(2, 8), st.integers(0, 9), st.integers(1, 9), st.booleans()),
        min_size=1,
        max_size=4,
    ),
    codec=st.sampled_from(CODECS),
    packed=st.booleans(),
)
def test_round_trip_property(specs: list, codec: str, packed: bool) -> None:
    ts = []
    for i, (bits, rows, cols, is_int) in enumerate(specs):
        shape = (rows, cols)
        ts.append(int_tensor(f"t{i}", shape, bits, i) if is_int else fp16_tensor(f"t{i}", shape, i))
    packed = packed and codec not in ("rans", "crans")  # they refuse bit-packed codes
    out, meta = decode_artifact(encode_artifact(ts, {"i": len(ts)}, codec, packed))
    assert_same(ts, out)
    assert meta == {"i": len(ts)}


def test_grouped_layout_and_packing_sizes() -> None:
    ts = [int_tensor("a", (64, 64), 6, 0)]
    unpacked, packed = build_payload(ts, {}), build_payload(ts, {}, packed=True)
    assert len(unpacked) - len(packed) == 64 * 64 - 64 * 64 * 6 // 8


# ---- refusing bad input ------------------------------------------------------------------------


def refused_or_identical(blob: bytes, ts: list[QTensor]) -> None:
    try:
        out, meta = decode_artifact(blob, source="m.ptz")
    except ArtifactError as e:
        assert str(e).startswith("m.ptz: ")
        return
    assert_same(ts, out)  # a mutation may only "succeed" if nothing changed
    assert meta == META


@pytest.fixture(scope="module")
def good() -> tuple[bytes, list[QTensor]]:
    ts = sample_set()
    return encode_artifact(ts, META, codec="zstd"), ts


def test_every_truncation_refused(good: tuple[bytes, list[QTensor]]) -> None:
    blob, _ = good
    for n in range(len(blob)):
        with pytest.raises(ArtifactError):
            decode_artifact(blob[:n])


@SETTINGS
@given(extra=st.binary(min_size=1, max_size=16))
def test_appended_bytes_refused(good: tuple[bytes, list[QTensor]], extra: bytes) -> None:
    with pytest.raises(ArtifactError, match="trailing"):
        decode_artifact(good[0] + extra)


@SETTINGS
@given(data=st.data())
def test_bit_flips_refused(good: tuple[bytes, list[QTensor]], data: st.DataObject) -> None:
    blob, ts = good
    b = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(b) - 1))
        b[pos] ^= 1 << data.draw(st.integers(0, 7))
    refused_or_identical(bytes(b), ts)
    if bytes(b) != blob:
        with pytest.raises(ArtifactError):
            decode_artifact(bytes(b))


@SETTINGS
@given(junk=st.binary(max_size=200), keep_magic=st.booleans())
def test_random_bytes_refused(good: tuple[bytes, list[QTensor]], junk: bytes, keep_magic: bool):
    blob = good[0][: 8 + len(junk) % 40] + junk if keep_magic else junk
    with pytest.raises(ArtifactError):
        decode_artifact(blob)


def rewrap(payload: bytes, codec: str = "brotli", plen: int | None = None, ver: int = 1) -> bytes:
    """Build a wrapper with valid CRC around a (possibly doctored) payload."""
    blob = bytearray(wrap(payload, codec, 1))
    blob[8] = ver
    if plen is not None:
        blob[12:20] = struct.pack("<Q", plen)
    blob[28:32] = struct.pack("<I", zlib.crc32(bytes(blob[32:]), zlib.crc32(bytes(blob[:28]))))
    return bytes(blob)


def test_header_problems_named() -> None:
    payload = build_payload(sample_set(), META)
    with pytest.raises(ArtifactError, match="unknown artifact version 7"):
        decode_artifact(rewrap(payload, ver=7))
    with pytest.raises(ArtifactError, match="exceeds"):
        decode_artifact(rewrap(payload, plen=1 << 40))  # decompression-bomb guard
    with pytest.raises(ArtifactError, match="stream does not decode"):
        decode_artifact(rewrap(payload, plen=len(payload) - 5))  # stream longer than declared
    with pytest.raises(ArtifactError, match="exceeds the 100-byte limit"):
        unwrap(encode_artifact(sample_set(), META), max_raw=100)
    b = bytearray(encode_artifact(sample_set(), META))
    b[40] ^= 0xFF
    with pytest.raises(ArtifactError, match="CRC-32"):
        decode_artifact(bytes(b))


def test_inner_problems_detected_with_valid_checksums() -> None:
    """A payload doctored and re-checksummed (not just corrupted) is still refused."""
    ts = [int_tensor("w", (4, 6), 6, 0)]
    payload = bytearray(build_payload(ts, {"a": 1}))
    table_at = 56 + 2 + 1 + 2 + 3  # name "w", group "mlp"; then kind, bits, ndim
    assert struct.unpack_from("<II", payload, table_at + 3) == (4, 6)
    struct.pack_into("<II", payload, table_at + 3, 4, 7)  # claim 28 codes, only 24 stored
    payload[-32:] = hashlib.sha256(bytes(payload[:-32])).digest()
    with pytest.raises(ArtifactError, match="do not fit shape"):
        decode_artifact(rewrap(bytes(payload)), source="x.bin")
    bad_sha = bytearray(build_payload(ts, {"a": 1}))
    bad_sha[60] ^= 1
    with pytest.raises(ArtifactError, match="SHA-256"):
        decode_artifact(rewrap(bytes(bad_sha)))


def test_encode_rejects_bad_tensors() -> None:
    t = int_tensor("w", (4, 4), 8, 0)
    with pytest.raises(ArtifactError, match="range"):
        encode_artifact([QTensor("w", (4, 4), "int", 4, t.codes, t.scales)], {})
    with pytest.raises(ArtifactError, match="int8"):
        encode_artifact([QTensor("w", (4, 4), "int", 8, t.codes.int(), t.scales)], {})
    with pytest.raises(ArtifactError, match="scales"):
        encode_artifact([QTensor("w", (4, 4), "int", 8, t.codes, t.scales[:3])], {})
    with pytest.raises(ArtifactError, match="duplicate"):
        encode_artifact([t, t], {})
    with pytest.raises(ValueError, match="unknown codec"):
        encode_artifact([t], {}, codec="gzip")


class Evil:
    """Unpickling this creates a marker file (stands for arbitrary code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for name in ("evil.ptz", "evil.bin"):
        torch.save({"w": Evil(marker)}, tmp_path / name)
        with pytest.raises(ArtifactError, match="not a pgolf artifact .maybe a torch.save"):
            load_artifact(tmp_path / name)
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(ArtifactError, match=r"plain\.pkl: not a pgolf artifact"):
        load_artifact(tmp_path / "plain.pkl")
    assert not marker.exists()
    # the files really are hostile: an unpickling loader would have created the marker
    torch.load(tmp_path / "evil.ptz", weights_only=False)
    assert marker.exists()


def test_save_is_atomic_and_round_trips(tmp_path: Path) -> None:
    ts, path = sample_set(), tmp_path / "final_model.ptz"
    n = save_artifact(path, ts, META, codec="lzma", pack_bits=True)
    assert n == path.stat().st_size == len(encode_artifact(ts, META, "lzma", True))
    assert os.listdir(tmp_path) == ["final_model.ptz"]  # no temp file left behind
    out, meta = load_artifact(path)
    assert_same(ts, out)
    assert meta == META
    with pytest.raises(ArtifactError, match="missing.ptz: cannot read"):
        load_artifact(tmp_path / "missing.ptz")


def own_set() -> list[QTensor]:
    """`sample_set` plus a low-rank term and a promoted column group (their checks are among the
    bounds the own-artifact read skips)."""
    base = int_tensor("blocks.0.mlp.fc.weight", (8, 16), 4, 7)
    base.codes[:, 4:8] = 0
    return [
        *sample_set(),
        base,
        int_tensor("blocks.0.mlp.fc.weight.awq.4", (8, 4), 8, 8),
        int_tensor("blocks.0.mlp.fc.weight.lqer.a", (8, 2), 4, 9),
        fp16_tensor("blocks.0.mlp.fc.weight.lqer.b", (2, 16), 10),
    ]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("packed", [False, True])
def test_own_artifact_read_equals_the_checked_read(
    tmp_path: Path, codec: str, packed: bool
) -> None:
    """`load_artifact(path, checked=False)` (a run reading back the file it just wrote) gives
    the same tensors, bit for bit, and the same meta as the checked read of the same file."""
    if codec in ("rans", "crans") and packed:
        return  # refused by the writer (test_round_trip_every_codec_and_packing)
    path = tmp_path / "artifact.pgolf"
    save_artifact(path, own_set(), META, codec=codec, pack_bits=packed)
    checked, meta = load_artifact(path)
    own, own_meta = load_artifact(path, checked=False)
    assert_same(checked, own)
    assert_same(own_set(), own)
    assert own_meta == meta == META


def test_own_artifact_read_still_checks_crc_and_sha(tmp_path: Path) -> None:
    """The own-artifact read skips the hostile-input bounds, not the checksums: a file changed
    on disk is still refused, naming it."""
    path = tmp_path / "artifact.pgolf"
    blob = bytearray(encode_artifact(sample_set(), META))
    blob[40] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match=r"artifact\.pgolf: bad checksum \(CRC-32\)"):
        load_artifact(path, checked=False)
    payload = bytearray(build_payload(sample_set(), META))
    payload[60] ^= 1
    path.write_bytes(rewrap(bytes(payload)))
    with pytest.raises(ArtifactError, match=r"artifact\.pgolf: bad checksum \(SHA-256"):
        load_artifact(path, checked=False)
