"""Fuzzing the loaders: a real quantized artifact (from a tiny GPT) and a real token shard are
mutated — bit flips, truncations, insertions, header edits, and payloads changed then re-signed
(SHA-256 and CRC-32 recomputed) — and every load must raise the loader's own error or, for a
re-signed file, give a valid decode of exactly the changed content; never another exception,
never an allocation beyond a bound. Plus one regression test per defect measured in issue 7
(each fails on the loader before that issue: it allocated, hung, or accepted the file)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import struct
import threading
import time
import tracemalloc
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard
from helpers import perturbed_gpt

from pgolf import artifact as A
from pgolf import config as C
from pgolf import pipeline as P
from pgolf import quant
from pgolf import score as S
from pgolf.artifact import ArtifactError, decode_artifact, load_artifact, unwrap, wrap
from pgolf.data import ShardError, read_shard, write_shard

MiB = 1 << 20
BOUND = 256 * MiB
ROUNDS = 150


class Bounded:
    """Peak traced allocation (tracemalloc: Python objects and numpy arrays) and growth of the
    process's peak RSS within the block must both stay under `limit` bytes."""

    def __init__(self, limit: int = BOUND) -> None:
        self.limit = limit

    def __enter__(self) -> Bounded:
        self.rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        tracemalloc.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.rss0
        assert peak < self.limit, f"traced peak {peak / MiB:.0f} MiB"
        assert grew < self.limit, f"peak RSS grew by {grew / MiB:.0f} MiB"


def tiny_cfg() -> C.RunConfig:
    cfg = C.preset("cpu-tiny")
    m = replace(
        cfg.model,
        vocab_size=64,
        num_layers=2,
        model_dim=32,
        num_heads=2,
        num_kv_heads=1,
        rope_dims=8,
        xsa_layers=(1,),
        ve_dim=8,
        ve_layers=(1,),
        parallel_start=1,
        recur_layers=(),
    )
    q = replace(cfg.quant, method="rtn", embed_method="rtn", passthrough_numel=64)
    return replace(cfg, model=m, quant=q)


@pytest.fixture(scope="module")
def real() -> tuple[C.RunConfig, list, dict]:
    cfg = tiny_cfg()
    model = perturbed_gpt(cfg.model, recur=False)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    tensors = quant.quantize_state(state, {}, quant.make_plan(state, cfg.quant, cfg.model))
    meta = {"format": "pgolf-artifact", "config": C.to_dict(cfg), "recurrence_active": False}
    return cfg, tensors, meta


def same(a: list, b: list) -> bool:
    def key(t):  # noqa: ANN001
        raw = [
            x.view(torch.int16) if x.dtype == torch.float16 else x
            for x in (t.codes, t.scales, t.data)
            if x is not None
        ]
        return (t.name, tuple(t.shape), t.kind, t.bits, t.group, [r.tolist() for r in raw])

    return [key(t) for t in a] == [key(t) for t in b]


def mutate(blob: bytes, rng: random.Random, header_only: bool = False) -> bytes:
    """One random structural mutation; the result always differs from `blob`."""
    b, hi = bytearray(blob), (32 if header_only else len(blob))
    op = "header" if header_only else rng.choice(["flip", "trunc", "insert", "delete", "header"])
    if op == "flip":
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(hi)] ^= 1 << rng.randrange(8)
    elif op == "trunc":
        del b[rng.randrange(len(b)) :]
    elif op == "insert":
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.randbytes(rng.randint(1, 64))
    elif op == "delete":
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 64)]
    else:
        i = rng.randrange(min(32, len(b)))
        b[i] = rng.randrange(256)
    if bytes(b) == blob:
        b.append(0)
    return bytes(b)


@pytest.mark.parametrize("codec", A.CODECS)
def test_unsigned_mutations_are_always_refused(real, codec: str) -> None:
    _, tensors, meta = real
    blob = A.encode_artifact(tensors, meta, codec=codec, pack_bits=codec == "zstd")
    assert same(decode_artifact(blob)[0], tensors)
    rng = random.Random(f"unsigned-{codec}")
    with Bounded():
        for i in range(ROUNDS):
            bad = mutate(blob, rng, header_only=i % 5 == 0)
            with pytest.raises(ArtifactError, match=r"^m\.pgolf: "):  # a checksum was not redone
                decode_artifact(bad, source="m.pgolf")


def resign(payload: bytearray) -> bytes:
    payload[-32:] = hashlib.sha256(bytes(payload[:-32])).digest()
    return bytes(payload)


def check_resigned(payload: bytes, codec: str) -> str:
    """Decode a re-signed payload: ArtifactError, or exactly what the changed bytes say."""
    try:
        tensors, meta = decode_artifact(wrap(payload, codec, 2), source="r.pgolf")
    except ArtifactError as e:
        assert str(e).startswith("r.pgolf: ")
        return "refused"
    lens, packed = struct.unpack_from("<5Q", payload, 16), bool(payload[10] & 1)
    again = A.build_payload(tensors, meta, packed)
    end = 56 + sum(lens[:4])  # everything but the meta JSON must be re-encoded byte for byte
    assert again[:16] == payload[:16] and again[56:end] == payload[56:end]
    assert struct.unpack_from("<4Q", again, 16) == lens[:4]
    assert json.loads(payload[end : end + lens[4]]) == meta
    return "accepted"


@pytest.mark.parametrize("packed", [False, True])
def test_resigned_payload_mutations_refused_or_decoded_exactly(real, packed: bool) -> None:
    _, tensors, meta = real
    good = A.build_payload(tensors, meta, packed)
    lens = struct.unpack_from("<5Q", good, 16)
    rng, seen = random.Random(f"resigned-{packed}"), set()
    with Bounded():
        for _ in range(ROUNDS):
            p = bytearray(good)
            op = rng.choice(["flip", "flip", "u64", "count", "trunc", "insert", "meta"])
            if op == "flip":  # anywhere before the digest: table, codes, scales, data, meta
                for _ in range(rng.randint(1, 3)):
                    p[rng.randrange(len(p) - 32)] ^= 1 << rng.randrange(8)
            elif op == "u64":  # a section length or a table (offset, length) word
                at = rng.choice([16 + 8 * rng.randrange(5), 56 + rng.randrange(lens[0] - 8)])
                struct.pack_into("<Q", p, at, rng.choice([0, 1, 2**31, 2**63, rng.getrandbits(64)]))
            elif op == "count":
                struct.pack_into("<I", p, 12, rng.choice([0, 1, 2**22, 2**32 - 1]))
            elif op == "trunc":
                del p[rng.randrange(len(p) - 32) : -32]
            elif op == "insert":
                i = rng.randrange(len(p) - 32)
                p[i:i] = rng.randbytes(rng.randint(1, 16))
            else:
                m = dict(meta, config={**meta["config"], "model": dict(meta["config"]["model"])})
                m["config"]["model"][rng.choice(["num_layers", "model_dim", "vocab_size"])] = (
                    rng.choice([0, 3, 4000, 2**40, "x", None, 1.5])
                )
                p = bytearray(A.build_payload(tensors, m, packed))
            seen.add(check_resigned(resign(p), "zstd"))
    assert seen == {"refused", "accepted"}  # both outcomes are exercised


def test_resigned_config_edits_never_build_a_wrong_model(real, tmp_path: Path) -> None:
    """Config edits that survive the container are caught by the meta-device shape check."""
    cfg, tensors, meta = real
    edits = [
        ("num_layers", 3),
        ("num_layers", 4000),
        ("model_dim", 64),
        ("vocab_size", 65),
        ("mlp_mult", 5.0),
        ("ve_dim", 0),
        ("tie_embeddings", False),
        ("num_kv_heads", 2),
        ("bogus", 1),
        ("num_layers", "2"),
        ("xsa_layers", [0, 99]),
        ("num_layers", True),
    ]
    path = tmp_path / "a.pgolf"
    path.write_bytes(A.encode_artifact(tensors, meta))  # first: one-time lazy imports, untraced
    got, model, _ = P.load_artifact_model(path, torch.device("cpu"))
    assert got == cfg and sum(p.numel() for p in model.parameters()) > 0
    for key, value in edits:
        m = json.loads(json.dumps(meta))
        m["config"]["model"][key] = value
        path.write_bytes(A.encode_artifact(tensors, m))
        with Bounded(), pytest.raises(ArtifactError, match=str(path)):
            P.load_artifact_model(path, torch.device("cpu"))


# ---- shards -----------------------------------------------------------------------------------


def test_shard_mutations_refused_or_read_exactly(tmp_path: Path) -> None:
    src = tmp_path / "t_val_000000.bin"
    write_shard(src, np.random.default_rng(0).integers(0, 64, 500))
    good, rng, seen = src.read_bytes(), random.Random("shard"), set()
    path = tmp_path / "m_val_000000.bin"
    with Bounded():
        for i in range(ROUNDS):
            b = bytearray(mutate(good, rng))
            if i % 4 == 0:  # a header word set to an extreme value
                struct.pack_into("<i", b, 4 * rng.randrange(3), rng.choice([-1, 0, 2**31 - 1]))
            path.write_bytes(bytes(b))
            try:
                arr = read_shard(path, vocab_size=64)
            except ShardError as e:
                assert str(path) in str(e)
                seen.add("refused")
                continue
            n = struct.unpack_from("<i", b, 8)[0]
            assert len(b) == 1024 + 2 * n and bytes(np.asarray(arr).tobytes()) == bytes(b[1024:])
            assert not n or int(np.asarray(arr).max()) < 64
            seen.add("read")
    assert seen == {"refused", "read"}


# ---- regressions: one per defect measured in issue 7 -------------------------------------------


def stream_artifact(head: bytes, repeat: bytes, times: int, tail: bytes) -> bytes:
    """A zstd artifact whose payload is head + repeat*times + tail + SHA-256, built in bounded
    memory (the payload itself may be far larger than memory allows)."""
    plen = len(head) + len(repeat) * times + len(tail) + 32
    sha, c = hashlib.sha256(), zstandard.ZstdCompressor(level=3).compressobj()
    out = []
    for part in [head, *([repeat] * times), tail]:
        sha.update(part)
        out.append(c.compress(part))
    out += [c.compress(sha.digest()), c.flush()]
    stream = b"".join(out)
    hdr = A._WRAP.pack(A.WRAP_MAGIC, 1, A.CODEC_IDS["zstd"], 1, 0, plen, len(stream))
    return hdr + struct.pack("<I", zlib.crc32(stream, zlib.crc32(hdr))) + stream


def payload_head(n: int, lens: tuple[int, ...], packed: bool = False) -> bytes:
    return struct.pack("<8sHHI5Q", A.PAYLOAD_MAGIC, 1, int(packed), n, *lens)


@pytest.mark.parametrize("codes", [2**31, 2**28])
def test_packed_code_bomb_refused_before_allocating(codes: int) -> None:
    """2^31 2-bit codes: a ~0.5 GiB payload of zeros (measured: 16 GiB asked of the allocator);
    2^28 fits the payload limit and must be refused by the element bound before unpacking."""
    nbytes = codes * 2 // 8
    rec = struct.pack("<H1sH1sBBBI6Q", 1, b"w", 1, b"g", 1, 2, 1, codes, 0, nbytes, 0, 2, 0, 0)
    head = payload_head(1, (len(rec), nbytes, 2, 0, 2), packed=True) + rec
    blob = stream_artifact(head, bytes(MiB), nbytes // MiB, b"\0\0{}")
    with Bounded() as b, pytest.raises(ArtifactError, match="exceeds|elements"):
        decode_artifact(blob)
    assert b.seconds < 10


def test_duplicate_empty_records_refused_fast() -> None:
    """4 million identical empty records (measured: >120 s and 5.7 GiB), and 2 of them."""
    rec = struct.pack("<H1sH0sBBBI6Q", 1, b"e", 0, b"", 2, 16, 1, 0, *[0] * 6)
    for n, match in [(4_000_000, "exceeds"), (1_000_000, "too many"), (2, "duplicate")]:
        k = 10_000 if n % 10_000 == 0 else 1  # records per compressor call
        head = payload_head(n, (n * len(rec), 0, 0, 0, 2))
        blob = stream_artifact(head, rec * k, n // k, b"{}")
        with Bounded() as b, pytest.raises(ArtifactError, match=match):
            decode_artifact(blob)
        assert b.seconds < 10


@pytest.mark.parametrize("dev", ["/dev/zero", "/dev/urandom"])
def test_devices_refused_without_reading(dev: str) -> None:
    if not os.path.exists(dev):
        pytest.skip(f"no {dev}")
    with Bounded(), pytest.raises(ArtifactError, match="not a regular file"):
        load_artifact(dev)


def test_fifo_refused_promptly(tmp_path: Path) -> None:
    fifo = tmp_path / "a.pgolf"
    os.mkfifo(fifo)
    box: list[BaseException | None] = []

    def target() -> None:
        try:
            load_artifact(fifo)
            box.append(None)
        except BaseException as e:  # noqa: BLE001 - reported below
            box.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():  # release the blocked reader so the test process can finish
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(5)
        pytest.fail("load_artifact blocked on a FIFO")
    assert isinstance(box[0], ArtifactError) and "not a regular file" in str(box[0])


def test_metadata_with_4000_layers_refused_fast(real, tmp_path: Path) -> None:
    """num_layers=4000 in the metadata (measured: 2.6 GiB and 45 s before its error)."""
    _, tensors, meta = real
    m = json.loads(json.dumps(meta))
    m["config"]["model"]["num_layers"] = 4000
    path = tmp_path / "big.pgolf"
    path.write_bytes(A.encode_artifact(tensors, m))
    with Bounded() as b, pytest.raises(ArtifactError, match="big.pgolf"):
        P.load_artifact_model(path, torch.device("cpu"))
    assert b.seconds < 10


def encode_unchecked(monkeypatch: pytest.MonkeyPatch, tensors: list, **kw: object) -> bytes:
    """Encode skipping the writer's own check (as a hostile writer would)."""
    with monkeypatch.context() as mp:
        mp.setattr(A, "_check", lambda t: None)
        return A.encode_artifact(tensors, {}, **kw)


@pytest.mark.parametrize("field", ["scales", "data"])
def test_nan_and_inf_values_refused(real, monkeypatch: pytest.MonkeyPatch, field: str) -> None:
    _, tensors, _ = real
    kind = "int" if field == "scales" else "fp16"
    t = next(x for x in tensors if x.kind == kind)
    for bad in (float("nan"), float("inf")):
        x = getattr(t, field).clone()
        x.view(-1)[0] = bad
        blob = encode_unchecked(monkeypatch, [replace(t, **{field: x})])
        with pytest.raises(ArtifactError, match="finite"):
            decode_artifact(blob)


def test_out_of_range_codes_refused(real, monkeypatch: pytest.MonkeyPatch) -> None:
    _, tensors, _ = real
    t = next(x for x in tensors if x.kind == "int" and x.bits < 8)
    codes = t.codes.clone()
    codes.view(-1)[0] = 2 ** (t.bits - 1)  # one past the top of the signed range
    with pytest.raises(ArtifactError, match="range"):
        decode_artifact(encode_unchecked(monkeypatch, [replace(t, codes=codes)]))


def test_reserved_byte_and_out_of_order_offsets_refused(real) -> None:
    _, tensors, meta = real
    b = bytearray(A.encode_artifact(tensors, meta))
    b[11] = 1
    b[28:32] = struct.pack("<I", zlib.crc32(bytes(b[32:]), zlib.crc32(bytes(b[:28]))))
    with pytest.raises(ArtifactError, match="reserved 1"):
        decode_artifact(bytes(b))
    two = [
        A.QTensor("a", (4,), "fp16", 16, data=torch.ones(4).half()),
        A.QTensor("b", (4,), "fp16", 16, data=torch.zeros(4).half()),
    ]
    p = bytearray(A.build_payload(two, {}))
    rec = 2 + 1 + 2 + 0 + 3 + 4  # name "a", empty group, kind/bits/ndim, one dim
    data_off = 56 + rec + 32  # (offset, length) of the data part in record "a"
    assert struct.unpack_from("<QQ", p, data_off) == (0, 8)
    struct.pack_into("<Q", p, data_off, 8)  # "a" now points at "b"'s data and vice versa
    struct.pack_into("<Q", p, data_off + rec + 48 + 2, 0)
    with pytest.raises(ArtifactError, match="offset"):
        decode_artifact(wrap(resign(p)))


def test_non_finite_score_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from pgolf import evaluate as E

    nan = E.EvalResult(
        val_loss=float("nan"), val_bpb=float("nan"), nll_sum=0.0, tokens=1, bytes=1, seconds=0.0
    )
    monkeypatch.setattr(E, "eval_plain", lambda *a, **k: nan)
    with pytest.raises(ValueError, match="not finite"):
        S.evaluate_model(tiny_cfg(), None, None, None, "final", False, torch.device("cpu"))


def test_unwrap_limit_still_applies() -> None:
    blob = A.encode_artifact([A.QTensor("a", (64,), "fp16", 16, data=torch.ones(64).half())], {})
    with pytest.raises(ArtifactError, match="exceeds the 100-byte limit"):
        unwrap(blob, max_raw=100)


def test_file_size_must_match_header_and_old_brotli_is_refused(
    real, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    _, tensors, meta = real
    path = tmp_path / "a.pgolf"
    blob = A.encode_artifact(tensors, meta)
    for bad, match in [(blob[:-1], "truncated"), (blob + b"\0", "trailing"), (b"", "bad magic")]:
        path.write_bytes(bad)
        with pytest.raises(ArtifactError, match=f"a.pgolf: .*{match}"):
            load_artifact(path)
    (tmp_path / "dir.pgolf").mkdir()
    with pytest.raises(ArtifactError, match="not a regular file"):
        load_artifact(tmp_path / "dir.pgolf")

    class Brotli11:  # brotli 1.1's Decompressor: process() takes no output bound
        def process(self, data: bytes) -> bytes:
            raise AssertionError("an unbounded decompression was attempted")

    monkeypatch.setattr("pgolf.artifact_check.brotli.Decompressor", Brotli11)
    with pytest.raises(ArtifactError, match=r"brotli >= 1\.2"):
        decode_artifact(blob)
