"""Shard format, shard/tokenizer discovery, val tokens and both training loaders (pgolf.data)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf import data as D

# ../shared beside the checkout (as in CI), or PGOLF_BENCH_DIR
BENCH = Path(
    os.environ.get("PGOLF_BENCH_DIR")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "bench-v1"
)


def _shards(folder: Path, sizes: list[int], split: str = "train", prefix: str = "t") -> list:
    """Shards whose tokens are distinct positions of one global stream (ids < 65536)."""
    out, start = [], 0
    for i, n in enumerate(sizes):
        toks = np.arange(start, start + n) % 60000
        D.write_shard(folder / f"{prefix}_{split}_{i:06d}.bin", toks)
        out.append(toks)
        start += n
    return out


# ----------------------------------------------------------------------------------------------
# Shard format


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 65535), max_size=300))
def test_write_read_round_trip(tmp_path_factory, tokens):
    path = tmp_path_factory.mktemp("rt") / "x_train_000000.bin"
    D.write_shard(path, np.array(tokens, dtype=np.int64))
    arr = D.read_shard(path)
    assert arr.dtype == np.dtype("<u2") and arr.tolist() == tokens
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[:3].tolist() == [D.MAGIC, D.VERSION, len(tokens)] and not header[3:].any()
    assert path.stat().st_size == 1024 + 2 * len(tokens)
    assert not list(path.parent.glob(".*tmp*"))  # atomic write leaves no temporary file


def _corrupt(path: Path, word: int | None = None, value: int = 0, extra: bytes = b"") -> Path:
    raw = bytearray(path.read_bytes())
    if word is not None:
        raw[4 * word : 4 * word + 4] = np.array([value], dtype="<i4").tobytes()
    path.write_bytes(bytes(raw) + extra)
    return path


@pytest.mark.parametrize(
    "word,value,extra,needle",
    [
        (0, 12345, b"", "bad magic"),
        (1, 2, b"", "version"),
        (2, 11, b"", "header says 11 tokens"),
        (None, 0, b"\x00\x00", "header says 10 tokens"),
    ],
)
def test_read_refuses_bad_shards(tmp_path, word, value, extra, needle):
    path = tmp_path / "b_val_000000.bin"
    D.write_shard(path, np.arange(10))
    _corrupt(path, word, value, extra)
    with pytest.raises(D.ShardError, match=needle) as e:
        D.read_shard(path)
    assert str(path) in str(e.value)


def test_read_refuses_short_and_missing_and_out_of_vocab(tmp_path):
    short = tmp_path / "s_train_000000.bin"
    short.write_bytes(b"\x00" * 100)
    with pytest.raises(D.ShardError, match="shorter than"):
        D.read_shard(short)
    with pytest.raises(D.ShardError, match="no such shard"):
        D.read_shard(tmp_path / "missing.bin")
    path = tmp_path / "v_train_000000.bin"
    D.write_shard(path, [1, 5, 70])
    assert D.read_shard(path, vocab_size=71).tolist() == [1, 5, 70]
    with pytest.raises(D.ShardError, match="70 >= vocab_size 64"):
        D.read_shard(path, vocab_size=64)


def test_write_refuses_bad_ids(tmp_path):
    with pytest.raises(D.ShardError, match="65535"):
        D.write_shard(tmp_path / "a.bin", [0, 65536])
    with pytest.raises(D.ShardError, match="min -1"):
        D.write_shard(tmp_path / "a.bin", [-1, 3])
    with pytest.raises(D.ShardError, match="1-D"):
        D.write_shard(tmp_path / "a.bin", np.zeros((2, 2), dtype=np.int64))
    assert not (tmp_path / "a.bin").exists()


def test_empty_shard(tmp_path):
    D.write_shard(tmp_path / "e_val_000000.bin", [])
    assert D.read_shard(tmp_path / "e_val_000000.bin").size == 0


@pytest.mark.skipif(not BENCH.is_dir(), reason="bench-v1 not present")
def test_bench_shards_readable_as_is():
    files = D.find_shards(BENCH / "sp8192", "val") + D.find_shards(BENCH / "sp8192", "train")
    assert [f.name for f in files] == ["bench_val_000000.bin", "bench_train_000000.bin"]
    val = D.read_shard(files[0], vocab_size=8192)
    assert val.size == 680534 and val[0] == 1 and int((val == 1).sum()) == 320
    assert D.find_tokenizer(BENCH / "sp8192").name == "fineweb_8192_bpe.model"


# ----------------------------------------------------------------------------------------------
# Discovery and validation tokens


def test_find_shards_sorted_and_prefix_free(tmp_path):
    for name in [
        "b_train_000001.bin",
        "a_train_000000.bin",
        "x_val_000000.bin",
        "notes_train.bin",
        "c_train_00001.bin",
        "c_train_000002.bin.tmp",
    ]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in D.find_shards(tmp_path, "train")] == [
        "a_train_000000.bin",
        "b_train_000001.bin",
    ]
    assert [p.name for p in D.find_shards(tmp_path, "val")] == ["x_val_000000.bin"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.find_shards(tmp_path / "nope", "val")


def test_find_tokenizer_places(tmp_path):
    shards = tmp_path / "data" / "datasets" / "fineweb10B_sp64"
    shards.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="TOKENIZER_PATH"):
        D.find_tokenizer(shards)
    tok = tmp_path / "data" / "tokenizers"
    tok.mkdir()
    (tok / "fineweb_64_bpe.model").write_bytes(b"x")
    (tok / "fineweb_640_bpe.model").write_bytes(b"x")
    assert D.find_tokenizer(shards) == tok / "fineweb_64_bpe.model"  # 64 but not 640
    (shards.parent / "mine.model").write_bytes(b"x")
    assert D.find_tokenizer(shards) == shards.parent / "mine.model"  # parent beats tokenizers/
    (shards / "a.model").write_bytes(b"x")
    (shards / "b.model").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="several tokenizers"):
        D.find_tokenizer(shards)


def test_load_val_tokens(tmp_path):
    parts = _shards(tmp_path, [30, 25], split="val")
    full = np.concatenate(parts)
    v = D.load_val_tokens(tmp_path, seq_len=8)
    assert v.dtype == torch.int64 and v.numel() == 49  # 6*8+1 of 55
    assert v.tolist() == full[:49].tolist()
    v = D.load_val_tokens(tmp_path, seq_len=8, max_tokens=20)
    assert v.tolist() == full[:17].tolist()
    with pytest.raises(D.ShardError, match="too few"):
        D.load_val_tokens(tmp_path, seq_len=100)
    (tmp_path / "sub").mkdir()
    with pytest.raises(D.ShardError, match="no \\*_val"):
        D.load_val_tokens(tmp_path / "sub", seq_len=8)
    with pytest.raises(D.ShardError, match="vocab_size"):
        D.load_val_tokens(tmp_path, seq_len=8, vocab_size=40)


# ----------------------------------------------------------------------------------------------
# Stream loader (PR #1550)


def test_stream_two_ranks_one_call_equals_one_rank_two_calls(tmp_path):
    _shards(tmp_path, [50, 7, 80])
    one = D.make_train_loader(tmp_path, "stream", 0, 1, 4, 3, seed=0)
    a = [one.next_batch() for _ in range(2)]
    r0 = D.make_train_loader(tmp_path, "stream", 0, 2, 4, 3, seed=0).next_batch()
    r1 = D.make_train_loader(tmp_path, "stream", 1, 2, 4, 3, seed=0).next_batch()
    for (x, y), (xr, yr) in zip(a, [r0, r1]):
        assert x.dtype == torch.int64 and x.shape == (3, 4)
        assert torch.equal(x, xr) and torch.equal(y, yr)
        assert torch.equal(x[:, 1:], y[:, :-1])
    assert not set(r0[0].flatten().tolist()) & set(r1[0].flatten().tolist())


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=4).filter(lambda s: sum(s) > 0),
    world=st.integers(1, 3),
    seq_len=st.integers(1, 6),
    rows=st.integers(1, 3),
    calls=st.integers(1, 6),
)
def test_stream_covers_the_stream_with_wraparound(
    tmp_path_factory, sizes, world, seq_len, rows, calls
):
    folder = tmp_path_factory.mktemp("s")
    stream = np.concatenate(_shards(folder, sizes))
    loaders = [
        D.make_train_loader(folder, "stream", r, world, seq_len, rows, 0) for r in range(world)
    ]
    span = rows * seq_len + 1
    pos = 0
    for _ in range(calls):
        for ld in loaders:
            x, y = ld.next_batch()
            got = np.concatenate([x.flatten().numpy(), y.flatten().numpy()[-1:]])
            want = stream[np.arange(pos, pos + span) % stream.size]
            assert got.tolist() == want.tolist()
            pos += span


def test_stream_resume_and_state_checks(tmp_path):
    _shards(tmp_path, [37, 23])
    ld = D.make_train_loader(tmp_path, "stream", 1, 2, 5, 2, seed=0)
    for _ in range(3):
        ld.next_batch()
    state = json.loads(json.dumps(ld.state_dict()))
    expect = [ld.next_batch() for _ in range(4)]
    fresh = D.make_train_loader(tmp_path, "stream", 1, 2, 5, 2, seed=0)
    fresh.load_state_dict(state)
    for (x, y), (x2, y2) in zip(expect, [fresh.next_batch() for _ in range(4)]):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(ValueError, match="same data folder"):
        D.make_train_loader(tmp_path, "stream", 1, 2, 5, 2, 0, train_shards=1).load_state_dict(
            state
        )
    with pytest.raises(ValueError, match="kind"):
        D.make_train_loader(tmp_path, "shuffled", 0, 1, 5, 2, 0).load_state_dict(state)


def test_loader_argument_errors(tmp_path):
    _shards(tmp_path, [30, 30])
    with pytest.raises(ValueError, match="unknown loader kind"):
        D.make_train_loader(tmp_path, "random", 0, 1, 4, 1, 0)
    with pytest.raises(ValueError, match="rank 2"):
        D.make_train_loader(tmp_path, "stream", 2, 2, 4, 1, 0)
    (tmp_path / "x").mkdir()
    with pytest.raises(D.ShardError, match="no \\*_train"):
        D.make_train_loader(tmp_path / "x", "stream", 0, 1, 4, 1, 0)
    ld = D.make_train_loader(tmp_path, "stream", 0, 1, 4, 1, 0, train_shards=1)
    assert [f.name for f in ld.files] == ["t_train_000000.bin"]
    with pytest.raises(D.ShardError, match="t_train_000000.bin.*vocab_size 3"):
        D.make_train_loader(tmp_path, "stream", 0, 1, 4, 1, 0, vocab_size=3)


@pytest.mark.parametrize("kind", ["stream", "shuffled"])
def test_a_bad_later_shard_is_refused_when_the_folder_is_opened(tmp_path, kind):
    """Not at the step that reaches it (issue 7: a run died at step 19 with nothing saved)."""
    D.write_shard(tmp_path / "t_train_000000.bin", [1] * 5000)
    D.write_shard(tmp_path / "t_train_000001.bin", [1] * 100 + [700])
    D.write_shard(tmp_path / "t_val_000000.bin", [1] * 100)
    D.write_shard(tmp_path / "t_val_000001.bin", [1] * 100 + [700])
    with pytest.raises(D.ShardError, match="t_train_000001.bin.*700"):
        D.make_train_loader(tmp_path, kind, 0, 1, 4, 1, 0, vocab_size=512)
    with pytest.raises(D.ShardError, match="t_val_000001.bin.*700"):
        D.load_val_tokens(tmp_path, 4, max_tokens=50, vocab_size=512)  # never reaches shard 1
    (tmp_path / "t_train_000001.bin").write_bytes(b"\0" * 10)  # truncated
    with pytest.raises(D.ShardError, match="t_train_000001.bin"):
        D.make_train_loader(tmp_path, kind, 0, 1, 4, 1, 0, vocab_size=512)


# ----------------------------------------------------------------------------------------------
# Shuffled loader (PR #1493)


def _window_starts(x: torch.Tensor, y: torch.Tensor) -> list[int]:
    """Global stream positions of each row (tokens are positions, see `_shards`)."""
    for row_x, row_y in zip(x, y):
        full = torch.cat([row_x, row_y[-1:]])
        assert torch.equal(full[1:] - full[:-1], torch.ones(full.numel() - 1, dtype=torch.int64))
    return x[:, 0].tolist()


def test_shuffled_epoch_covers_each_window_once(tmp_path):
    T, sizes = 8, [100, 61, 45]
    _shards(tmp_path, sizes)
    ld = D.make_train_loader(tmp_path, "shuffled", 0, 1, T, 4, seed=3)
    n_windows, phases = sum(len(o) for o in ld.orders), list(ld.phases)
    starts_of = {0: 0, 1: 100, 2: 161}
    expected = sum((n - 1 - p) // T for n, p in zip(sizes, ld.phases))
    assert n_windows == expected
    assert all(0 <= p <= min(T - 1, n - T - 1) for p, n in zip(ld.phases, sizes))
    seen = []
    while len(seen) < n_windows:
        seen += _window_starts(*ld.next_batch())
    seen = seen[:n_windows]
    assert len(set(seen)) == n_windows  # no window twice within an epoch
    for s in seen:
        shard = max(k for k, v in starts_of.items() if v <= s)
        off = s - starts_of[shard]
        assert (off - phases[shard]) % T == 0 and off + T + 1 <= sizes[shard]
    assert ld.epoch == (1 if n_windows % 4 else 0)  # a new epoch starts only when needed


def test_shuffled_deterministic_rank_disjoint_and_seeded(tmp_path):
    _shards(tmp_path, [90, 80, 70, 60])
    mk = lambda r, w, s: D.make_train_loader(tmp_path, "shuffled", r, w, 6, 5, seed=s)  # noqa: E731
    a, b = mk(0, 1, 7), mk(0, 1, 7)
    for _ in range(5):
        assert torch.equal(a.next_batch()[0], b.next_batch()[0])
    assert not torch.equal(mk(0, 1, 8).next_batch()[0], mk(0, 1, 7).next_batch()[0])
    r0, r1 = mk(0, 2, 7), mk(1, 2, 7)
    assert [s[0] for s in r0.segments] == [0, 2]  # round-robin shards
    seen0 = {s for _ in range(6) for s in _window_starts(*r0.next_batch())}
    seen1 = {s for _ in range(6) for s in _window_starts(*r1.next_batch())}
    toks0 = {t for s in seen0 for t in range(s, s + 6)}
    assert not toks0 & {t for s in seen1 for t in range(s, s + 6)}


def test_shuffled_fewer_shards_than_ranks_stay_disjoint(tmp_path):
    _shards(tmp_path, [200])
    loaders = [D.make_train_loader(tmp_path, "shuffled", r, 3, 5, 4, seed=1) for r in range(3)]
    owned = []
    for ld in loaders:
        ((_, a, b),) = ld.segments
        starts = {s for _ in range(5) for s in _window_starts(*ld.next_batch())}
        assert all(a <= s and s + 6 <= b for s in starts)
        owned.append((a, b))
    assert owned == [(0, 66), (66, 133), (133, 200)]


@pytest.mark.parametrize("calls_before", [2, 9])  # mid-epoch and after an epoch boundary
def test_shuffled_resume_exact(tmp_path, calls_before):
    _shards(tmp_path, [70, 50])
    ld = D.make_train_loader(tmp_path, "shuffled", 1, 2, 4, 3, seed=5)
    for _ in range(calls_before):
        ld.next_batch()
    state = json.loads(json.dumps(ld.state_dict()))
    expect = [ld.next_batch() for _ in range(8)]
    fresh = D.make_train_loader(tmp_path, "shuffled", 1, 2, 4, 3, seed=5)
    fresh.load_state_dict(state)
    assert fresh.epoch == state["epoch"]
    for (x, y), (x2, y2) in zip(expect, [fresh.next_batch() for _ in range(8)]):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    if calls_before == 9:
        assert state["epoch"] >= 1


def test_shuffled_refuses_tiny_data(tmp_path):
    _shards(tmp_path, [5])
    with pytest.raises(D.ShardError, match="one window"):
        D.make_train_loader(tmp_path, "shuffled", 0, 1, 8, 1, seed=0)
    with pytest.raises(ValueError, match="non-negative seed"):
        D.make_train_loader(tmp_path, "shuffled", 0, 1, 2, 1, seed=-1)
