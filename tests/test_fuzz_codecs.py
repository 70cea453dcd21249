"""Crafted hostile files for every codec of the artifact (brotli, rans, crans, with and without
low-rank terms), at and just past every bound the decoders derive (`rans.max_codes`,
`rans.MAX_SEGMENTS`, `crans.MIN_TENSOR_BYTES`, the container's `MAX_ELEMENTS`, low-rank rank
1..min(R, C)); one regression per defect of issue 23 items 1-4, each failing on the decoders
before it (they hung, allocated gigabytes or raised a traceback); and a short random corpus of
re-signed mutations (the long one: benchmarks/fuzz_codecs.py --seed S --rounds N)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import fuzz_corpus as F
import numpy as np
import pytest
import torch

from pgolf import artifact as A
from pgolf import artifact_check as AC
from pgolf import cli, crans, lqer, quant, rans
from pgolf.artifact import ArtifactError, decode_artifact

MiB = 1 << 20
STEPS = rans.MAX_STEPS
SRC = str(Path(__file__).resolve().parents[1] / "src")


def timed(fn: Callable[[], Any], limit_s: float = 10.0) -> Any:
    """Run fn untraced (tracemalloc slows numpy-heavy loops ~20x): result and seconds < limit."""
    t0 = time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t0
    assert secs < limit_s, f"took {secs:.1f} s"
    return out


def refused(blob: bytes, match: str, peak: int = 64 * MiB) -> str:
    """decode_artifact refuses `blob` naming the file, fast and with a small traced peak."""
    o = F.attempt(lambda: decode_artifact(blob, source="x.pgolf"))
    assert o.result == "refused", o
    assert match in o.message, o.message
    assert o.seconds < 10 and o.peak < peak, o
    return o.message


# ---- rans / crans: codes per lane (rans.max_codes) --------------------------------------------


def test_bound_is_the_encoders_default_and_derived_once() -> None:
    """Every default encoding up to the container's element limit is within the bound (so no
    valid artifact is refused); the bound is lanes x MAX_STEPS, 8,192 codes per state byte."""
    for n in [0, 1, STEPS, 2**20, 2**25, 2**25 + 1, 3 * 2**24, AC.MAX_ELEMENTS]:
        assert n <= rans.max_codes(rans.default_lanes(n))
    assert rans.default_lanes(AC.MAX_ELEMENTS) == 2048  # unchanged: artifact bytes unchanged
    assert rans.default_lanes(AC.MAX_ELEMENTS + 1) == 4096  # past it: more lanes, not a refusal
    assert rans.max_codes(1) == STEPS and rans.max_codes(rans.MAX_LANES) == STEPS << 16
    assert AC.MAX_TENSORS <= rans.MAX_SEGMENTS  # every tensor the container allows can be coded


@pytest.mark.parametrize("codec", ["rans", "crans"])
def test_codes_per_lane_at_the_bound_decode_and_past_it_are_refused(codec: str) -> None:
    """One lane, a one-symbol table: MAX_STEPS codes decode (in about a second); one more is
    refused before anything is allocated. Before: any count, one Python step per code."""
    make = F.one_symbol_rans if codec == "rans" else (lambda n, k: F.one_symbol_crans(1, n, k))
    dec = rans.decode if codec == "rans" else crans.decode
    got = timed(lambda: dec(make(STEPS, 1), expect=STEPS))
    assert got.dtype == np.int8 and got.size == STEPS and not got.any()
    past, past4 = make(STEPS + 1, 1), make(4 * STEPS + 1, 4)
    o = F.attempt(lambda: dec(past))
    assert o.result == "refused" and "bound" in o.message and o.peak < MiB, o
    o = F.attempt(lambda: dec(past4))  # the bound scales with the lanes
    assert o.result == "refused" and str(4 * STEPS) in o.message, o
    assert timed(lambda: dec(make(2 * STEPS, 2))).size == 2 * STEPS
    zeros = np.zeros(STEPS + 1, np.int8)  # the encoders never write what is refused
    with pytest.raises(ValueError, match="bound"):
        rans.encode(zeros, [zeros.size], lanes=1)
    with pytest.raises(ValueError, match="bound"):
        crans.encode(zeros, [(1, zeros.size)], lanes=1)


@pytest.mark.parametrize("codec", ["rans", "crans"])
def test_the_85_byte_file_declaring_100m_codes_is_refused_at_once(codec: str) -> None:
    """Issue 23 item 1: 85 bytes, one lane, a one-symbol table, 10^8 codes (measured: ~25 min)."""
    coded = F.one_symbol_rans(10**8, 1) if codec == "rans" else F.one_symbol_crans(10**4, 10**4, 1)
    blob = F.split_artifact(codec, coded, 10**8)
    assert len(blob) == (85 if codec == "rans" else 87)
    refused(blob, "more than the 67108864 allowed", peak=MiB)
    n = AC.MAX_ELEMENTS  # within the container's limit, but not on one lane
    coded = F.one_symbol_rans(n, 1) if codec == "rans" else F.one_symbol_crans(2**13, 2**13, 1)
    refused(F.split_artifact(codec, coded, n), "exceed the bound 32768", peak=MiB)


@pytest.mark.parametrize("codec", ["rans", "crans"])
def test_codes_past_the_element_limit_are_refused_before_decoding(codec: str) -> None:
    n = AC.MAX_ELEMENTS + 1
    coded = F.one_symbol_rans(n, 4096) if codec == "rans" else F.one_symbol_crans(1, n, 4096)
    refused(F.split_artifact(codec, coded, n), "more than the 67108864 allowed", peak=MiB)


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["rans", "crans"])
def test_codes_at_the_element_limit_decode_within_10s_and_200mib(codec: str) -> None:
    """2^26 codes on 2048 lanes from an ~8 KB file (what a constant model encodes to): decoded
    (measured 4.5 s rans, 7.1 s crans on 2 loaded cores; +193 MiB RSS), then refused by the
    payload check; memory 2 bytes per code (rans) / 3 (crans), not 34 (issue 23 item 3)."""
    n = AC.MAX_ELEMENTS
    coded = (
        F.one_symbol_rans(n, 2048) if codec == "rans" else F.one_symbol_crans(2**13, 2**13, 2048)
    )
    blob = F.split_artifact(codec, coded, n)
    assert len(blob) < 8400
    timed(lambda: pytest.raises(ArtifactError, decode_artifact, blob, "x.pgolf"))
    o = F.attempt(lambda: decode_artifact(blob, source="x.pgolf"))
    assert o.result == "refused" and "tensor table" in o.message, o
    assert o.peak < 3.2 * n, f"{o.peak / n:.1f} bytes per code"


@pytest.mark.parametrize("codec", ["rans", "crans"])
def test_decoder_memory_per_code(codec: str) -> None:
    """Traced peak of a decode: rans the output (1 byte per code), crans a u16 table id and the
    output (3; was ~34: int64 context ids, symbols and residuals), plus ~1 MiB of tables; the
    payload around the codes is built in one buffer (a code is held twice, not three times)."""
    n = 2**21
    coded = (
        F.one_symbol_rans(n, 2048) if codec == "rans" else F.one_symbol_crans(2**10, 2**11, 2048)
    )
    dec = rans.decode if codec == "rans" else crans.decode
    per_code = 1 if codec == "rans" else 3
    o = F.attempt(lambda: dec(coded, expect=n))
    assert o.result == "accepted" and o.peak < per_code * n + 2 * MiB, o.peak / n
    blob = F.split_artifact(codec, coded, n)
    o = F.attempt(lambda: A.unwrap(blob, "x.pgolf"))
    assert o.result == "accepted" and o.peak < max(2, per_code) * n + 2 * MiB, o.peak / n
    if codec == "crans":  # one row of n columns: per-column arrays are bytes, not int64s
        row = F.one_symbol_crans(1, n, 2048)
        o = F.attempt(lambda: dec(row, expect=n))
        assert o.result == "accepted" and o.peak < per_code * n + 2 * MiB, o.peak / n


# ---- brotli (and the container around every codec): the declared payload ------------------------


@pytest.fixture(scope="module")
def bomb() -> bytes:
    import brotli

    return brotli.compress(bytes(AC.MAX_RAW_BYTES), quality=5)


@pytest.mark.parametrize("stride", [1, 2])
def test_brotli_bomb_at_the_payload_limit_is_bounded_and_past_it_refused(
    bomb: bytes, stride: int
) -> None:
    """A few hundred bytes of Brotli declaring `MAX_RAW_BYTES` (128 MiB) of zeros: decoded into
    at most the declared size (plus one unshuffled copy at stride 2), then refused by the
    payload check; one byte more is refused by the header; a stream that decodes to more than
    it declares is stopped at the limit."""
    raw = AC.MAX_RAW_BYTES
    assert len(bomb) < 64 * 1024
    blob = F.wrapper(bomb, "brotli", raw, stride)
    o = F.attempt(lambda: decode_artifact(blob, source="x.pgolf"))
    assert o.result == "refused" and "tensor table" in o.message, o
    assert o.seconds < 10 and o.peak < (stride + 0.1) * raw, (o.seconds, o.peak / raw)
    refused(F.wrapper(bomb, "brotli", raw + 1, 1), "exceeds the", peak=MiB)
    o = F.attempt(lambda: decode_artifact(F.wrapper(bomb, "brotli", 2**20, 1), source="x.pgolf"))
    assert o.result == "refused" and "more than the 1048576 bytes" in o.message, o
    assert o.peak < 4 * MiB, o


# ---- segments and tensors -----------------------------------------------------------------------


def test_rans_segments_at_and_past_the_bound() -> None:
    m = rans.MAX_SEGMENTS
    segs = [(0, b"")] * (m - 1) + [(1, F.table(128, [F.ONE]))]
    codes = np.zeros(1, np.int8)
    got = timed(lambda: rans.decode(F.rans_stream(segs, codes=codes), expect=1), 5)
    assert got.tolist() == [0]
    full = F.rans_stream([(1, F.table(0, [128] * 256))] * m, lanes=1, crc=0)  # 2 MB of tables
    o = F.attempt(partial(rans.decode, full), trace=False)  # measured 1.4 s on 2 loaded cores
    assert o.result == "refused" and "runs out of words" in o.message and o.seconds < 5, o
    for bad, match in [
        (F.rans_stream([(0, b"")] * (m + 1)), "segments"),
        (F.rans_stream([(0, b"")] * 3, nseg=2**32 - 1), "segments"),
        (F.rans_stream([(2**40, F.table(128, [F.ONE]))] * 50), "bound"),
    ]:
        o = F.attempt(partial(rans.decode, bad))
        assert o.result == "refused" and match in o.message and o.peak < MiB, o


def test_crans_empty_tensors_cost_nothing() -> None:
    """Issue 23 item 2: thousands of tensors with cols = 0 and huge row counts (measured: a
    98 KB file past 120 s, each allocating its row contexts): now no allocation at all."""
    m = rans.MAX_SEGMENTS
    ts = [F.crans_tensor(2**40 + i, 0) for i in range(m)]
    blob = F.crans_stream(ts, 0)
    o = F.attempt(lambda: crans.decode(blob, expect=0))
    assert o.result == "accepted" and o.seconds < 5 and o.peak < 4 * MiB, o
    for bad, match in [
        (F.crans_stream(ts + ts[:1], 0), "tensors"),  # MAX_SEGMENTS + 1
        (F.crans_stream([F.crans_tensor(1, 0)] * 3, 0, nt=4), "tensors"),  # < 3 bytes each
        (F.crans_stream([F.crans_tensor(2**31, 0, mode=1)], 0), "mode"),  # flags of 2^31 rows
        (F.crans_stream([F.crans_tensor(0, 2**31, mode=6)], 0), "mode"),  # classes of 2^31 cols
    ]:
        o = F.attempt(partial(crans.decode, bad, expect=0))
        assert o.result == "refused" and match in o.message and o.peak < MiB, o
    n = 2**22  # 3,000 tensors of 2^22 x 0 codes, one of 2^11 x 2^11 (before: ~30 s, 32 MB each)
    blob = F.split_artifact("crans", F.empty_tensors_crans(3000, n), n, rest=b"junk")
    timed(lambda: refused(blob, "tensor table", peak=3 * n + 4 * MiB), 5)


def test_crans_tables_are_referenced_not_copied() -> None:
    """2,000 tensors of 8 column classes (16 contexts each) using one stored table: the head
    holds the table once, not 16 tables of 256 counts per tensor (before: 64 MB for 10 KB)."""
    cls = bytes([0])  # a 1 x 1 tensor's 3-bit class: 0
    first = F.crans_tensor(1, 1, 6, cls, b"\0" + F.table(128, [F.ONE]))
    ts = [first] + [F.crans_tensor(1, 1, 6, cls, b"\1")] * 1999
    blob = F.crans_stream(ts, 2000, lanes=1, codes=np.zeros(2000, np.int8))
    assert len(blob) < 10_100
    o = F.attempt(lambda: crans.decode(blob, expect=2000))
    assert o.result == "accepted" and o.peak < 2 * MiB, o


def full_tables_crans(tensors: int, tables: int) -> bytes:
    """`tensors` 2 x 8 tensors with a prototype and 8 classes (16 contexts in use), the first
    `tables` contexts each storing a new full table (256 symbols), the others referring to one."""
    tab, side = F.table(0, [128] * 256), bytes([128]) + bytes(8) + bytes([5, 57, 119])
    ts, stored = [], 0
    for _ in range(tensors):
        refs = b""
        for _ in range(16):
            refs += b"\0" + tab if stored < tables else b"\1"
            stored += 1
        ts.append(F.crans_tensor(2, 8, 7, side, refs))
    return F.crans_stream(ts, 16 * tensors, lanes=2, crc=0)


def test_crans_stored_tables_at_and_past_the_bound() -> None:
    """MAX_SEGMENTS stored full tables parse in about a second; one more is refused as it is
    read (before: 65,536 tables, 32 MiB of varints parsed one by one, 32 s)."""
    m = rans.MAX_SEGMENTS
    at = full_tables_crans(m // 16, m)
    o = F.attempt(partial(crans.decode, at), trace=False)
    assert o.result == "refused" and "runs out of words" in o.message and o.seconds < 5, o
    o = F.attempt(partial(crans.decode, full_tables_crans(m // 16 + 1, m + 1)), trace=False)
    assert o.result == "refused" and f"more than {m} tables" in o.message and o.seconds < 5, o


def test_crans_encoder_refuses_more_tables_than_the_decoder_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.integers(-3, 4, (4, 50)), rng.integers(-60, 60, (4, 50))  # two unlike tables
    codes = np.concatenate([a.reshape(-1), b.reshape(-1)]).astype(np.int8)
    assert crans.decode(crans.encode(codes, [(4, 50), (4, 50)]), expect=400).tolist() == list(codes)
    monkeypatch.setattr(crans, "MAX_SEGMENTS", 1)
    with pytest.raises(ValueError, match="more than 1 distinct tables"):
        crans.encode(codes, [(4, 50), (4, 50)])


# ---- valid artifacts still decode, byte for byte ----------------------------------------------


@pytest.mark.parametrize("codec", A.CODECS)
def test_valid_artifacts_with_and_without_lowrank_terms_decode(codec: str) -> None:
    for name, blob in F.valid_artifacts().items():
        if name.split("+")[0] != codec:
            continue
        ts, meta = decode_artifact(blob, source="v.pgolf")
        assert meta == {"k": 1} and A.encode_artifact(ts, meta, codec=codec) == blob
        assert len([t for t in ts if ".lqer." in t.name]) == (2 if "lowrank" in name else 0)


@pytest.mark.parametrize("codec", ["rans", "crans"])
def test_artifact_at_the_lane_bound_decodes_and_past_it_is_refused(
    codec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real artifact whose codes sit on one lane: MAX_STEPS codes load; one more does not."""
    mod = rans if codec == "rans" else crans

    def art(n: int) -> bytes:
        c = (torch.arange(n) % 7 - 3).to(torch.int8).reshape(1, n)
        t = A.QTensor("w", (1, n), "int", 4, c, torch.ones(1).half())
        monkeypatch.setattr(mod, "default_lanes", lambda n: 1)
        with monkeypatch.context() as m:  # a writer without the bound
            m.setattr(mod, "check_counts", lambda *a: None)
            return A.encode_artifact([t], {}, codec=codec)

    ts, _ = timed(lambda: decode_artifact(art(STEPS), source="x.pgolf"))
    assert ts[0].codes.numel() == STEPS
    refused(art(STEPS + 1), "exceed the bound")


# ---- low-rank terms --------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["brotli", "rans", "crans"])
def test_lowrank_terms_validated_on_load(codec: str) -> None:
    """Issue 23 item 4: rank 0 (a RuntimeError traceback in dequantization), rank > min(R, C)
    (loaded), mismatched or missing factors, NaN: refused naming the file; min(R, C) loads."""
    for rank in (1, 16):  # 24 x 16: rank 1 and min(R, C) are the bounds, both accepted
        ts, _ = decode_artifact(A.encode_artifact(F.lowrank_tensors(rank), {}, codec=codec))
        state = lqer.add_back(quant.dequantize_state(ts))
        assert list(state) == ["blocks.0.mlp.fc.weight"]
    for case, ts in F.hostile_lowrank().items():
        msg = refused(F.encode_hostile(ts, codec), "x.pgolf: ")
        assert "low-rank" in msg or "finite" in msg, (case, msg)
        if case.startswith("rank"):
            assert "outside 1..16" in msg, (case, msg)


def test_lowrank_rank_is_one_rule_for_loader_and_add_back() -> None:
    assert AC.lowrank_rank("w", (24, 16), (16, 16), (24, 16)) == 16
    assert AC.lowrank_rank("v", (1, 1), (1, 64), (64,)) == 1  # a vector: R = 1
    with pytest.raises(ValueError, match="rank 40000 outside 1..128"):  # issue 23: it loaded
        AC.lowrank_rank("w", (384, 40000), (40000, 128), (384, 128))
    for a, b, w in [
        ((24, 0), (0, 16), (24, 16)),
        ((24, 17), (17, 16), (24, 16)),
        ((24, 2), (3, 16), (24, 16)),
        ((24, 2, 1), (2, 16), (24, 16)),
        ((24, 2), (2, 4), (24, 4, 4)),  # C is the flat rest (16), not the last dim
    ]:
        with pytest.raises(ValueError, match="low-rank term"):
            AC.lowrank_rank("w", a, b, w)
        with pytest.raises(ValueError, match="low-rank term"):
            lqer.add_back(
                {"w": torch.zeros(w), "w.lqer.a": torch.zeros(a), "w.lqer.b": torch.zeros(b)}
            )
    state = {
        "w": torch.zeros(24, 4, 4),
        "w.lqer.a": torch.ones(24, 2),
        "w.lqer.b": torch.ones(2, 16),
    }
    assert lqer.add_back(state)["w"].shape == (24, 4, 4) and float(state["w"][0, 0, 0]) == 2


# ---- the CLI: exit 2, the file named, no traceback, bounded --------------------------------------


def hostile_files(tmp: Path) -> dict[str, Path]:
    files = {
        "rans-85-bytes": F.split_artifact("rans", F.one_symbol_rans(10**8, 1), 10**8),
        "rans-one-lane": F.split_artifact("rans", F.one_symbol_rans(2**20, 1), 2**20),
        "crans-empty-tensors": F.split_artifact(
            "crans", F.empty_tensors_crans(3000, 2**22), 2**22, rest=b"junk"
        ),
        "crans-65536-lanes": F.split_artifact(
            "crans", F.one_symbol_crans(2**13, 2**13 + 1, 2**16), 2**26 + 2**13
        ),
        "lowrank-rank-0": F.encode_hostile(F.lowrank_tensors(0), "brotli"),
        "lowrank-rank-17": F.encode_hostile(F.lowrank_tensors(17), "crans"),
    }
    out = {}
    for k, v in files.items():
        out[k] = tmp / f"{k}.pgolf"
        out[k].write_bytes(v)
    return out


def test_cli_refuses_every_crafted_file_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for name, path in hostile_files(tmp_path).items():
        t0 = time.perf_counter()
        with pytest.raises(SystemExit) as e:
            cli.main(["eval", str(path)])
        err = capsys.readouterr().err
        assert e.value.code == 2, (name, err)
        assert str(path) in err and "Traceback" not in err, (name, err)
        assert time.perf_counter() - t0 < 10, name


@pytest.mark.slow
def test_cli_process_on_the_85_byte_file(tmp_path: Path) -> None:
    """The whole `pgolf eval` process: exit 2 naming the file, no traceback, and no more memory
    than the same command on an empty file (VmHWM: the process's own peak; ru_maxrss would
    count the pytest parent's pages at the fork). Measured: 229 MB both, 8 s (imports, load 9)."""
    path = hostile_files(tmp_path)["rans-85-bytes"]
    empty = tmp_path / "empty.pgolf"
    empty.write_bytes(b"")
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    env.pop("PGOLF_DEBUG", None)
    code = (
        "import re, sys\nfrom pgolf import cli\ntry:\n    cli.main(['eval', sys.argv[1]])\n"
        "finally:\n    print(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read())[1])\n"
    )
    peaks = []
    for p in (empty, path):
        r = subprocess.run(
            [sys.executable, "-c", code, str(p)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2 and str(p) in r.stderr and "Traceback" not in r.stderr, r.stderr
        peaks.append(int(r.stdout.split()[-1]) * 1024)
    assert peaks[1] < peaks[0] + 32 * MiB and peaks[1] < 500 * MiB, peaks


# ---- the random corpus -------------------------------------------------------------------------


def test_short_random_corpus_of_resigned_mutations() -> None:
    """Every codec, with and without low-rank terms: each mutation (CRC-32 redone, so it reaches
    the codec) is refused naming the file or decodes; never another exception."""
    res = F.run_corpus(seed=23, rounds=160)
    assert not res["bad"], res["bad"][:5]
    assert set(res["counts"]) <= {"refused", "accepted"} and res["counts"]["refused"] > 120
    assert res["seconds"] < 10 and res["peak"] < 256 * MiB
